"""`atelier demo` end to end on a small generated catalogue: every stage through the real CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_every_stage_and_prints_online_features(tmp_path):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, ATELIER_LOG_LEVEL="WARNING",
               ATELIER_GATE__BUILD_DATA_DOCS="false", ATELIER_ATTRIBUTES__STEPS="600")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "atelier"), "--workdir", str(tmp_path / "w"), "demo",
         "--products", "150", "--customers", "40", "--seed", "3"],
        capture_output=True, text=True, env=env, timeout=1500)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    text = out.stdout
    assert "quarantine by reason: none" in text
    assert re.search(r"embedded\D+150\b", text), text
    # Steps 6-8: the attribute model is trained (short Table 2), promoted, and fills the gaps.
    assert "| attribute | #samples |" in text and "Mean weighted F1:" in text
    assert re.search(r"PROMOTED version 1 to champion", text), text
    assert re.search(r"labels kept \d+, predicted [1-9]\d*", text), text
    # The online lookup of step 9 prints the product's 512-d embedding, its token ids and the
    # attribute values served from the predicted_attributes view.
    step9 = text[text.index("[9/9]"):]
    assert "(512 values)" in step9
    assert "token_ids" in step9 and "type_idx" in step9
    assert "model_version: atelier-attributes/1" in step9
    assert re.search(r"attribute_values: \['", step9), step9
    # A second demo run on the same workdir embeds nothing new.
    again = subprocess.run(
        [str(Path(sys.executable).parent / "atelier"), "--workdir", str(tmp_path / "w"), "embed",
         "--allow-random-weights"], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"embedded\D+0\b", again.stdout), again.stdout
