"""`atelier serve --workers N`: N server processes on one port, to use every core.

uvicorn's supervisor starts the workers; the kernel spreads connections over them. Each worker
builds its own app and state (`worker_app`, settings from the same environment and workdir the
command had) and polls the registry on its own. Two things must cross the processes:

- **Metrics** (Prometheus multi-process mode): `PROMETHEUS_MULTIPROC_DIR` is set to a fresh
  `<workdir>/serving/prometheus/` before any worker imports prometheus_client; every worker's
  series live in files there and `/metrics`, on whichever worker answers, sums them (gauges:
  the live workers' maximum).
- **Reloads** (`ReloadBroadcast`): the worker that answers `POST /admin/reload` rebuilds its
  state, then bumps a generation number in `<workdir>/serving/reload.json`; every other worker
  sees the new number within `POLL_S` and rebuilds its own (trigger `peer` in the metrics).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from atelier.settings import Settings
    from serving.state import StateHolder

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often a worker looks for a peer's reload
ENV_POLL = "ATELIER_SERVE_POLL_SECONDS"
MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
OUR_DIR = "ATELIER_SERVING_METRICS_DIR"


class ReloadBroadcast:
    """A generation number in a file: `announce` after a reload, `watch` reloads on others'."""

    def __init__(self, path: Path):
        self.path = path
        self.seen = self.generation()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def generation(self) -> int:
        try:
            return int(json.loads(self.path.read_text())["generation"])
        except (OSError, ValueError, KeyError):
            return 0

    def announce(self, model_version: str) -> int:
        """This worker reloaded: tell the others (the new generation)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / "reload.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two workers reloading at once: both counted
            generation = self.generation() + 1
            with self._lock:
                self.seen = generation
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(
                json.dumps({"generation": generation, "pid": os.getpid(), "model": model_version})
            )
            os.replace(tmp, self.path)
        return generation

    def check(self, holder: StateHolder) -> bool:
        """Reload `holder` when another worker announced since; True when it did."""
        generation = self.generation()
        with self._lock:
            if generation <= self.seen:
                return False
            self.seen = generation
        holder.reload("peer")
        return True

    def watch(self, holder: StateHolder, seconds: float = POLL_S) -> threading.Thread:
        """`check` every `seconds` in a daemon thread until `stop`."""

        def loop() -> None:
            while not self._stop.wait(seconds):
                try:
                    self.check(holder)
                except Exception as e:  # the next announcement may build fine
                    log.warning("peer reload failed, still serving the current state: %s", e)

        thread = threading.Thread(target=loop, name="atelier-serving-peers", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def serve_workers(
    settings: Settings, host: str, port: int, workers: int, poll_seconds: float | None
) -> None:
    """Run `workers` server processes on host:port until interrupted."""
    import uvicorn

    metrics_dir = settings.workdir / "serving" / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters start at 0 with the server
    metrics_dir.mkdir(parents=True)
    os.environ[MULTIPROC] = str(metrics_dir)
    os.environ[OUR_DIR] = str(metrics_dir)  # ours, not Feast's (serving.metrics)
    # The workers load the same settings: the same environment and yaml, this workdir.
    os.environ["ATELIER_WORKDIR"] = str(settings.workdir)
    os.environ[ENV_POLL] = str(poll_seconds or 0)
    uvicorn.run(
        "serving.workers:worker_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_level="warning",
    )


def worker_app() -> FastAPI:
    """One worker's app (uvicorn calls this in each worker process)."""
    from threadpoolctl import threadpool_limits

    from atelier.settings import load_settings
    from serving.app import configure_access_log, create_app

    configure_access_log()
    threadpool_limits(limits=1, user_api="blas")  # see `atelier serve`
    settings = load_settings()
    poll = float(os.environ.get(ENV_POLL, "0")) or None
    broadcast = ReloadBroadcast(settings.workdir / "serving" / "reload.json")
    return create_app(settings, poll_seconds=poll, broadcast=broadcast)
