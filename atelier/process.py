"""Process exit that reports the command's real status.

deltalake (delta-rs) and pyarrow start native thread pools; tearing them down during
interpreter finalisation aborts the process in a share of runs ("terminate called without an
active exception", exit 134) *after* the command succeeded — a known class of delta-rs/pyarrow
shutdown bugs. Schedulers that check exit codes then see a failure after a success. So an entry
point ends with `exit_now(code)`: Python's own exit work runs (atexit handlers: logging,
Spark, MLflow), the streams are flushed, and the process ends before native finalisers run.
"""

from __future__ import annotations

import atexit
import os
import sys

# Exit status of a run refused because the same stage is running (EX_TEMPFAIL: try later).
BUSY = 75


def exit_code(status: object) -> int:
    """The exit status `sys.exit(status)` would give: None -> 0, an int as is, else 1."""
    if status is None:
        return 0
    if isinstance(status, int):
        return status & 0xFF
    return 1


def exit_now(status: object = 0) -> None:
    """End the process with `status` (as `sys.exit` reads it), skipping native finalisers."""
    if status is not None and not isinstance(status, int):
        print(status, file=sys.stderr)  # what sys.exit("message") prints
    code = exit_code(status)
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken pipe: nothing left to say
                pass
        os._exit(code)


def known_failure(error: BaseException) -> tuple[int, str] | None:
    """(exit status, one-line message) for a failure a user can act on without a traceback:
    a stage's lock held by another run, or a Delta commit lost to a concurrent writer."""
    from atelier.locks import LockHeld

    if isinstance(error, LockHeld):
        return BUSY, str(error)
    try:
        from deltalake.exceptions import CommitFailedError
    except ImportError:  # pragma: no cover - deltalake is a core dependency
        return None
    if isinstance(error, CommitFailedError):
        return 1, (
            f"another writer committed to the same Delta table first ({error}); "
            "nothing of this commit was written: rerun"
        )
    return None
