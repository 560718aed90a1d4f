"""The bad-input corpus: 29 kinds of bad or awkward input in one real H&M slice, each asserted
on its own — the bad row quarantined with its reason (found by a marker in its record), every
good row of every table published.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, datetime

import pytest

from tests.conftest import make_hm_slice, read_csv, write_csv

pytestmark = [pytest.mark.faults, pytest.mark.spark]

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def _line(fields) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


def _corpus(hm_dir, dst):
    """The slice plus one row per kind: {kind: (table, reason or None, marker)}; None: the
    input is awkward but good (kept)."""
    from PIL import Image

    make_hm_slice(hm_dir, dst, n_articles=40)
    ah, arows = read_csv(dst / "articles.csv")
    col = {c: i for i, c in enumerate(ah)}
    ids = [r[0] for r in arows]
    kinds: dict[str, tuple[str, str | None, str]] = {}

    def product(kind, reason, pid, **changes):
        row = list(arows[5])
        row[0] = pid
        for name, value in changes.items():
            row[col[name]] = value
        extra.append(row)
        kinds[kind] = ("products", reason, pid if pid else changes.get("prod_name", ""))

    extra: list[list[str]] = []
    arows[1][col["detail_desc"]] = "Soft jersey.\nWash at 40."
    kinds["multi-line quoted field"] = ("products", None, ids[1])
    kinds["UTF-8 byte-order mark"] = ("products", None, ids[0])
    extra.append(list(arows[2]))
    kinds["duplicate product id"] = ("products", "duplicate_key", ids[2])
    product("ANSI escape in a title", "control_characters", "0999999101", prod_name="\x1b[1mX")
    product("NUL in a title", "control_characters", "0999999102", prod_name="Top\x00")
    product("path in a product id", "unsafe_id", "../../etc/0999999103")
    product("missing product id", "missing_id", "", prod_name="Nameless 0999999104")
    product("missing product type", "missing_type", "0999999105", product_type_name="")
    text = "".join(_line(r) for r in [ah, *arows, *extra]).encode("utf-8-sig")
    text += b"0999999106,0999999,Broken row,253\n"
    kinds["too few fields"] = ("products", "malformed_row", "0999999106")
    latin = list(arows[5])
    latin[0], latin[col["prod_name"]] = "0999999107", "caf\u00e9"
    text += _line(latin).encode("utf-8").replace(b"caf\xc3\xa9", b"caf\xe9")  # Latin-1 byte
    kinds["invalid UTF-8"] = ("products", "invalid_utf8", "0999999107")
    (dst / "articles.csv").write_bytes(text)

    missing, corrupt, big = ids[3], ids[4], ids[6]
    (dst / "images" / missing[:3] / f"{missing}.jpg").unlink()
    kinds["image file missing"] = ("product_images", "image_missing", missing)
    path = dst / "images" / corrupt[:3] / f"{corrupt}.jpg"
    path.unlink()
    path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    kinds["image corrupt"] = ("product_images", "image_corrupt", corrupt)
    path = dst / "images" / big[:3] / f"{big}.jpg"
    path.unlink()
    Image.new("RGB", (1200, 1000), (9, 9, 9)).save(path, format="JPEG")
    kinds["image over the pixel cap"] = ("product_images", "image_too_large", big)

    th, trows = read_csv(dst / "transactions_train.csv")
    n_tx = len(trows)
    base = trows[0]
    bad_tx = {
        "negative price": ("negative_price", {3: "-0.05"}),
        "unknown product": ("unknown_product", {2: "0123456789"}),
        "future sale": ("future_timestamp", {0: "2031-01-01"}),
        "absurd price 1e308": ("implausible_price", {3: "1e308"}),
        "placeholder date 1900": ("implausible_timestamp", {0: "1900-01-01"}),
        "empty price": ("missing_price", {3: ""}),
        "unparseable price": ("unparseable_price", {3: "abc"}),
        "infinite price": ("non_finite_price", {3: "inf"}),
        "unparseable date": ("unparseable_timestamp", {0: "yesterday"}),
        "missing customer": ("missing_customer", {1: ""}),
        "unknown customer": ("unknown_customer", {1: "f" * 64}),
    }
    for i, (kind, (reason, changes)) in enumerate(bad_tx.items()):
        row = list(base)
        row[4] = f"K{i:02d}"  # the sales channel: this kind's marker (never in a hex id)
        for k, v in changes.items():
            row[k] = v
        trows.append(row)
        kinds[kind] = ("interactions", reason, f",K{i:02d}")
    write_csv(dst / "transactions_train.csv", th, trows)
    with (dst / "transactions_train.csv").open("a") as f:
        f.write("2020-01-01,onlytwo\n")
    kinds["short purchase row"] = ("interactions", "malformed_row", "onlytwo")

    ch, crows = read_csv(dst / "customers.csv")
    n_customers = len(crows)
    age = ch.index("age")
    for kind, cid, value in (
        ("fractional age", "a" * 64, "33.7"),
        ("negative age", "b" * 64, "-5"),
    ):
        row = list(crows[0])
        row[0], row[age] = cid, value
        crows.append(row)
        kinds[kind] = ("customers", "invalid_age", cid)
    crows.append(list(crows[1]))
    kinds["duplicate customer id"] = ("customers", "duplicate_key", crows[1][0])
    row = list(crows[2])
    row[0], row[ch.index("postal_code")] = "", "MISSING-ID-MARKER"
    crows.append(row)
    kinds["missing customer id"] = ("customers", "missing_id", "MISSING-ID-MARKER")
    write_csv(dst / "customers.csv", ch, crows)
    return kinds, ids, n_tx, n_customers


def test_every_kind_is_quarantined_with_its_reason_and_every_good_row_kept(
    tmp_path, hm_dir, spark, settings
):
    from atelier.lake import Lake
    from spark_jobs.ingest import run_ingest

    src = tmp_path / "hm"
    kinds, ids, n_tx, n_customers = _corpus(hm_dir, src)
    assert len(kinds) >= 20
    settings = settings.model_copy(update={"max_image_pixels": 1_000_000})
    report = run_ingest(settings, "hm", src, spark=spark, now=NOW)
    assert report.published, report.failures

    lake = Lake(settings)
    q = lake.read_pandas("quarantine")
    found = {}
    for kind, (table, reason, marker) in kinds.items():
        mine = q[(q.table == table) & q.record.str.contains(marker, regex=False)]
        if reason is None:
            found[kind] = "kept" if mine.empty else list(mine.reason)
        else:
            found[kind] = "ok" if list(mine.reason) == [reason] else list(mine.reason)
    assert found == {k: ("kept" if r is None else "ok") for k, (_, r, _) in kinds.items()}
    expected = Counter((t, r) for t, r, _ in kinds.values() if r)
    assert Counter(zip(q.table, q.reason)) == expected

    products = lake.read_pandas("products").set_index("product_id")
    assert set(products.index) == set(ids)  # every good product, no bad one
    assert products.loc[ids[1], "description"] == "Soft jersey.\nWash at 40."
    assert len(lake.read_pandas("interactions")) == n_tx  # every good purchase
    assert len(lake.read_pandas("customers")) == n_customers  # every good customer
    images = set(lake.read_pandas("product_images").product_id)
    assert images == set(ids) - {ids[3], ids[4], ids[6]}
    print(
        f"bad-input corpus: {len(kinds)} kinds, {sum(expected.values())} rows quarantined, "
        f"{len(products)} products, {n_tx} purchases, {n_customers} customers kept"
    )
