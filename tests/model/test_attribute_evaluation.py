"""Table 2 metrics, the attributes.json report, confidence (coverage at precision,
calibration), plots and the TF-IDF + LR baseline."""

from __future__ import annotations

import numpy as np
import pytest

from training.attributes.baseline import tfidf_lr_baseline
from training.attributes.evaluation import (
    METRIC_KEYS,
    attribute_metrics,
    confidence_report,
    coverage_at_precision,
    expected_calibration_error,
    markdown_table,
    normalised_confusion,
    plot_confusion,
    plot_curves,
    plot_reliability,
    report,
)

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 6 test products, 3 classes
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]
# per class F1: 0 → P 1, R 2/3, F1 0.8 (support 3); 1 → P 1/2, R 1/2, F1 0.5 (support 2);
# 2 → P 1/2, R 1, F1 2/3 (support 1); weighted = (3*0.8 + 2*0.5 + 1*2/3) / 6
WEIGHTED_F1 = (3 * 0.8 + 2 * 0.5 + 2 / 3) / 6


def _metrics(f1: float, support: int = 10, classes: int = 3) -> dict:
    return {
        "weighted_f1": f1,
        "accuracy": f1 + 0.05,
        "baseline_accuracy": 0.3,
        "support": support,
        "classes": classes,
    }


def test_metrics_match_hand_computed_values():
    m = attribute_metrics(Y_TRUE, Y_PRED, 3)
    assert METRIC_KEYS == ("weighted_f1", "accuracy", "baseline_accuracy", "support", "classes")
    assert tuple(m) == METRIC_KEYS
    assert m["weighted_f1"] == pytest.approx(WEIGHTED_F1)
    assert m["weighted_f1"] == pytest.approx(0.677777, abs=1e-5)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["baseline_accuracy"] == pytest.approx(3 / 6)  # majority of y_true is class 0
    assert m["support"] == 6
    assert m["classes"] == 3
    assert attribute_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"])["classes"] == 3


def test_baseline_accuracy_uses_train_majority_and_missing_labels_are_dropped():
    train = [2, 2, 2, 1, -1, -1, -1, -1]  # class 2 is the train majority despite -1s
    m = attribute_metrics(Y_TRUE, Y_PRED, 3, train_labels=train)
    assert m["baseline_accuracy"] == pytest.approx(1 / 6)
    with_missing = attribute_metrics(Y_TRUE + [-1, -1], Y_PRED + [0, 1], 3)
    assert with_missing == attribute_metrics(Y_TRUE, Y_PRED, 3)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        attribute_metrics([0, 1], [0], 2)
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        attribute_metrics([0, 1], [0, 5], 2)
    with pytest.raises(ValueError, match="no labelled"):
        attribute_metrics([-1, -1], [0, 1], 2)


def test_report_has_the_attributes_json_shape_and_mean():
    model = {"colour": _metrics(0.8), "pattern": _metrics(0.5, support=7, classes=4)}
    lr = {"colour": _metrics(0.6), "pattern": _metrics(0.4, support=7, classes=4)}
    rep = report(model, {"tfidf_lr": lr})
    assert list(rep) == ["mean_weighted_f1", "attributes", "baselines"]
    assert rep["mean_weighted_f1"] == pytest.approx(0.65)
    assert rep["attributes"] == model
    assert rep["baselines"] == {"tfidf_lr": lr}
    for metrics in [*rep["attributes"].values(), *rep["baselines"]["tfidf_lr"].values()]:
        assert tuple(metrics) == METRIC_KEYS
        assert isinstance(metrics["support"], int) and isinstance(metrics["classes"], int)
    with pytest.raises(ValueError, match="must have keys"):
        report({"colour": {"weighted_f1": 0.5}}, {})


def test_markdown_table_has_one_row_per_attribute():
    model = {"colour": _metrics(0.8), "pattern": _metrics(0.5, support=7, classes=4)}
    lr = {"colour": _metrics(0.6)}
    table = markdown_table(report(model, {"tfidf_lr": lr}))
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| attribute | #samples | #classes | weighted F1")
    assert "TF-IDF+LR weighted F1" in rows[0]
    assert len(rows) == 1 + 2
    assert rows[1] == "| colour | 10 | 3 | 0.800 | 0.850 | 0.300 | 0.600 |"
    assert rows[2] == "| pattern | 7 | 4 | 0.500 | 0.550 | 0.300 | – |"
    assert "Mean weighted F1: 0.650" in table


def test_normalised_confusion_rows_sum_to_one_and_empty_rows_are_zero():
    matrix = normalised_confusion(Y_TRUE, Y_PRED, 4)  # class 3 never occurs
    assert matrix.shape == (4, 4)
    np.testing.assert_allclose(matrix[:3].sum(axis=1), 1.0)
    np.testing.assert_array_equal(matrix[3], np.zeros(4))
    np.testing.assert_allclose(matrix[0], [2 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(matrix[1], [0, 0.5, 0.5, 0])
    np.testing.assert_allclose(matrix[2], [0, 0, 1, 0])


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1024


def test_plots_write_valid_pngs(tmp_path):
    matrix = normalised_confusion(Y_TRUE, Y_PRED, 3)
    confusion = plot_confusion(matrix, ["red", "green", "blue"], tmp_path / "plots" / "cm.png")
    _assert_png(confusion)
    curves = {
        "colour": [(0, 0.1, 0.1), (100, 0.5, 0.4), (200, 0.8, 0.6)],
        "pattern": [(0, 0.2, 0.2), (100, 0.4, 0.35), (200, 0.6, 0.5)],
    }
    _assert_png(plot_curves(curves, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(matrix, ["red", "green"], tmp_path / "bad.png")


def _separable_task(n: int, n_classes: int, vocab: int, rng: np.random.Generator):
    """Each class owns a block of words; a product's TF-IDF mass sits mostly on its class block."""
    labels = rng.integers(0, n_classes, size=n)
    # skew the class frequencies so the majority baseline is well defined and < 1
    labels[: n // 3] = 0
    x = rng.random((n, vocab)).astype(np.float32) * 0.1
    block = vocab // n_classes
    for i, label in enumerate(labels):
        x[i, label * block : (label + 1) * block] += 1.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def test_lr_baseline_beats_majority_and_skips_missing_labels():
    rng = np.random.default_rng(0)
    x_train, colour_train = _separable_task(120, 3, 30, rng)
    x_test, colour_test = _separable_task(60, 3, 30, rng)
    # a second attribute, labelled for only some products; the rest are missing (-1)
    size_train = np.where(np.arange(120) % 3 == 0, -1, colour_train % 2)
    size_test = np.where(np.arange(60) % 4 == 0, -1, colour_test % 2)
    train = {"colour": colour_train, "size": size_train}
    test = {"colour": colour_test, "size": size_test}

    results = tfidf_lr_baseline(x_train, train, x_test, test, seed=0)
    assert list(results) == ["colour", "size"]
    colour, size = results["colour"], results["size"]
    assert colour["support"] == 60 and colour["classes"] == 3
    assert size["support"] == int(np.sum(size_test != -1)) == 45
    assert size["classes"] == 2
    for m in (colour, size):
        assert m["accuracy"] > m["baseline_accuracy"] + 0.2
        assert m["weighted_f1"] > 0.9
    majority = np.bincount(colour_train).argmax()
    assert colour["baseline_accuracy"] == pytest.approx(np.mean(colour_test == majority))
    assert tfidf_lr_baseline(x_train, train, x_test, test, seed=0) == results


# -- confidence you can act on ---------------------------------------------------------------
def _ranked(confidences, correct, n_classes: int = 3):
    """(y_true, probabilities) whose arg-max is class 0 with the given confidence; the label is
    0 where `correct`, else 1."""
    probs = np.array([[c] + [(1.0 - c) / (n_classes - 1)] * (n_classes - 1) for c in confidences])
    y_true = np.where(np.asarray(correct), 0, 1)
    return y_true, probs


# confidence, correct, in descending confidence; running precision:
# 1, 1, 1, 1, 4/5, 5/6, 6/7, 6/8, 6/9, 7/10
RANKING = [
    (0.99, True),
    (0.95, True),
    (0.90, True),
    (0.85, True),
    (0.80, False),
    (0.75, True),
    (0.70, True),
    (0.60, False),
    (0.55, False),
    (0.50, True),
]


def test_coverage_at_precision_takes_the_lowest_threshold_that_holds_the_target():
    confidences, correct = zip(*RANKING)
    y_true, probs = _ranked(confidences, correct)
    # shuffled input: the ranking comes from the confidences, not the order
    perm = np.random.default_rng(0).permutation(len(y_true))
    got = coverage_at_precision(y_true[perm], probs[perm], targets=(0.8, 0.9, 0.7))
    assert list(got) == [0.8, 0.9, 0.7]
    # 0.8: the top 7 have precision 6/7 >= 0.8; the top 8 only 6/8 < 0.8
    assert got[0.8] == {
        "threshold": pytest.approx(0.70),
        "coverage": 0.7,
        "precision": pytest.approx(6 / 7),
        "n": 7,
    }
    # 0.9: the top 4 are all right; 4/5 falls below
    assert got[0.9] == {"threshold": pytest.approx(0.85), "coverage": 0.4, "precision": 1.0, "n": 4}
    # 0.7: 7/10 = 0.7 exactly holds, so every product is filled
    assert got[0.7] == {
        "threshold": pytest.approx(0.50),
        "coverage": 1.0,
        "precision": pytest.approx(0.7),
        "n": 10,
    }
    # unlabelled rows (-1) are ignored
    y_more = np.append(y_true, [-1, -1])
    p_more = np.vstack([probs, [[0.98, 0.01, 0.01], [0.4, 0.3, 0.3]]])
    assert coverage_at_precision(y_more, p_more, targets=(0.9,)) == {0.9: got[0.9]}


def test_coverage_at_precision_keeps_ties_together_and_reports_no_threshold():
    # 0.9 x3 right, then two at 0.8: one right, one wrong. A threshold of 0.8 fills both
    # (precision 4/5), so the 0.9 target stops at 0.9 although the top 4 rows are all right.
    y_true, probs = _ranked([0.9, 0.9, 0.9, 0.8, 0.8], [True, True, True, True, False])
    got = coverage_at_precision(y_true, probs, targets=(0.9, 0.8))
    assert got[0.9] == {"threshold": pytest.approx(0.9), "coverage": 0.6, "precision": 1.0, "n": 3}
    assert got[0.8] == {
        "threshold": pytest.approx(0.8),
        "coverage": 1.0,
        "precision": pytest.approx(0.8),
        "n": 5,
    }
    # the most confident prediction is wrong: no threshold reaches 0.9 (best is 1/2)
    y_true, probs = _ranked([0.9, 0.8], [False, True])
    assert coverage_at_precision(y_true, probs, targets=(0.9,)) == {
        0.9: {"threshold": None, "coverage": 0.0, "precision": None, "n": 0}
    }
    with pytest.raises(ValueError, match=r"targets must be precisions in \(0, 1\]"):
        coverage_at_precision(y_true, probs, targets=(0.0,))
    with pytest.raises(ValueError, match="no labelled"):
        coverage_at_precision([-1, -1], probs)
    with pytest.raises(ValueError, match="must be finite"):
        coverage_at_precision([0, 1], [[np.nan, np.nan], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"must be \(2, classes\)"):
        coverage_at_precision([0, 1], [0.5, 0.5])


def _binary(confidence: float, n: int, n_correct: int):
    probs = np.tile([confidence, 1.0 - confidence], (n, 1))
    y_true = np.array([0] * n_correct + [1] * (n - n_correct))
    return y_true, probs


def test_ece_is_zero_when_accuracy_matches_confidence():
    y1, p1 = _binary(0.8, 10, 8)
    y2, p2 = _binary(0.6, 5, 3)
    ece, table = expected_calibration_error(np.concatenate([y1, y2]), np.vstack([p1, p2]), bins=5)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert len(table) == 5
    # 0.6 falls in (0.4, 0.6], 0.8 in (0.6, 0.8]
    assert table[2] == {
        "lower": 0.4,
        "upper": 0.6,
        "confidence": pytest.approx(0.6),
        "accuracy": pytest.approx(0.6),
        "count": 5,
    }
    assert table[3]["count"] == 10 and table[3]["accuracy"] == pytest.approx(0.8)
    assert table[0] == {
        "lower": 0.0,
        "upper": 0.2,
        "confidence": None,
        "accuracy": None,
        "count": 0,
    }


def test_ece_of_an_overconfident_model():
    # half the products at confidence 0.9 but only 50% right (gap 0.4), half calibrated at 0.6
    y1, p1 = _binary(0.9, 10, 5)
    y2, p2 = _binary(0.6, 10, 6)
    y, p = np.concatenate([y1, y2]), np.vstack([p1, p2])
    ece, table = expected_calibration_error(y, p, bins=5)
    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.0)
    assert table[4]["confidence"] == pytest.approx(0.9)
    assert table[4]["accuracy"] == pytest.approx(0.5)
    # 15 bins (the default): the same bins are non-empty, the same ECE
    ece15, table15 = expected_calibration_error(y, p)
    assert len(table15) == 15 and ece15 == pytest.approx(0.2)
    assert sum(b["count"] for b in table15) == 20
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        expected_calibration_error(y, p, bins=0)


def test_confidence_report_has_one_block_per_labelled_attribute(tmp_path):
    confidences, correct = zip(*RANKING)
    colour = _ranked(confidences, correct)
    pattern = _binary(0.9, 10, 5)
    got = confidence_report(
        {"colour": colour, "pattern": pattern, "fit": ([-1, -1], np.full((2, 2), 0.5))}
    )
    assert list(got) == ["colour", "pattern"]  # fit has no labelled row
    c = got["colour"]
    assert list(c) == [
        "ece",
        "coverage_at_90",
        "threshold_at_90",
        "precision_at_90",
        "coverage_at_95",
        "threshold_at_95",
        "precision_at_95",
        "bins",
    ]
    assert c["coverage_at_90"] == 0.4 and c["threshold_at_90"] == pytest.approx(0.85)
    assert c["coverage_at_95"] == 0.4 and c["precision_at_95"] == 1.0
    assert c["ece"] == pytest.approx(expected_calibration_error(*colour)[0])
    assert len(c["bins"]) == 15
    # pattern: 50% right at one confidence, no threshold reaches 90%
    p = got["pattern"]
    assert (p["coverage_at_90"], p["threshold_at_90"], p["precision_at_90"]) == (0.0, None, None)
    assert p["ece"] == pytest.approx(0.4)

    png = plot_reliability({a: b["bins"] for a, b in got.items()}, tmp_path / "r" / "rel.png")
    _assert_png(png)
    with pytest.raises(ValueError, match="at least one attribute"):
        plot_reliability({}, tmp_path / "empty.png")
