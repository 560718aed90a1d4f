"""`atelier demo` end to end on a small generated catalogue: every stage through the real CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_every_stage_and_prints_online_features(demo_run):
    workdir, out, env = demo_run
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    # The terminal: a header naming the log, one line per stage with its time, a summary; no
    # TensorFlow/CUDA/Spark/Feast chatter on either stream.
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"atelier demo in {workdir} (full log: ")
    stages = [line for line in lines if re.match(r"\[\d+/12\] ", line)]
    assert [int(s[1 : s.index("/")]) for s in stages] == list(range(1, 13)), out.stdout
    assert all(re.search(r" \d+\.\ds$", s) for s in stages), stages
    assert re.match(r"done in \d+s$", lines[13]), out.stdout
    assert len(lines) <= 14 + 8, out.stdout
    for noise in ("cuInit", "oneDNN", "cpu_feature_guard", "Registry cache", "WARN ", "absl"):
        assert noise not in out.stdout + out.stderr, noise
    logs = sorted((workdir / "logs").glob("demo-*.log"))
    assert len(logs) == 1 and f"full log: {logs[0]}" in lines[0]
    text = logs[0].read_text()
    assert "quarantine by reason: none" in text
    assert re.search(r"embedded\D+150\b", text), text
    # Steps 6-8: the attribute model is trained (short Table 2), promoted, and fills the gaps.
    assert "| attribute | #samples |" in text and "Mean weighted F1:" in text
    assert re.search(r"PROMOTED version 1 to champion", text), text
    assert re.search(r"labels kept \d+, predicted [1-9]\d*", text), text
    # Steps 9-11: Table 3 of the four variants in both modes (all products with "buy it
    # again" and the blend; new to customer), the hybrid registered and promoted, the
    # champion's vector of every product written and materialised.
    assert "## All products (the paper's protocol)" in text
    assert "## New to customer" in text
    assert "| variant | runs | precision@10 | recall@10 | hits per run | customers |" in text
    for variant in ("popularity", "cf", "content", "hybrid", "buy_again", "blend"):
        assert re.search(rf"\| {variant} \| 1 \| 0\.\d+", text), text
    new = text[text.index("## New to customer") :]
    for variant in ("popularity", "cf", "content", "hybrid"):
        assert re.search(rf"\| {variant} \| 1 \| 0\.\d+", new), new
    assert "Figure 7" in text
    assert "atelier-recommender: PROMOTED version 1 to champion" in text
    assert re.search(r"products 150: scored 150", text), text
    # The online lookup of step 12 prints the product's 512-d embedding, its token ids, the
    # attribute values served from the predicted_attributes view and its item vector (16
    # match coordinates and the bias).
    step12 = text[text.index("===== [12/12]"):]
    assert "(512 values)" in step12
    assert "token_ids" in step12 and "type_idx" in step12
    assert "predicted_attributes.model_version: atelier-attributes/1" in step12
    assert re.search(r"predicted_attributes.attribute_values: \['", step12), step12
    assert re.search(r"item_vectors.vector: \[.*\(17 values\)", step12), step12
    assert "item_vectors.model_version: atelier-recommender/1" in step12
    assert "similar products of" in step12
    # A second demo run on the same workdir embeds nothing new.
    again = subprocess.run(
        [str(Path(sys.executable).parent / "atelier"), "--workdir", str(workdir), "embed",
         "--allow-random-weights"], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"embedded\D+0\b", again.stdout), again.stdout
