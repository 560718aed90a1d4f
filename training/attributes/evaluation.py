"""Scoring the attribute heads the way the paper's Table 2 does (pure numpy/sklearn, no I/O
beyond the PNGs the plot functions are asked to write).

Every attribute is scored on its own labelled test products: weighted F1 (per-class F1 weighted by
class support), accuracy, and the majority-class baseline accuracy, i.e. the accuracy of always
predicting the most frequent class of the training labels. `report` assembles them in the
`attributes.json` shape of ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

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


def attribute_metrics(y_true, y_pred, classes, train_labels=None) -> dict:
    """Table 2 metrics of one attribute.

    `y_true`, `y_pred`: (n,) integer class ids; rows with `y_true == -1` (unlabelled) are dropped.
    `classes`: the attribute's number of classes, or its class names. The majority class of the
    baseline comes from `train_labels` (missing ones ignored) when given, else from `y_true`.
    Returns `{"weighted_f1", "accuracy", "baseline_accuracy", "support", "classes"}`.
    """
    from sklearn.metrics import accuracy_score, f1_score

    y_true = _labels(y_true, "y_true")
    y_pred = _labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred differ in length: {y_true.shape[0]} vs {y_pred.shape[0]}"
        )
    n_classes = _n_classes(classes)
    labelled = y_true != MISSING
    y_true, y_pred = y_true[labelled], y_pred[labelled]
    if y_true.size == 0:
        raise ValueError("no labelled test products: every y_true is missing (-1)")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        bad = values[(values < 0) | (values >= n_classes)]
        if bad.size:
            raise ValueError(f"{name} holds ids outside [0, {n_classes}): {sorted(set(bad))[:5]!r}")

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
    y_true = _labels(y_true, "y_true")
    y_pred = _labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred differ in length: {y_true.shape[0]} vs {y_pred.shape[0]}"
        )
    n_classes = _n_classes(n_classes)
    labelled = y_true != MISSING
    y_true, y_pred = y_true[labelled], y_pred[labelled]
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        bad = values[(values < 0) | (values >= n_classes)]
        if bad.size:
            raise ValueError(f"{name} holds ids outside [0, {n_classes}): {sorted(set(bad))[:5]!r}")
    counts = np.zeros((n_classes, n_classes), dtype=np.float64)
    np.add.at(counts, (y_true, y_pred), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix, class_names: Sequence[str], path) -> Path:
    """Write a heat map of a (normalised) confusion matrix to the PNG `path`; returns the path."""
    matrix = np.asarray(matrix, dtype=np.float64)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"matrix must be ({k}, {k}) for {k} class names, got {matrix.shape!r}")
    plt = _pyplot()
    size = max(4.0, 0.5 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=max(1.0, float(matrix.max())))
        ax.set_xticks(range(k), labels=list(class_names), rotation=90)
        ax.set_yticks(range(k), labels=list(class_names))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def plot_curves(curves: Mapping[str, Sequence[tuple[int, float, float]]], path) -> Path:
    """Weighted F1 against training step, train (dashed) and test (solid) per attribute.

    `curves`: attribute → [(step, train_weighted_f1, test_weighted_f1), ...]. Writes a PNG."""
    if not curves:
        raise ValueError("curves must hold at least one attribute, got {}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    try:
        for i, (attribute, points) in enumerate(curves.items()):
            points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
            colour = f"C{i % 10}"
            ax.plot(points[:, 0], points[:, 1], "--", color=colour, label=f"{attribute} (train)")
            ax.plot(points[:, 0], points[:, 2], "-", color=colour, label=f"{attribute} (test)")
        ax.set_xlabel("step")
        ax.set_ylabel("weighted F1")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
