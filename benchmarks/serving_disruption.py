"""Serving under disruption (issue 14): a cold start, an online-store outage and a promotion.

    .venv/bin/python benchmarks/serving_disruption.py --workdir W --rate 200 --duration 120 \
        --outage-at 30 --outage 30 --promote-at 80 [--compare-checkout OLD] \
        --out benchmarks/results

W (the champion's item vectors written and materialised, as for benchmarks/serving.py) is
copied to a scratch folder first: the run promotes a model there. Its served views are loaded
into a private Redis (`serving.Redis`, `serving.load_redis`), and `atelier serve` reads it
(the scale profile's variables). Two measurements, one after the other:

1. **Cold start**: for each checkout (this one, and `--compare-checkout`, e.g. a worktree of
   the code before the warm-up), a fresh server; the load starts the moment `/ready` answers
   200, at `--rate` for `--cold` seconds; latency of the first and of the last 10 seconds.
2. **Disruption** (this checkout): a fresh server, load at `--rate` for `--duration` seconds,
   no warm-up. At `--outage-at` the Redis server is stopped (its data saved first) and started
   again on the same port `--outage` seconds later; at `--promote-at` a new version of the
   champion is registered with its own item vectors in the lake (the old vectors scaled per
   dimension, so rankings change) and `POST /admin/reload` swaps it in.

Reported per phase (before / outage / recovered / promoted): requests, errors by kind (5xx
separately), fallbacks by reason, latency p50/p99/max, and which model versions answered. The
goal: 0 errors of any kind; fallbacks counted (popularity while the store is away).
Results: `--out`/serving-disruption.json and .md. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402 - the repository root goes on the path first
    RESULTS,
    Redis,
    command_line,
    cpu_model,
    free_port,
    inspect_workdir,
    load_redis,
    request_mix,
    say,
    store_env,
    summary,
)

PHASES = ("before", "outage", "recovered", "promoted")


@dataclass(frozen=True)
class Answer:
    """One call: due time relative to the start (s), latency (ms), status or error."""

    at: float
    ms: float
    status: int | None  # None: no HTTP answer (timeout, connection)
    error: str | None
    fallback: str | None
    model_version: str | None


def phase_of(at: float, outage_at: float, outage: float, promote_at: float) -> str:
    """The phase a call due `at` seconds into the run belongs to."""
    if at < outage_at:
        return "before"
    if at < outage_at + outage:
        return "outage"
    if at < promote_at:
        return "recovered"
    return "promoted"


def phase_rows(answers: Sequence[Answer], outage_at: float, outage: float, promote_at: float):
    """Per phase: requests, errors (5xx apart), fallbacks, latency, model versions."""
    rows = []
    for name in PHASES:
        mine = [a for a in answers if phase_of(a.at, outage_at, outage, promote_at) == name]
        errors = Counter(a.error for a in mine if a.error)
        rows.append(
            {
                "phase": name,
                "requests": len(mine),
                "errors": sum(errors.values()),
                "server_errors_5xx": sum(1 for a in mine if a.status and a.status >= 500),
                "errors_by_kind": dict(sorted(errors.items())),
                "fallbacks": dict(sorted(Counter(a.fallback for a in mine if a.fallback).items())),
                "model_versions": dict(
                    sorted(Counter(a.model_version for a in mine if a.model_version).items())
                ),
                "latency_ms": summary([a.ms for a in mine if a.status is not None]),
            }
        )
    return rows


def window(answers: Sequence[Answer], start: float, end: float) -> dict:
    """Latency summary of the answered calls due in [start, end) seconds."""
    return summary([a.ms for a in answers if start <= a.at < end and a.status is not None])


# -- the server and the load --------------------------------------------------------------------


class Server:
    """`atelier serve` from `checkout` (its own code, this interpreter) on a free port."""

    def __init__(self, checkout: Path, workdir: Path, env: Mapping[str, str], log: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [
            sys.executable, "-m", "cli.main", "--workdir", str(workdir), "--log-level",
            "WARNING", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--poll-seconds", "0",
        ]  # fmt: skip
        env = {**env, "PYTHONPATH": str(checkout)}
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self._out, stderr=subprocess.STDOUT, cwd=checkout
        )

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Seconds until `/ready` answered 200 (polled every 50 ms)."""
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"atelier serve exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/ready", timeout=5).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"/ready not 200 after {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


async def _call(client, call, due: float, t0: float, loop) -> Answer:
    import httpx

    try:
        if call.body is None:
            r = await client.request(call.method, call.path)
        else:
            headers = {"content-type": "application/json"}
            r = await client.request(call.method, call.path, content=call.body, headers=headers)
        ms = (loop.time() - due) * 1000
        ok = 200 <= r.status_code < 300
        body = r.json() if ok and call.kind != "similar" else {}
        version = r.headers.get("x-model-version") or body.get("model_version")
        return Answer(
            due - t0,
            ms,
            r.status_code,
            None if ok else f"http_{r.status_code}",
            body.get("fallback"),
            version,
        )
    except httpx.HTTPError as e:
        return Answer(due - t0, (loop.time() - due) * 1000, None, type(e).__name__, None, None)


async def load(base: str, calls, rate: float, events=(), timeout: float = 10.0) -> list[Answer]:
    """Open loop at `rate` (request i due at t0 + i/rate); `events`: (seconds, coroutine
    function) run in the background at that time into the run."""
    import httpx

    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(
        base_url=base, timeout=httpx.Timeout(timeout), limits=limits
    ) as client:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        pending = sorted(events, key=lambda e: e[0])
        background, tasks = [], []
        for i, call in enumerate(calls):
            due = t0 + i / rate
            while pending and due - t0 >= pending[0][0]:
                background.append(asyncio.create_task(pending.pop(0)[1](client)))
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(_call(client, call, due, t0, loop)))
        answers = list(await asyncio.gather(*tasks))
        await asyncio.gather(*background)
    return answers


# -- the disruptions ---------------------------------------------------------------------------


class Outage:
    """Stop the Redis server (its data saved) and start it again on the same port."""

    def __init__(self, redis: Redis, folder: Path):
        self.redis, self.folder = redis, folder
        self.log: list[str] = []

    def down(self) -> None:
        self.redis.client.save()  # dump.rdb in the folder: the restart loads it
        self.redis.stop()
        self.log.append(f"{time.strftime('%H:%M:%S')} redis stopped")

    def up(self) -> None:
        binary = shutil.which("redis-server")
        self.redis.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.redis.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.redis.client.ping():
                    break
            except Exception:  # noqa: BLE001 - still starting
                time.sleep(0.05)
        self.log.append(f"{time.strftime('%H:%M:%S')} redis up, {self.redis.keys()} keys")


def promote(settings) -> str:
    """A new champion version (the same run, new vectors in the lake); returns its name."""
    import pyarrow as pa
    from mlflow import MlflowClient

    from atelier import registry
    from atelier.contracts import ITEM_VECTORS
    from atelier.lake import Lake

    registry.configure(settings)
    client = MlflowClient()
    name = settings.mlflow.recommender_model
    first = client.get_model_version_by_alias(name, registry.CHAMPION)
    second = client.create_model_version(name, first.source, run_id=first.run_id)
    old, new = f"{name}/{first.version}", f"{name}/{second.version}"
    lake = Lake(settings)
    rows = [r for r in lake.read_arrow("item_vectors").to_pylist() if r["model_version"] == old]
    weights = np.linspace(0.5, 1.5, len(rows[0]["vector"]), dtype=np.float32)
    for r in rows:
        r["vector"] = (np.asarray(r["vector"], np.float32) * weights).tolist()
        r["model_version"] = new
    lake.merge("item_vectors", pa.Table.from_pylist(rows, schema=ITEM_VECTORS.schema()))
    client.set_registered_model_alias(name, registry.CHAMPION, second.version)
    return new


# -- main --------------------------------------------------------------------------------------


def cold_start(checkout: Path, work: Path, env, catalogue, args, scratch: Path) -> dict:
    server = Server(checkout, work, env, scratch / f"serve-cold-{checkout.name}.log")
    try:
        ready_s = server.wait_ready()
        rng = np.random.default_rng([args.seed, 1])
        n = round(args.rate * args.cold)
        calls = request_mix(n, catalogue.customers, catalogue.candidates, catalogue.filters, rng)
        answers = asyncio.run(load(server.base, calls, args.rate, timeout=args.timeout))
    finally:
        server.stop()
    return {
        "checkout": str(checkout),
        "ready_s": round(ready_s, 1),
        "requests": len(answers),
        "errors": sum(1 for a in answers if a.error),
        "first_10s_ms": window(answers, 0, 10),
        "last_10s_ms": window(answers, args.cold - 10, args.cold),
        "all_ms": window(answers, 0, args.cold),
    }


def disruption(work: Path, env, settings, catalogue, redis, args, scratch: Path) -> dict:
    from atelier.settings import Settings

    server = Server(ROOT, work, env, scratch / "serve-disruption.log")
    outage = Outage(redis, scratch / "redis")
    promoted: dict = {}

    async def down(_client):
        await asyncio.to_thread(outage.down)

    async def up(_client):
        await asyncio.to_thread(outage.up)

    async def promotion(client):
        copy = Settings(workdir=work, feast=settings.feast.model_dump())
        promoted["version"] = await asyncio.to_thread(promote, copy)
        t = time.monotonic()
        r = await client.post("/admin/reload", timeout=300)
        promoted["reload"] = {
            "status": r.status_code,
            "body": r.json(),
            "seconds": round(time.monotonic() - t, 1),
        }

    try:
        server.wait_ready()
        rng = np.random.default_rng([args.seed, 2])
        n = round(args.rate * args.duration)
        calls = request_mix(n, catalogue.customers, catalogue.candidates, catalogue.filters, rng)
        events = [
            (args.outage_at, down),
            (args.outage_at + args.outage, up),
            (args.promote_at, promotion),
        ]
        answers = asyncio.run(
            load(server.base, calls, args.rate, events=events, timeout=args.timeout)
        )
    finally:
        server.stop()
    return {
        "phases": phase_rows(answers, args.outage_at, args.outage, args.promote_at),
        "events": outage.log,
        "promotion": promoted,
    }


def render(result: Mapping) -> str:
    a = result["args"]
    lines = [
        "# Serving under disruption",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}. Machine: {result['cpus']} CPUs ({result['cpu_model']}); the "
        "load generator, the server and Redis share them. Catalogue: "
        f"{result['candidates']:,} candidates of `{result['model_version']}`, "
        f"{result['customers']:,} customers; Redis online store; open-loop load at "
        f"{a['rate']:g} req/s (benchmarks/serving.py's mix), per-request timeout "
        f"{a['timeout']:g} s.",
        "",
        "## Cold start: the load begins the moment `/ready` answers",
        "",
        f"{a['cold']:g} s at {a['rate']:g} req/s on a fresh server; latency in ms from each "
        "request's due time.",
        "",
        "| checkout | ready after (s) | requests | errors | first 10 s p50 / p99 / max | "
        "last 10 s p50 / p99 | whole p99 |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for c in result["cold"]:
        f, last, whole = c["first_10s_ms"], c["last_10s_ms"], c["all_ms"]
        lines.append(
            f"| `{c['checkout']}` | {c['ready_s']} | {c['requests']} | {c['errors']} | "
            f"{_f(f['p50'])} / {_f(f['p99'])} / {_f(f['max'])} | {_f(last['p50'])} / "
            f"{_f(last['p99'])} | {_f(whole['p99'])} |"
        )
    d = result["disruption"]
    lines += [
        "",
        "## Outage and promotion under load",
        "",
        f"{a['duration']:g} s at {a['rate']:g} req/s, no warm-up: Redis stopped at "
        f"{a['outage_at']:g} s for {a['outage']:g} s, a new champion promoted and "
        f"`POST /admin/reload` sent at {a['promote_at']:g} s "
        f"(reload: {d['promotion'].get('reload', {}).get('status')} in "
        f"{d['promotion'].get('reload', {}).get('seconds')} s, now "
        f"`{d['promotion'].get('version')}`). Events: {'; '.join(d['events'])}.",
        "",
        "| phase | requests | errors | 5xx | fallbacks | model versions | p50 / p99 / max ms |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for p in d["phases"]:
        lat = p["latency_ms"]
        lines.append(
            f"| {p['phase']} | {p['requests']} | {p['errors']} {p['errors_by_kind'] or ''} | "
            f"{p['server_errors_5xx']} | {p['fallbacks'] or '–'} | "
            f"{', '.join(f'{k} {v}' for k, v in p['model_versions'].items()) or '–'} | "
            f"{_f(lat['p50'])} / {_f(lat['p99'])} / {_f(lat['max'])} |"
        )
    return "\n".join(lines) + "\n"


def _f(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    base_env = dict(os.environ)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--cold", type=float, default=30.0, help="seconds of the cold-start load")
    p.add_argument("--duration", type=float, default=120.0)
    p.add_argument("--outage-at", type=float, default=30.0)
    p.add_argument("--outage", type=float, default=30.0)
    p.add_argument("--promote-at", type=float, default=80.0)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--compare-checkout", type=Path, help="another checkout's cold start too")
    p.add_argument("--seed", type=int, default=20181)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not args.outage_at + args.outage <= args.promote_at < args.duration:
        p.error("need outage-at + outage <= promote-at < duration")

    from atelier.logs import setup_logging
    from atelier.settings import Settings

    setup_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="bench-disruption-") as tmp:
        scratch = Path(tmp)
        work = scratch / "w"
        say(f"copying {args.workdir} to {work}")
        shutil.copytree(args.workdir, work, symlinks=True)
        settings = Settings(workdir=work, gate={"build_data_docs": False})
        catalogue, missing = inspect_workdir(settings)
        if catalogue is None:
            say(f"{args.workdir} is not ready to serve: {missing}")
            return 2
        redis = Redis(scratch / "redis")
        try:
            registry_url = f"sqlite:///{scratch / 'feast-registry.sqlite'}"
            load_redis(settings, redis.url, registry_url)
            env = store_env(base_env, "redis", redis.url, registry_url)
            checkouts = [ROOT, *([args.compare_checkout] if args.compare_checkout else [])]
            cold = []
            for checkout in checkouts:
                cold.append(cold_start(checkout.resolve(), work, env, catalogue, args, scratch))
                say(f"cold start {checkout}: {cold[-1]}")
            disrupted = disruption(work, env, settings, catalogue, redis, args, scratch)
            for row in disrupted["phases"]:
                say(f"{row}")
        finally:
            redis.stop()
    result = {
        "command": command_line(argv).replace("serving.py", "serving_disruption.py"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "model_version": catalogue.model_version,
        "candidates": len(catalogue.candidates),
        "customers": len(catalogue.customers),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cold": cold,
        "disruption": disrupted,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving-disruption.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "serving-disruption.md").write_text(render(result))
    say(f"wrote {args.out}/serving-disruption.md")
    bad = sum(p["errors"] for p in disrupted["phases"])
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
