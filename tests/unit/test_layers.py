"""The layers contract (setup.cfg `[importlinter]`): kept on this tree, broken by a planted import.

Runs the real `lint-imports` on the product packages; the second test copies them, plants a
wrong-way import inside a function body (where nothing else would notice it) and checks that the
contract catches it, so the first test cannot pass by checking nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PACKAGES = (
    "cli",
    "spark_jobs",
    "training",
    "serving",
    "models",
    "expectations",
    "atelier",
    "feature_repo",
)


def _lint(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(exe), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def _copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(
            REPO / package,
            tmp_path / package,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    shutil.copy(REPO / "setup.cfg", tmp_path / "setup.cfg")
    return tmp_path


def test_the_layers_contract_is_kept(tmp_path):
    done = _lint(_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout
    # Every product module was analysed, not an empty tree.
    count = sum(1 for p in PACKAGES for _ in (REPO / p).rglob("*.py"))
    assert f"Analyzed {count} files" in done.stdout


@pytest.mark.parametrize(
    ("module", "planted", "message"),
    [
        ("atelier/lake.py", "from cli import main", "atelier is not allowed to import cli"),
        (
            "models/ranking.py",
            "import training.recommender.data",
            "models is not allowed to import training",
        ),
        (
            "serving/scoring.py",
            "from spark_jobs import ingest",
            "serving is not allowed to import spark_jobs",
        ),
    ],
)
def test_a_wrong_way_import_inside_a_function_breaks_it(tmp_path, module, planted, message):
    root = _copy(tmp_path)
    with open(root / module, "a") as f:
        f.write(f"\n\ndef _planted():\n    {planted}  # noqa: F401\n")
    done = _lint(root)
    assert done.returncode != 0
    assert message in done.stdout, done.stdout


def test_the_readme_diagram_is_generated_from_the_contract():
    done = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "layers_diagram.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- layers:begin", 1)[1].split("<!-- layers:end -->", 1)[0]
    # Every layer of the contract is drawn, in the contract's order.
    order = [
        block.index(f"\n{p}/") if f"\n{p}/" in block else block.index(f"  {p}/")
        for p in PACKAGES
        if p not in ("training", "serving")
    ]
    assert order == sorted(order)
