"""`atelier train attributes` and `atelier evaluate attributes`: the stage functions.

Training reads Feast and the lake, trains the full model and its ablations, scores them against
the majority and TF-IDF + LR baselines, writes the report (JSON, Markdown, PNG), logs it all to
MLflow and registers the model bundle as the `challenger`. Evaluation scores a registered model
on another labelled catalogue, built in a scratch workdir with the same feature jobs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from atelier.locks import locked
from training.attributes.data import LabelPlan, TrainingSet, load_training_set, prepare_labels
from training.attributes.evaluation import (
    attribute_metrics,
    confidence_report,
    markdown_table,
    normalised_confusion,
    plot_confusion,
    plot_curves,
    plot_reliability,
    report,
)
from training.attributes.schedule import MISSING
from training.attributes.trainer import evaluate, train_model

if TYPE_CHECKING:  # pragma: no cover
    from atelier.settings import EmbedSettings, Settings

log = logging.getLogger("atelier.attributes")

REPO_ROOT = Path(__file__).resolve().parents[2]
METRIC = "mean_weighted_f1"
# Figure 5's ablations plus colour: "no_image" drops everything seen in the image (VGG16 and the
# colour descriptor), "no_colour" only the descriptor.
ABLATIONS = {
    "no_image": {"use_image": False, "use_colour": False},
    "no_text": {"use_text": False},
    "no_metadata": {"use_metadata": False},
    "no_colour": {"use_colour": False},
}


def git_commit() -> str:
    """The repository's HEAD commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def device() -> str:
    """ "GPU" when TensorFlow sees one (training then runs there), else "CPU"."""
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def _train_kwargs(settings: Settings) -> dict:
    cfg = settings.attributes
    return dict(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=settings.seed,
        sizes=cfg.model.model_dump(),
        loss_weights=cfg.loss_weights,
        eval_every=cfg.eval_every,
        patience=cfg.patience,
        weight_decay=cfg.weight_decay,
    )


def tfidf_baseline(ts: TrainingSet, plan: LabelPlan, seed: int) -> dict[str, dict]:
    """TF-IDF + logistic regression per attribute on the same split, labels and text."""
    from training.attributes.baseline import tfidf_lr_baseline

    if ts.tfidf is None:
        return {}
    train, test = ~ts.is_test, ts.is_test
    attributes = [
        a
        for a in plan.classes
        if (plan.train[a][train] >= 0).any() and (plan.test[a][test] >= 0).any()
    ]
    return tfidf_lr_baseline(
        ts.tfidf[train],
        {a: plan.train[a][train] for a in attributes},
        ts.tfidf[test],
        {a: plan.test[a][test] for a in attributes},
        seed=seed,
        classes={a: len(plan.classes[a]) for a in attributes},
    )


def write_report(
    out_dir: Path,
    result: dict,
    pairs: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: dict[str, list[str]],
    curves: dict | None = None,
) -> list[Path]:
    """attributes.json, attributes.md, confusion_<attribute>.png, curves.png and, when `result`
    has a `confidence` block, reliability.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "attributes.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    (out_dir / "attributes.md").write_text(summary_markdown(result))
    files = [out_dir / "attributes.json", out_dir / "attributes.md"]
    for attribute, (y_true, y_pred) in pairs.items():
        matrix = normalised_confusion(y_true, y_pred, len(classes[attribute]))
        files.append(
            plot_confusion(matrix, classes[attribute], out_dir / f"confusion_{attribute}.png")
        )
    if curves:
        files.append(plot_curves(curves, out_dir / "curves.png"))
    reliability = {a: c["bins"] for a, c in result.get("confidence", {}).items()}
    if reliability:
        files.append(plot_reliability(reliability, out_dir / "reliability.png"))
    return files


def summary_markdown(result: dict) -> str:
    """Table 2, the ablations, confidence thresholds and what label hygiene did, as Markdown."""
    parts = ["# Attribute prediction (Table 2)\n", markdown_table(result)]
    lr = result.get("baselines", {}).get("tfidf_lr")
    if lr:
        lr_mean = np.mean([m["weighted_f1"] for m in lr.values()])
        parts.append(f"Mean weighted F1 of TF-IDF + LR: {lr_mean:.3f}\n")
    ablations = result.get("ablations")
    if ablations:
        parts.append("\n## Ablations (Figure 5): mean weighted F1\n")
        parts.append("| model | mean weighted F1 |\n|---|---:|")
        parts.extend(f"| {name} | {value:.3f} |" for name, value in ablations.items())
        parts.append("")
    confidence = result.get("confidence")
    if confidence:
        parts.append("\n## Confidence\n")
        parts.append(
            "Lowest confidence at which predicted values reach 90% / 95% precision on the test "
            "split, and the share of products it fills; ECE: expected calibration error "
            "(reliability.png). Use a threshold with `atelier predict attributes "
            "--min-confidence ATTRIBUTE=THRESHOLD`.\n"
        )
        parts.append(
            "| attribute | ECE | threshold at 90% | coverage at 90% | threshold at 95% "
            "| coverage at 95% |\n|---|---:|---:|---:|---:|---:|"
        )
        for attribute, c in confidence.items():
            cells = [f"{c['ece']:.3f}"]
            for target in ("90", "95"):
                threshold = c[f"threshold_at_{target}"]
                cells.append("–" if threshold is None else f"{threshold:.3f}")
                cells.append(f"{c[f'coverage_at_{target}']:.1%}")
            parts.append(f"| {attribute} | " + " | ".join(cells) + " |")
        parts.append("")
    plan = result.get("label_plan")
    if plan:
        parts.append("\n## Labels\n")
        parts.append(
            f"{plan['train_products']} training and {plan['test_products']} test products; "
            f"hidden fraction of training labels: {plan['hidden_fraction']}.\n"
        )
        for attribute, info in plan["attributes"].items():
            notes = []
            if info["grouped"]:
                notes.append(f"grouped into other: {', '.join(map(str, info['grouped']))}")
            if info["dropped"]:
                notes.append(f"dropped (too rare): {', '.join(map(str, info['dropped']))}")
            if info.get("test_unscorable"):
                notes.append(f"{info['test_unscorable']} test labels unscorable (value unseen)")
            if notes:
                parts.append(f"- {attribute}: " + "; ".join(notes))
        for attribute, why in plan.get("skipped", {}).items():
            parts.append(f"- {attribute}: no head ({why})")
    return "\n".join(parts) + "\n"


def flat_metrics(result: dict) -> dict[str, float]:
    out = {METRIC: result[METRIC]}
    for attribute, m in result["attributes"].items():
        for key in ("weighted_f1", "accuracy", "baseline_accuracy"):
            out[f"{attribute}.{key}"] = m[key]
    for name, per in result.get("baselines", {}).items():
        if per:
            out[f"{name}.{METRIC}"] = float(np.mean([m["weighted_f1"] for m in per.values()]))
    for name, value in result.get("ablations", {}).items():
        out[f"ablation.{name}"] = value
    for attribute, c in result.get("confidence", {}).items():
        for key in ("ece", "coverage_at_90", "coverage_at_95"):
            out[f"{attribute}.{key}"] = c[key]
    return out


@locked("train-attributes")
def train_attributes(
    settings: Settings,
    report_dir: Path | None = None,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Train, evaluate, log and register the attribute model; returns a summary dict
    (run_id, model_version, report_dir, report)."""
    import mlflow

    from atelier import registry
    from models.attributes.pyfunc import log_attribute_model

    cfg = settings.attributes
    say = progress or log.info
    t0 = time.perf_counter()
    ts = load_training_set(settings, now=now, with_tfidf=cfg.baseline)
    plan = prepare_labels(ts, cfg, settings.seed)
    say(f"training set: {len(ts)} products, heads {', '.join(plan.classes)}")
    report_dir = Path(report_dir or settings.reports_dir / "attributes")
    commit = git_commit()
    registry.configure(settings)
    with mlflow.start_run(run_name="attributes") as run:
        mlflow.set_tags(
            {
                "git_commit": commit,
                "feature_service": cfg.feature_service,
                "stage": "train-attributes",
            }
        )
        mlflow.log_params(_run_params(settings, ts, plan, commit))
        full = train_model(ts, plan, progress=say, **_train_kwargs(settings))
        result, pairs = _evaluate_run(settings, ts, plan, full, say)
        result["training"] = _training_summary(settings, ts, full, commit)
        result["curves"] = {a: [list(p) for p in pts] for a, pts in full.curves.items()}
        write_report(report_dir, result, pairs, plan.classes, full.curves)
        _log_run(result, full, report_dir)
        bundle = _bundle(settings, ts, plan, full, result, run.info.run_id, commit)
        info = log_attribute_model(bundle, name="model")
        version = registry.register(
            settings,
            info.model_uri,
            settings.mlflow.attributes_model,
            METRIC,
            result[METRIC],
            tags={"feature_service": cfg.feature_service, "git_commit": commit},
        )
    say(
        f"registered {settings.mlflow.attributes_model} version {version} as challenger "
        f"({METRIC} {result[METRIC]:.3f}) in {time.perf_counter() - t0:.0f}s"
    )
    return {
        "run_id": run.info.run_id,
        "model_version": version,
        "report_dir": str(report_dir),
        "report": result,
    }


def _run_params(settings: Settings, ts: TrainingSet, plan: LabelPlan, commit: str) -> dict:
    cfg = settings.attributes
    return {
        "feature_service": cfg.feature_service,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "optimizer": "SGD (no momentum)",
        "loss_weights": cfg.loss_weights,
        "min_value_count": cfg.min_value_count,
        "applicability_min_fraction": cfg.applicability_min_fraction,
        "test_fraction": cfg.test_fraction,
        "hidden_fraction": plan.report["hidden_fraction"],
        "max_shots": cfg.max_shots,
        "seed": settings.seed,
        "device": device(),
        "vocab_version": ts.vocab_version,
        "embedding_weights": ",".join(ts.embedding_weights),
        "git_commit": commit,
        "products": len(ts),
        **{f"model.{k}": v for k, v in cfg.model.model_dump().items()},
    }


def _evaluate_run(settings: Settings, ts: TrainingSet, plan: LabelPlan, full, say):
    """Table 2 on the test split (the baseline, confidence, ablations): (result, pairs)."""
    from models.attributes.model import predict_proba

    cfg = settings.attributes
    metrics, pairs = evaluate(full.model, ts, plan)
    baselines = {"tfidf_lr": tfidf_baseline(ts, plan, settings.seed)} if cfg.baseline else {}
    result = report(metrics, baselines)
    # Probabilities, not just the arg-max `evaluate` scores: thresholds to act on.
    test_rows = np.flatnonzero(np.any([plan.test[a] >= 0 for a in plan.classes], axis=0))
    probabilities = predict_proba(full.model, ts.rows(test_rows))
    result["confidence"] = confidence_report(
        {a: (plan.test[a][test_rows], probabilities[a]) for a in metrics}
    )
    result["ablations"] = {"full": result[METRIC]}
    if cfg.ablations:
        for name, switches in ABLATIONS.items():
            if name == "no_colour" and not full.config.has_colour:
                continue
            say(f"ablation {name}")
            ablated = train_model(ts, plan, **_train_kwargs(settings), curves=False, **switches)
            ab_metrics, _ = evaluate(ablated.model, ts, plan)
            result["ablations"][name] = float(
                np.mean([m["weighted_f1"] for m in ab_metrics.values()])
            )
    result["label_plan"] = plan.report
    return result, pairs


def _training_summary(settings: Settings, ts: TrainingSet, full, commit: str) -> dict:
    return {
        "steps": full.steps,
        "seconds": round(full.seconds, 2),
        "steps_per_second": round(full.steps_per_second, 2),
        "visits": full.visits,
        # Chosen on the validation split, never the test.
        "best_step": full.best_step,
        "best_validation_f1": full.best_validation_f1,
        "validation_f1": full.validation_f1,
        "stopped": full.stopped,
        "device": device(),
        "feature_service": settings.attributes.feature_service,
        "embedding_weights": ts.embedding_weights,
        "git_commit": commit,
    }


def _log_run(result: dict, full, report_dir: Path) -> None:
    """Metrics, learning curves (per step) and the report folder into the active MLflow run."""
    import mlflow

    mlflow.log_metrics(flat_metrics(result))
    mlflow.log_metric("steps_per_second", full.steps_per_second)
    for a, points in full.curves.items():
        for s, train_f1, val_f1 in points:
            mlflow.log_metric(f"{a}.train_weighted_f1", train_f1, step=s)
            mlflow.log_metric(f"{a}.validation_weighted_f1", val_f1, step=s)
    mlflow.log_artifacts(str(report_dir), artifact_path="report")


def _bundle(settings, ts: TrainingSet, plan: LabelPlan, full, result, run_id: str, commit: str):
    """The trained model with everything scoring needs (classes, vocabulary, provenance)."""
    from models.attributes.bundle import AttributeBundle, AttributeSpec

    return AttributeBundle(
        model=full.model,
        config=full.config,
        attributes={
            a: AttributeSpec(
                classes=plan.classes[a], grouping=plan.grouping[a], applies_to=plan.applies_to[a]
            )
            for a in plan.classes
        },
        vocabulary=ts.vocabulary,
        vocab_version=ts.vocab_version,
        sequence_length=ts.sequence_length,
        categories=ts.categories,
        max_shots=ts.max_shots,
        metadata={
            "feature_service": settings.attributes.feature_service,
            "embedding_weights": ts.embedding_weights,
            "embedding_weights_source": weights_source(settings.embed),
            "colour_descriptor_version": ts.colour_version,
            METRIC: result[METRIC],
            "run_id": run_id,
            "git_commit": commit,
            # Majority class of each head's training labels: the baseline of Table 2 when
            # the model is scored on another catalogue.
            "train_majority": {
                a: int(np.bincount(plan.train[a][plan.train[a] >= 0]).argmax())
                for a in plan.classes
            },
        },
    )


# -- evaluation on another catalogue --------------------------------------------------------
def catalogue_frame(settings: Settings):
    """One row per labelled product of a workdir's lake in the bundle's raw input form
    (product_id, embeddings per shot, colours of the same shots (None where a shot has no
    descriptor), text, type, brand, division) and its labels (wide)."""
    import pandas as pd

    from atelier.lake import Lake
    from atelier.text import product_text

    lake = Lake(settings)
    labels = lake.read_pandas("product_labels")
    products = lake.read_pandas(
        "products", ["product_id", "type", "brand", "division", "title", "description"]
    )
    products = products[products["product_id"].isin(set(labels["product_id"]))]
    products = products.sort_values("product_id").reset_index(drop=True)
    frame = pd.DataFrame(
        {
            "product_id": products["product_id"],
            "text": [
                product_text(t, d) for t, d in zip(products["title"], products["description"])
            ],
            "type": products["type"],
            "brand": products["brand"],
            "division": products["division"],
        }
    )
    embeddings, colours = {}, {}
    if lake.exists("image_embeddings"):
        images = lake.read_pandas("image_embeddings", ["product_id", "shot", "embedding"])
        if lake.exists("colour_features"):
            described = lake.read_pandas("colour_features", ["product_id", "shot", "colour"])
            images = images.merge(described, on=["product_id", "shot"], how="left")
        else:
            images["colour"] = None
        images = images.sort_values(["product_id", "shot"])
        embeddings = images.groupby("product_id")["embedding"].agg(list).to_dict()
        # Shot j's descriptor beside shot j's embedding, as the model was trained.
        colours = images.groupby("product_id")["colour"].agg(list).to_dict()
    frame["embeddings"] = [embeddings.get(p, []) for p in frame["product_id"]]
    frame["colours"] = [colours.get(p, []) for p in frame["product_id"]]
    wide = labels.pivot(index="product_id", columns="attribute", values="value")
    return frame, wide.reindex(frame["product_id"])


def score_bundle(bundle, frame, wide_labels) -> tuple[dict, dict, dict, dict]:
    """Table 2 metrics of a bundle on labelled products: (metrics, pairs, coverage,
    confidence), confidence as `confidence_report` gives it.

    Labels go through the bundle's grouping; a value the model cannot predict (unseen in its
    training) or a product type the attribute does not apply to is left out and counted."""
    probabilities = bundle.predict_proba(frame)
    metrics, pairs, coverage, scored = {}, {}, {}, {}
    for attribute, spec in bundle.attributes.items():
        if attribute not in wide_labels.columns:
            coverage[attribute] = {"labelled": 0}
            continue
        index = {c: i for i, c in enumerate(spec.classes)}
        values = wide_labels[attribute].to_numpy(dtype=object)
        y_true = np.array(
            [
                index.get(spec.grouping.get(str(v)))
                if isinstance(v, str) and spec.grouping.get(str(v)) in index
                else MISSING
                for v in values
            ],
            np.int64,
        )
        probs = probabilities[attribute]
        applicable = ~np.isnan(probs).any(axis=1)
        labelled = np.array([isinstance(v, str) for v in values])
        keep = (y_true >= 0) & applicable
        coverage[attribute] = {
            "labelled": int(labelled.sum()),
            "scored": int(keep.sum()),
            "unseen_value": int((labelled & (y_true < 0)).sum()),
            "not_applicable": int((labelled & (y_true >= 0) & ~applicable).sum()),
        }
        if not keep.any():
            continue
        y_pred = np.nan_to_num(probs[keep]).argmax(axis=1)
        # The majority baseline is the model's own training majority when known.
        train_majority = bundle.metadata.get("train_majority", {}).get(attribute)
        reference = None if train_majority is None else np.array([train_majority])
        metrics[attribute] = attribute_metrics(y_true[keep], y_pred, len(spec.classes), reference)
        pairs[attribute] = (y_true[keep], y_pred)
        scored[attribute] = (y_true[keep], probs[keep])
    return metrics, pairs, coverage, confidence_report(scored)


def weights_source(embed: EmbedSettings) -> str:
    """Where the embed weights come from, as a bundle records it: "imagenet", "random" or the
    file's absolute path (so that evaluation elsewhere can find it again)."""
    if embed.weights in ("imagenet", "random"):
        return embed.weights
    return str(Path(embed.weights).expanduser().resolve())
