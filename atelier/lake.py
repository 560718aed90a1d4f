"""Lake I/O: the only code that knows where tables live and how Delta is written.

Two writers, one protocol on disk:
- **delta-spark** (`format("delta")`) when its jars are on the Spark classpath — the cluster path.
  Provide them with `spark.packages` (needs network: `io.delta:delta-spark_2.13:<ver>`) or
  `spark.jars` (local jar files) in the settings.
- **deltalake** (delta-rs) from Arrow otherwise — the embedded default here, where Maven Central
  is unreachable. Reads always go through the table's current snapshot, never loose Parquet.

Merges upsert by the contract's key and only rewrite rows whose values changed, so a rerun on the
same input commits nothing (the Delta version stays put).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atelier.contracts import TableContract, contract
from atelier.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeResult:
    """What one merge did; `version` is the table version after it (None: table absent)."""

    table: str
    inserted: int
    updated: int
    version: int | None

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated)


class Lake:
    """Delta tables under `settings.lake_dir`, one folder per table."""

    def __init__(self, settings: Settings, spark: SparkSession | None = None):
        self.settings = settings
        self.root = settings.lake_dir
        self.spark = spark
        self._delta_spark: bool | None = None

    # -- locations -------------------------------------------------------------------------
    def path(self, table: str) -> Path:
        return self.root / table

    def exists(self, table: str) -> bool:
        return (self.path(table) / "_delta_log").is_dir()

    def version(self, table: str) -> int | None:
        """Current Delta version of `table`, or None when it does not exist yet."""
        if not self.exists(table):
            return None
        from deltalake import DeltaTable

        return DeltaTable(str(self.path(table))).version()

    @property
    def uses_delta_spark(self) -> bool:
        """True when a Spark session with delta-spark's classes is attached."""
        if self._delta_spark is None:
            from atelier.spark import has_delta_spark

            self._delta_spark = self.spark is not None and has_delta_spark(self.spark)
        return self._delta_spark

    # -- reads -----------------------------------------------------------------------------
    def read_arrow(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """Current snapshot of `table` as Arrow (empty with the contract schema if absent)."""
        if not self.exists(table):
            schema = contract(table).schema()
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        from deltalake import DeltaTable

        return DeltaTable(str(self.path(table))).to_pyarrow_table(columns=columns)

    def read_pandas(self, table: str, columns: list[str] | None = None) -> pd.DataFrame:
        return self.read_arrow(table, columns).to_pandas()

    def read_spark(self, table: str, columns: list[str] | None = None) -> DataFrame:
        """`table` as a Spark DataFrame (delta-spark when available, else via Arrow)."""
        spark = self._require_spark()
        if self.uses_delta_spark and self.exists(table):
            df = spark.read.format("delta").load(str(self.path(table)))
            return df.select(*columns) if columns else df
        arrow = self.read_arrow(table, columns)
        if arrow.num_rows == 0:
            c = contract(table)
            ddl = (
                c.spark_ddl()
                if not columns
                else ", ".join(
                    f"`{col.name}` {_spark_type(col.type)}"
                    for col in c.columns
                    if col.name in columns
                )
            )
            return spark.createDataFrame([], ddl)
        return spark.createDataFrame(arrow)

    # -- writes ----------------------------------------------------------------------------
    def overwrite(self, table: str, data: Any) -> int:
        """Replace `table`'s contents with `data` (a new Delta version); returns the version."""
        c = contract(table)
        if self.uses_delta_spark and _is_spark(data):
            data.select(*c.column_names).write.format("delta").mode("overwrite").option(
                "overwriteSchema", "true"
            ).save(str(self.path(table)))
        else:
            from deltalake import write_deltalake

            write_deltalake(str(self.path(table)), self._to_arrow(c, data), mode="overwrite")
        return self.version(table)  # type: ignore[return-value]

    def merge(self, table: str, data: Any, *, update: bool = True) -> MergeResult:
        """Upsert `data` into `table` by the contract key.

        Rows whose key exists and whose values differ are updated (unless `update=False`:
        insert-only, used for append-style tables such as quarantine); new keys are inserted;
        nothing is deleted. Creates the table on first write.
        """
        c = contract(table)
        if self.uses_delta_spark and _is_spark(data):
            return self._merge_spark(c, data, update)
        arrow = self._to_arrow(c, data)
        if not self.exists(table):
            from deltalake import write_deltalake

            self.path(table).parent.mkdir(parents=True, exist_ok=True)
            write_deltalake(str(self.path(table)), arrow, mode="error")
            return MergeResult(table, arrow.num_rows, 0, self.version(table))
        from deltalake import DeltaTable

        dt = DeltaTable(str(self.path(table)))
        on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in c.key)
        builder = dt.merge(arrow, predicate=on, source_alias="s", target_alias="t")
        if update:
            differs = " OR ".join(
                f"(t.`{col}` IS DISTINCT FROM s.`{col}`)"
                for col in c.column_names
                if col not in c.key
            )
            builder = builder.when_matched_update_all(predicate=differs or None)
        metrics = builder.when_not_matched_insert_all().execute()
        return MergeResult(
            table,
            int(metrics.get("num_target_rows_inserted", 0)),
            int(metrics.get("num_target_rows_updated", 0)),
            self.version(table),
        )

    def _merge_spark(self, c: TableContract, df: DataFrame, update: bool) -> MergeResult:
        from delta.tables import DeltaTable as SparkDeltaTable

        spark = self._require_spark()
        path = str(self.path(c.name))
        df = df.select(*c.column_names)
        if not self.exists(c.name):
            df.write.format("delta").save(path)
            return MergeResult(c.name, df.count(), 0, self.version(c.name))
        on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in c.key)
        target = SparkDeltaTable.forPath(spark, path)
        builder = target.alias("t").merge(df.alias("s"), on)
        if update:
            differs = " OR ".join(
                f"NOT (t.`{col}` <=> s.`{col}`)" for col in c.column_names if col not in c.key
            )
            builder = builder.whenMatchedUpdateAll(condition=differs or None)
        builder.whenNotMatchedInsertAll().execute()
        last = target.history(1).select("operationMetrics").collect()[0][0] or {}
        return MergeResult(
            c.name,
            int(last.get("numTargetRowsInserted", 0)),
            int(last.get("numTargetRowsUpdated", 0)),
            self.version(c.name),
        )

    # -- helpers ---------------------------------------------------------------------------
    def _require_spark(self) -> SparkSession:
        if self.spark is None:
            raise RuntimeError("this lake operation needs a SparkSession: Lake(settings, spark)")
        return self.spark

    @staticmethod
    def _to_arrow(c: TableContract, data: Any) -> pa.Table:
        """Arrow table with exactly the contract's columns and types (raises on a mismatch)."""
        import pyarrow as pa

        if _is_spark(data):
            data = data.select(*c.column_names).toArrow()
        elif not isinstance(data, pa.Table):
            data = pa.Table.from_pandas(data, preserve_index=False)
        missing = [n for n in c.column_names if n not in data.column_names]
        if missing:
            raise ValueError(f"{c.name}: data lacks contract columns {missing}")
        data = data.select(c.column_names)
        schema = c.schema()
        nulls = [f.name for f in schema if not f.nullable and data.column(f.name).null_count > 0]
        if nulls:
            raise ValueError(f"{c.name}: nulls in non-nullable columns {nulls}")
        return data.cast(schema)


def _is_spark(data: Any) -> bool:
    return type(data).__module__.startswith("pyspark.sql")


def _spark_type(name: str) -> str:
    from atelier.contracts import _SPARK

    return _SPARK[name]
