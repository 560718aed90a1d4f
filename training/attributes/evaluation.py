"""Scoring the attribute heads the way the paper's Table 2 does (pure numpy/sklearn, no I/O
beyond the PNGs the plot functions are asked to write).

Every attribute is scored on its own labelled test products: weighted F1 (per-class F1 weighted by
class support), accuracy, and the majority-class baseline accuracy, i.e. the accuracy of always
predicting the most frequent class of the training labels. `report` assembles them in the
`attributes.json` shape of ARCHITECTURE.md.

Confidence you can act on: `coverage_at_precision` finds the confidence threshold that fills
the most products at a target precision, `expected_calibration_error` says how far confidence
is from accuracy, and `confidence_report` gives both per attribute for the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from atelier.figures import png_figure

MISSING = -1  # label of a product not labelled for an attribute
METRIC_KEYS = ("weighted_f1", "accuracy", "baseline_accuracy", "support", "classes")


def _labels(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape!r}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {array.dtype!r}")
    return array.astype(np.int64)


def _n_classes(classes) -> int:
    if isinstance(classes, bool):
        raise ValueError(f"classes must be a count or a sequence of class names, got {classes!r}")
    if isinstance(classes, int | np.integer):
        count = int(classes)
    elif isinstance(classes, Sequence | np.ndarray):
        count = len(classes)
    else:
        raise ValueError(f"classes must be a count or a sequence of class names, got {classes!r}")
    if count < 1:
        raise ValueError(f"an attribute needs at least one class, got {classes!r}")
    return count


def _labelled(y_true, y_pred, classes) -> tuple[np.ndarray, np.ndarray, int]:
    """(y_true, y_pred, number of classes) of the labelled rows (y_true != -1); ValueError for
    lengths that differ or ids outside [0, number of classes)."""
    y_true = _labels(y_true, "y_true")
    y_pred = _labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred differ in length: {y_true.shape[0]} vs {y_pred.shape[0]}"
        )
    n_classes = _n_classes(classes)
    labelled = y_true != MISSING
    y_true, y_pred = y_true[labelled], y_pred[labelled]
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        bad = values[(values < 0) | (values >= n_classes)]
        if bad.size:
            raise ValueError(f"{name} holds ids outside [0, {n_classes}): {sorted(set(bad))[:5]!r}")
    return y_true, y_pred, n_classes


def attribute_metrics(y_true, y_pred, classes, train_labels=None) -> dict:
    """Table 2 metrics of one attribute.

    `y_true`, `y_pred`: (n,) integer class ids; rows with `y_true == -1` (unlabelled) are dropped.
    `classes`: the attribute's number of classes, or its class names. The majority class of the
    baseline comes from `train_labels` (missing ones ignored) when given, else from `y_true`.
    Returns `{"weighted_f1", "accuracy", "baseline_accuracy", "support", "classes"}`.
    """
    from sklearn.metrics import accuracy_score, f1_score

    y_true, y_pred, n_classes = _labelled(y_true, y_pred, classes)
    if y_true.size == 0:
        raise ValueError("no labelled test products: every y_true is missing (-1)")

    reference = y_true
    if train_labels is not None:
        reference = _labels(train_labels, "train_labels")
        reference = reference[reference != MISSING]
        if reference.size == 0:
            raise ValueError("train_labels has no labelled products to take a majority from")
    # ties go to the lowest class id, so the baseline is deterministic
    majority = int(np.argmax(np.bincount(reference, minlength=n_classes)))

    return {
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "baseline_accuracy": float(np.mean(y_true == majority)),
        "support": int(y_true.size),
        "classes": n_classes,
    }


def _check_metrics(per_attribute: Mapping[str, Mapping], where: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for attribute, metrics in per_attribute.items():
        keys = set(metrics)
        if keys != set(METRIC_KEYS):
            raise ValueError(
                f"{where}[{attribute!r}] must have keys {sorted(METRIC_KEYS)!r}, "
                f"got {sorted(keys)!r}"
            )
        out[attribute] = {
            "weighted_f1": float(metrics["weighted_f1"]),
            "accuracy": float(metrics["accuracy"]),
            "baseline_accuracy": float(metrics["baseline_accuracy"]),
            "support": int(metrics["support"]),
            "classes": int(metrics["classes"]),
        }
    return out


def report(
    per_attribute: Mapping[str, Mapping], baselines: Mapping[str, Mapping[str, Mapping]]
) -> dict:
    """The `attributes.json` report: `{"mean_weighted_f1", "attributes", "baselines"}`.

    `per_attribute`: attribute → `attribute_metrics` dict of the model; `baselines`: baseline name
    (e.g. `"tfidf_lr"`) → attribute → metrics of the same shape. `mean_weighted_f1` is the
    unweighted mean of the model's weighted F1 over attributes.
    """
    if not per_attribute:
        raise ValueError("per_attribute must hold at least one attribute, got {}")
    attributes = _check_metrics(per_attribute, "per_attribute")
    return {
        "mean_weighted_f1": float(np.mean([m["weighted_f1"] for m in attributes.values()])),
        "attributes": attributes,
        "baselines": {
            name: _check_metrics(metrics, f"baselines[{name!r}]")
            for name, metrics in baselines.items()
        },
    }


def markdown_table(report: Mapping) -> str:
    """Table 2 as Markdown: one row per attribute of `report` (the `report()` dict)."""
    lr = report.get("baselines", {}).get("tfidf_lr", {})
    lines = [
        "| attribute | #samples | #classes | weighted F1 | accuracy | baseline accuracy "
        "| TF-IDF+LR weighted F1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for attribute, m in report["attributes"].items():
        lr_f1 = f"{lr[attribute]['weighted_f1']:.3f}" if attribute in lr else "–"
        lines.append(
            f"| {attribute} | {m['support']} | {m['classes']} | {m['weighted_f1']:.3f} "
            f"| {m['accuracy']:.3f} | {m['baseline_accuracy']:.3f} | {lr_f1} |"
        )
    lines.append(f"\nMean weighted F1: {report['mean_weighted_f1']:.3f}")
    return "\n".join(lines) + "\n"


def normalised_confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) confusion matrix, row = true class, normalised so each row sums to
    1; a class absent from `y_true` gets a row of zeros. Missing labels (-1) are dropped."""
    y_true, y_pred, n_classes = _labelled(y_true, y_pred, n_classes)
    counts = np.zeros((n_classes, n_classes), dtype=np.float64)
    np.add.at(counts, (y_true, y_pred), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def plot_confusion(matrix, class_names: Sequence[str], path) -> Path:
    """Write a heat map of a (normalised) confusion matrix to the PNG `path`; returns the path."""
    matrix = np.asarray(matrix, dtype=np.float64)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"matrix must be ({k}, {k}) for {k} class names, got {matrix.shape!r}")
    size = max(4.0, 0.5 * k + 2.0)
    with png_figure(path, figsize=(size, size)) as (fig, ax):
        image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=max(1.0, float(matrix.max())))
        ax.set_xticks(range(k), labels=list(class_names), rotation=90)
        ax.set_yticks(range(k), labels=list(class_names))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return Path(path)


def plot_curves(curves: Mapping[str, Sequence[tuple[int, float, float]]], path) -> Path:
    """Weighted F1 against training step, train (dashed) and validation (solid) per attribute.

    `curves`: attribute → [(step, train_weighted_f1, validation_weighted_f1), ...]. Writes a
    PNG. The test split is not on it: it is scored once, on the kept checkpoint."""
    if not curves:
        raise ValueError("curves must hold at least one attribute, got {}")
    with png_figure(path, figsize=(8, 5)) as (fig, ax):
        for i, (attribute, points) in enumerate(curves.items()):
            points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
            colour = f"C{i % 10}"
            ax.plot(points[:, 0], points[:, 1], "--", color=colour, label=f"{attribute} (train)")
            label = f"{attribute} (validation)"
            ax.plot(points[:, 0], points[:, 2], "-", color=colour, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("weighted F1")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
    return Path(path)


# -- confidence you can act on ---------------------------------------------------------------
CONFIDENCE_TARGETS = (0.90, 0.95)
CALIBRATION_BINS = 15


def _scored(y_true, probabilities) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) of the labelled rows: max probability and whether its arg-max is
    the label. Unlabelled rows (-1) are dropped."""
    y_true = _labels(y_true, "y_true")
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != y_true.shape[0] or probs.shape[1] < 1:
        raise ValueError(
            f"probabilities must be ({y_true.shape[0]}, classes) for {y_true.shape[0]} labels, "
            f"got shape {probs.shape!r}"
        )
    labelled = y_true != MISSING
    y_true, probs = y_true[labelled], probs[labelled]
    if not np.isfinite(probs).all():
        raise ValueError("probabilities of labelled rows must be finite (no NaN: not applicable)")
    bad = y_true[(y_true < 0) | (y_true >= probs.shape[1])]
    if bad.size:
        raise ValueError(
            f"y_true holds ids outside [0, {probs.shape[1]}): {sorted(set(bad))[:5]!r}"
        )
    return probs.max(axis=1), probs.argmax(axis=1) == y_true


def _check_targets(targets) -> tuple[float, ...]:
    targets = tuple(float(t) for t in targets)
    if not targets or any(not 0.0 < t <= 1.0 for t in targets):
        raise ValueError(f"targets must be precisions in (0, 1], got {targets!r}")
    return targets


def coverage_at_precision(y_true, probabilities, targets=CONFIDENCE_TARGETS) -> dict[float, dict]:
    """How much of the catalogue a confidence threshold can fill at a target precision.

    `y_true`: (n,) class ids (-1: unlabelled, dropped); `probabilities`: (n, classes). A product
    is filled with its arg-max when its confidence (max probability) is >= the threshold. For
    each target precision the threshold is the lowest confidence at which the filled products'
    precision is still >= the target (the largest such coverage). Returns target →
    `{"threshold", "coverage" (share of products filled), "precision", "n" (products filled)}`;
    threshold and precision are None, coverage and n 0, when no threshold reaches the target.
    """
    targets = _check_targets(targets)
    confidence, correct = _scored(y_true, probabilities)
    if confidence.size == 0:
        raise ValueError("no labelled products: every y_true is missing (-1)")
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    filled = np.arange(1, confidence.size + 1)
    precision = np.cumsum(correct) / filled
    # A threshold fills every product of equal confidence: cut only after the last of a tie.
    cut = np.append(confidence[1:] < confidence[:-1], True)
    out = {}
    for target in targets:
        ok = np.flatnonzero(cut & (precision >= target))
        if ok.size == 0:
            out[target] = {"threshold": None, "coverage": 0.0, "precision": None, "n": 0}
            continue
        i = int(ok[-1])
        out[target] = {
            "threshold": float(confidence[i]),
            "coverage": float(filled[i] / confidence.size),
            "precision": float(precision[i]),
            "n": int(filled[i]),
        }
    return out


def expected_calibration_error(
    y_true, probabilities, bins: int = CALIBRATION_BINS
) -> tuple[float, list[dict]]:
    """Expected calibration error over `bins` equal-width confidence bins, and the bins.

    Confidence is the max probability; bin b holds confidences in (b/bins, (b+1)/bins]. ECE is
    sum over bins of (count / n) * |accuracy - mean confidence|. The table has one dict per bin,
    `{"lower", "upper", "confidence", "accuracy", "count"}` (confidence and accuracy None when
    empty): the points of a reliability diagram. Unlabelled rows (-1) are dropped.
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    confidence, correct = _scored(y_true, probabilities)
    if confidence.size == 0:
        raise ValueError("no labelled products: every y_true is missing (-1)")
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    correct_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    table, ece = [], 0.0
    for b in range(bins):
        n = int(counts[b])
        mean_conf = conf_sum[b] / n if n else None
        accuracy = correct_sum[b] / n if n else None
        if n:
            ece += n / confidence.size * abs(accuracy - mean_conf)
        table.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "confidence": None if mean_conf is None else float(mean_conf),
                "accuracy": None if accuracy is None else float(accuracy),
                "count": n,
            }
        )
    return float(ece), table


def _percent(target: float) -> str:
    return f"{100 * target:g}"


def confidence_report(
    labelled: Mapping[str, tuple[np.ndarray, np.ndarray]],
    targets=CONFIDENCE_TARGETS,
    bins: int = CALIBRATION_BINS,
) -> dict[str, dict]:
    """The report's `confidence` block: attribute → {"ece", "coverage_at_90",
    "threshold_at_90", "precision_at_90", "coverage_at_95", ..., "bins"} (one coverage,
    threshold and precision per target; `bins`: the reliability table).

    `labelled`: attribute → (y_true (n,), probabilities (n, classes)); unlabelled rows (-1) are
    dropped and an attribute without labelled rows is left out.
    """
    targets = _check_targets(targets)
    out = {}
    for attribute, (y_true, probabilities) in labelled.items():
        if not (_labels(y_true, "y_true") != MISSING).any():
            continue
        ece, table = expected_calibration_error(y_true, probabilities, bins)
        block: dict = {"ece": ece}
        for target, c in coverage_at_precision(y_true, probabilities, targets).items():
            block[f"coverage_at_{_percent(target)}"] = c["coverage"]
            block[f"threshold_at_{_percent(target)}"] = c["threshold"]
            block[f"precision_at_{_percent(target)}"] = c["precision"]
        block["bins"] = table
        out[attribute] = block
    return out


def plot_reliability(per_attribute_bins: Mapping[str, Sequence[Mapping]], path) -> Path:
    """Reliability diagram: accuracy against mean confidence of each non-empty bin, one line per
    attribute, with the diagonal of perfect calibration. `per_attribute_bins`: attribute → the
    table of `expected_calibration_error`. Writes a PNG; returns the path."""
    if not per_attribute_bins:
        raise ValueError("per_attribute_bins must hold at least one attribute, got {}")
    with png_figure(path, figsize=(6, 6)) as (fig, ax):
        ax.plot([0.0, 1.0], [0.0, 1.0], ":", color="grey", label="perfect calibration")
        for i, (attribute, table) in enumerate(per_attribute_bins.items()):
            points = [(b["confidence"], b["accuracy"]) for b in table if b["count"]]
            if not points:
                continue
            x, y = zip(*points)
            ax.plot(x, y, "o-", color=f"C{i % 10}", markersize=4, label=attribute)
        ax.set_xlabel("confidence (mean max probability in the bin)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return Path(path)
