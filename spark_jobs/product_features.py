"""Metadata features: category indices, point-in-time product features, customer histories.

    spark-submit spark_jobs/product_features.py --workdir W

Reads `products` and `interactions`; writes `category_index` (append-only: an index never
changes once given), `product_features` (one row per product per time its values changed) and
`customer_history` (one row per customer per day they interacted). Everything is recomputed
from the lake each run, and only new or changed rows are written: a rerun commits nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from fractions import Fraction
from typing import TYPE_CHECKING

from atelier.locks import locked
from spark_jobs.common import (
    EPOCH,
    changed_rows,
    job_parser,
    micros_lit,
    new_run_id,
    run_job,
    save_report,
    timestamp_lit,
)

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession

    from atelier.settings import Settings

log = logging.getLogger("atelier.product_features")

CATEGORICAL = ("type", "brand", "division")
UNKNOWN = 0
DAY_US = 86_400_000_000
# log1p(price) is summed as integers of this many units: exact, so independent of partitioning.
_PRICE_SCALE = 10**9


def contract_windows() -> tuple[int, ...]:
    """The popularity windows (days) the `product_features` contract has columns for."""
    from atelier.contracts import contract

    found = (
        re.fullmatch(r"popularity_(\d+)d", c) for c in contract("product_features").column_names
    )
    return tuple(sorted(int(m.group(1)) for m in found if m))


def check_windows(windows: Sequence[int]) -> tuple[int, ...]:
    """`windows` sorted; raises ValueError unless they are exactly the contract's columns."""
    expected = contract_windows()
    got = tuple(sorted(windows))
    if got != expected:
        raise ValueError(
            f"settings.product_features.popularity_windows_days={list(windows)} does not match "
            f"the product_features contract, which has columns for {list(expected)} days"
        )
    return got


# ---------------------------------------------------------------------------------------------
# Pure transforms (DataFrame -> DataFrame)
# ---------------------------------------------------------------------------------------------
def new_category_values(products: DataFrame, index: DataFrame) -> DataFrame:
    """`category_index` rows for the values of type/brand/division not yet indexed.

    New values get the next ids after the column's largest, by frequency desc then value asc,
    so a first run numbers 1.. by frequency and later runs never renumber (0 = unknown/null).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    values = None
    for c in CATEGORICAL:
        part = products.select(F.lit(c).alias("column"), F.col(c).alias("value"))
        values = part if values is None else values.unionByName(part)
    assert values is not None
    counts = values.where(F.col("value").isNotNull()).groupBy("column", "value").count()
    fresh = counts.join(index.select("column", "value"), ["column", "value"], "left_anti")
    top = index.groupBy("column").agg(F.max("idx").alias("_top"))
    rank = Window.partitionBy("column").orderBy(F.col("count").desc(), F.col("value").asc())
    return (
        fresh.join(top, "column", "left")
        .withColumn(
            "idx",
            (F.coalesce(F.col("_top"), F.lit(UNKNOWN)) + F.row_number().over(rank)).cast("int"),
        )
        .select("column", "value", "idx")
    )


def with_indices(products: DataFrame, index: DataFrame) -> DataFrame:
    """Adds `type_idx`, `brand_idx`, `division_idx` (0 for null or unindexed values)."""
    from pyspark.sql import functions as F

    out = products
    for c in CATEGORICAL:
        idx = index.where(F.col("column") == c).select(
            F.col("value").alias(c), F.col("idx").alias(f"{c}_idx")
        )
        out = out.join(F.broadcast(idx), c, "left").withColumn(
            f"{c}_idx", F.coalesce(F.col(f"{c}_idx"), F.lit(UNKNOWN)).cast("int")
        )
    return out


def log_price_moments(products: DataFrame) -> tuple[float, float] | None:
    """(mean, population std) of log1p(price) over priced products; None when none is priced.

    Summed as exact integers (log1p rounded to 1e-9): a floating-point sum depends on the
    partitioning, and a rerun must reproduce the same bits to write nothing.
    """
    from pyspark.sql import functions as F

    q = F.round(F.log1p("price") * _PRICE_SCALE).cast("decimal(38,0)")
    row = (
        products.where(F.col("price").isNotNull())
        .agg(F.count("*").alias("n"), F.sum(q).alias("s1"), F.sum(q * q).alias("s2"))
        .collect()[0]
    )
    n = row["n"]
    if not n:
        return None
    s1, s2 = Fraction(int(row["s1"])), Fraction(int(row["s2"]))
    mean = s1 / n
    var = s2 / n - mean * mean
    return float(mean / _PRICE_SCALE), float(var) ** 0.5 / _PRICE_SCALE


def with_log_price(products: DataFrame, moments: tuple[float, float] | None) -> DataFrame:
    """Adds `log_price` = (log1p(price) - mean) / std; null price -> null; std 0 -> 1."""
    from pyspark.sql import functions as F

    if moments is None:
        return products.withColumn("log_price", F.lit(None).cast("double"))
    mean, std = moments
    return products.withColumn(
        "log_price", (F.log1p("price") - F.lit(mean)) / F.lit(std if std > 0 else 1.0)
    )


def popularity_timeline(
    products: DataFrame, interactions: DataFrame, windows: Sequence[int], now: datetime
) -> DataFrame:
    """(product_id, event_timestamp, popularity_{w}d...) at every time a window count changes.

    products: (product_id, first_seen); interactions: (product_id, timestamp).
    popularity_{w}d at t = interactions of the product in (t - w days, t]: a sale enters at its
    timestamp and leaves exactly w days later. Rows: the product's anchor (first_seen, else the
    epoch) and every enter/leave time after it, up to `now` (later leave times are not known to
    hold yet: sales may still come). Each row counts only sales at or before its timestamp.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols = [f"popularity_{w}d" for w in windows]
    anchors = products.select(
        "product_id",
        F.coalesce(F.col("first_seen"), timestamp_lit(EPOCH)).alias("_anchor"),
    )
    us = F.unix_micros("timestamp")
    sales = interactions.where(F.col("timestamp") <= timestamp_lit(now)).select(
        "product_id", us.alias("_us")
    )
    # Signed deltas: +1 in every window at the sale, -1 in window w at the sale + w days.
    parts = [
        anchors.select(
            "product_id", F.unix_micros("_anchor").alias("t"), *[F.lit(0).alias(c) for c in cols]
        )
    ]
    parts.append(
        sales.select("product_id", F.col("_us").alias("t"), *[F.lit(1).alias(c) for c in cols])
    )
    for w in windows:
        parts.append(
            sales.select(
                "product_id",
                (F.col("_us") + w * DAY_US).alias("t"),
                *[F.lit(-1 if c == f"popularity_{w}d" else 0).alias(c) for c in cols],
            )
        )
    deltas = parts[0]
    for p in parts[1:]:
        deltas = deltas.unionByName(p)
    running = (
        Window.partitionBy("product_id")
        .orderBy("t")
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    return (
        deltas.groupBy("product_id", "t")
        .agg(*[F.sum(c).alias(c) for c in cols])
        .select("product_id", "t", *[F.sum(c).over(running).cast("long").alias(c) for c in cols])
        .join(anchors, "product_id")
        .where((F.col("t") >= F.unix_micros("_anchor")) & (F.col("t") <= micros_lit(now)))
        .select("product_id", F.timestamp_micros("t").alias("event_timestamp"), *cols)
    )


def product_feature_rows(static: DataFrame, timeline: DataFrame) -> DataFrame:
    """The `product_features` columns but created_timestamp.

    static: one row per product with the *_idx columns, log_price and first_seen. These are
    the catalogue's current values, repeated on every row: indices and price are treated as
    static attributes (price standardisation uses today's catalogue), so they are the one
    exception to "nothing after event_timestamp". recency_days is measured at event_timestamp.
    """
    from pyspark.sql import functions as F

    recency = (F.unix_micros("event_timestamp") - F.unix_micros("first_seen")) / F.lit(
        float(DAY_US)
    )
    return timeline.join(static, "product_id").select(
        "product_id",
        "type_idx",
        "brand_idx",
        "division_idx",
        F.col("log_price").cast("double"),
        "first_seen",
        recency.cast("double").alias("recency_days"),
        *[c for c in timeline.columns if c.startswith("popularity_")],
        "event_timestamp",
    )


def customer_histories(interactions: DataFrame, length: int, now: datetime) -> DataFrame:
    """(customer_id, history, history_length, event_timestamp), one row per customer per UTC
    day with interactions (up to `now`).

    history: the product ids of the customer's last `length` interactions up to and including
    that day, most recent first, ties on the timestamp by product_id; repeat purchases repeat.
    event_timestamp is the day's last interaction, so every id in the history is at or before
    it (point in time) and the row is usable from the moment it became true.
    interactions: (interaction_id, customer_id, product_id, timestamp).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ev = interactions.where(F.col("timestamp") <= timestamp_lit(now)).withColumn(
        "_day", F.floor(F.unix_micros("timestamp") / F.lit(DAY_US))
    )
    # Chronological order is (timestamp, product_id desc): its reverse is "most recent first,
    # ties by product_id". interaction_id makes the order total (repeat purchases).
    chrono = [F.col("timestamp").asc(), F.col("product_id").desc(), F.col("interaction_id").desc()]
    last_n = (
        Window.partitionBy("customer_id")
        .orderBy(*chrono)
        .rowsBetween(-(length - 1), Window.currentRow)
    )
    newest = Window.partitionBy("customer_id", "_day").orderBy(
        F.col("timestamp").desc(), F.col("product_id").asc(), F.col("interaction_id").asc()
    )

    def recent_first(a: Column, b: Column) -> Column:
        return (
            F.when(a["timestamp"] > b["timestamp"], -1)
            .when(a["timestamp"] < b["timestamp"], 1)
            .when(a["product_id"] < b["product_id"], -1)
            .when(a["product_id"] > b["product_id"], 1)
            .otherwise(0)
        )

    window_items = F.collect_list(F.struct("timestamp", "product_id")).over(last_n)
    history = F.transform(F.array_sort("_items", recent_first), lambda e: e["product_id"])
    return (
        ev.select(
            "customer_id",
            "timestamp",
            "_day",
            window_items.alias("_items"),
            F.row_number().over(newest).alias("_rn"),
        )
        .where(F.col("_rn") == 1)
        .select(
            "customer_id",
            history.alias("history"),
            F.size(history).cast("int").alias("history_length"),
            F.col("timestamp").alias("event_timestamp"),
        )
    )


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def _write(lake, table: str, rows: DataFrame, **merge_args) -> dict:
    rows = rows.cache()
    n = rows.count()
    out = {"written": n, "inserted": 0, "updated": 0}
    if n:
        res = lake.merge(table, rows, **merge_args)
        out.update(inserted=res.inserted, updated=res.updated)
    out["version"] = lake.version(table)
    rows.unpersist()
    return out


@locked("product-features")
def run_product_features(
    settings: Settings, spark: SparkSession | None = None, now: datetime | None = None
) -> dict:
    """Write category_index, product_features and customer_history; returns a report dict.

    `now` bounds the timelines (no row after it) and stamps created_timestamp of rows written.
    Raises ValueError when the popularity windows setting does not match the contract.
    """
    from atelier.contracts import contract
    from atelier.lake import Lake
    from atelier.spark import get_spark

    cfg = settings.product_features
    windows = check_windows(cfg.popularity_windows_days)  # before any Spark work
    t0 = time.time()
    now = now or datetime.now(UTC)
    spark = spark or get_spark(settings)
    lake = Lake(settings, spark)
    report: dict = {"now": now.isoformat()}

    products = lake.read_spark(
        "products", ["product_id", *CATEGORICAL, "price", "first_seen"]
    ).cache()
    report["products"] = products.count()

    with lake.publishing("product_features", new_run_id(now)):
        # Append-only: existing (column, value) rows are never updated.
        report["category_index"] = _write(
            lake,
            "category_index",
            new_category_values(products, lake.read_spark("category_index")),
            update=False,
        )
        index = lake.read_spark("category_index").cache()
        log.info("[%6.1fs] category_index done", time.time() - t0)

        static = with_log_price(with_indices(products, index), log_price_moments(products))
        interactions = lake.read_spark(
            "interactions", ["interaction_id", "customer_id", "product_id", "timestamp"]
        ).cache()
        timeline = popularity_timeline(products, interactions, windows, now)
        rows = product_feature_rows(static, timeline)
        report["product_features"] = _write(
            lake,
            "product_features",
            changed_rows(
                rows, lake.read_spark("product_features"), ["product_id", "event_timestamp"], now
            ),
        )
        log.info("[%6.1fs] product_features done", time.time() - t0)

        hist = customer_histories(interactions, cfg.history_length, now)
        report["customer_history"] = _write(
            lake,
            "customer_history",
            changed_rows(
                hist, lake.read_spark("customer_history"), ["customer_id", "event_timestamp"], now
            ),
        )
        log.info("[%6.1fs] customer_history done", time.time() - t0)
    for t in ("category_index", "product_features", "customer_history"):
        report[t]["rows"] = lake.read_arrow(t, [contract(t).key[0]]).num_rows
    report["seconds"] = round(time.time() - t0, 1)
    for df in (products, index, interactions):
        df.unpersist()
    save_report(settings, "product_features", report)
    return report


def format_report(report: dict) -> str:
    """The run's counts as plain text (printed by spark-submit)."""
    lines = [
        f"product features over {report['products']} products ({report['seconds']}s)",
        f"{'table':<18}{'rows':>9}{'written':>9}{'ins.':>9}{'upd.':>7}  version",
    ]
    for t in ("category_index", "product_features", "customer_history"):
        r = report[t]
        lines.append(
            f"{t:<18}{r['rows']:>9}{r['written']:>9}{r['inserted']:>9}{r['updated']:>7}  "
            f"{'-' if r['version'] is None else r['version']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`spark-submit spark_jobs/product_features.py [--workdir W]`."""
    args = job_parser("product_features.py", __doc__).parse_args(argv)
    return run_job(args.workdir, run_product_features, format_report)


if __name__ == "__main__":
    from atelier.process import exit_now

    exit_now(main())
