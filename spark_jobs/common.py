"""What every Spark job shares: pure Spark helpers (DataFrame/Column in, DataFrame/Column out),
the worker log, the checked image reader, the report writer and the `spark-submit` entry."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expectations.gate import GateFailure

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from pyspark.sql import Column, DataFrame

    from atelier.lake import Lake
    from atelier.settings import Settings

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros_lit(t: datetime) -> Column:
    """Microseconds since the epoch of `t`, as a literal."""
    from pyspark.sql import functions as F

    return F.lit((t.astimezone(UTC) - EPOCH) // timedelta(microseconds=1))


def timestamp_lit(t: datetime) -> Column:
    """A TIMESTAMP literal that does not depend on the session or machine time zone."""
    from pyspark.sql import functions as F

    return F.timestamp_micros(micros_lit(t))


def changed_rows(new: DataFrame, existing: DataFrame, key: Sequence[str], now: datetime):
    """Rows of `new` that are absent from `existing` or differ from it, stamped
    created_timestamp = `now`. Unchanged rows are dropped, so they keep their old stamp and a
    rerun writes nothing."""
    from pyspark.sql import functions as F

    types = dict(existing.dtypes)
    new = new.select(*[F.col(c).cast(types[c]).alias(c) for c in new.columns])
    values = [c for c in new.columns if c not in key]
    old = existing.select(
        *key, *[F.col(c).alias(f"_old_{c}") for c in values], F.lit(True).alias("_exists")
    )
    same = F.lit(True)
    for c in values:
        same = same & F.col(c).eqNullSafe(F.col(f"_old_{c}"))
    return (
        new.join(old, list(key), "left")
        .where(F.col("_exists").isNull() | ~same)
        .select(*new.columns, timestamp_lit(now).alias("created_timestamp"))
    )


def with_event_us(shots: DataFrame, products: DataFrame) -> DataFrame:
    """`shots` with `_event_us`: their product's first_seen in epoch microseconds, 0 (the
    epoch) when unknown or the product is absent (image content holds from first_seen)."""
    from pyspark.sql import functions as F

    first = products.select("product_id", F.unix_micros("first_seen").alias("_event_us"))
    return shots.join(first, "product_id", "left").fillna({"_event_us": 0})


def quarantine_shots(
    lake: Lake, rows: DataFrame, table: str, run_id: str, now: datetime, log: logging.Logger
) -> None:
    """Append the bad shots of an image job's output for `table` to the quarantine table."""
    q = lake.merge("quarantine", shot_quarantine_rows(rows, table, run_id, now), update=False)
    log.info("quarantine: %d new rows (table version %s)", q.inserted, q.version)


def shot_quarantine_rows(rows: DataFrame, table: str, run_id: str, now: datetime) -> DataFrame:
    """Bad shots (`_reason` set) of an image job's output for `table` in the quarantine
    contract: source_file = image path, line = shot, record = the product_images key and hash
    as JSON."""
    from pyspark.sql import functions as F

    return rows.where("_reason IS NOT NULL").select(
        F.lit(table).alias("table"),
        F.col("path").alias("source_file"),
        F.col("shot").cast("long").alias("line"),
        F.col("_reason").alias("reason"),
        F.col("_detail").alias("detail"),
        F.to_json(F.struct("product_id", "shot", "content_hash")).alias("record"),
        F.lit(run_id).alias("run_id"),
        timestamp_lit(now).alias("quarantined_at"),
    )


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------
def worker_log(job: str, msg: str) -> None:
    """One line from a Python worker of `job` on stderr."""
    # Python workers have no logging set-up; stderr reaches the driver console in local mode
    # and the executor log on a cluster.
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} INFO atelier.{job}[worker {os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def partition_id() -> int:
    """The Spark partition this worker code runs for; -1 outside a task."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.partitionId() if ctx is not None else -1


def read_checked_image(
    path: str, content_hash: str, decode: Callable[[bytes], np.ndarray]
) -> tuple[np.ndarray | None, str | None, str | None]:
    """(`decode`d image, None, None), or (None, reason, detail) when the file cannot be used.

    Reasons: image_missing (cannot be read), image_corrupt (does not decode fully),
    image_changed (decodes, but its sha256 differs from product_images': re-run ingest).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, "image_missing", f"{path}: file not found"
    except OSError as e:
        return None, "image_missing", f"{path}: {e}"
    try:
        rgb = decode(data)
    except Exception as e:  # PIL raises many types for bad data
        return None, "image_corrupt", f"{path}: {type(e).__name__}: {e}"
    actual = hashlib.sha256(data).hexdigest()
    if actual != content_hash:
        return (
            None,
            "image_changed",
            f"{path}: sha256 {actual[:12]}… differs from product_images' {content_hash[:12]}…; "
            "re-run ingest",
        )
    return rgb, None, None


# ---------------------------------------------------------------------------------------------
# Driver side: reports and the spark-submit entry
# ---------------------------------------------------------------------------------------------
def new_run_id(now: datetime) -> str:
    """A run's id: its UTC start time, then 8 random hex digits (two runs in a second differ)."""
    import uuid

    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def save_report(settings: Settings, job: str, report: dict) -> Path:
    """Write `report` to reports/<job>/latest.json and, when it has a run_id, to
    reports/<job>/<run_id>.json too (the history); returns latest.json."""
    folder = settings.reports_dir / job
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=True)
    if report.get("run_id"):
        (folder / f"{report['run_id']}.json").write_text(text, encoding="utf-8")
    path = folder / "latest.json"
    path.write_text(text, encoding="utf-8")
    return path


def in_chunks(
    pending: DataFrame, size: int, keys: tuple[str, ...] = ("product_id", "shot")
) -> Iterator[tuple[int, int, DataFrame]]:
    """(index, count, rows) of `pending` in chunks of `size` rows in `keys` order, for a job
    that commits each chunk on its own (a kill loses at most one; the rerun resumes)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    n = pending.count()
    if n <= size:
        yield 0, 1, pending
        return
    # One ordered window over the keys only: metadata rows, cheap even for millions of shots.
    rank = F.row_number().over(Window.orderBy(*keys)) - 1
    numbered = pending.withColumn("_chunk", (rank / size).cast("int")).cache()
    total = -(-n // size)
    try:
        for i in range(total):
            yield i, total, numbered.where(F.col("_chunk") == i).drop("_chunk")
    finally:
        numbered.unpersist()


@dataclass(kw_only=True)
class ShotRunCounts:
    """The counts every image job (embed, colour) reports; each job's report adds its own."""

    images: int = 0  # rows of product_images
    skipped: int = 0  # already done with the same content and the same model / descriptor
    remaining: int = 0  # pending shots left for the next run (max_images)
    quarantined: dict[str, int] = field(default_factory=dict)
    inserted: int = 0
    updated: int = 0
    version: int | None = None
    published: bool = False
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0  # shots done / seconds of the Spark stage that does them
    chunks: int = 0  # committed on their own


def process_pending(
    pending: DataFrame,
    n_pending: int,
    max_images: int | None,
    chunk_images: int,
    report: Any,
    publish: Callable[[DataFrame], None],
    job: str,
) -> None:
    """The shared loop of the image jobs (embed, colour) over their `pending` shots: at most
    `max_images` of them in (product_id, shot) order (the rest counted in `report.remaining`
    for the next run), handed to `publish` in chunks of `chunk_images`, each committed on its
    own (`report.chunks` counts them). Unpersists `pending`."""
    log = logging.getLogger(f"atelier.{job}")
    try:
        if max_images is not None and n_pending > max_images:
            # A slice in key order, so that successive runs walk the catalogue without overlap.
            report.remaining = n_pending - max_images
            sliced = pending.orderBy("product_id", "shot").limit(max_images).cache()
            pending.unpersist()
            pending = sliced
            log.info("%d shots now (max_images), %d left", max_images, report.remaining)
        if n_pending:
            for i, total, chunk in in_chunks(pending, chunk_images):
                publish(chunk)
                report.chunks = i + 1
                log.info("chunk %d/%d committed", i + 1, total)
    finally:
        pending.unpersist()


def add_counts(into: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """`into` plus `more`, key by key, in key order (a run's counts over its chunks)."""
    out = dict(into)
    for key, n in more.items():
        out[key] = out.get(key, 0) + n
    return dict(sorted(out.items()))


def finish_shot_run(
    settings: Settings, job: str, report: Any, t0: float, published: bool, done: str
) -> dict:
    """Stamp (seconds, published), save and log the report of an image job (`embed`,
    `colour`): a dataclass whose field `done` counts the shots it wrote. Returns it as a dict."""
    from dataclasses import asdict

    report.seconds = round(time.time() - t0, 1)
    report.published = published
    save_report(settings, job, asdict(report))
    logging.getLogger(f"atelier.{job}").info(
        "done in %.1fs: %d %s, %d skipped, %d quarantined",
        report.seconds,
        getattr(report, done),
        done,
        report.skipped,
        sum(report.quarantined.values()),
    )
    return asdict(report)


def job_parser(script: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of `spark-submit spark_jobs/<script>`, with --workdir."""
    p = argparse.ArgumentParser(prog=f"spark_jobs/{script}", description=doc.split("\n")[0])
    p.add_argument("--workdir", type=Path)
    return p


def run_job(
    workdir: Path | None,
    run: Callable[[Settings], Any],
    format_report: Callable[[Any], str],
    errors: tuple[type[Exception], ...] = (ValueError,),
) -> int:
    """A job's `main` after parsing: logging, settings of `workdir`, `run`; prints the report.

    Exit codes: 0 done; 2 the gate failed (its report printed); 1 one of `errors` or a lost
    commit (the message on stderr); 75 the stage is running elsewhere on this workdir.
    """
    from atelier.logs import setup_logging
    from atelier.process import known_failure
    from atelier.settings import load_settings

    setup_logging()
    settings = load_settings(workdir=workdir)
    try:
        report = run(settings)
    except GateFailure as e:
        print(format_report(e.report))
        return 2
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        failure = known_failure(e)
        if failure is None:
            raise
        print(f"error: {failure[1]}", file=sys.stderr)
        return failure[0]
    print(format_report(report))
    return 0
