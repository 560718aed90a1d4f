"""One running job per workdir and stage: an advisory lock file naming its holder.

`<workdir>/locks/<stage>.lock` is held with `flock` for the life of the job and records who
holds it (pid, host, start time, command). The kernel releases a flock when its process dies,
however it dies, so a lock left by a killed job is stale by construction: the next run takes it
and says so. Different stages may run side by side (Delta readers see committed snapshots); the
same stage twice would race on the same tables, bundle folders and registry versions.

flock is per host: on a shared file system across machines, use one scheduler per workdir.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("atelier.locks")

F = TypeVar("F", bound=Callable[..., Any])


class LockHeld(Exception):
    """Another live process holds the stage's lock; the message names it. Not a RuntimeError:
    commands turn those into exit 1, a held lock exits BUSY (75) so schedulers retry."""

    def __init__(self, stage: str, path: Path, holder: dict):
        self.stage, self.path, self.holder = stage, path, holder
        who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "started_at") if k in holder)
        super().__init__(
            f"{stage} is already running on this workdir ({who or 'holder unknown'}; "
            f"command: {holder.get('command', '?')}). Wait for it, or stop it; "
            f"lock file {path}"
        )


def lock_path(workdir: Path, stage: str) -> Path:
    return Path(workdir) / "locks" / f"{stage}.lock"


@contextmanager
def stage_lock(workdir: Path, stage: str) -> Iterator[dict]:
    """Hold `stage`'s lock on `workdir` for the block; raises LockHeld when it is taken."""
    path = lock_path(workdir, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(stage, path, _read_holder(fd)) from None
        previous = _read_holder(fd)
        if previous:
            # The file outlived its holder (flock is free): a killed or crashed run.
            log.warning("%s: taking over the stale lock of %s", stage, _describe(previous))
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv) or sys.executable,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield me
        finally:
            os.ftruncate(fd, 0)  # released cleanly: nothing stale for the next run to report
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def locked(stage: str) -> Callable[[F], F]:
    """Decorate a job `fn(settings, ...)` to run under `stage`'s lock on `settings.workdir`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(settings, *args, **kwargs):
            with stage_lock(settings.workdir, stage):
                return fn(settings, *args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


def _read_holder(fd: int) -> dict:
    raw = os.pread(fd, 4096, 0)
    try:
        holder = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started_at')}"
