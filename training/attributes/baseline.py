"""The paper's TF-IDF + logistic regression baseline: one multinomial LR per attribute on the
products' TF-IDF vectors (pure numpy/sklearn, deterministic for a seed).

The regularisation strength C is picked from a small grid by accuracy on a held-out slice of the
attribute's labelled training products, then the model is refitted on all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from training.attributes.evaluation import MISSING, attribute_metrics

C_GRID = (0.1, 1.0, 10.0)
HOLDOUT_FRACTION = 0.2
MAX_ITER = 1000


def _matrix(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (products, vocabulary) array, got {array.shape!r}")
    return array


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    # lbfgs fits the multinomial (softmax) model for multi-class targets
    return LogisticRegression(C=c, max_iter=MAX_ITER, solver="lbfgs", random_state=seed).fit(x, y)


class _Constant:
    """Stand-in model when the training labels hold a single class."""

    def __init__(self, label: int):
        self.label = label

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(x.shape[0], self.label, dtype=np.int64)


def select_c(x: np.ndarray, y: np.ndarray, seed: int, grid: Sequence[float] = C_GRID) -> float:
    """The C of `grid` with the best held-out accuracy (ties → the smaller C).

    The held-out slice is a seeded random `HOLDOUT_FRACTION` of the rows; when it is too small or
    the remaining rows hold a single class, the middle of the grid is returned."""
    grid = sorted(grid)
    default = grid[len(grid) // 2]
    n_holdout = int(round(HOLDOUT_FRACTION * len(y)))
    if n_holdout < 1 or len(y) - n_holdout < 2:
        return default
    order = np.random.default_rng(seed).permutation(len(y))
    held, fit = order[:n_holdout], order[n_holdout:]
    if np.unique(y[fit]).size < 2:
        return default
    scores = [
        float(np.mean(_fit(x[fit], y[fit], c, seed).predict(x[held]) == y[held])) for c in grid
    ]
    return grid[int(np.argmax(scores))]


def tfidf_lr_baseline(
    train_tfidf,
    train_labels: Mapping[str, np.ndarray],
    test_tfidf,
    test_labels: Mapping[str, np.ndarray],
    seed: int,
    classes: Mapping[str, int] | None = None,
) -> dict[str, dict]:
    """Per-attribute TF-IDF + LR scores, `{attribute: attribute_metrics(...)}`.

    `train_tfidf`: (n_train, vocab) dense float array; `train_labels[a]`: (n_train,) class ids with
    -1 for products not labelled for `a` (those rows are skipped); likewise for test. `classes[a]`
    is the attribute's class count (default: largest id seen in train or test + 1)."""
    x_train = _matrix(train_tfidf, "train_tfidf")
    x_test = _matrix(test_tfidf, "test_tfidf")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"train and test TF-IDF vocabularies differ: {x_train.shape[1]} vs {x_test.shape[1]}"
        )
    missing = sorted(set(train_labels) ^ set(test_labels))
    if missing:
        raise ValueError(f"attributes labelled in only one of train/test: {missing!r}")
    results: dict[str, dict] = {}
    for attribute in train_labels:
        y_train = np.asarray(train_labels[attribute]).astype(np.int64)
        y_test = np.asarray(test_labels[attribute]).astype(np.int64)
        if y_train.shape != (x_train.shape[0],) or y_test.shape != (x_test.shape[0],):
            raise ValueError(
                f"labels of {attribute!r} must have one entry per product: train "
                f"{y_train.shape!r} for {x_train.shape[0]}, test {y_test.shape!r} for "
                f"{x_test.shape[0]}"
            )
        train_rows = y_train != MISSING
        test_rows = y_test != MISSING
        if not train_rows.any() or not test_rows.any():
            raise ValueError(f"attribute {attribute!r} has no labelled train or test products")
        xa, ya = x_train[train_rows], y_train[train_rows]
        if np.unique(ya).size < 2:
            model = _Constant(int(ya[0]))
        else:
            model = _fit(xa, ya, select_c(xa, ya, seed), seed)
        n_classes = (
            int(classes[attribute])
            if classes is not None and attribute in classes
            else int(max(ya.max(), y_test[test_rows].max())) + 1
        )
        results[attribute] = attribute_metrics(
            y_test[test_rows], model.predict(x_test[test_rows]), n_classes, train_labels=ya
        )
    return results
