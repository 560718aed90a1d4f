"""Honest exit codes: a command that succeeded exits 0, every time, in a fresh process.

deltalake/pyarrow native thread pools can abort the interpreter at exit (SIGABRT, 134) after
the work is done: a bare `DeltaTable(path).to_pyarrow_table()` script did so in 2 of 8 runs on
the H&M workdir. Entry points end through `atelier.process.exit_now`, which these tests hold to.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS = 10
ATELIER = str(Path(sys.executable).parent / "atelier")


def _exit_codes(cmd: list[str]) -> list[int]:
    codes = []
    for _ in range(RUNS):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert "Traceback" not in out.stderr, out.stderr[-2000:]
        codes.append(out.returncode)
    return codes


@pytest.fixture(scope="module")
def product(demo_workdir):
    from atelier.lake import Lake
    from atelier.settings import load_settings

    return Lake(load_settings(workdir=demo_workdir)).read_arrow("products")["product_id"][0].as_py()


@pytest.mark.parametrize(
    "args",
    [["tables"], ["online", "{product}"], ["similar", "{product}", "--n", "3"], ["feast-repo"]],
    ids=lambda a: a[0],
)
def test_read_only_commands_exit_0_every_time(demo_workdir, product, args):
    cmd = [ATELIER, "--workdir", str(demo_workdir), *(a.format(product=product) for a in args)]
    assert _exit_codes(cmd) == [0] * RUNS


def test_a_bare_delta_read_ending_in_exit_now_exits_0_every_time(demo_workdir):
    script = (
        "import sys\n"
        "from deltalake import DeltaTable\n"
        "from atelier.process import exit_now\n"
        "print(DeltaTable(sys.argv[1]).to_pyarrow_table().num_rows)\n"
        "exit_now(0)\n"
    )
    table = str(demo_workdir / "lake" / "interactions")
    assert _exit_codes([sys.executable, "-c", script, table]) == [0] * RUNS
