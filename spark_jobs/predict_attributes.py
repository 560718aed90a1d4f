"""Batch attribute prediction: the champion model fills every product's missing attributes.

    spark-submit spark_jobs/predict_attributes.py [--workdir W] [--model-uri URI]
    atelier --workdir W predict attributes [--model-uri URI]        # the same job

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

Both hold from the product's first_seen (or the epoch), like the content they are computed
from. Only rows that changed are merged, after their GX suites pass: a rerun with the same
model on unchanged inputs writes nothing; a new champion rewrites every row (model_version).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from atelier.lake import Lake
    from atelier.settings import Settings
    from training.attributes.bundle import AttributeBundle, AttributeSpec

log = logging.getLogger("atelier.predict_attributes")

LABEL, PREDICTED = "label", "predicted"
# Products per model call inside a partition (the bundle batches again below this).
BATCH_SIZE = 512


class PredictError(RuntimeError):
    """The job cannot run (no champion, no catalogue, mismatched embeddings); nothing written."""


class GateFailure(PredictError):
    """A batch failed its quality gate; nothing was published."""

    def __init__(self, failures: list[str], report: dict):
        super().__init__(
            "predicted attributes gate failed, nothing published:\n  " + "\n  ".join(failures)
        )
        self.failures = failures
        self.report = report


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


def resolve_model(model_uri: str) -> tuple[str, str]:
    """(model_version, pinned URI) of a model URI. `models:/<name>@<alias>` and
    `models:/<name>/<version>` give "<name>/<version>" and `models:/<name>/<version>` (the
    alias is read once, so a promotion during the run cannot mix two models); any other URI
    (`runs:/...`) is its own version label."""
    from mlflow import MlflowClient

    m = re.fullmatch(r"models:/([^/@]+)@([^/]+)", model_uri)
    if m:
        name, alias = m.groups()
        version = MlflowClient().get_model_version_by_alias(name, alias).version
        return f"{name}/{version}", f"models:/{name}/{version}"
    m = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri)
    if m:
        return f"{m.group(1)}/{m.group(2)}", model_uri
    return model_uri, model_uri


# ---------------------------------------------------------------------------------------------
# Worker side: one bundle per Python worker
# ---------------------------------------------------------------------------------------------
# In this (installed) module, so a reused Python worker loads the bundle once; only the latest
# bundle is kept (each run saves its own folder).
_BUNDLES: dict[str, Any] = {}


def worker_bundle(directory: str, threads: int) -> AttributeBundle:
    """The worker's bundle saved in `directory`, loaded on first use."""
    if directory not in _BUNDLES:
        from spark_jobs.embed import configure_tensorflow

        t0 = time.time()
        configure_tensorflow(threads)
        from training.attributes.bundle import AttributeBundle

        _BUNDLES.clear()
        _BUNDLES[directory] = AttributeBundle.load(directory)
        _worker_log(f"bundle {directory} loaded in {time.time() - t0:.1f}s ({threads} TF threads)")
    return _BUNDLES[directory]


def _worker_log(msg: str) -> None:
    # Python workers have no logging set-up; stderr reaches the driver console in local mode.
    stamp = time.strftime("%H:%M:%S")
    print(
        f"{stamp} INFO atelier.predict_attributes[worker {os.getpid()}]: {msg}",
        file=sys.stderr,
        flush=True,
    )


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
    import pandas as pd

    from atelier.text import product_text

    frames = [b for b in batches if len(b)]
    if not frames:
        return
    rows = pd.concat(frames, ignore_index=True).sort_values("product_id", ignore_index=True)
    rows["text"] = [product_text(t, d) for t, d in zip(rows["title"], rows["description"])]
    bundle = worker_bundle(bundle_dir, threads)
    t0 = time.time()
    for start in range(0, len(rows), batch_size):
        chunk = rows.iloc[start : start + batch_size]
        frame = chunk[["product_id", "text", "type", "brand", "division", "embeddings"]]
        out = bundle.predict(frame.reset_index(drop=True))
        out = out[out["applicable"]]
        _worker_log(f"{start + len(chunk)}/{len(rows)} products scored in {time.time() - t0:.1f}s")
        yield out[_SCORED_COLUMNS].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Pure Spark transforms (DataFrame -> DataFrame)
# ---------------------------------------------------------------------------------------------
def product_inputs(products: DataFrame, embeddings: DataFrame) -> DataFrame:
    """The model's inputs, one row per product.

    products: product_id, title, description, type, brand, division, first_seen;
    embeddings: image_embeddings' product_id, shot, embedding. Output: product_id, title,
    description, type, brand, division, `embeddings` (every shot's vector in shot order; null
    without images) and event_timestamp (first_seen, else the epoch: the content rule).
    """
    from pyspark.sql import functions as F

    from spark_jobs.common import EPOCH, timestamp_lit

    shots = embeddings.groupBy("product_id").agg(
        F.sort_array(F.collect_list(F.struct("shot", "embedding"))).alias("_shots")
    )
    return products.join(shots, "product_id", "left").select(
        "product_id",
        "title",
        "description",
        "type",
        "brand",
        "division",
        F.transform("_shots", lambda s: s["embedding"]).alias("embeddings"),
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


def attribute_vectors(
    rows: DataFrame, layout: DataFrame, events: DataFrame, model_version: str
) -> DataFrame:
    """The attribute_vectors rows but created_timestamp, one per product of `events`.

    rows: `attribute_rows`; layout: (attribute, position, size) from `attribute_layout`.
    Each attribute contributes `size` floats at its position: the row's probabilities when
    they have that length, zeros otherwise (no row: not applicable; a label that maps to no
    class). attribute_values holds each attribute's value, "" without a row.
    """
    from pyspark.sql import functions as F

    zeros = F.array_repeat(F.lit(0.0).cast("float"), F.col("size"))
    parts = (
        events.select("product_id")
        .crossJoin(layout)
        .join(
            rows.select("product_id", "attribute", "value", "probabilities"),
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
                F.coalesce(F.col("value"), F.lit("")).alias("value"),
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
def fetch_bundle(settings: Settings, model_uri: str, run_id: str) -> tuple[AttributeBundle, Path]:
    """Download the model once (driver) and save its bundle under the workdir for the workers;
    returns the bundle and that folder (`<workdir>/tmp/predict_attributes/<run_id>`). Folders
    of earlier runs are removed. Workers on other machines need the workdir on shared storage,
    as they do for the lake."""
    from training.attributes.pyfunc import load_bundle

    root = settings.workdir / "tmp" / "predict_attributes"
    if root.is_dir():
        for old in root.iterdir():
            shutil.rmtree(old, ignore_errors=True)
    bundle = load_bundle(model_uri)
    return bundle, bundle.save(root / run_id)


def run_predict_attributes(
    settings: Settings,
    spark: SparkSession | None = None,
    model_uri: str | None = None,
    now: datetime | None = None,
) -> dict:
    """Score every product with the model, keep known labels, write both tables; the report.

    model_uri: an MLflow model URI (default: the champion of `settings.mlflow.attributes_model`).
    now: created_timestamp of the rows written (default: the current UTC time). Raises
    PredictError when there is no model or catalogue, or when the catalogue's image embeddings
    were made with other weights than the model was trained on; GateFailure when a batch
    fails its suite (nothing is written then).
    """
    from mlflow.exceptions import MlflowException

    from atelier.lake import Lake
    from atelier.spark import get_spark
    from training import registry

    t0 = time.time()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    run_id = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    if not Lake(settings).exists("products"):
        raise PredictError(f"no products table in {settings.lake_dir}: run ingest first")
    try:
        registry.configure(settings)
        uri = model_uri or registry.champion_uri(settings.mlflow.attributes_model)
        model_version, pinned = resolve_model(uri)
        log.info("model %s (%s): downloading", model_version, uri)
        bundle, bundle_dir = fetch_bundle(settings, pinned, run_id)
    except (MlflowException, registry.RegistryError, OSError) as e:
        raise PredictError(f"cannot load the attribute model: {e}") from e
    report: dict[str, Any] = {
        "run_id": run_id,
        "model_uri": uri,
        "model_version": model_version,
        "attributes": bundle.attribute_order,
        "vector_size": bundle.vector_size,
        "now": now.isoformat(),
    }
    spark = spark or get_spark(settings)
    lake = Lake(settings, spark)
    _check_embedding_weights(lake, bundle)
    try:
        _predict_and_publish(settings, lake, bundle, str(bundle_dir), model_version, now, report)
    finally:
        shutil.rmtree(bundle_dir, ignore_errors=True)
    report["seconds"] = round(time.time() - t0, 1)
    _save_report(settings, report)
    log.info("done in %.1fs", report["seconds"])
    return report


def _predict_and_publish(
    settings: Settings,
    lake: Lake,
    bundle: AttributeBundle,
    bundle_dir: str,
    model_version: str,
    now: datetime,
    report: dict,
) -> None:
    from pyspark.sql import functions as F

    from spark_jobs.common import changed_rows

    spark = lake.spark
    assert spark is not None
    products = lake.read_spark(
        "products",
        ["product_id", "title", "description", "type", "brand", "division", "first_seen"],
    )
    inputs = product_inputs(
        products, lake.read_spark("image_embeddings", ["product_id", "shot", "embedding"])
    ).cache()
    report["products"] = n_products = inputs.count()
    log.info(
        "%d products, %d attributes (%d floats per vector), %d partitions",
        n_products,
        len(bundle.attributes),
        bundle.vector_size,
        settings.embed.partitions,
    )
    t1 = time.time()
    scored = score_products(
        inputs, bundle_dir, settings.embed.partitions, settings.embed.tf_threads
    ).cache()
    report["scored"] = scored.count()
    report["score_seconds"] = round(time.time() - t1, 1)
    log.info(
        "%d applicable (product, attribute) scored in %.1fs",
        report["scored"],
        report["score_seconds"],
    )
    events = inputs.select("product_id", "event_timestamp")
    encoding = spark.createDataFrame(
        label_encoding(bundle.attributes),
        "attribute STRING, value STRING, probabilities ARRAY<FLOAT>",
    )
    layout = spark.createDataFrame(
        attribute_layout(bundle.attributes), "attribute STRING, position INT, size INT"
    )
    rows = attribute_rows(
        scored, lake.read_spark("product_labels"), encoding, events, model_version
    ).cache()
    vectors = attribute_vectors(rows, layout, events, model_version)
    try:
        counts = {
            (r["attribute"], r["source"]): r["n"]
            for r in rows.groupBy("attribute", "source").agg(F.count("*").alias("n")).collect()
        }
        report["by_attribute"] = {
            a: {s: counts.get((a, s), 0) for s in (LABEL, PREDICTED)}
            for a in sorted({a for a, _ in counts})
        }
        report["labels_kept"] = sum(n for (_, s), n in counts.items() if s == LABEL)
        report["predicted"] = sum(n for (_, s), n in counts.items() if s == PREDICTED)
        batches = {
            "predicted_attributes": changed_rows(
                rows, lake.read_spark("predicted_attributes"), ["product_id", "attribute"], now
            ),
            "attribute_vectors": changed_rows(
                vectors, lake.read_spark("attribute_vectors"), ["product_id"], now
            ),
        }
        arrows = {t: _arrow(t, df) for t, df in batches.items()}
        failures = [
            f
            for t, arrow in arrows.items()
            for f in _gate(settings, lake, t, arrow, now, bundle.vector_size)
        ]
        for t, arrow in arrows.items():
            report[t] = {"written": arrow.num_rows, "inserted": 0, "updated": 0}
        if failures:
            report["failures"] = failures
            report["published"] = False
            for t in arrows:
                report[t]["version"] = lake.version(t)
            _save_report(settings, report)
            raise GateFailure(failures, report)
        for t, arrow in arrows.items():
            if arrow.num_rows:
                res = lake.merge(t, arrow)
                report[t].update(inserted=res.inserted, updated=res.updated)
            report[t]["version"] = lake.version(t)
            log.info("%s: %s", t, report[t])
        report["failures"] = []
        report["published"] = True
    finally:
        rows.unpersist()
        scored.unpersist()
        inputs.unpersist()


def _arrow(table: str, df: DataFrame) -> pa.Table:
    """`df` in the table's contract as Arrow (the gate keeps NaN apart from null on it)."""
    from atelier.contracts import contract

    c = contract(table)
    return df.toArrow().select(c.column_names).cast(c.schema())


def _gate(
    settings: Settings, lake: Lake, table: str, arrow: pa.Table, now: datetime, vector_size: int
) -> list[str]:
    """Failures of `table`'s suite on the batch (nothing to check when it is empty)."""
    if arrow.num_rows == 0:
        return []
    from atelier.feast_store import gate_checks
    from expectations.gate import validate_table

    products = lake.read_arrow("products", ["product_id"])["product_id"].to_pylist()
    result = validate_table(
        settings,
        table,
        arrow,
        row_count_band=(0, settings.gate.max_rows),
        reference_values={"product_id": products},
        now=now,
        list_checks=gate_checks(settings, table, vector_size=vector_size),
    )
    return [] if result.success else list(result.failures)


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


def _save_report(settings: Settings, report: dict) -> Path:
    folder = settings.reports_dir / "predict_attributes"
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=True)
    (folder / f"{report['run_id']}.json").write_text(text, encoding="utf-8")
    path = folder / "latest.json"
    path.write_text(text, encoding="utf-8")
    return path


def format_report(report: dict) -> str:
    """The run's counts as plain text (printed by the CLI and spark-submit)."""
    lines = [
        f"predict attributes (run {report['run_id']}): model {report['model_version']}, "
        f"{len(report['attributes'])} attributes, vector size {report['vector_size']}",
        f"products {report.get('products', 0)}: labels kept {report.get('labels_kept', 0)}, "
        f"predicted {report.get('predicted', 0)} ({report.get('score_seconds', 0)}s scoring)",
    ]
    for attribute, n in report.get("by_attribute", {}).items():
        lines.append(f"  {attribute:<32} label {n[LABEL]:>7}  predicted {n[PREDICTED]:>7}")
    for table in ("predicted_attributes", "attribute_vectors"):
        t = report.get(table)
        if t:
            version = "-" if t.get("version") is None else t["version"]
            lines.append(
                f"{table:<21} written {t['written']} (ins. {t['inserted']}, upd. "
                f"{t['updated']})  version {version}"
            )
    if report.get("published"):
        lines.append(f"published ({report.get('seconds', 0)}s in all)")
    else:
        lines.append("NOT published: " + "; ".join(report.get("failures", [])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`spark-submit spark_jobs/predict_attributes.py [--workdir W] [--model-uri URI]`."""
    from atelier.logs import setup_logging
    from atelier.settings import load_settings

    p = argparse.ArgumentParser(
        prog="spark_jobs/predict_attributes.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--workdir", type=Path)
    p.add_argument("--model-uri", help="MLflow model URI (default: the attribute model's champion)")
    args = p.parse_args(argv)
    setup_logging()
    settings = load_settings(workdir=args.workdir)
    try:
        report = run_predict_attributes(settings, model_uri=args.model_uri)
    except GateFailure as e:
        print(format_report(e.report))
        return 2
    except (PredictError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0


if __name__ == "__main__":
    # Run the installed module rather than this file as __main__: Spark pickles __main__'s
    # functions by value, which would hand every task a fresh, empty bundle cache.
    from spark_jobs.predict_attributes import main as _main

    sys.exit(_main())
