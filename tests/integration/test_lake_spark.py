"""Executor-written merges committed by delta-rs (atelier/lake_spark.py): the same table
contents as the driver path after the same merges, one commit per merge, nothing visible
before the commit, and tables every reader reads."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pyarrow as pa
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.integration]

T0 = datetime(2020, 1, 1, tzinfo=UTC)
T1 = datetime(2020, 6, 1, 12, 30, tzinfo=UTC)


def _rows(n: int, start: int = 0, scale: float = 1.0, at: datetime = T0) -> list[dict]:
    return [
        {
            "product_id": f"p{i:04d}",
            "shot": i % 3,
            "content_hash": f"h{i}",
            "weights": "random:1",
            "input_size": "224x224",
            "embedding": [scale * i, -1.5, float(i % 7)],
            "event_timestamp": at,
            "created_timestamp": at,
        }
        for i in range(start, start + n)
    ]


def _frame(spark, rows):
    from atelier.contracts import contract

    c = contract("image_embeddings")
    return spark.createDataFrame(pa.Table.from_pylist(rows, c.schema()).to_pandas(), c.spark_ddl())


def _lake(tmp_path, spark, spark_io):
    from atelier.lake import Lake
    from atelier.settings import Settings

    return Lake(Settings(workdir=tmp_path / spark_io, lake={"spark_io": spark_io}), spark)


def _table(lake) -> list[dict]:
    rows = lake.read_arrow("image_embeddings").to_pylist()
    return sorted(rows, key=lambda r: (r["product_id"], r["shot"]))


def test_executor_merges_equal_driver_merges_and_commit_once_each(spark, tmp_path):
    from deltalake import DeltaTable

    from atelier.contracts import contract

    lakes = {io: _lake(tmp_path, spark, io) for io in ("executors", "driver")}
    steps = [
        (_rows(40), True),  # creates the table
        (_rows(10, start=35, scale=2.0) + _rows(5, start=45), True),  # 5 changed, 10 new
        (_rows(50), True),  # 35..44 back to scale 1: 10 updated
        (_rows(50), True),  # same again: nothing to commit
        (_rows(3, start=0, scale=9.0) + _rows(2, start=60), False),  # insert-only
    ]
    results = {io: [] for io in lakes}
    for rows, update in steps:
        for io, lake in lakes.items():
            res = lake.merge("image_embeddings", _frame(spark, rows), update=update)
            results[io].append((res.inserted, res.updated, res.version))
    assert results["executors"] == [(40, 0, 0), (10, 5, 1), (0, 10, 2), (0, 0, 2), (2, 0, 3)]
    assert [r[:2] for r in results["driver"]] == [r[:2] for r in results["executors"]]
    got, want = _table(lakes["executors"]), _table(lakes["driver"])
    assert got == want and len(got) == 52
    assert got[0]["embedding"] == [0.0, -1.5, 0.0]  # insert-only left p0000 alone
    assert got[-1]["created_timestamp"] == T0
    # Exactly the contract's schema, read by delta-rs (and every Delta reader).
    path = str(lakes["executors"].path("image_embeddings"))
    assert DeltaTable(path).to_pyarrow_table().schema == contract("image_embeddings").schema()
    # The log's live files hold exactly the table's rows (rewritten files were removed).
    actions = pa.table(DeltaTable(path).get_add_actions(flatten=True)).to_pylist()
    assert sum(a["num_records"] for a in actions) == 52
    # delta-rs can go on merging into an executor-written table.
    lakes["executors"].merge("image_embeddings", pa.Table.from_pylist(_rows(1, start=99)))
    assert len(_table(lakes["executors"])) == 53


def test_nothing_is_visible_before_the_commit_and_reads_use_the_snapshot(spark, tmp_path):
    from pyspark.sql import functions as F

    from atelier import lake_spark
    from atelier.contracts import contract

    lake = _lake(tmp_path, spark, "executors")
    lake.merge("image_embeddings", _frame(spark, _rows(20)))
    lake.merge("image_embeddings", _frame(spark, _rows(20, scale=3.0, at=T1)))  # all changed
    path = lake.path("image_embeddings")
    # A write killed before its commit: files in the folder, none in the log.
    _frame(spark, _rows(20, start=500)).write.parquet(str(path / "w-killed"))
    assert list((path / "w-killed").glob("*.parquet"))
    df = lake.read_spark("image_embeddings")
    assert df.count() == 20  # neither the stray files nor the removed ones
    assert df.where(F.col("event_timestamp") == F.lit(T1)).count() == 20
    first = lake_spark.read_snapshot(spark, path, contract("image_embeddings"), version=0)
    assert first.where("embedding[0] = 3.0").count() == 1  # version 0: p0001 as first written
    ids = {r["product_id"] for r in lake.read_spark("image_embeddings", ["product_id"]).collect()}
    assert ids == {f"p{i:04d}" for i in range(20)}
    assert sorted(_table(lake), key=lambda r: r["product_id"])[3]["embedding"] == [9.0, -1.5, 3.0]
    assert not math.isnan(df.agg(F.sum(F.col("embedding")[0])).first()[0])


def test_a_bad_batch_is_refused_before_anything_is_written(spark, tmp_path):
    lake = _lake(tmp_path, spark, "executors")
    lake.merge("image_embeddings", _frame(spark, _rows(5)))
    twice = _rows(3) + _rows(1)
    with pytest.raises(ValueError, match="1 keys appear more than once"):
        lake.merge("image_embeddings", _frame(spark, twice))
    no_hash = [{**r, "content_hash": None} for r in _rows(2)]
    with pytest.raises(ValueError, match=r"nulls in non-nullable columns \['content_hash'\]"):
        lake.merge("image_embeddings", _frame(spark, no_hash))
    with pytest.raises(ValueError, match=r"lacks contract columns \['weights'\]"):
        lake.merge("image_embeddings", _frame(spark, _rows(2)).drop("weights"))
    assert lake.latest_version("image_embeddings") == 0
    assert len(list(lake.path("image_embeddings").glob("w-*"))) == 1  # the first merge's


def test_overwrite_by_executors_replaces_the_contents(spark, tmp_path):
    lake = _lake(tmp_path, spark, "executors")
    lake.overwrite("image_embeddings", _frame(spark, _rows(10)))
    lake.overwrite("image_embeddings", _frame(spark, _rows(4, start=100)))
    assert [r["product_id"] for r in _table(lake)] == ["p0100", "p0101", "p0102", "p0103"]
    assert lake.latest_version("image_embeddings") == 1


def test_an_empty_batch_creates_an_empty_table_and_large_ones_few_files(spark, tmp_path):
    from atelier import lake_spark

    lake = _lake(tmp_path, spark, "executors")
    res = lake.merge("image_embeddings", _frame(spark, []))
    assert (res.inserted, res.updated, res.version) == (0, 0, 0)
    assert lake.read_arrow("image_embeddings").num_rows == 0
    # 12 partitions of new rows, fewer than ROWS_PER_FILE of them: one file.
    lake.merge("image_embeddings", _frame(spark, _rows(30)).repartition(12))
    assert lake_spark.ROWS_PER_FILE > 30
    assert len(list(lake.path("image_embeddings").glob("w-*/*.parquet"))) == 1
    # Only new keys: no file holds any of them, nothing is rewritten.
    res = lake.merge("image_embeddings", _frame(spark, _rows(5, start=500)))
    assert (res.inserted, res.updated) == (5, 0)
    assert lake.read_arrow("image_embeddings").num_rows == 35
