"""Lake I/O: the only code that knows where tables live and how Delta is written.

Three writers, one protocol on disk:
- **delta-spark** (`format("delta")`) when its jars are on the Spark classpath. Provide them with
  `spark.packages` (needs network: `io.delta:delta-spark_2.13:<ver>`) or `spark.jars` (local jar
  files) in the settings.
- **Spark executors + delta-rs commit** for Spark DataFrames otherwise, on a cluster
  (`lake.spark_io` "auto", the default, or "executors"; atelier/lake_spark.py): executors
  write the Parquet files of a merge in parallel, the driver commits them in one delta-rs
  transaction — the cluster path where Maven Central is unreachable, as here.
- **deltalake** (delta-rs) from Arrow on the driver for Arrow and pandas data, and for Spark
  data under `local[*]` ("auto") or with `lake.spark_io` "driver".
Reads always go through a published snapshot (its file list), never loose Parquet.

Merges upsert by the contract's key and only rewrite rows whose values changed, so a rerun on the
same input commits nothing (the Delta version stays put).

**Consistent across tables.** Delta commits one table at a time, so a job that publishes several
tables (ingest: products, customers, labels, images, interactions) could leave them out of step
if it died between two commits. Readers therefore do not read a table's latest commit but the
version the last *complete* publication named: `<lake>/_runs/published.json`, written last
(atomically, under a short lock) by `Lake.publishing(job, run_id)` once every table of the run
is committed, beside the run's own record `<lake>/_runs/<job>-<run_id>.json`. A crash between
commits is invisible to readers (they keep the previous versions); a rerun merges nothing new
and publishes the versions, completing it. A merge outside `publishing` is its own one-table
run. Tables never published (older workdirs) are read at their latest version.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atelier.contracts import ALL, TableContract, contract
from atelier.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# Fault injection for the crash tests: ATELIER_FAILPOINT=after_commit:<table>[:<n>] kills the
# process (SIGKILL, as `kill -9` would) right after its n-th commit (default first) of that
# table, before anything else.
FAILPOINT = "ATELIER_FAILPOINT"
# The lake's own copy of every ingested image, by content hash: moving or deleting a source
# folder breaks nothing. product_images.path is stored relative to the lake root.
IMAGES_DIR = "_images"
_commits: dict[str, int] = {}


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
        self._pending: dict[str, int] | None = None  # tables committed inside `publishing`

    # -- locations -------------------------------------------------------------------------
    def path(self, table: str) -> Path:
        return self.root / table

    def exists(self, table: str) -> bool:
        """Whether readers see `table`: on disk and published (see `version`)."""
        return self.version(table) is not None

    def on_disk(self, table: str) -> bool:
        """Whether `table` has any commit, published or not (what writers go by)."""
        return (self.path(table) / "_delta_log").is_dir()

    def version(self, table: str) -> int | None:
        """The Delta version readers see: the last complete publication's (see the module
        docstring); None for a table absent or never published. A lake written before
        publications existed (no manifest) is read at its latest commits."""
        if self._pending and table in self._pending:
            return self._pending[table]  # a publishing run reads its own writes
        latest = self.latest_version(table)
        if latest is None:
            return None
        manifest = self._manifest()
        if manifest is None:
            return latest
        entry = manifest.get(table)
        if entry is None:
            return None  # only unpublished commits: a first run that has not finished
        if entry["version"] > latest:  # the table was recreated under the manifest
            log.warning("%s: published version %s > latest %s", table, entry["version"], latest)
            return latest
        return entry["version"]

    def latest_version(self, table: str) -> int | None:
        """The table's latest commit, published or not (what writers merge into)."""
        if not self.on_disk(table):
            return None
        from deltalake import DeltaTable

        return DeltaTable(str(self.path(table))).version()

    def published(self) -> dict[str, dict]:
        """{table: {version, job, run_id, published_at}} of the last complete publications."""
        return self._manifest() or {}

    def unpublished(self) -> dict[str, tuple[int | None, int]]:
        """{table: (published or None, latest)} for tables with commits readers do not see
        yet: a run still publishing, or one that died between its commits (rerun it)."""
        manifest = self._manifest()
        if manifest is None:
            return {}
        out = {}
        for table in ALL:
            latest = self.latest_version(table)
            seen = manifest.get(table, {}).get("version")
            if latest is not None and (seen is None or latest > seen):
                out[table] = (seen, latest)
        return out

    @contextmanager
    def publishing(self, job: str, run_id: str) -> Iterator[dict[str, int]]:
        """Tables merged or overwritten in the block become visible to readers together, when
        the block ends without an error; yields {table: version} as it fills."""
        if self._pending is not None:
            raise RuntimeError("Lake.publishing does not nest")
        self._pending = pending = {}
        try:
            yield pending
        finally:
            self._pending = None
        self._publish(job, run_id, pending)

    @property
    def uses_delta_spark(self) -> bool:
        """True when a Spark session with delta-spark's classes is attached."""
        if self._delta_spark is None:
            from atelier.spark import has_delta_spark

            self._delta_spark = self.spark is not None and has_delta_spark(self.spark)
        return self._delta_spark

    # -- reads -----------------------------------------------------------------------------
    def read_arrow(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """Published snapshot of `table` as Arrow (empty with the contract schema if absent)."""
        version = self.version(table)  # once: each call opens the Delta log
        if version is None:
            schema = contract(table).schema()
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        from deltalake import DeltaTable

        dt = DeltaTable(str(self.path(table)), version=version)
        return self._absolute_paths(table, dt.to_pyarrow_table(columns=columns))

    def read_pandas(self, table: str, columns: list[str] | None = None) -> pd.DataFrame:
        return self.read_arrow(table, columns).to_pandas()

    def read_spark(self, table: str, columns: list[str] | None = None) -> DataFrame:
        """Published snapshot of `table` as a Spark DataFrame, read by the executors
        (delta-spark when available, else the snapshot's files; via Arrow on the driver when
        `lake.spark_io` is "driver")."""
        spark = self._require_spark()
        version = self.version(table)
        executors = self._executor_io(spark)
        if version is not None and (self.uses_delta_spark or executors):
            if self.uses_delta_spark:
                reader = spark.read.format("delta").option("versionAsOf", version)
                df = reader.load(str(self.path(table)))
            else:
                from atelier import lake_spark

                df = lake_spark.read_snapshot(spark, self.path(table), contract(table), version)
            if table == "product_images":
                from pyspark.sql import functions as F

                path = F.col("path")
                absolute = F.concat(F.lit(f"{self.root.resolve()}/"), path)
                df = df.withColumn("path", F.when(path.startswith("/"), path).otherwise(absolute))
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
        self._adopt()
        if self.uses_delta_spark and _is_spark(data):
            data.select(*c.column_names).write.format("delta").mode("overwrite").option(
                "overwriteSchema", "true"
            ).save(str(self.path(table)))
        elif _is_spark(data) and self._executor_io(data.sparkSession):
            from atelier import lake_spark

            lake_spark.overwrite(self.path(table), c, data)
        else:
            from deltalake import write_deltalake

            write_deltalake(str(self.path(table)), self._to_arrow(c, data), mode="overwrite")
        return self._committed(table)

    def merge(self, table: str, data: Any, *, update: bool = True) -> MergeResult:
        """Upsert `data` into `table` by the contract key.

        Rows whose key exists and whose values differ are updated (unless `update=False`:
        insert-only, used for append-style tables such as quarantine); new keys are inserted;
        nothing is deleted. Creates the table on first write.
        """
        c = contract(table)
        self._adopt()
        if self.uses_delta_spark and _is_spark(data):
            return self._merge_spark(c, data, update)
        if _is_spark(data) and self._executor_io(data.sparkSession):
            from atelier import lake_spark

            self.path(table).parent.mkdir(parents=True, exist_ok=True)
            inserted, updated = lake_spark.merge(self.path(table), c, data, update)
            return MergeResult(table, inserted, updated, self._committed(table))
        arrow = self._to_arrow(c, data)
        if not self.on_disk(table):
            from deltalake import write_deltalake

            self.path(table).parent.mkdir(parents=True, exist_ok=True)
            write_deltalake(str(self.path(table)), arrow, mode="error")
            return MergeResult(table, arrow.num_rows, 0, self._committed(table))
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
            self._committed(table),
        )

    def _merge_spark(self, c: TableContract, df: DataFrame, update: bool) -> MergeResult:
        from delta.tables import DeltaTable as SparkDeltaTable

        spark = self._require_spark()
        path = str(self.path(c.name))
        df = df.select(*c.column_names)
        if not self.on_disk(c.name):
            df.write.format("delta").save(path)
            return MergeResult(c.name, df.count(), 0, self._committed(c.name))
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
            self._committed(c.name),
        )

    def delete(self, table: str, keys: pa.Table) -> int:
        """Delete the rows of `table` whose contract key is one of `keys`' rows (columns: the
        key); returns how many went. One commit (none when nothing matches)."""
        c = contract(table)
        if not self.on_disk(table) or keys.num_rows == 0:
            return 0
        self._adopt()
        from deltalake import DeltaTable

        def literal(value) -> str:
            return "'" + str(value).replace("'", "''") + "'"

        rows = keys.select(list(c.key)).to_pylist()
        if len(c.key) == 1:
            k = c.key[0]
            predicate = f"`{k}` IN ({', '.join(literal(r[k]) for r in rows)})"
        else:
            predicate = " OR ".join(
                "(" + " AND ".join(f"`{k}` = {literal(r[k])}" for k in c.key) + ")" for r in rows
            )
        metrics = DeltaTable(str(self.path(table))).delete(predicate)
        deleted = int(metrics.get("num_deleted_rows", 0))
        if deleted:
            self._committed(table)
        return deleted

    # -- publication -----------------------------------------------------------------------
    def _committed(self, table: str) -> int:
        """After a write: the latest version, published now or with the enclosing run."""
        version = self.latest_version(table)
        assert version is not None
        _failpoint(table)
        if self._pending is not None:
            self._pending[table] = version
        else:
            self._publish("write", "", {table: version})
        return version

    def _runs_dir(self) -> Path:
        return self.root / "_runs"

    def _published_path(self) -> Path:
        return self._runs_dir() / "published.json"

    def _manifest(self) -> dict[str, dict] | None:
        try:
            return json.loads(self._published_path().read_text())["tables"]
        except FileNotFoundError:
            return None

    def _adopt(self) -> None:
        """Before the first write through publications: a manifest naming every table already
        on disk at its latest version (a lake from before publications, complete as it is;
        empty for a new lake), so that from now on unpublished commits are never read."""
        if self._published_path().exists():
            return
        tables = {t: self.latest_version(t) for t in ALL}
        self._publish("adopt", "", {t: v for t, v in tables.items() if v is not None}, True)

    def _publish(
        self, job: str, run_id: str, versions: dict[str, int], always: bool = False
    ) -> None:
        """Record the run, then make its versions the ones readers see (written last)."""
        if not versions and not always:
            return
        runs = self._runs_dir()
        runs.mkdir(parents=True, exist_ok=True)
        at = datetime.now(UTC).isoformat(timespec="seconds")
        record = {"job": job, "run_id": run_id, "published_at": at, "tables": versions}
        if run_id:
            _write_atomic(runs / f"{job}-{run_id}.json", record)
        # Jobs of different stages publish concurrently: read-modify-write under a lock.
        with (runs / "published.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tables = self._manifest()
            if tables is None:
                tables = {}
            elif always:  # adopting: another process got there first
                return
            for table, version in versions.items():
                entry = {"version": version, "job": job, "run_id": run_id, "published_at": at}
                tables[table] = entry
            _write_atomic(self._published_path(), {"tables": tables})

    # -- helpers ---------------------------------------------------------------------------
    def _absolute_paths(self, table: str, data: pa.Table) -> pa.Table:
        """product_images paths as files: lake-relative ones joined to the lake root."""
        if table != "product_images" or "path" not in data.column_names:
            return data
        import pyarrow.compute as pc

        path = data["path"]
        root = f"{self.root.resolve()}/"
        joined = pc.binary_join_element_wise(root, path, "")
        absolute = pc.if_else(pc.starts_with(path, "/"), path, joined)
        return data.set_column(data.column_names.index("path"), "path", absolute)

    def _executor_io(self, spark: SparkSession) -> bool:
        """Whether Spark data is written and read by the executors (`lake.spark_io`)."""
        mode = self.settings.lake.spark_io
        if mode == "auto":
            return not spark.sparkContext.master.startswith("local")
        return mode == "executors"

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


def _failpoint(table: str) -> None:
    """SIGKILL this process when ATELIER_FAILPOINT names this commit (see FAILPOINT)."""
    point = os.environ.get(FAILPOINT, "")
    if not point.startswith(f"after_commit:{table}"):
        return
    _commits[table] = _commits.get(table, 0) + 1
    parts = point.split(":")
    if parts[1] == table and _commits[table] == (int(parts[2]) if len(parts) > 2 else 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _write_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _is_spark(data: Any) -> bool:
    return type(data).__module__.startswith("pyspark.sql")


def _spark_type(name: str) -> str:
    from atelier.contracts import _SPARK

    return _SPARK[name]
