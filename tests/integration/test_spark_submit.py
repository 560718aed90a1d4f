"""`spark-submit spark_jobs/ingest.py` runs the same job as `atelier ingest`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, make_hm_slice

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def test_spark_submit_ingest(tmp_path, hm_dir):
    src = tmp_path / "hm"
    expected = make_hm_slice(hm_dir, src, n_articles=15)
    env = dict(
        os.environ,
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        ATELIER_GATE__BUILD_DATA_DOCS="false",
    )
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "spark-submit"),
            "--master",
            "local[2]",
            "spark_jobs/ingest.py",
            "hm",
            str(src),
            "--workdir",
            str(tmp_path / "w"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = {ln.split()[0]: ln.split() for ln in out.stdout.splitlines() if ln.strip()}
    assert int(lines["products"][2]) == expected["products"]
    assert int(lines["interactions"][2]) == expected["interactions"]
    assert "published" in out.stdout
    assert (tmp_path / "w" / "lake" / "products" / "_delta_log").is_dir()
