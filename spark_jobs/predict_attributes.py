"""Batch attribute prediction: the champion model fills every product's missing attributes.

    spark-submit spark_jobs/predict_attributes.py [--workdir W] [--model-uri URI]
        [--min-confidence 0.8] [--min-confidence ATTRIBUTE=0.9 ...]
    atelier --workdir W predict attributes [--model-uri URI] [--min-confidence ...]  # the same

The model (default: the `champion` alias of `settings.mlflow.attributes_model`, pinned to its
version for the run) is downloaded once by the driver into the workdir; each Python worker
loads it from there once and scores its partition of products (`mapInPandas`) from `products`
(title + description, type, brand, division) and `image_embeddings` (every shot, in shot
order). Known labels (`product_labels`) are kept as they are; the gaps are filled with the
predicted value, its confidence and the probability vector. Two tables are written:

- `predicted_attributes`, one row per (product, attribute), for people: the label (source
  "label", confidence 1, one-hot probabilities) or the prediction (source "predicted"); an
  attribute that does not apply to the product's type and has no label has no row;
- `attribute_vectors`, one row per product, for Feast: every attribute's probabilities end to
  end in the model's attribute order (labels one-hot, non-applicable attributes zeros).

A minimum confidence per attribute (`settings.predict.min_confidence`, `--min-confidence`)
keeps unsure predictions out of the catalogue: such a gap stays empty. Its row is still
written, with source "below_confidence" (value, confidence and probabilities of the model's
guess, for audit; serving ignores it), so a stricter rerun also empties gaps an earlier run
filled (merges never delete). In `attribute_vectors` its value is "" but its probabilities stay:
the recommender's features do not depend on what people are shown.

Both hold from the product's first_seen (or the epoch), like the content they are computed
from. Only rows that changed are merged, after their GX suites pass: a rerun with the same
model on unchanged inputs writes nothing; a new champion rewrites every row (model_version).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Mapping
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
    publish,
    publish_lines,
    score_in_batches,
    sorted_products,
    start_run,
    worker_bundle,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from atelier.lake import Lake
    from atelier.settings import Settings
    from models.attributes.bundle import AttributeBundle, AttributeSpec

JOB = "predict_attributes"
log = logging.getLogger(f"atelier.{JOB}")

LABEL, PREDICTED, BELOW_CONFIDENCE = "label", "predicted", "below_confidence"
SOURCES = (LABEL, PREDICTED, BELOW_CONFIDENCE)
# The min_confidence key that applies to every attribute without its own.
EVERY_ATTRIBUTE = "*"
# Products per model call inside a partition (the bundle batches again below this).
BATCH_SIZE = 512


class PredictError(RuntimeError):
    """The job cannot run (no champion, no catalogue, mismatched embeddings); nothing written."""


# ---------------------------------------------------------------------------------------------
# Pure Python: the bundle's label encoders as rows
# ---------------------------------------------------------------------------------------------
def class_of(spec: AttributeSpec, value: str | None) -> str | None:
    """The class a raw label `value` is encoded as: its grouping (a rare value -> "other"; None
    when training dropped it), else the value itself when it is a class; None otherwise."""
    if value is None:
        return None
    if value in spec.grouping:
        return spec.grouping[value]
    return value if value in spec.classes else None


def one_hot(spec: AttributeSpec, value: str | None) -> list[float]:
    """`value`'s class as a one-hot vector over `spec.classes`; [] when it maps to no class."""
    cls = class_of(spec, value)
    if cls is None:
        return []
    return [1.0 if c == cls else 0.0 for c in spec.classes]


def label_encoding(attributes: Mapping[str, AttributeSpec]) -> list[tuple[str, str, list[float]]]:
    """(attribute, raw value, one-hot probabilities) for every value that maps to a class:
    the grouping's raw training values and the class names themselves."""
    rows = []
    for attribute, spec in attributes.items():
        for value in sorted({*spec.grouping, *spec.classes}):
            probs = one_hot(spec, value)
            if probs:
                rows.append((attribute, value, probs))
    return rows


def attribute_layout(attributes: Mapping[str, AttributeSpec]) -> list[tuple[str, int, int]]:
    """(attribute, position, number of classes) in the model's attribute (head) order."""
    return [(a, i, len(spec.classes)) for i, (a, spec) in enumerate(attributes.items())]


def _unit_interval(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:  # NaN fails too
        raise ValueError(f"{where} must be in [0, 1], got {value!r}")
    return float(value)


def parse_min_confidence(values: list[str] | tuple[str, ...]) -> dict[str, float]:
    """`--min-confidence` values as a min_confidence mapping: "0.8" sets every attribute
    ("*"), "ATTRIBUTE=0.9" one attribute; a later value for the same key wins. ValueError
    quoting a malformed value or one outside [0, 1]."""
    out: dict[str, float] = {}
    for item in values:
        name, sep, number = str(item).rpartition("=")
        name = name.strip() if sep else EVERY_ATTRIBUTE
        if not name:
            raise ValueError(f"--min-confidence {item!r}: the attribute name is empty")
        try:
            value = float(number)
        except ValueError:
            raise ValueError(f"--min-confidence {item!r}: expected 0.8 or ATTRIBUTE=0.8") from None
        out[name] = _unit_interval(value, f"--min-confidence {item!r}")
    return out


def min_confidence_by_attribute(
    min_confidence: Mapping[str, float], attributes: list[str] | tuple[str, ...]
) -> dict[str, float]:
    """The minimum confidence of each of the model's `attributes`: its own entry, else the
    "*" entry, else 0 (every prediction fills). PredictError naming the model's attributes
    when an entry names another attribute; ValueError for a value outside [0, 1]."""
    unknown = sorted(set(min_confidence) - set(attributes) - {EVERY_ATTRIBUTE})
    if unknown:
        raise PredictError(
            f"min_confidence names attributes the model does not predict: {unknown!r}; "
            f"the model's attributes are {list(attributes)!r} (or {EVERY_ATTRIBUTE!r} for all)"
        )
    checked = {k: _unit_interval(v, f"min_confidence[{k!r}]") for k, v in min_confidence.items()}
    default = checked.get(EVERY_ATTRIBUTE, 0.0)
    return {a: checked.get(a, default) for a in attributes}


# ---------------------------------------------------------------------------------------------
# Worker side: one bundle per Python worker
# ---------------------------------------------------------------------------------------------
SCORED_SCHEMA = (
    "product_id STRING, attribute STRING, value STRING, confidence DOUBLE, "
    "probabilities ARRAY<FLOAT>"
)
_SCORED_COLUMNS = [c.split()[0] for c in SCORED_SCHEMA.split(", ")]


def score_partition(
    batches: Iterator[pd.DataFrame], bundle_dir: str, threads: int, batch_size: int
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: `product_inputs` rows -> SCORED_SCHEMA rows, applicable attributes only.

    Products are sorted by id and cut into fixed batches, so the batches (and the float
    results) depend only on which products the partition holds.
    """
    from atelier.text import product_text
    from models.attributes.bundle import AttributeBundle

    rows = sorted_products(batches)
    if rows is None:
        return
    rows["text"] = [product_text(t, d) for t, d in zip(rows["title"], rows["description"])]
    bundle = worker_bundle(JOB, bundle_dir, AttributeBundle, threads)

    def score(chunk: pd.DataFrame) -> pd.DataFrame:
        frame = chunk[["product_id", "text", "type", "brand", "division", "embeddings", "colours"]]
        out = bundle.predict(frame)
        return out[out["applicable"]][_SCORED_COLUMNS].reset_index(drop=True)

    yield from score_in_batches(JOB, rows, batch_size, score)


# ---------------------------------------------------------------------------------------------
# Pure Spark transforms (DataFrame -> DataFrame)
# ---------------------------------------------------------------------------------------------
def product_inputs(
    products: DataFrame, embeddings: DataFrame, colours: DataFrame | None = None
) -> DataFrame:
    """The model's inputs, one row per product.

    products: product_id, title, description, type, brand, division, first_seen;
    embeddings: image_embeddings' product_id, shot, embedding; colours (optional):
    colour_features' product_id, shot, colour. Output: product_id, title, description, type,
    brand, division, `embeddings` (every shot's vector in shot order; null without images),
    `colours` (the same shots' colour descriptors, null where a shot has none) and
    event_timestamp (first_seen, else the epoch: the content rule).
    """
    from pyspark.sql import functions as F

    from spark_jobs.common import EPOCH, timestamp_lit

    if colours is None:
        shots = embeddings.withColumn("colour", F.lit(None).cast("array<float>"))
    else:
        # Joined per shot, so shot j's colour sits beside shot j's embedding.
        shots = embeddings.join(
            colours.select("product_id", "shot", "colour"), ["product_id", "shot"], "left"
        )
    shots = shots.groupBy("product_id").agg(
        F.sort_array(F.collect_list(F.struct("shot", "embedding", "colour"))).alias("_shots")
    )
    return products.join(shots, "product_id", "left").select(
        "product_id",
        "title",
        "description",
        "type",
        "brand",
        "division",
        F.transform("_shots", lambda s: s["embedding"]).alias("embeddings"),
        F.transform("_shots", lambda s: s["colour"]).alias("colours"),
        F.coalesce(F.col("first_seen"), timestamp_lit(EPOCH)).alias("event_timestamp"),
    )


def score_products(
    inputs: DataFrame, bundle_dir: str, partitions: int, threads: int, batch_size: int = BATCH_SIZE
) -> DataFrame:
    """`product_inputs` -> SCORED_SCHEMA (product_id, attribute, value, confidence,
    probabilities) for every attribute that applies to the product's type, in the workers.
    Spread over `partitions` by product id hash: the same catalogue always lands the same way."""
    import functools

    body = functools.partial(
        score_partition, bundle_dir=bundle_dir, threads=threads, batch_size=batch_size
    )
    return (
        inputs.drop("event_timestamp")
        .repartition(partitions, "product_id")
        .mapInPandas(body, SCORED_SCHEMA)
    )


def attribute_rows(
    scored: DataFrame,
    labels: DataFrame,
    encoding: DataFrame,
    events: DataFrame,
    model_version: str,
) -> DataFrame:
    """The predicted_attributes rows but created_timestamp.

    scored: SCORED_SCHEMA; labels: product_labels (product_id, attribute, value); encoding:
    (attribute, value, probabilities) from `label_encoding`; events: (product_id,
    event_timestamp) of every product. A label wins over a prediction for the same (product,
    attribute); it keeps its value verbatim with confidence 1 and its one-hot probabilities
    (empty when the value maps to no class of the model, e.g. an attribute it does not
    predict). Rows of products absent from `events` are dropped.
    """
    from pyspark.sql import functions as F

    known = (
        labels.select("product_id", "attribute", "value")
        .join(encoding, ["attribute", "value"], "left")
        .select(
            "product_id",
            "attribute",
            "value",
            F.lit(1.0).alias("confidence"),
            F.coalesce(F.col("probabilities"), F.array().cast("array<float>")).alias(
                "probabilities"
            ),
            F.lit(LABEL).alias("source"),
        )
    )
    gaps = scored.join(
        labels.select("product_id", "attribute"), ["product_id", "attribute"], "left_anti"
    ).select(
        "product_id",
        "attribute",
        "value",
        "confidence",
        "probabilities",
        F.lit(PREDICTED).alias("source"),
    )
    return (
        known.unionByName(gaps)
        .join(events, "product_id")
        .select(
            "product_id",
            "attribute",
            "value",
            F.col("confidence").cast("double").alias("confidence"),
            F.col("probabilities").cast("array<float>").alias("probabilities"),
            "source",
            F.lit(model_version).alias("model_version"),
            "event_timestamp",
        )
    )


def withhold_below(rows: DataFrame, min_confidence: Mapping[str, float]) -> DataFrame:
    """`attribute_rows` with every predicted row whose confidence is below its attribute's
    minimum (`min_confidence_by_attribute`; an attribute absent: 0) marked source
    "below_confidence": the gap stays empty. Known labels are never touched."""
    from pyspark.sql import functions as F

    below = {a: m for a, m in min_confidence.items() if m > 0.0}
    if not below:
        return rows
    minimum = F.create_map(*[F.lit(x) for a, m in sorted(below.items()) for x in (a, m)])
    withheld = (F.col("source") == F.lit(PREDICTED)) & (
        F.col("confidence") < F.coalesce(minimum[F.col("attribute")], F.lit(0.0))
    )
    return rows.withColumn(
        "source", F.when(withheld, F.lit(BELOW_CONFIDENCE)).otherwise(F.col("source"))
    )


def attribute_vectors(
    rows: DataFrame, layout: DataFrame, events: DataFrame, model_version: str
) -> DataFrame:
    """The attribute_vectors rows but created_timestamp, one per product of `events`.

    rows: `attribute_rows`; layout: (attribute, position, size) from `attribute_layout`.
    Each attribute contributes `size` floats at its position: the row's probabilities when
    they have that length, zeros otherwise (no row: not applicable; a label that maps to no
    class). attribute_values holds each attribute's value, "" without a row or below the
    minimum confidence (its probabilities are kept).
    """
    from pyspark.sql import functions as F

    zeros = F.array_repeat(F.lit(0.0).cast("float"), F.col("size"))
    parts = (
        events.select("product_id")
        .crossJoin(layout)
        .join(
            rows.select("product_id", "attribute", "value", "probabilities", "source"),
            ["product_id", "attribute"],
            "left",
        )
        .select(
            "product_id",
            F.struct(
                F.col("position"),
                F.when(F.size("probabilities") == F.col("size"), F.col("probabilities"))
                .otherwise(zeros)
                .alias("probabilities"),
                F.when(F.col("source") == F.lit(BELOW_CONFIDENCE), F.lit(""))
                .otherwise(F.coalesce(F.col("value"), F.lit("")))
                .alias("value"),
            ).alias("part"),
        )
    )
    return (
        parts.groupBy("product_id")
        .agg(F.sort_array(F.collect_list("part")).alias("parts"))
        .join(events, "product_id")
        .select(
            "product_id",
            F.flatten(F.transform("parts", lambda p: p["probabilities"])).alias("attribute_vector"),
            F.transform("parts", lambda p: p["value"]).alias("attribute_values"),
            F.lit(model_version).alias("model_version"),
            "event_timestamp",
        )
    )


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
@locked("predict-attributes")
def run_predict_attributes(
    settings: Settings,
    spark: SparkSession | None = None,
    model_uri: str | None = None,
    now: datetime | None = None,
    min_confidence: Mapping[str, float] | None = None,
) -> dict:
    """Score every product with the model, keep known labels, write both tables; the report.

    model_uri: an MLflow model URI (default: the champion of `settings.mlflow.attributes_model`).
    now: created_timestamp of the rows written (default: the current UTC time).
    min_confidence: attribute (or "*") -> the confidence a prediction needs to fill a gap
    (default: `settings.predict.min_confidence`). Raises PredictError when there is no model
    or catalogue, when min_confidence names an attribute the model lacks, or when the
    catalogue's image embeddings were made with other weights than the model was trained on;
    GateFailure when a batch fails its suite (nothing is written then).
    """
    from atelier.lake import Lake
    from atelier.spark import get_spark
    from models.attributes.pyfunc import load_bundle

    t0 = time.time()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    run = start_run(
        settings,
        JOB,
        model_uri,
        settings.mlflow.attributes_model,
        load_bundle,
        PredictError,
        "attribute model",
        now,
    )
    bundle: AttributeBundle = run.bundle
    try:
        minimums = min_confidence_by_attribute(
            settings.predict.min_confidence if min_confidence is None else min_confidence,
            bundle.attribute_order,
        )
    except (PredictError, ValueError):  # refused before any work: leave no bundle behind
        shutil.rmtree(run.bundle_dir, ignore_errors=True)
        raise
    report: dict[str, Any] = {
        "run_id": run.run_id,
        "model_uri": run.model_uri,
        "model_version": run.model_version,
        "attributes": bundle.attribute_order,
        "vector_size": bundle.vector_size,
        "min_confidence": minimums,
        "now": now.isoformat(),
    }
    spark = spark or get_spark(settings)
    lake = Lake(settings, spark)
    _check_embedding_weights(lake, bundle)
    _check_colour_version(lake, bundle)
    return finish_run(
        settings, run, report, t0, lambda: _predict_and_publish(settings, lake, run, now, report)
    )


def _predict_and_publish(
    settings: Settings, lake: Lake, run: ScoringRun, now: datetime, report: dict
) -> None:
    bundle: AttributeBundle = run.bundle
    spark = lake.spark
    assert spark is not None
    inputs = _read_inputs(lake, bundle).cache()
    report["products"] = n_products = inputs.count()
    log.info(
        "%d products, %d attributes (%d floats per vector), %d partitions",
        n_products,
        len(bundle.attributes),
        bundle.vector_size,
        settings.embed.partitions,
    )
    scored = _score(settings, run, inputs, report)
    rows, vectors = _rows_and_vectors(
        spark, lake, bundle, scored, inputs, run.model_version, report["min_confidence"]
    )
    try:
        report.update(_source_counts(rows))
        arrows = _changed_batches(lake, rows, vectors, now)
        failures = [
            f
            for t, arrow in arrows.items()
            for f in gate_batch(settings, lake, t, arrow, now, bundle.vector_size)
        ]
        publish(settings, lake, run, report, arrows, failures, "predicted attributes gate")
    finally:
        rows.unpersist()
        scored.unpersist()
        inputs.unpersist()


def _read_inputs(lake: Lake, bundle: AttributeBundle) -> DataFrame:
    """`product_inputs` of the lake's catalogue; colours only for a model that reads them."""
    products = lake.read_spark(
        "products",
        ["product_id", "title", "description", "type", "brand", "division", "first_seen"],
    )
    colours = (
        lake.read_spark("colour_features", ["product_id", "shot", "colour"])
        if bundle.config.colour_dim > 0 and lake.exists("colour_features")
        else None
    )
    return product_inputs(
        products, lake.read_spark("image_embeddings", ["product_id", "shot", "embedding"]), colours
    )


def _score(settings: Settings, run: ScoringRun, inputs: DataFrame, report: dict) -> DataFrame:
    """`score_products` of `inputs`, cached and counted; its count and time go in `report`."""
    t1 = time.time()
    scored = score_products(
        inputs, str(run.bundle_dir), settings.embed.partitions, settings.embed.tf_threads
    ).cache()
    report["scored"] = scored.count()
    report["score_seconds"] = round(time.time() - t1, 1)
    log.info(
        "%d applicable (product, attribute) scored in %.1fs",
        report["scored"],
        report["score_seconds"],
    )
    return scored


def _rows_and_vectors(
    spark: SparkSession,
    lake: Lake,
    bundle: AttributeBundle,
    scored: DataFrame,
    inputs: DataFrame,
    model_version: str,
    min_confidence: Mapping[str, float],
) -> tuple[DataFrame, DataFrame]:
    """(predicted_attributes rows, cached; attribute_vectors rows), both without
    created_timestamp: known labels kept, gaps filled from `scored`, unsure ones withheld."""
    events = inputs.select("product_id", "event_timestamp")
    encoding = spark.createDataFrame(
        label_encoding(bundle.attributes),
        "attribute STRING, value STRING, probabilities ARRAY<FLOAT>",
    )
    layout = spark.createDataFrame(
        attribute_layout(bundle.attributes), "attribute STRING, position INT, size INT"
    )
    rows = withhold_below(
        attribute_rows(scored, lake.read_spark("product_labels"), encoding, events, model_version),
        min_confidence,
    ).cache()
    return rows, attribute_vectors(rows, layout, events, model_version)


def _source_counts(rows: DataFrame) -> dict[str, Any]:
    """The report's row counts: per attribute and source, and per source overall."""
    from pyspark.sql import functions as F

    counts = {
        (r["attribute"], r["source"]): r["n"]
        for r in rows.groupBy("attribute", "source").agg(F.count("*").alias("n")).collect()
    }
    return {
        "by_attribute": {
            a: {s: counts.get((a, s), 0) for s in SOURCES} for a in sorted({a for a, _ in counts})
        },
        "labels_kept": sum(n for (_, s), n in counts.items() if s == LABEL),
        "predicted": sum(n for (_, s), n in counts.items() if s == PREDICTED),
        BELOW_CONFIDENCE: sum(n for (_, s), n in counts.items() if s == BELOW_CONFIDENCE),
    }


def _changed_batches(
    lake: Lake, rows: DataFrame, vectors: DataFrame, now: datetime
) -> dict[str, pa.Table]:
    """Table -> the contract-shaped Arrow batch of the rows that differ from the lake's."""
    from spark_jobs.common import changed_rows

    batches = {
        "predicted_attributes": changed_rows(
            rows, lake.read_spark("predicted_attributes"), ["product_id", "attribute"], now
        ),
        "attribute_vectors": changed_rows(
            vectors, lake.read_spark("attribute_vectors"), ["product_id"], now
        ),
    }
    return {t: contract_arrow(t, df) for t, df in batches.items()}


def _check_embedding_weights(lake: Lake, bundle: AttributeBundle) -> None:
    """PredictError when the catalogue's image embeddings come from other weights than the
    model's training embeddings (its features would mean something else)."""
    trained_on = sorted(bundle.metadata.get("embedding_weights") or [])
    if not trained_on or not lake.exists("image_embeddings"):
        return
    here = sorted(set(lake.read_arrow("image_embeddings", ["weights"])["weights"].to_pylist()))
    if here and here != trained_on:
        raise PredictError(
            f"image embeddings of the catalogue ({here}) differ from the model's ({trained_on}): "
            "embed with the weights the model was trained with"
        )


def _check_colour_version(lake: Lake, bundle: AttributeBundle) -> None:
    """PredictError when the catalogue's colour descriptors are of another version than the
    model's training descriptors, or missing for a model that reads colour."""
    trained_on = bundle.metadata.get("colour_descriptor_version")
    if bundle.config.colour_dim == 0 or not trained_on:
        return
    if not lake.exists("colour_features"):
        raise PredictError(
            "the model reads colour but colour_features is missing: run `atelier colour`"
        )
    here = sorted(
        set(
            lake.read_arrow("colour_features", ["descriptor_version"])[
                "descriptor_version"
            ].to_pylist()
        )
    )
    if here and here != [trained_on]:
        raise PredictError(
            f"colour descriptors of the catalogue ({here}) differ from the model's ({trained_on}): "
            "rerun `atelier colour` with this version of atelier"
        )


def format_report(report: dict) -> str:
    """The run's counts as plain text (printed by the CLI and spark-submit)."""
    lines = [
        f"predict attributes (run {report['run_id']}): model {report['model_version']}, "
        f"{len(report['attributes'])} attributes, vector size {report['vector_size']}",
        f"products {report.get('products', 0)}: labels kept {report.get('labels_kept', 0)}, "
        f"predicted {report.get('predicted', 0)}, below minimum confidence (left empty) "
        f"{report.get(BELOW_CONFIDENCE, 0)} ({report.get('score_seconds', 0)}s scoring)",
    ]
    minimums = report.get("min_confidence", {})
    for attribute, n in report.get("by_attribute", {}).items():
        minimum = f"  (min. confidence {minimums[attribute]:g})" if minimums.get(attribute) else ""
        lines.append(
            f"  {attribute:<32} label {n[LABEL]:>7}  predicted {n[PREDICTED]:>7}  "
            f"below {n.get(BELOW_CONFIDENCE, 0):>7}{minimum}"
        )
    lines += publish_lines(report, ("predicted_attributes", "attribute_vectors"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`spark-submit spark_jobs/predict_attributes.py [--workdir W] [--model-uri URI]
    [--min-confidence [ATTRIBUTE=]VALUE ...]`."""
    p = job_parser("predict_attributes.py", __doc__)
    p.add_argument("--model-uri", help="MLflow model URI (default: the attribute model's champion)")
    p.add_argument(
        "--min-confidence",
        action="append",
        metavar="[ATTRIBUTE=]VALUE",
        help="confidence in [0, 1] a prediction needs to fill a gap: VALUE for every attribute, "
        "ATTRIBUTE=VALUE for one; repeatable; replaces settings.predict.min_confidence",
    )
    args = p.parse_args(argv)
    try:
        min_confidence = parse_min_confidence(args.min_confidence) if args.min_confidence else None
    except ValueError as e:
        p.error(str(e))
    return run_job(
        args.workdir,
        lambda settings: run_predict_attributes(
            settings, model_uri=args.model_uri, min_confidence=min_confidence
        ),
        format_report,
        (PredictError, ValueError),
    )


if __name__ == "__main__":
    # Run the installed module rather than this file as __main__: Spark pickles __main__'s
    # functions by value, and the workers should import the same module the driver did.
    from atelier.process import exit_now
    from spark_jobs.predict_attributes import main as _main

    exit_now(_main())
