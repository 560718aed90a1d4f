"""Delta writes by Spark executors, committed by delta-rs: the lake at cluster scale without
delta-spark's jars.

A merge of a Spark DataFrame never funnels its rows through the driver:
1. the executors find which of the target's snapshot files (the file list of its current
   version, never the folder's loose Parquet, which holds uncommitted and removed files too)
   hold a key of the batch, reading only the key columns; they join the batch with those
   files' rows on the contract key and find the new keys and the changed rows;
2. they write the new rows, and the rows of every target file holding a changed row (that file
   rewritten whole, copy-on-write), as Parquet into a fresh `w-<id>/` folder of the table;
3. the driver reads only those files' footers and commits, in one delta-rs transaction, an add
   action for each new file and a remove action for each rewritten one.
Until step 3 nothing is visible: a killed write leaves unreferenced files (vacuum removes them)
and the table as it was. The table stays ACID and readable by delta-rs, DuckDB and delta-spark.

The driver must see the table folder (local disk or a mount shared with the workers, as the
scale profile's lake is); object stores would list the new files through pyarrow's filesystem
instead (not done).
"""

from __future__ import annotations

import json
import time
import uuid
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

    from atelier.contracts import TableContract

FILE = "_atelier_file"  # which snapshot file a target row came from
_TARGET = "_t_"  # prefix of the target's columns in the join
# Rows per written file: ~100 MB of 512-float embeddings; each file one executor task.
ROWS_PER_FILE = 50_000


def snapshot_files(path: Path, version: int | None = None) -> dict[str, str]:
    """The files of `path`'s snapshot at `version` (default: latest): absolute path -> the
    path the Delta log names it by."""
    from deltalake import DeltaTable

    return _files(DeltaTable(str(path), version=version), path)


def read_snapshot(
    spark: SparkSession,
    path: Path,
    c: TableContract,
    version: int | None = None,
    with_file: bool = False,
) -> DataFrame:
    """`path`'s rows at `version` read by the executors from the snapshot's files, with the
    contract's schema (and the source file's path in FILE when `with_file`)."""
    return _read_files(spark, snapshot_files(path, version), c, with_file)


def _read_files(spark: SparkSession, files, c: TableContract, with_file: bool) -> DataFrame:
    """The rows of these Parquet files of the table (none: an empty frame), contract schema."""
    from pyspark.sql import functions as F

    if files:
        df = spark.read.schema(c.spark_ddl()).parquet(*sorted(files))
    else:
        df = spark.createDataFrame([], c.spark_ddl())
    return df.withColumn(FILE, F.input_file_name()) if with_file else df


def contract_columns(c: TableContract, df: DataFrame) -> DataFrame:
    """`df` with exactly the contract's columns, cast to its types (ValueError: one missing)."""
    from pyspark.sql import functions as F

    from atelier.contracts import _SPARK

    missing = [n for n in c.column_names if n not in df.columns]
    if missing:
        raise ValueError(f"{c.name}: data lacks contract columns {missing}")
    return df.select(*[F.col(f"`{col.name}`").cast(_SPARK[col.type]) for col in c.columns])


def checked_rows(c: TableContract, df: DataFrame) -> int:
    """`df`'s row count; ValueError on a null in a non-nullable column or a repeated key."""
    from pyspark.sql import functions as F

    required = [col.name for col in c.columns if not col.nullable]
    per_key = df.groupBy(*c.key).agg(
        F.count("*").alias("_n"),
        *[F.sum(F.col(n).isNull().cast("long")).alias(f"_null_{n}") for n in required],
    )
    totals = per_key.agg(
        F.sum("_n").alias("_rows"),
        F.sum((F.col("_n") > 1).cast("long")).alias("_repeated"),
        *[F.sum(f"_null_{n}").alias(f"_null_{n}") for n in required],
    ).first()
    bad = sorted(n for n in required if totals[f"_null_{n}"])
    if bad:
        raise ValueError(f"{c.name}: nulls in non-nullable columns {bad}")
    if totals["_repeated"]:
        raise ValueError(f"{c.name}: {totals['_repeated']} keys appear more than once in the batch")
    return int(totals["_rows"] or 0)


def merge(path: Path, c: TableContract, df: DataFrame, update: bool = True) -> tuple[int, int]:
    """Upsert `df` into the Delta table at `path` by `c.key` (see the module docstring);
    (inserted, updated). Creates the table on its first write; commits nothing when nothing
    changed; with `update=False` matched rows are left alone (insert-only)."""
    from deltalake.transaction import create_table_with_add_actions
    from pyspark import StorageLevel

    spark = df.sparkSession
    # Computed once (the batch may be an expensive pipeline), read by every step below.
    df = contract_columns(c, df).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n_rows = checked_rows(c, df)
        if not (path / "_delta_log").is_dir():
            adds, rows = _write_files(spark, path, df, n_rows) if n_rows else ([], 0)
            # An empty batch still creates the (empty) table, as the Arrow path does.
            create_table_with_add_actions(str(path), _delta_schema(c), adds, mode="error")
            return rows, 0
        return _merge_into(spark, path, c, df, update) if n_rows else (0, 0)
    finally:
        df.unpersist()


def _merge_into(
    spark: SparkSession, path: Path, c: TableContract, df: DataFrame, update: bool
) -> tuple[int, int]:
    from deltalake import DeltaTable
    from deltalake.transaction import RemoveAction
    from pyspark.sql import functions as F

    dt = DeltaTable(str(path))
    files = _files(dt, path)  # the snapshot this merge reads and commits against
    key = list(c.key)
    # Which files hold a key of the batch: the key columns only (Parquet reads no others).
    holding = []
    if files:
        located = _read_files(spark, files, c, with_file=True).select(*key, FILE)
        hits = df.select(*key).join(located, key, "inner").select(FILE).distinct()
        holding = sorted(_local(r[FILE]) for r in hits.collect())
    rest = [n for n in c.column_names if n not in key]
    target = _read_files(spark, holding, c, with_file=True)
    theirs = target.select(*key, FILE, *[F.col(n).alias(_TARGET + n) for n in rest])
    joined = df.join(theirs, key, "left").cache()
    try:
        matched = F.col(FILE).isNotNull()
        differs = reduce(
            lambda a, b: a | b,
            [~F.col(n).eqNullSafe(F.col(_TARGET + n)) for n in rest],
            F.lit(False),
        )
        inserts = joined.where(~matched).select(*c.column_names)
        updates = joined.where(matched & differs).select(*c.column_names, FILE)
        n_inserted = inserts.count()
        touched = [r[FILE] for r in updates.select(FILE).distinct().collect()] if update else []
        n_updated = updates.count() if touched else 0
        if not (n_inserted or n_updated):
            return 0, 0
        out = inserts
        if touched:
            # A rewritten file keeps its other rows; the changed ones come from the batch.
            kept = target.where(F.col(FILE).isin(touched)).join(
                updates.select(*key), key, "left_anti"
            )
            out = out.unionByName(kept.select(*c.column_names)).unionByName(
                updates.select(*c.column_names)
            )
        adds, _ = _write_files(spark, path, out, n_inserted + n_updated, len(touched))
        now = int(time.time() * 1000)
        removes = [
            RemoveAction(path=files[_local(f)], data_change=True, deletion_timestamp=now)
            for f in touched
        ]
        dt.create_write_transaction([*adds, *removes], mode="append", schema=dt.schema())
        return n_inserted, n_updated
    finally:
        joined.unpersist()


def overwrite(path: Path, c: TableContract, df: DataFrame) -> None:
    """Replace the table's contents with `df` (executors write; one commit)."""
    from deltalake import DeltaTable
    from deltalake.transaction import create_table_with_add_actions
    from pyspark import StorageLevel

    spark = df.sparkSession
    # Computed once: counted and checked, then written.
    df = contract_columns(c, df).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        adds, _ = _write_files(spark, path, df, checked_rows(c, df))
    finally:
        df.unpersist()
    if not (path / "_delta_log").is_dir():
        create_table_with_add_actions(str(path), _delta_schema(c), adds, mode="error")
        return
    dt = DeltaTable(str(path))
    dt.create_write_transaction(adds, mode="overwrite", schema=c.schema())


def _write_files(
    spark: SparkSession, path: Path, df: DataFrame, new_rows: int, rewritten: int = 0
) -> tuple[list, int]:
    """Executors write `df` as Parquet into a new folder of the table; the add actions of its
    non-empty files (stats from the footers) and the rows written. At most one file per
    ROWS_PER_FILE new rows, plus one per rewritten file: small batches stay few files."""
    import pyarrow.parquet as pq
    from deltalake.transaction import AddAction

    files = max(1, -(-new_rows // ROWS_PER_FILE) + rewritten)
    if files < df.rdd.getNumPartitions():
        # A shuffle, not coalesce: coalesce would also narrow the work before the write.
        df = df.repartition(files)
    folder = f"w-{uuid.uuid4().hex}"
    # Delta's timestamps are INT64 microseconds (Spark's default is the legacy INT96).
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    df.write.mode("errorifexists").parquet(str(path / folder))
    adds, rows = [], 0
    for f in sorted((path / folder).glob("*.parquet")):
        n = pq.read_metadata(f).num_rows
        if not n:
            f.unlink()  # an empty partition's file: nothing to commit
            continue
        stat = f.stat()
        adds.append(
            AddAction(
                path=f"{folder}/{f.name}",
                size=stat.st_size,
                partition_values={},
                modification_time=int(stat.st_mtime * 1000),
                data_change=True,
                stats=json.dumps({"numRecords": n}),
            )
        )
        rows += n
    return adds, rows


def _files(dt, path: Path) -> dict[str, str]:
    """The snapshot's files: absolute path -> the path its log names it by."""
    names = dt.get_add_actions(flatten=True).column("path").to_pylist()
    return {_local(str(path / unquote(rel))): rel for rel in names}


def _delta_schema(c: TableContract):
    from deltalake import Schema

    return Schema.from_arrow(c.schema())


def _local(uri: str) -> str:
    """A file URI or path as a plain absolute path (what input_file_name() and the log give
    differ in scheme and escaping)."""
    parsed = urlparse(uri)
    return str(Path(unquote(parsed.path if parsed.scheme == "file" else uri)).resolve())
