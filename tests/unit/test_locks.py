"""One job per workdir and stage: a held lock names its holder, a dead holder's lock is taken
over, and the refusal is one line with exit 75 from the CLI and from spark-submit entries."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytest

from atelier.locks import LockHeld, lock_path, stage_lock
from atelier.process import BUSY


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with stage_lock(tmp_path, "ingest") as me:
        assert me["pid"] == os.getpid()
        with pytest.raises(LockHeld) as err, stage_lock(tmp_path, "ingest"):
            pass
        msg = str(err.value)
        assert f"pid {os.getpid()}" in msg and "ingest is already running" in msg
        assert me["started_at"] in msg and me["host"] in msg
        # Another stage of the same workdir is free.
        with stage_lock(tmp_path, "embed"):
            pass
    # Released: the next run takes it, with nothing stale to report.
    assert lock_path(tmp_path, "ingest").read_text() == ""
    with stage_lock(tmp_path, "ingest"):
        pass


def test_the_lock_of_a_killed_job_is_taken_over(tmp_path, caplog):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from atelier.locks import stage_lock\n"
            f"with stage_lock({str(tmp_path)!r}, 'embed'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockHeld, match=f"pid {holder.pid}"), stage_lock(tmp_path, "embed"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with caplog.at_level(logging.WARNING, logger="atelier.locks"):
        with stage_lock(tmp_path, "embed") as me:
            assert me["pid"] == os.getpid()
    assert f"stale lock of pid {holder.pid}" in caplog.text


def test_jobs_take_their_stage_lock_before_any_work(tmp_path):
    from atelier.settings import Settings
    from spark_jobs.ingest import run_ingest

    settings = Settings(workdir=tmp_path)
    with stage_lock(tmp_path, "ingest"), pytest.raises(LockHeld):
        # Refused before the (missing) source folder is even looked at.
        run_ingest(settings, "hm", tmp_path / "no-such-folder")


def test_the_cli_refuses_with_one_line_and_exit_75(tmp_path):
    with stage_lock(tmp_path, "ingest"):
        out = subprocess.run(
            [sys.executable, "-m", "cli.main", "--workdir", str(tmp_path), "ingest", "hm", "x"],
            capture_output=True,
            text=True,
        )
    assert out.returncode == BUSY == 75
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ingest is already running")
    assert f"pid {os.getpid()}" in lines[0]


def test_spark_submit_entries_exit_75_on_a_held_lock_and_1_on_a_lost_commit(tmp_path):
    from deltalake.exceptions import CommitFailedError

    from spark_jobs.common import run_job

    def busy(settings):
        with stage_lock(settings.workdir, "x"), stage_lock(settings.workdir, "x"):
            pass

    def lost(settings):
        raise CommitFailedError("version 3 already exists")

    assert run_job(tmp_path, busy, str) == BUSY
    assert run_job(tmp_path, lost, str) == 1
