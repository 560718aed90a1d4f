"""The training report's confidence block: Markdown section, MLflow metrics, reliability plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.attributes.evaluation import confidence_report, report
from training.attributes.pipeline import flat_metrics, summary_markdown, write_report

pytestmark = pytest.mark.unit


def _result() -> dict:
    # colour: 4 right at 0.9, one wrong at 0.6 -> 90% and 95% reached at 0.9 (coverage 80%)
    colour = (np.array([0, 0, 0, 0, 1]), np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]]))
    # pattern: the most confident prediction is wrong -> no threshold reaches 90%
    pattern = (np.array([1, 0]), np.array([[0.8, 0.2], [0.7, 0.3]]))
    metrics = {
        a: {
            "weighted_f1": 0.5,
            "accuracy": 0.5,
            "baseline_accuracy": 0.4,
            "support": len(y),
            "classes": 2,
        }
        for a, (y, _) in {"colour": colour, "pattern": pattern}.items()
    }
    result = report(metrics, {})
    result["confidence"] = confidence_report({"colour": colour, "pattern": pattern})
    return result, {
        a: (y, p.argmax(axis=1)) for a, (y, p) in [("colour", colour), ("pattern", pattern)]
    }


def test_confidence_section_metrics_and_reliability_plot(tmp_path):
    result, pairs = _result()
    colour = result["confidence"]["colour"]
    assert colour["threshold_at_90"] == pytest.approx(0.9) and colour["coverage_at_90"] == 0.8
    assert colour["ece"] == pytest.approx(0.8 * 0.1 + 0.2 * 0.6)

    text = summary_markdown(result)
    assert "## Confidence" in text
    assert "| attribute | ECE | threshold at 90% | coverage at 90% | threshold at 95% " in text
    assert "| colour | 0.200 | 0.900 | 80.0% | 0.900 | 80.0% |" in text
    assert "| pattern | 0.550 | – | 0.0% | – | 0.0% |" in text

    flat = flat_metrics(result)
    assert flat["colour.ece"] == pytest.approx(0.2)
    assert flat["colour.coverage_at_90"] == 0.8 and flat["pattern.coverage_at_95"] == 0.0
    assert not any(k.startswith("colour.threshold") for k in flat)  # None cannot be logged

    files = write_report(tmp_path, result, pairs, {"colour": ["a", "b"], "pattern": ["a", "b"]})
    assert tmp_path / "reliability.png" in files
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "attributes.json").read_text())
    assert saved["confidence"]["pattern"]["threshold_at_90"] is None
    assert len(saved["confidence"]["colour"]["bins"]) == 15

    del result["confidence"]
    assert "## Confidence" not in summary_markdown(result)
    assert "reliability.png" not in {
        f.name
        for f in write_report(
            tmp_path / "b", result, pairs, {"colour": ["a", "b"], "pattern": ["a", "b"]}
        )
    }
