"""`atelier serve --workers 2` as users start it: both processes answer on one port, each
with its own state; /metrics sums every worker's series; an admin reload reaches both; Ctrl-C
stops them all.

The workdir is a copy of the session's demo run (or of ATELIER_TEST_SERVING_WORKDIR).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str, **labels) -> float:
    """Sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? ([0-9.e+-]+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def _until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.25)
    pytest.fail(f"not within {seconds:g}s: {what}")


@pytest.fixture
def server(demo_workdir):
    port = _free_port()
    env = dict(os.environ, ATELIER_CONFIG=str(demo_workdir / "none.yaml"))
    proc = subprocess.Popen(
        [
            str(BIN / "atelier"),
            "--workdir",
            str(demo_workdir),
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
            "--poll-seconds",
            "0",
        ],  # fmt: skip
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        yield proc, base, demo_workdir
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _fresh(base: str, path: str, **kw) -> httpx.Response:
    """One request on a new connection (the kernel picks the worker per connection)."""
    with httpx.Client(base_url=base, timeout=30) as c:
        return c.request(kw.pop("method", "GET"), path, **kw)


def test_two_workers_share_the_port_the_metrics_and_the_reloads(server):
    from atelier.lake import Lake
    from atelier.settings import Settings

    proc, base, workdir = server

    def both_ready():
        try:
            answers = [_fresh(base, "/health").json()["pid"] for _ in range(40)]
            ready = all(_fresh(base, "/ready").status_code == 200 for _ in range(20))
        except httpx.TransportError:
            return False
        return len(set(answers)) == 2 and ready

    _until(both_ready, 240, "two worker processes, both ready")
    pids = {_fresh(base, "/health").json()["pid"] for _ in range(40)}
    assert proc.pid not in pids  # the supervisor serves nothing itself

    customer = Lake(Settings(workdir=workdir)).read_arrow("customers", ["customer_id"])
    cid = customer["customer_id"][0].as_py()
    for _ in range(20):
        r = _fresh(base, "/recommendations", method="POST", json={"customer_id": cid, "k": 5})
        assert r.status_code == 200 and len(r.json()["items"]) == 5

    metrics = _fresh(base, "/metrics").text
    # Summed over both workers, whichever answered the scrape.
    assert _metric(metrics, "atelier_reloads_total", trigger="start", outcome="swapped") == 2
    served = _metric(metrics, "atelier_request_seconds_count", endpoint="/recommendations")
    assert served == 20
    model = re.search(r'atelier_model_info\{model_version="([^"]+)"\} 1\.0', metrics)
    assert model, metrics[:2000]

    r = _fresh(base, "/admin/reload", method="POST")
    assert r.status_code == 200, r.text

    def peer_reloaded():
        text = _fresh(base, "/metrics").text
        return _metric(text, "atelier_reloads_total", trigger="peer", outcome="swapped") == 1

    _until(peer_reloaded, 60, "the other worker reloads after the admin reload")
    text = _fresh(base, "/metrics").text
    assert _metric(text, "atelier_reloads_total", trigger="admin", outcome="swapped") == 1

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    for pid in pids:
        _until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 30, f"worker {pid} exits")
