"""Ingest on real slices: adapters, idempotence, quarantine reasons, table-level gate."""

from __future__ import annotations

import csv
import io
import shutil
from datetime import UTC, datetime

import pandas as pd
import pytest

from tests.conftest import make_hm_slice, read_csv, write_csv

pytestmark = [pytest.mark.spark, pytest.mark.integration]

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def _snapshot(lake, table):
    cols = lake.read_arrow(table).column_names
    return lake.read_arrow(table).sort_by([(c, "ascending") for c in cols]).to_pylist()


def test_hm_slice_lands_and_rerun_changes_nothing(tmp_path, hm_dir, spark, settings):
    from atelier.lake import Lake
    from spark_jobs.ingest import run_ingest

    src = tmp_path / "hm"
    expected = make_hm_slice(hm_dir, src, n_articles=40)
    report = run_ingest(settings, "hm", src, spark=spark, now=NOW)
    assert report.published and report.failures == []
    assert report.quarantine_by_reason() == {}
    lake = Lake(settings)
    for table, n in expected.items():
        assert lake.read_arrow(table).num_rows == n, table
    assert lake.read_arrow("product_images").num_rows == expected["products"]

    products = lake.read_pandas("products").set_index("product_id")
    header, rows = read_csv(src / "articles.csv")
    first = dict(zip(header, rows[0]))
    p = products.loc[first["article_id"]]  # leading zero kept: ids are strings
    assert first["article_id"].startswith("0") and len(first["article_id"]) == 10
    assert (p["type"], p["brand"], p["division"], p["title"]) == (
        first["product_type_name"],
        "H&M",
        first["index_group_name"],
        first["prod_name"],
    )
    # Price and first_seen come from the product's transactions.
    _, trows = read_csv(src / "transactions_train.csv")
    mine = [r for r in trows if r[2] == first["article_id"]]
    assert p["first_seen"].strftime("%Y-%m-%d") == min(r[0] for r in mine)
    prices = sorted(float(r[3]) for r in mine)
    assert prices[0] <= p["price"] <= prices[-1]

    labels = lake.read_pandas("product_labels")
    mine_labels = dict(
        labels[labels.product_id == first["article_id"]][["attribute", "value"]].itertuples(
            index=False
        )
    )
    assert mine_labels["colour_group_name"] == first["colour_group_name"]
    assert set(labels.attribute) <= {
        "graphical_appearance_name",
        "colour_group_name",
        "perceived_colour_value_name",
        "perceived_colour_master_name",
        "garment_group_name",
        "section_name",
        "product_group_name",
        "department_name",
    }

    before = {t: (lake.version(t), _snapshot(lake, t)) for t in expected}
    again = run_ingest(settings, "hm", src, spark=spark, now=NOW)
    assert again.published
    assert all(t.inserted == 0 and t.updated == 0 for t in again.tables.values())
    assert {t: (lake.version(t), _snapshot(lake, t)) for t in expected} == before


def _corrupt_slice(hm_dir, dst):
    """A small H&M slice with one bad row of each kind; returns the expected quarantine."""
    make_hm_slice(hm_dir, dst, n_articles=30)
    ah, arows = read_csv(dst / "articles.csv")
    th, trows = read_csv(dst / "transactions_train.csv")
    ids = [r[0] for r in arows]
    arows.append(list(arows[1]))  # duplicate key (line 32)
    write_csv(dst / "articles.csv", ah, arows)
    with (dst / "articles.csv").open("ab") as f:
        f.write(b"0999999001,0999999,Broken row,253\n")  # malformed: 4 fields (line 33)
        bad = list(arows[2])
        bad[0] = "0999999002"
        bad[-1] = "caf\u00e9"
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(bad)
        # Latin-1 bytes for the accent: not valid UTF-8.
        f.write(buf.getvalue().encode("utf-8").replace(b"caf\xc3\xa9", b"caf\xe9"))  # line 34
    # Corrupt JPEG and missing image for two good products.
    corrupt, missing = ids[3], ids[4]
    (dst / "images" / corrupt[:3] / f"{corrupt}.jpg").unlink()
    (dst / "images" / corrupt[:3] / f"{corrupt}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (dst / "images" / missing[:3] / f"{missing}.jpg").unlink()
    n_tx = len(trows)
    neg = list(trows[0])
    neg[3] = "-0.05"
    unknown = list(trows[0])
    unknown[2] = "0123456789"
    future = list(trows[0])
    future[0] = "2031-01-01"
    trows += [neg, unknown, future]
    write_csv(dst / "transactions_train.csv", th, trows)
    with (dst / "transactions_train.csv").open("a") as f:
        f.write("2020-01-01,onlytwo\n")
    return (
        {
            ("products", "duplicate_key", 32),
            ("products", "malformed_row", 33),
            ("products", "invalid_utf8", 34),
            ("product_images", "image_corrupt", 2 + 3),
            ("product_images", "image_missing", 2 + 4),
            ("interactions", "negative_price", n_tx + 2),
            ("interactions", "unknown_product", n_tx + 3),
            ("interactions", "future_timestamp", n_tx + 4),
            ("interactions", "malformed_row", n_tx + 5),
        },
        len(ids),
        n_tx,
    )


def test_corrupted_slice_quarantines_each_bad_row_and_keeps_every_good_one(
    tmp_path, hm_dir, spark, settings
):
    from atelier.lake import Lake
    from spark_jobs.ingest import run_ingest

    src = tmp_path / "bad"
    expected, n_products, n_tx = _corrupt_slice(hm_dir, src)
    report = run_ingest(settings, "hm", src, spark=spark, now=NOW)
    assert report.published, report.failures
    lake = Lake(settings)
    q = lake.read_pandas("quarantine")
    got = {(r.table, r.reason, r.line) for r in q.itertuples()}
    assert got == expected
    assert set(q.source_file.map(lambda s: s.rsplit("/", 1)[-1])) == {
        "articles.csv",
        "transactions_train.csv",
    }
    assert report.tables["interactions"].quarantined == {
        "negative_price": 1,
        "unknown_product": 1,
        "future_timestamp": 1,
        "malformed_row": 1,
    }
    # Every good row arrived: all original products (images bad or not), all original purchases.
    assert lake.read_arrow("products").num_rows == n_products
    assert lake.read_arrow("product_images").num_rows == n_products - 2
    assert lake.read_arrow("interactions").num_rows == n_tx
    latest = (settings.reports_dir / "ingest" / "latest.json").read_text()
    assert '"image_corrupt": 1' in latest


def test_table_level_failure_leaves_previous_version(tmp_path, hm_dir, spark, settings):
    from atelier.lake import Lake
    from spark_jobs.ingest import GateFailure, run_ingest

    src = tmp_path / "hm"
    make_hm_slice(hm_dir, src, n_articles=20)
    run_ingest(settings, "hm", src, spark=spark, now=NOW)
    lake = Lake(settings)
    before = {t: (lake.version(t), _snapshot(lake, t)) for t in ("products", "interactions")}

    # A changed source (new title) that fails the GX row-count band: nothing may be published.
    h, rows = read_csv(src / "articles.csv")
    rows[0][2] = "Renamed product"
    write_csv(src / "articles.csv", h, rows)
    strict = settings.model_copy(
        update={"gate": settings.gate.model_copy(update={"min_rows": {"products": 10_000}})}
    )
    with pytest.raises(GateFailure) as err:
        run_ingest(strict, "hm", src, spark=spark, now=NOW)
    assert any("products" in f and "row_count" in f for f in err.value.failures)
    assert {t: (lake.version(t), _snapshot(lake, t)) for t in before} == before
    # The same input passes once the band is sane again, and the rename is published.
    run_ingest(settings, "hm", src, spark=spark, now=NOW)
    assert "Renamed product" in set(lake.read_pandas("products").title)


def test_too_many_bad_rows_stops_publication(tmp_path, hm_dir, spark, settings):
    from atelier.lake import Lake
    from spark_jobs.ingest import GateFailure, run_ingest

    src = tmp_path / "hm"
    make_hm_slice(hm_dir, src, n_articles=10)
    h, rows = read_csv(src / "transactions_train.csv")
    for r in rows[: len(rows) // 2]:
        r[3] = "-1"
    write_csv(src / "transactions_train.csv", h, rows)
    with pytest.raises(GateFailure) as err:
        run_ingest(settings, "hm", src, spark=spark, now=NOW)
    assert any(f.startswith("interactions:") and "quarantined" in f for f in err.value.failures)
    lake = Lake(settings)
    assert not lake.exists("products") and not lake.exists("interactions")
    # The evidence is kept.
    assert set(lake.read_pandas("quarantine").reason) == {"negative_price"}


def test_fashion_images_slice(tmp_path, fashion_dir, spark, settings):
    from atelier.lake import Lake
    from spark_jobs.ingest import run_ingest

    src = tmp_path / "fs"
    header, rows = read_csv(fashion_dir / "styles.csv")
    rows = rows[:60]
    write_csv(src / "styles.csv", header, rows)
    (src / "images").mkdir()
    for r in rows:
        (src / "images" / f"{r[0]}.jpg").symlink_to(fashion_dir / "images" / f"{r[0]}.jpg")
    report = run_ingest(settings, "fashion-images", src, spark=spark, now=NOW)
    assert report.published and report.quarantine_by_reason() == {}
    lake = Lake(settings)
    products = lake.read_pandas("products").set_index("product_id")
    assert len(products) == 60
    row = dict(zip(header, rows[0]))  # 15970: "Turtle Check Men Navy Blue Shirt"
    p = products.loc[row["id"]]
    assert (p["type"], p["division"], p["title"]) == (
        row["articleType"],
        row["gender"],
        row["productDisplayName"],
    )
    assert row["productDisplayName"].startswith(p["brand"] + " ")
    assert pd.isna(p["price"]) and pd.isna(p["first_seen"])  # no sales in this layout
    brands = dict(products["brand"])
    by_name = {dict(zip(header, r))["productDisplayName"]: dict(zip(header, r))["id"] for r in rows}
    if "Puma Men Grey T-shirt" in by_name:
        assert brands[by_name["Puma Men Grey T-shirt"]] == "Puma"
    labels = lake.read_pandas("product_labels")
    for attr in ("baseColour", "season", "usage"):
        filled = sum(1 for r in rows if dict(zip(header, r))[attr].strip())
        assert (labels.attribute == attr).sum() == filled, attr
    assert not lake.exists("interactions") and not lake.exists("customers")
    assert lake.read_arrow("product_images").num_rows == 60


def test_catalogue_only_folder_lands_and_a_full_one_adds_purchases_later(
    tmp_path, hm_dir, spark, settings
):
    from atelier.lake import Lake
    from spark_jobs.ingest import format_report, run_ingest

    full = tmp_path / "full"
    expected = make_hm_slice(hm_dir, full, n_articles=5)
    src = tmp_path / "catalogue"
    shutil.copytree(full, src, symlinks=True)
    (src / "customers.csv").unlink()
    (src / "transactions_train.csv").unlink()
    report = run_ingest(settings, "hm", src, spark=spark, now=NOW)
    assert report.published and report.absent == ["customers.csv", "transactions_train.csv"]
    assert set(report.tables) == {"products", "product_labels", "product_images"}
    text = format_report(report)
    assert "not in the folder (left untouched): customers.csv, transactions_train.csv" in text
    lake = Lake(settings)
    assert not lake.exists("customers") and not lake.exists("interactions")
    products = lake.read_pandas("products", ["product_id", "price", "first_seen"])
    assert len(products) == expected["products"] == lake.read_arrow("product_images").num_rows
    # H&M has no list price: price and first_seen come from purchases, none yet.
    assert products["price"].isna().all() and products["first_seen"].isna().all()

    report = run_ingest(settings, "hm", full, spark=spark, now=NOW)
    assert report.published and report.absent == []
    assert report.tables["interactions"].inserted == expected["interactions"]
    assert report.tables["customers"].inserted == expected["customers"]
    assert report.tables["products"].updated == expected["products"]
    products = lake.read_pandas("products", ["price", "first_seen"])
    assert products["price"].notna().all() and products["first_seen"].notna().all()


def test_missing_column_is_a_clear_error(tmp_path, hm_dir, spark, settings):
    from spark_jobs.ingest import IngestError, run_ingest

    src = tmp_path / "hm"
    make_hm_slice(hm_dir, src, n_articles=5)
    h, rows = read_csv(src / "articles.csv")
    i = h.index("product_type_name")
    write_csv(src / "articles.csv", h[:i] + h[i + 1 :], [r[:i] + r[i + 1 :] for r in rows])
    with pytest.raises(IngestError, match="product_type_name"):
        run_ingest(settings, "hm", src, spark=spark, now=NOW)
    shutil.rmtree(src)


def test_deletes_are_opt_in_tombstone_products_and_remove_labels_and_images(
    tmp_path, hm_dir, spark, settings
):
    """A product, label or image removed from the source: kept by default (an increment is
    not a deletion); with ingest.deletes the product is tombstoned (its purchases stay valid),
    its labels and images and the removed label and image go; listed again, it comes back."""
    from atelier.lake import Lake
    from spark_jobs.ingest import format_report, run_ingest

    src = tmp_path / "hm"
    make_hm_slice(hm_dir, src, n_articles=20)
    run_ingest(settings, "hm", src, spark=spark, now=NOW)
    lake = Lake(settings)
    ah, arows = read_csv(src / "articles.csv")
    gone_row, relabelled, unpictured = arows[0], arows[1][0], arows[2][0]
    colour = ah.index("colour_group_name")
    arows[1][colour] = ""  # the label is removed at the source
    write_csv(src / "articles.csv", ah, arows[1:])  # the product is removed at the source
    (src / "images" / unpictured[:3] / f"{unpictured}.jpg").unlink()
    gone = gone_row[0]

    def labels():
        return {
            (r["product_id"], r["attribute"]) for r in lake.read_arrow("product_labels").to_pylist()
        }

    def shots():
        return set(lake.read_arrow("product_images")["product_id"].to_pylist())

    run_ingest(settings, "hm", src, spark=spark, now=NOW)  # default: nothing is deleted
    assert gone in shots() and unpictured in shots()
    assert (relabelled, "colour_group_name") in labels()
    assert not lake.exists("product_tombstones")
    labels_of_gone = sum(1 for p, _ in labels() if p == gone)
    assert labels_of_gone >= 3

    on = settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"deletes": True})}
    )
    report = run_ingest(on, "hm", src, spark=spark, now=NOW)
    tombstones = lake.read_arrow("product_tombstones").to_pylist()
    assert [t["product_id"] for t in tombstones] == [gone]
    assert gone in set(lake.read_arrow("products")["product_id"].to_pylist())  # kept
    assert not any(p == gone for p, _ in labels())
    assert (relabelled, "colour_group_name") not in labels()
    assert gone not in shots() and unpictured not in shots()
    assert report.tables["product_images"].deleted == 2
    assert report.tables["products"].deleted == 1
    assert report.tables["product_labels"].deleted == labels_of_gone + 1
    assert "gone from the source: products 1" in format_report(report)
    # Purchases of the tombstoned product are still valid input.
    assert report.tables["interactions"].quarantined == {}

    write_csv(src / "articles.csv", ah, [gone_row, *arows[1:]])  # listed again
    run_ingest(on, "hm", src, spark=spark, now=NOW)
    assert lake.read_arrow("product_tombstones").num_rows == 0
    assert gone in shots()
