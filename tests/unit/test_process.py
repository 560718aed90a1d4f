"""`exit_now` keeps `sys.exit`'s meaning: codes, messages, atexit work, flushed output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from atelier.process import exit_code


@pytest.mark.parametrize(("status", "code"), [(None, 0), (0, 0), (3, 3), (256 + 2, 2), ("no", 1)])
def test_exit_code_reads_status_like_sys_exit(status, code):
    assert exit_code(status) == code


@pytest.mark.parametrize(("status", "code"), [("3", 3), ("'bad input'", 1), ("None", 0)])
def test_exit_now_runs_atexit_flushes_and_exits_with_the_status(status, code):
    script = (
        "import atexit, sys\n"
        "from atelier.process import exit_now\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "sys.stdout.write('unflushed')\n"
        f"exit_now({status})\n"
        "print('not reached')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == code
    assert out.stdout == "unflushedatexit ran\n"
    assert out.stderr == ("bad input\n" if code == 1 else "")


def test_the_cli_exits_with_its_commands_status(tmp_path):
    atelier = [sys.executable, "-m", "cli.main", "--workdir", str(tmp_path)]
    assert subprocess.run([*atelier, "--help"], capture_output=True).returncode == 0
    bad = subprocess.run([*atelier, "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2 and "No such command" in bad.stderr
