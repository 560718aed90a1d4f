"""Hostile input at ingest: each defect of issue 14 reproduced on a real H&M slice.

Every bad row is quarantined with its own reason (the gate's bounds, applied per row), and every
good row of every table is still published.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

from tests.conftest import make_hm_slice, read_csv, write_csv

pytestmark = [pytest.mark.spark, pytest.mark.integration]

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def _write_bom_csv(path, header, rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode("utf-8-sig"))  # Excel's "CSV UTF-8"


def _hostile_slice(hm_dir, dst, outside):
    """An H&M slice plus one hostile row of each kind; returns what the checks should see.

    Hostile rows are added as new rows (not edits of rows with purchases), so that the
    expected quarantine is exactly them and every original row must land.
    """
    from PIL import Image

    make_hm_slice(hm_dir, dst, n_articles=30)
    ah, arows = read_csv(dst / "articles.csv")
    ids = [r[0] for r in arows]
    col = {c: i for i, c in enumerate(ah)}
    # A product description with a line break inside its quoted field (valid CSV).
    arows[1][col["detail_desc"]] = "Soft cotton jersey.\nMachine wash at 40 degrees."
    # A title with an ANSI escape sequence, one with a NUL byte.
    ansi, nul, walk = list(arows[2]), list(arows[3]), list(arows[4])
    ansi[0], ansi[col["prod_name"]] = "0999999003", "\x1b[31mRED\x1b[0m top"
    nul[0], nul[col["prod_name"]] = "0999999004", "Top\x00"
    # A product id that walks out of the source folder to `outside/pwn.jpg`.
    walk[0] = "../../../../../../../.." + str(outside / "pwn")
    arows += [ansi, nul, walk]
    _write_bom_csv(dst / "articles.csv", ah, arows)  # the whole file carries a BOM

    # An image over the pixel cap the test sets (1 MP).
    big = ids[5]
    link = dst / "images" / big[:3] / f"{big}.jpg"
    link.unlink()
    Image.new("RGB", (1200, 1000), (200, 10, 10)).save(link, format="JPEG")

    th, trows = read_csv(dst / "transactions_train.csv")
    n_tx = len(trows)
    absurd, ancient, empty = list(trows[0]), list(trows[1]), list(trows[2])
    absurd[3] = "1e308"  # finite, parses as a float, fails the gate's price bound
    ancient[0] = "1900-01-01"  # a placeholder date that would rewrite first_seen
    empty[3] = ""
    trows += [absurd, ancient, empty]
    write_csv(dst / "transactions_train.csv", th, trows)

    ch, crows = read_csv(dst / "customers.csv")
    n_customers = len(crows)
    fractional = list(crows[0])
    fractional[0], fractional[ch.index("age")] = "f" * 64, "33.7"
    crows.append(fractional)
    write_csv(dst / "customers.csv", ch, crows)
    return {
        "ids": ids,
        "desc_id": ids[1],
        "big_id": big,
        "ancient": ancient,
        "n_tx": n_tx,
        "n_customers": n_customers,
    }


def test_hostile_rows_are_quarantined_and_every_good_row_published(
    tmp_path, hm_dir, spark, settings
):
    from atelier.lake import Lake
    from spark_jobs.ingest import run_ingest

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "pwn.jpg").write_bytes(b"not yours")
    src = tmp_path / "hm"
    s = _hostile_slice(hm_dir, src, outside)
    settings = settings.model_copy(update={"max_image_pixels": 1_000_000})

    report = run_ingest(settings, "hm", src, spark=spark, now=NOW)

    # 1. One absurd price no longer blocks the batch: it is a row reason like the others.
    assert report.published, report.failures
    lake = Lake(settings)
    q = lake.read_pandas("quarantine")
    assert sorted((r.table, r.reason) for r in q.itertuples()) == sorted(
        [
            ("products", "control_characters"),  # ANSI escape
            ("products", "control_characters"),  # NUL
            ("products", "unsafe_id"),
            ("product_images", "image_too_large"),
            ("interactions", "implausible_price"),
            ("interactions", "implausible_timestamp"),
            ("interactions", "missing_price"),
            ("customers", "invalid_age"),
        ]
    )
    details = sorted(q.detail[q.reason == "control_characters"])
    assert details == sorted(
        ["prod_name has control character U+001B", "prod_name has control character U+0000"]
    )
    assert "1200x1000" in q.detail[q.reason == "image_too_large"].item()

    # 7. BOM: the header's first column is found and every good product lands.
    products = lake.read_pandas("products").set_index("product_id")
    assert set(products.index) == set(s["ids"])
    # 4. The multi-line description is one record, its line break kept.
    assert products.loc[s["desc_id"], "description"] == (
        "Soft cotton jersey.\nMachine wash at 40 degrees."
    )
    # 2. Nothing outside the source folder was read or stored.
    images = lake.read_pandas("product_images")
    assert not any(open(p, "rb").read() == b"not yours" for p in images.path)
    assert set(images.product_id) == set(s["ids"]) - {s["big_id"]}
    # 9. The 1900 sale did not become first_seen; a fractional age is refused, not truncated.
    assert products.loc[s["ancient"][2], "first_seen"].year >= 2018
    assert len(lake.read_pandas("customers")) == s["n_customers"]
    assert len(lake.read_pandas("interactions")) == s["n_tx"]


def test_an_empty_source_file_is_a_clear_error(tmp_path, spark, settings):
    from spark_jobs.ingest import IngestError, run_ingest

    src = tmp_path / "empty"
    src.mkdir()
    (src / "articles.csv").write_bytes(b"")
    with pytest.raises(IngestError, match="articles.csv: empty file"):
        run_ingest(settings, "hm", src, spark=spark, now=NOW)


def test_image_checks_refuse_paths_outside_the_source_and_huge_images(tmp_path, spark):
    """Defence in depth below the id check: the image reader itself never leaves the source
    folder, and the default pixel cap catches a 144-megapixel image from its header alone."""
    from PIL import Image

    from atelier.settings import Settings
    from spark_jobs.ingest import check_images

    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"not yours")
    Image.new("1", (12_000, 12_000)).save(root / "images" / "huge.png")  # 18 MB in memory
    Image.new("RGB", (64, 48)).save(root / "images" / "ok.jpg")
    rows = [
        ("a", 0, f"{root}/images/../../secret.jpg", "f", 2, "r"),
        ("b", 0, f"{root}/images/huge.png", "f", 3, "r"),
        ("c", 0, f"{root}/images/ok.jpg", "f", 4, "r"),
    ]
    df = spark.createDataFrame(
        rows, "product_id STRING, shot INT, path STRING, _source STRING, _line LONG, _raw STRING"
    )
    cap = Settings().max_image_pixels
    out = {r.product_id: r for r in check_images(df, 1, root, cap, tmp_path / "lake").collect()}
    assert out["a"]._reason == "image_outside_source" and out["a"].content_hash is None
    assert out["b"]._reason == "image_too_large" and "12000x12000" in out["b"]._detail
    assert out["c"]._reason is None and (out["c"].width, out["c"].height) == (64, 48)
    # The good image is the lake's own copy now, named by its content.
    assert out["c"].path == f"_images/{out['c'].content_hash[:2]}/{out['c'].content_hash}.jpg"
    assert (tmp_path / "lake" / out["c"].path).read_bytes() == (root / "images/ok.jpg").read_bytes()


@pytest.mark.slow
def test_ingest_killed_between_table_commits_is_invisible_until_a_rerun(
    tmp_path, hm_dir, spark, settings
):
    """`kill -9` right after the products commit (ATELIER_FAILPOINT): readers keep seeing the
    previous run whole — old title beside old customers — and the rerun publishes both."""
    import os
    import signal
    import subprocess
    import sys

    from atelier.lake import FAILPOINT, Lake
    from spark_jobs.ingest import run_ingest

    src = tmp_path / "hm"
    make_hm_slice(hm_dir, src, n_articles=20)
    run_ingest(settings, "hm", src, spark=spark, now=NOW)
    lake = Lake(settings)
    before = {t: lake.version(t) for t in ("products", "customers", "interactions")}

    ah, arows = read_csv(src / "articles.csv")
    pid, old_title = arows[0][0], arows[0][2]
    arows[0][2] = "Renamed product"
    write_csv(src / "articles.csv", ah, arows)
    ch, crows = read_csv(src / "customers.csv")
    cid, age = crows[0][0], ch.index("age")
    crows[0][age] = "77"
    write_csv(src / "customers.csv", ch, crows)

    env = {
        **os.environ,
        FAILPOINT: "after_commit:products",
        "PYSPARK_PYTHON": sys.executable,
        "ATELIER_SPARK__MASTER": "local[2]",
        "ATELIER_GATE__BUILD_DATA_DOCS": "false",
    }
    cmd = [sys.executable, "-m", "cli.main", "--workdir", str(settings.workdir), "ingest"]
    out = subprocess.run([*cmd, "hm", str(src)], env=env, capture_output=True, text=True)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]

    assert lake.latest_version("products") == before["products"] + 1  # committed ...
    assert {t: lake.version(t) for t in before} == before  # ... but not published
    products = lake.read_pandas("products").set_index("product_id")
    customers = lake.read_pandas("customers").set_index("customer_id")
    assert products.loc[pid, "title"] == old_title and customers.loc[cid, "age"] != 77
    assert set(lake.unpublished()) == {"products"}

    run_ingest(settings, "hm", src, spark=spark, now=NOW)  # the rerun completes the run
    assert lake.unpublished() == {}
    assert lake.read_pandas("products").set_index("product_id").loc[pid, "title"] == (
        "Renamed product"
    )
    assert lake.read_pandas("customers").set_index("customer_id").loc[cid, "age"] == 77


def test_images_live_in_the_lake_so_moving_or_deleting_the_source_breaks_nothing(
    tmp_path, hm_dir, spark, settings
):
    """Defect 10: product_images held absolute source paths. Now each good image is copied
    into the lake by content hash and its path is stored relative to the lake."""
    import hashlib
    import shutil

    from atelier.lake import Lake
    from spark_jobs.ingest import run_ingest

    src = tmp_path / "hm"
    make_hm_slice(hm_dir, src, n_articles=5)
    run_ingest(settings, "hm", src, spark=spark, now=NOW)
    lake = Lake(settings)
    stored = lake.read_arrow("product_images").to_pylist()
    assert len(stored) == 5
    shutil.rmtree(src)  # the source is gone (moved, deleted)
    for row in stored:
        assert row["path"].startswith(str(settings.lake_dir.resolve()) + "/_images/")
        data = open(row["path"], "rb").read()
        assert hashlib.sha256(data).hexdigest() == row["content_hash"]
    # Stored relative: the lake folder can move too.
    from deltalake import DeltaTable

    raw = DeltaTable(str(lake.path("product_images"))).to_pyarrow_table(columns=["path"])
    assert all(p.startswith("_images/") for p in raw["path"].to_pylist())
