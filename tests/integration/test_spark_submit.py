"""Every job runs under `spark-submit` as users type it, on the same workdir as the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, embed_env, embed_weights_id, make_hm_slice

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

BIN = Path(sys.executable).parent


def _submit(script: str, *args: str) -> str:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               ATELIER_GATE__BUILD_DATA_DOCS="false", **embed_env())
    out = subprocess.run(
        [str(BIN / "spark-submit"), "--master", "local[2]", f"spark_jobs/{script}", *args],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_spark_submit_jobs(tmp_path, hm_dir):
    src = tmp_path / "hm"
    expected = make_hm_slice(hm_dir, src, n_articles=12)
    w = str(tmp_path / "w")
    out = _submit("ingest.py", "hm", str(src), "--workdir", w)
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip()}
    assert int(lines["products"][2]) == expected["products"]
    assert int(lines["interactions"][2]) == expected["interactions"]
    assert "published" in out

    out = _submit("embed.py", "--workdir", w, "--allow-random-weights")
    assert f"weights {embed_weights_id()}," in out
    assert re.search(rf"embedded {expected['products']},", out), out
    out = _submit("embed.py", "--workdir", w, "--allow-random-weights")
    assert re.search(r"embedded 0,", out), out
    out = _submit("colour.py", "--workdir", w)
    assert re.search(rf"described {expected['products']},", out), out
    out = _submit("colour.py", "--workdir", w, "--max-images", "1")
    assert re.search(r"described 0, skipped \d+, quarantined 0", out), out

    _submit("text_features.py", "--workdir", w)
    _submit("product_features.py", "--workdir", w)
    from atelier.lake import Lake
    from atelier.settings import Settings

    lake = Lake(Settings(workdir=w))
    assert lake.read_arrow("text_features").num_rows == expected["products"]
    assert lake.read_arrow("image_embeddings").num_rows == expected["products"]
    assert lake.read_arrow("colour_features").num_rows == expected["products"]
    assert lake.read_arrow("customer_history").num_rows >= expected["customers"]
