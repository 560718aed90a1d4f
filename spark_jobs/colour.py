"""Colour features: the garment's colour descriptor (`atelier.colour`) for every product shot.

    spark-submit spark_jobs/colour.py [--workdir W] [--max-images N]
    atelier --workdir W colour                                  # the same job

Every shot of `product_images` without a descriptor of the same content hash and
`atelier.colour.DESCRIPTOR_VERSION` is decoded and described inside Spark (`mapInPandas`: numpy
and PIL only, a few milliseconds an image) and merged into `colour_features` by (product_id,
shot). A rerun on an unchanged catalogue describes nothing and commits no new Delta version; a
new descriptor version recomputes every shot. Images that are missing, do not decode or no
longer match their recorded hash are quarantined with the reason; the others are published
once the batch passes its quality gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from atelier.locks import locked
from expectations.gate import GateFailure
from spark_jobs.common import (
    ShotRunCounts,
    add_counts,
    finish_shot_run,
    job_parser,
    new_run_id,
    partition_id,
    process_pending,
    quarantine_shots,
    read_checked_image,
    run_job,
    with_event_us,
    worker_log,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from atelier.lake import Lake
    from atelier.settings import Settings

log = logging.getLogger("atelier.colour")

# A worker logs its progress every this many images (and once at the end of its partition).
PROGRESS_EVERY = 500
# Pending shots are described and committed in chunks of this many (~5 minutes on 2 cores, the
# same bound as embed's): a killed backfill loses at most one chunk; the rerun continues.
CHUNK_IMAGES = 20_000


class ColourError(RuntimeError):
    """The job cannot run at all (no catalogue); nothing was written."""


@dataclass
class ColourReport(ShotRunCounts):
    run_id: str
    descriptor_version: str
    started_at: str
    described: int = 0
    masks: dict[str, int] = field(default_factory=dict)  # described shots by mask kind
    colour_seconds: float = 0.0  # the Spark stage that decodes and describes


# ---------------------------------------------------------------------------------------------
# Worker side (numpy / PIL)
# ---------------------------------------------------------------------------------------------
DESCRIBED_SCHEMA = (
    "product_id STRING, shot INT, path STRING, content_hash STRING, colour ARRAY<FLOAT>, "
    "foreground_fraction DOUBLE, mask STRING, _event_us BIGINT, _reason STRING, _detail STRING"
)
_OUT_COLUMNS = [c.split()[0] for c in DESCRIBED_SCHEMA.split(", ")]


def colour_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: pending rows -> DESCRIBED_SCHEMA rows (colour, or _reason)."""
    import pandas as pd

    from atelier.colour import analyse, decode

    part = partition_id()
    t0 = time.time()
    done = bad = 0
    for batch in batches:
        out: list[dict] = []
        for r in batch.to_dict("records"):
            rgb, reason, detail = read_checked_image(r["path"], r["content_hash"], decode)
            row = {c: r.get(c) for c in _OUT_COLUMNS}
            row.update(colour=None, foreground_fraction=None, mask=None)
            row.update(_reason=reason, _detail=detail)
            if rgb is not None:
                c = analyse(rgb)
                row.update(colour=c.vector, foreground_fraction=c.foreground_fraction, mask=c.mask)
                done += 1
            else:
                bad += 1
            if (done + bad) % PROGRESS_EVERY == 0:
                worker_log(
                    "colour", f"partition {part}: {done} described, {bad} bad, {_rate(done, t0)}"
                )
            out.append(row)
        if out:
            yield pd.DataFrame(out, columns=_OUT_COLUMNS)
    if done + bad:
        worker_log(
            "colour", f"partition {part}: done, {done} described, {bad} bad, {_rate(done, t0)}"
        )


def _rate(done: int, t0: float) -> str:
    seconds = time.time() - t0
    return f"{seconds:.1f}s ({done / max(seconds, 1e-9):.0f} images/s)"


# ---------------------------------------------------------------------------------------------
# Pure Spark transforms (DataFrame -> DataFrame)
# ---------------------------------------------------------------------------------------------
def pending_images(
    images: DataFrame, products: DataFrame, existing: DataFrame, descriptor_version: str
) -> DataFrame:
    """Shots of `images` with no descriptor of the same content hash and descriptor version.

    images: product_images; products: product_id, first_seen; existing: colour_features'
    (product_id, shot, content_hash, descriptor_version). Adds `_event_us`: the product's
    first_seen in epoch microseconds, 0 (the epoch) when unknown or the product is absent.
    """
    from pyspark.sql import functions as F

    keys = ["product_id", "shot", "content_hash"]
    done = existing.where(F.col("descriptor_version") == F.lit(descriptor_version))
    todo = images.select("product_id", "shot", "path", "content_hash").join(
        done.select(*keys), keys, "left_anti"
    )
    return with_event_us(todo, products)


def describe_images(pending: DataFrame, partitions: int) -> DataFrame:
    """pending_images rows -> DESCRIBED_SCHEMA rows, in the workers.

    Spread by key hash over `partitions`: the same catalogue lands the same way every run.
    """
    return pending.repartition(partitions, "product_id", "shot").mapInPandas(
        colour_partition, DESCRIBED_SCHEMA
    )


def colour_rows(described: DataFrame, descriptor_version: str, now: datetime) -> DataFrame:
    """Good rows of `describe_images` in the colour_features contract; created_timestamp = now,
    event_timestamp = the product's first_seen (content holds from then)."""
    from pyspark.sql import functions as F

    from spark_jobs.common import timestamp_lit

    return described.where("_reason IS NULL").select(
        "product_id",
        "shot",
        "content_hash",
        F.lit(descriptor_version).alias("descriptor_version"),
        "colour",
        "foreground_fraction",
        "mask",
        F.timestamp_micros("_event_us").alias("event_timestamp"),
        timestamp_lit(now).alias("created_timestamp"),
    )


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
@locked("colour")
def run_colour(
    settings: Settings,
    spark: SparkSession | None = None,
    now: datetime | None = None,
    max_images: int | None = None,
    chunk_images: int = CHUNK_IMAGES,
) -> dict:
    """Describe every pending product shot into `colour_features`; returns the report as a dict.

    now: created_timestamp of new rows (default: the current UTC time). event_timestamp is the
    product's first_seen, or 1970-01-01 UTC when unknown. max_images: at most this many pending
    shots, in (product_id, shot) order (a backfill in slices; the next run takes the next).
    chunk_images: shots committed together (a killed run loses at most one chunk).
    Spreads the work over `settings.image_check_partitions` partitions. Raises ColourError when
    there is nothing to read, GateFailure when the batch fails its quality gate (quarantine is
    still recorded then).
    """
    import atelier.colour
    from atelier.lake import Lake
    from atelier.spark import get_spark

    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    t0 = time.time()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    version = atelier.colour.DESCRIPTOR_VERSION
    run_id = new_run_id(now)
    report = ColourReport(run_id, version, now.isoformat())
    if not Lake(settings).exists("product_images"):
        raise ColourError(f"no product_images table in {settings.lake_dir}: run ingest first")
    spark = spark or get_spark(settings)
    lake = Lake(settings, spark)
    partitions = settings.image_check_partitions

    images = lake.read_spark("product_images")
    pending = pending_images(
        images,
        lake.read_spark("products", ["product_id", "first_seen"]),
        lake.read_spark(
            "colour_features", ["product_id", "shot", "content_hash", "descriptor_version"]
        ),
        version,
    ).cache()
    report.images = images.count()
    n_pending = pending.count()
    report.skipped = report.images - n_pending
    log.info(
        "descriptor %s: %d shots in the catalogue, %d already described, %d to describe in "
        "%d partitions",
        version,
        report.images,
        report.skipped,
        n_pending,
        partitions,
    )
    process_pending(
        pending,
        n_pending,
        max_images,
        chunk_images,
        report,
        lambda chunk: _describe_and_publish(
            settings, lake, chunk, version, run_id, now, report, t0
        ),
        "colour",
    )
    report.version = lake.version("colour_features")
    return finish_shot_run(settings, "colour", report, t0, True, "described")


def _describe_and_publish(
    settings: Settings,
    lake: Lake,
    pending: DataFrame,
    version: str,
    run_id: str,
    now: datetime,
    report: ColourReport,
    t0: float,
) -> None:
    """Describe `pending` (one chunk) in the workers, record quarantine, gate and merge the
    descriptors; adds its counts to `report`."""
    from pyspark.sql import functions as F

    from atelier.contracts import contract

    t1 = time.time()
    described = describe_images(pending, settings.image_check_partitions).cache()
    try:
        counts = described.groupBy("_reason", "mask").agg(F.count("*").alias("n")).collect()
        seconds = time.time() - t1
        report.colour_seconds = round(report.colour_seconds + seconds, 1)
        by_reason: dict[str, int] = {}
        n_described = 0
        for r in counts:
            if r["_reason"] is None:
                report.masks[r["mask"]] = report.masks.get(r["mask"], 0) + r["n"]
                n_described += r["n"]
            else:
                by_reason[r["_reason"]] = by_reason.get(r["_reason"], 0) + r["n"]
        report.masks = dict(sorted(report.masks.items()))
        report.described += n_described
        report.quarantined = add_counts(report.quarantined, by_reason)
        report.images_per_second = round(report.described / max(report.colour_seconds, 1e-9), 1)
        log.info(
            "described %d (masks %s), quarantined %d in %.1fs",
            n_described,
            report.masks,
            sum(by_reason.values()),
            seconds,
        )
        # Quarantine first, even when the gate fails: it is the evidence of what went wrong.
        if by_reason:
            quarantine_shots(lake, described, "colour_features", run_id, now, log)
        if not n_described:
            return
        c = contract("colour_features")
        rows = colour_rows(described, version, now)
        # Arrow for the gate (keeps NaN apart from null) and for delta-rs.
        arrow = rows.toArrow().select(c.column_names).cast(c.schema())
        report.failures = _gate(settings, lake, arrow, now)
        if report.failures:
            report.version = lake.version("colour_features")
            raise GateFailure(
                "colour_features gate",
                report.failures,
                finish_shot_run(settings, "colour", report, t0, False, "described"),
            )
        res = lake.merge("colour_features", rows if lake.uses_delta_spark else arrow)
        report.inserted += res.inserted
        report.updated += res.updated
    finally:
        described.unpersist()


def _gate(settings: Settings, lake: Lake, arrow: pa.Table, now: datetime) -> list[str]:
    """Failures of the colour_features suite on the batch: the contract (keys, known products,
    foreground_fraction in [0, 1]) and the colour list checks the materialisation gate uses."""
    from expectations.gate import validate_table
    from expectations.suites import gate_checks

    products = lake.read_arrow("products", ["product_id"])["product_id"].to_pylist()
    result = validate_table(
        settings,
        "colour_features",
        arrow,
        row_count_band=(settings.gate.min_rows.get("colour_features", 0), settings.gate.max_rows),
        reference_values={"product_id": products},
        now=now,
        list_checks=gate_checks(settings, "colour_features"),
    )
    return [] if result.success else list(result.failures)


def format_report(report: dict) -> str:
    """The run's counts as plain text (printed by the CLI and spark-submit)."""
    q = report["quarantined"]
    masks = report["masks"]
    lines = [
        f"colour (run {report['run_id']}): descriptor {report['descriptor_version']}",
        f"images {report['images']}: described {report['described']}, skipped "
        f"{report['skipped']}, quarantined {sum(q.values())}"
        + (f", left for the next run {report['remaining']}" if report.get("remaining") else ""),
        "masks: " + (", ".join(f"{k}={v}" for k, v in sorted(masks.items())) if masks else "-"),
        "quarantine by reason: "
        + (", ".join(f"{k}={v}" for k, v in sorted(q.items())) if q else "none"),
        f"colour_features: inserted {report['inserted']}, updated {report['updated']}, "
        f"version {'-' if report['version'] is None else report['version']}",
        f"{report['seconds']}s in all; describing {report['colour_seconds']}s "
        f"({report['images_per_second']} images/s)",
        "published" if report["published"] else "NOT published: " + "; ".join(report["failures"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`spark-submit spark_jobs/colour.py [--workdir W] [--max-images N]`."""
    p = job_parser("colour.py", __doc__)
    p.add_argument(
        "--max-images",
        type=int,
        help="describe at most N pending shots (in product order); rerun to continue",
    )
    args = p.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        p.error("--max-images must be at least 1")
    return run_job(
        args.workdir,
        lambda settings: run_colour(settings, max_images=args.max_images),
        format_report,
        (ColourError, ValueError),
    )


if __name__ == "__main__":
    # Run the installed module rather than this file as __main__: Spark pickles __main__'s
    # functions by value, and the workers should import the same module the driver did.
    from atelier.process import exit_now
    from spark_jobs.colour import main as _main

    exit_now(_main())
