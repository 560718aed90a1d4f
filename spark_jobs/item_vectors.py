"""Item vectors for serving: the champion recommender's vector of every product, to Delta + Feast.

    spark-submit spark_jobs/item_vectors.py [--workdir W] [--model-uri URI] [--as-of TIME]

The model (default: the `champion` alias of `settings.mlflow.recommender_model`, pinned to its
version for the run) is downloaded once by the driver into the workdir; each Python worker
loads the `RecommenderBundle` from there once and scores its partition of products
(`mapInPandas`) with `RecommenderBundle.predict`, the conversion training used
(`features.content_blocks`). Every product of `products` is scored, never-bought ones
included: `content` and `hybrid` from their content, `cf` as the zero vector.

Content features are read from the lake point in time as Feast's offline store would join
them for an entity row at `as_of`: per product the latest row with event_timestamp <= as_of
(ties: the latest created_timestamp) of `product_features` (type, price, first_seen,
popularity), `text_features` (TF-IDF), `image_embeddings` shot 0 and, when the table exists,
`attribute_vectors`.

Time: a vector depends on popularity and recency as of `as_of`, so its row holds from
`as_of` (event_timestamp = as_of), not from first_seen like the content it is computed from: a
point-in-time join for an earlier time must not see it. `as_of` defaults to the start (00:00
UTC) of the run's day, a daily snapshot: recency (years since first_seen) moves every vector
a little as time passes, so with as_of = the exact run time every rerun would rewrite every
product; with the day, reruns on the same day write nothing and the first run of a day
refreshes the vectors. `as_of` can be set for a historical catalogue (the H&M data ends in
2020: as of today every popularity window is empty, which the model never saw in training).
created_timestamp = `now`, the run time.

Incremental: one row per product (key product_id). Only products whose vector changed beyond
`VECTOR_TOLERANCE`, or whose model or variant changed, are written (with the new event time);
the others keep their row and its event time. A rerun with the same champion on unchanged
features writes nothing; a new champion rewrites every product. The batch passes the GX suite
of `item_vectors` (product ids in the catalogue, vectors of length k + 1, finite) before it is
merged; `atelier materialize` then serves it (feature view `item_vectors`, service
`serving_v1`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from atelier.locks import locked
from expectations.gate import GateFailure  # noqa: F401  (callers catch it from the job)
from spark_jobs.common import job_parser, run_job
from spark_jobs.scoring import (
    ScoringRun,
    contract_arrow,
    finish_run,
    gate_batch,
    model_errors,
    pin_model,
    publish,
    publish_lines,
    score_in_batches,
    sorted_products,
    start_run,
    worker_bundle,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from atelier.lake import Lake
    from atelier.settings import Settings
    from models.recommender.bundle import RecommenderBundle

TABLE = JOB = "item_vectors"
log = logging.getLogger(f"atelier.{JOB}")

# Products per model call inside a partition (the bundle batches again below this).
BATCH_SIZE = 1024
MAIN_SHOT = 0
# A recomputed vector counts as unchanged when no element moved by more than this times the
# largest magnitude of the stored vector (at least 1): float results of the same model on the
# same inputs can differ in the last bits with the batch a product lands in.
VECTOR_TOLERANCE = 1e-5
# The Feast columns `RecommenderBundle.features_from_frame` reads, besides product_id: those
# of product_features, then one of each other table.
PRODUCT_COLUMNS = (
    "type_idx",
    "log_price",
    "first_seen",
    "recency_days",
    "popularity_7d",
    "popularity_30d",
    "popularity_90d",
)
CONTENT_COLUMNS = (*PRODUCT_COLUMNS, "tfidf", "embedding", "attribute_vector")


class ItemVectorError(RuntimeError):
    """The job cannot run (no champion, no catalogue); nothing written."""


# ---------------------------------------------------------------------------------------------
# Worker side: one bundle per Python worker
# ---------------------------------------------------------------------------------------------
SCORED_SCHEMA = "product_id STRING, vector ARRAY<FLOAT>"


def score_partition(
    batches: Iterator[pd.DataFrame],
    bundle_dir: str,
    as_of: str,
    threads: int,
    batch_size: int,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: `content_frame` rows -> (product_id, vector), one row per product.

    Products are sorted by id and cut into fixed batches, so the batches depend only on which
    products the partition holds.
    """
    from models.recommender.bundle import RecommenderBundle

    rows = sorted_products(batches)
    if rows is None:
        return
    bundle = worker_bundle(JOB, bundle_dir, RecommenderBundle, threads)

    def score(chunk: pd.DataFrame) -> pd.DataFrame:
        return bundle.predict(chunk, as_of=as_of)[["product_id", "vector"]]

    yield from score_in_batches(JOB, rows, batch_size, score)


# ---------------------------------------------------------------------------------------------
# Pure Spark transforms (DataFrame -> DataFrame)
# ---------------------------------------------------------------------------------------------
def latest_as_of(rows: DataFrame, keys: list[str], as_of: datetime) -> DataFrame:
    """Per key, the row Feast's point-in-time join picks for an entity row at `as_of`: the
    latest event_timestamp <= as_of, ties broken by the latest created_timestamp."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from spark_jobs.common import timestamp_lit

    order = Window.partitionBy(*keys).orderBy(
        F.col("event_timestamp").desc(), F.col("created_timestamp").desc()
    )
    return (
        rows.where(F.col("event_timestamp") <= timestamp_lit(as_of))
        .withColumn("_rank", F.row_number().over(order))
        .where(F.col("_rank") == 1)
        .drop("_rank")
    )


def content_frame(
    products: DataFrame,
    product_features: DataFrame,
    text_features: DataFrame,
    image_embeddings: DataFrame,
    attribute_vectors: DataFrame | None,
    as_of: datetime,
) -> DataFrame:
    """One row per product of `products` with its content as of `as_of` (see `latest_as_of`):
    product_id and `CONTENT_COLUMNS` (attribute_vector only with `attribute_vectors`); a
    product without a row at `as_of` in a table has nulls there (the bundle reads them as
    missing: zeros)."""
    from pyspark.sql import functions as F

    meta = latest_as_of(product_features, ["product_id"], as_of).select(
        "product_id", *PRODUCT_COLUMNS
    )
    text = latest_as_of(text_features, ["product_id"], as_of).select("product_id", "tfidf")
    image = latest_as_of(
        image_embeddings.where(F.col("shot") == MAIN_SHOT), ["product_id"], as_of
    ).select("product_id", "embedding")
    out = (
        products.select("product_id")
        .distinct()
        .join(meta, "product_id", "left")
        .join(text, "product_id", "left")
        .join(image, "product_id", "left")
    )
    if attribute_vectors is not None:
        attributes = latest_as_of(attribute_vectors, ["product_id"], as_of).select(
            "product_id", "attribute_vector"
        )
        out = out.join(attributes, "product_id", "left")
    return out


def score_products(
    content: DataFrame,
    bundle_dir: str,
    as_of: datetime,
    partitions: int,
    threads: int,
    batch_size: int = BATCH_SIZE,
) -> DataFrame:
    """`content_frame` -> (product_id, vector ARRAY<FLOAT>) in the workers, spread over
    `partitions` by product id hash: the same catalogue always lands the same way."""
    import functools

    body = functools.partial(
        score_partition,
        bundle_dir=bundle_dir,
        as_of=as_of.isoformat(),
        threads=threads,
        batch_size=batch_size,
    )
    return content.repartition(partitions, "product_id").mapInPandas(body, SCORED_SCHEMA)


def vector_rows(scored: DataFrame, variant: str, model_version: str, as_of: datetime) -> DataFrame:
    """The item_vectors rows but created_timestamp: event_timestamp = `as_of`."""
    from pyspark.sql import functions as F

    from spark_jobs.common import timestamp_lit

    return scored.select(
        "product_id",
        F.col("vector").cast("array<float>").alias("vector"),
        F.lit(variant).alias("variant"),
        F.lit(model_version).alias("model_version"),
        timestamp_lit(as_of).alias("event_timestamp"),
    )


def changed_vectors(
    new: DataFrame, existing: DataFrame, now: datetime, tolerance: float = VECTOR_TOLERANCE
) -> DataFrame:
    """Rows of `new` (`vector_rows`) whose product has no row in `existing`, another variant
    or model_version, a vector of another length, or an element that moved by more than
    `tolerance` × max(1, largest |element| of the stored vector); stamped created_timestamp =
    `now`. The event time is not compared: an unchanged vector keeps its row and event time."""
    from pyspark.sql import functions as F

    from spark_jobs.common import timestamp_lit

    old = existing.select(
        "product_id",
        F.col("vector").alias("_old_vector"),
        F.col("variant").alias("_old_variant"),
        F.col("model_version").alias("_old_model_version"),
        F.lit(True).alias("_exists"),
    )
    inf = F.lit(float("inf")).cast("double")
    # zip_with pads the shorter array with nulls: a length change is a change (inf).
    moved = F.aggregate(
        F.zip_with(
            "vector",
            "_old_vector",
            lambda a, b: F.coalesce(F.abs(a.cast("double") - b.cast("double")), inf),
        ),
        F.lit(0.0).cast("double"),
        lambda acc, x: F.greatest(acc, x),
    )
    scale = F.aggregate(
        "_old_vector", F.lit(1.0).cast("double"), lambda acc, x: F.greatest(acc, F.abs(x))
    )
    same = (
        F.col("_exists").isNotNull()
        & F.col("variant").eqNullSafe(F.col("_old_variant"))
        & F.col("model_version").eqNullSafe(F.col("_old_model_version"))
        & (F.size("vector") == F.size("_old_vector"))
        & (moved <= F.lit(float(tolerance)) * scale)
    )
    return (
        new.join(old, "product_id", "left")
        .where(~F.coalesce(same, F.lit(False)))
        .select(*new.columns, timestamp_lit(now).alias("created_timestamp"))
    )


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def champion_bundle(
    settings: Settings, model_uri: str | None = None
) -> tuple[RecommenderBundle, str, str]:
    """(bundle, model URI, model_version) of `model_uri` (default: the recommender champion),
    the alias read once (`scoring.resolve_model`). ItemVectorError without one."""
    from models.recommender.pyfunc import load_bundle

    with model_errors(ItemVectorError, "recommender model"):
        uri, model_version, pinned = pin_model(
            settings, model_uri, settings.mlflow.recommender_model
        )
        return load_bundle(pinned), uri, model_version


def default_as_of(now: datetime) -> datetime:
    """The as-of time of a run at `now`: the start (00:00 UTC) of its day."""
    return _utc(now).replace(hour=0, minute=0, second=0, microsecond=0)


@locked("item-vectors")
def run_item_vectors(
    settings: Settings,
    spark: SparkSession | None = None,
    model_uri: str | None = None,
    now: datetime | None = None,
    as_of: datetime | None = None,
) -> dict:
    """Score every product with the model and merge the changed vectors; the report.

    model_uri: an MLflow model URI (default: the champion of
    `settings.mlflow.recommender_model`). now: created_timestamp of the rows written (default:
    the current UTC time). as_of: when the content features (popularity, recency) are taken
    and the rows' event_timestamp (default `default_as_of(now)`, the day's start). Raises
    ItemVectorError when there is no model or catalogue; GateFailure when the batch fails its
    suite (nothing is written then).
    """
    from atelier.lake import Lake
    from atelier.spark import get_spark
    from models.recommender.pyfunc import load_bundle

    t0 = time.time()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    as_of = default_as_of(now) if as_of is None else _utc(as_of)
    run = start_run(
        settings,
        JOB,
        model_uri,
        settings.mlflow.recommender_model,
        load_bundle,
        ItemVectorError,
        "recommender model",
        now,
    )
    bundle: RecommenderBundle = run.bundle
    report: dict[str, Any] = {
        "run_id": run.run_id,
        "model_uri": run.model_uri,
        "model_version": run.model_version,
        "variant": bundle.variant,
        "k": bundle.k,
        "as_of": as_of.isoformat(),
        "now": now.isoformat(),
    }
    spark = spark or get_spark(settings)
    lake = Lake(settings, spark)
    return finish_run(
        settings,
        run,
        report,
        t0,
        lambda: _score_and_publish(settings, lake, run, now, as_of, report),
    )


def _score_and_publish(
    settings: Settings, lake: Lake, run: ScoringRun, now: datetime, as_of: datetime, report: dict
) -> None:
    from pyspark.sql import functions as F

    bundle: RecommenderBundle = run.bundle

    attributes = lake.read_spark("attribute_vectors") if lake.exists("attribute_vectors") else None
    content = content_frame(
        lake.read_spark("products", ["product_id"]),
        lake.read_spark("product_features"),
        lake.read_spark("text_features"),
        lake.read_spark("image_embeddings"),
        attributes,
        as_of,
    ).cache()
    scored = None
    try:
        report["products"] = n_products = content.count()
        log.info(
            "%d products as of %s, %s model k=%d, %d partitions",
            n_products,
            as_of.isoformat(),
            bundle.variant,
            bundle.k,
            settings.embed.partitions,
        )
        t1 = time.time()
        scored = score_products(
            content,
            str(run.bundle_dir),
            as_of,
            settings.embed.partitions,
            settings.embed.tf_threads,
        ).cache()
        report["scored"] = scored.count()
        report["score_seconds"] = round(time.time() - t1, 1)
        report["zero_vectors"] = scored.where(
            ~F.exists("vector", lambda x: x != F.lit(0.0))
        ).count()
        known = lake.spark.createDataFrame(
            [(p,) for p in sorted(bundle.item_index)], "product_id STRING"
        )
        report["cf_known"] = content.join(known, "product_id").count()
        log.info(
            "%d products scored in %.1fs (%d zero vectors)",
            report["scored"],
            report["score_seconds"],
            report["zero_vectors"],
        )
        rows = vector_rows(scored, bundle.variant, run.model_version, as_of)
        batch = changed_vectors(rows, lake.read_spark(TABLE), now)
        arrow = contract_arrow(TABLE, batch)
        failures = gate_batch(settings, lake, TABLE, arrow, now, bundle.k + 1)  # + the bias
        if report["scored"] != n_products:
            failures.append(f"{TABLE}: scored {report['scored']} of {n_products} products")
        publish(settings, lake, run, report, {TABLE: arrow}, failures, "item vectors gate")
    finally:
        if scored is not None:
            scored.unpersist()
        content.unpersist()


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def format_report(report: dict) -> str:
    """The run's counts as plain text (printed by the CLI and spark-submit)."""
    lines = [
        f"item vectors (run {report['run_id']}): model {report['model_version']} "
        f"({report['variant']}, k={report['k']}), as of {report['as_of']}",
        f"products {report.get('products', 0)}: scored {report.get('scored', 0)} "
        f"({report.get('score_seconds', 0)}s), in the CF index {report.get('cf_known', 0)}, "
        f"zero vectors {report.get('zero_vectors', 0)}",
    ]
    lines += publish_lines(report, (TABLE,))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading the vectors back (the `atelier similar` command)
# ---------------------------------------------------------------------------------------------
def read_item_vectors(settings: Settings, variant: str | None = None) -> dict[str, Any]:
    """The lake's item vectors: {"product_ids": [...], "vectors": (n, k) float32,
    "variants": {variant: rows}, "model_versions": [...]}, sorted by product id; with
    `variant`, only that variant's rows (none when the champion is another variant)."""
    import numpy as np

    from atelier.lake import Lake

    frame = Lake(settings).read_pandas(TABLE, ["product_id", "vector", "variant", "model_version"])
    variants = {str(v): int(n) for v, n in frame["variant"].value_counts().sort_index().items()}
    if variant is not None:
        frame = frame[frame["variant"] == variant]
    frame = frame.sort_values("product_id")
    k = len(frame["vector"].iloc[0]) if len(frame) else 0
    vectors = (
        np.stack([np.asarray(v, np.float32) for v in frame["vector"]])
        if len(frame)
        else np.zeros((0, k), np.float32)
    )
    return {
        "product_ids": [str(p) for p in frame["product_id"]],
        "vectors": vectors,
        "variants": variants,
        "model_versions": sorted({str(v) for v in frame["model_version"]}),
    }


def compute_item_vectors(
    settings: Settings, model_uri: str | None = None, as_of: datetime | None = None
) -> dict[str, Any]:
    """Item vectors of every product computed here (no Spark, nothing written) with
    `model_uri` (default: the champion), from the content features Feast's offline store
    joins as of `as_of` (default: today's start, `default_as_of`;
    `features.load_content_features`). Same shape as
    `read_item_vectors`."""
    bundle, _, model_version = champion_bundle(settings, model_uri)
    return _bundle_vectors(settings, bundle, model_version, as_of)


def _bundle_vectors(
    settings: Settings, bundle: RecommenderBundle, model_version: str, as_of: datetime | None
) -> dict[str, Any]:
    from models.recommender.features import load_content_features

    as_of = default_as_of(datetime.now(UTC)) if as_of is None else _utc(as_of)
    features = load_content_features(settings, as_of)
    vectors: np.ndarray = bundle.item_vectors(features)
    return {
        "product_ids": [str(p) for p in features.product_ids],
        "vectors": vectors,
        "variants": {bundle.variant: len(features)},
        "model_versions": [model_version],
    }


def vectors_for_variant(
    settings: Settings, variant: str, model_uri: str | None = None
) -> tuple[dict[str, Any], str]:
    """(vectors, where from) for `atelier similar`: the lake's `item_vectors` rows of
    `variant`; with `model_uri`, or when the table has none of that variant, computed here
    with `model_uri` (default: the champion) when that model is of `variant`. ValueError
    otherwise, naming the variants the table holds."""
    if model_uri is None:
        stored = read_item_vectors(settings, variant)
        if stored["product_ids"]:
            return stored, f"lake table {TABLE} ({', '.join(stored['model_versions'])})"
    bundle, uri, model_version = champion_bundle(settings, model_uri)
    if bundle.variant != variant:
        held = read_item_vectors(settings)["variants"] if model_uri is None else {}
        raise ValueError(
            f"no {variant!r} item vectors: the {TABLE} table holds {held or 'none'} and "
            f"{uri} is a {bundle.variant!r} model; pass --model-uri of a {variant!r} model"
        )
    computed = _bundle_vectors(settings, bundle, model_version, None)
    return computed, f"computed now with {model_version}"


def similar_lines(
    settings: Settings, product_id: str, variant: str, n: int = 10, model_uri: str | None = None
) -> list[str]:
    """What `atelier similar PRODUCT_ID --variant V --n N` prints: the product's `n` nearest
    cosine neighbours under `variant` (`vectors_for_variant`), with similarity, type and
    title. ValueError for a product without a vector or a variant not available."""
    from atelier.lake import Lake
    from models.recommender.model import VARIANTS
    from models.recommender.similar import similar_products

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS!r}, got {variant!r}")
    from models.ranking import DOT_BIAS, match_part

    found, source = vectors_for_variant(settings, variant, model_uri)
    # Likeness lives in the match coordinates; the last one is the product's bias.
    vectors = match_part(found["vectors"], DOT_BIAS)
    neighbours = similar_products(found["product_ids"], vectors, product_id, n)
    products = Lake(settings).read_pandas("products", ["product_id", "type", "title"])
    names = {
        str(p): f"{title or ''} ({kind})".strip()
        for p, kind, title in zip(products["product_id"], products["type"], products["title"])
    }
    lines = [
        f"similar to {product_id} {names.get(str(product_id), '')}".rstrip()
        + f" [{variant}, {source}]:"
    ]
    if not neighbours:
        lines.append(
            f"  none: {product_id} has a zero vector under {variant} (the model cannot "
            "represent it, e.g. cf and a product never bought in training)"
        )
    for rank, (pid, similarity) in enumerate(neighbours, 1):
        lines.append(f"  {rank:>3}. {pid}  {similarity:.4f}  {names.get(pid, '')}".rstrip())
    return lines


def main(argv: list[str] | None = None) -> int:
    """`spark-submit spark_jobs/item_vectors.py [--workdir W] [--model-uri URI] [--as-of T]`."""
    p = job_parser("item_vectors.py", __doc__)
    p.add_argument("--model-uri", help="MLflow model URI (default: the recommender's champion)")
    p.add_argument(
        "--as-of",
        type=datetime.fromisoformat,
        help="time the content features are taken at, ISO 8601 (default: today 00:00 UTC)",
    )
    args = p.parse_args(argv)
    return run_job(
        args.workdir,
        lambda settings: run_item_vectors(settings, model_uri=args.model_uri, as_of=args.as_of),
        format_report,
        (ItemVectorError, ValueError),
    )


if __name__ == "__main__":
    # Run the installed module rather than this file as __main__: Spark pickles __main__'s
    # functions by value, and the workers should import the same module the driver did.
    from atelier.process import exit_now
    from spark_jobs.item_vectors import main as _main

    exit_now(_main())
