"""The CLI starts without heavy imports and exposes the documented commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

HEAVY = (
    "pyspark",
    "tensorflow",
    "great_expectations",
    "pandas",
    "mlflow",
    "feast",
    "deltalake",
    "pyarrow",
    "keras",
    "numpy",
)


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cli.main import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.output)\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("HEAVY=")
    for cmd in ("demo", "generate-demo", "ingest", "tables"):
        assert cmd in out.stdout


def test_unknown_layout_exits_1_with_message(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    r = CliRunner().invoke(app, ["--workdir", str(tmp_path), "ingest", "nope", str(tmp_path)])
    assert r.exit_code == 1
    assert "unknown layout 'nope'" in r.output
