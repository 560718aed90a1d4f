"""Lake: Delta writes through delta-rs, merge by key, snapshot reads, the delta-spark path."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atelier.lake import Lake

pytestmark = pytest.mark.data


def _labels(rows):
    return pa.table(
        {
            "product_id": [r[0] for r in rows],
            "attribute": [r[1] for r in rows],
            "value": [r[2] for r in rows],
        }
    )


def _rows(lake, table="product_labels"):
    return sorted(tuple(r.values()) for r in lake.read_arrow(table).to_pylist())


def test_merge_upserts_by_key_and_skips_unchanged_rows(settings):
    lake = Lake(settings)
    r = lake.merge("product_labels", _labels([("1", "colour", "Red"), ("2", "colour", "Blue")]))
    assert (r.inserted, r.updated, r.version) == (2, 0, 0)
    r = lake.merge("product_labels", _labels([("1", "colour", "Red"), ("2", "colour", "Blue")]))
    assert (r.inserted, r.updated, r.version, r.changed) == (0, 0, 0, False)
    r = lake.merge("product_labels", _labels([("2", "colour", "Navy"), ("2", "pattern", "Dot")]))
    assert (r.inserted, r.updated, r.version) == (1, 1, 1)
    assert _rows(lake) == [("1", "colour", "Red"), ("2", "colour", "Navy"), ("2", "pattern", "Dot")]


def test_insert_only_merge_keeps_the_first_row(settings):
    lake = Lake(settings)
    lake.merge("product_labels", _labels([("1", "colour", "Red")]), update=False)
    r = lake.merge("product_labels", _labels([("1", "colour", "Blue")]), update=False)
    assert (r.inserted, r.updated) == (0, 0)
    assert _rows(lake) == [("1", "colour", "Red")]


def test_reads_the_snapshot_not_loose_parquet_files(settings):
    lake = Lake(settings)
    lake.overwrite("product_labels", _labels([("1", "colour", "Red")]))
    lake.overwrite("product_labels", _labels([("9", "colour", "Green")]))
    files = list(lake.path("product_labels").glob("*.parquet"))
    loose = pa.concat_tables([pq.read_table(f) for f in files])
    assert loose.num_rows == 2  # the stale file is still on disk ...
    assert _rows(lake) == [("9", "colour", "Green")]  # ... and never read
    assert lake.version("product_labels") == 1


def test_contract_is_enforced(settings):
    lake = Lake(settings)
    with pytest.raises(ValueError, match=r"lacks contract columns \['value'\]"):
        lake.merge("product_labels", pa.table({"product_id": ["1"], "attribute": ["a"]}))
    with pytest.raises(ValueError, match=r"nulls in non-nullable columns \['value'\]"):
        lake.merge("product_labels", _labels([("1", "colour", None)]))
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        lake.merge("nope", _labels([]))


def test_absent_table_reads_empty_with_contract_schema(settings):
    lake = Lake(settings)
    t = lake.read_arrow("interactions")
    assert t.num_rows == 0 and t.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert lake.version("interactions") is None


@pytest.mark.spark
def test_delta_spark_path_when_jars_present(spark, settings):
    """The cluster path: format("delta") merges, delta-rs reads the same protocol back."""
    from atelier.spark import has_delta_spark

    if not has_delta_spark(spark):
        pytest.skip(
            "delta-spark jars are not on the Spark classpath (Maven Central is "
            "unreachable here); set spark.jars or spark.packages in the settings to run "
            "the delta-spark path"
        )
    lake = Lake(settings, spark)
    df = spark.createDataFrame(
        [("1", "colour", "Red")], "product_id string, attribute string, value string"
    )
    r = lake.merge("product_labels", df)
    assert r.inserted == 1
    df2 = spark.createDataFrame(
        [("1", "colour", "Blue"), ("2", "colour", "Red")],
        "product_id string, attribute string, value string",
    )
    r = lake.merge("product_labels", df2)
    assert (r.inserted, r.updated) == (1, 1)
    assert _rows(lake) == [("1", "colour", "Blue"), ("2", "colour", "Red")]


@pytest.mark.spark
def test_spark_frames_round_trip_through_delta_rs(spark, settings):
    lake = Lake(settings, spark)
    lake.merge("product_labels", _labels([("1", "colour", "Red")]))
    df = lake.read_spark("product_labels")
    assert [tuple(r) for r in df.collect()] == [("1", "colour", "Red")]
    assert lake.read_spark("customers").count() == 0  # absent: empty with the contract schema
