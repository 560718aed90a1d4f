"""Serving benchmark (issue 6): `atelier serve` latency and errors at fixed request rates.

    .venv/bin/python benchmarks/serving.py --workdir W --rates 50,100,200 --duration 60 \
        --stores sqlite,redis --out benchmarks/results \
        [--workers 1,2] [--pin-generator 1] [--find-max --p99-ms 20 --resolution 25 --max-steps 8]

`W` must hold the recommender champion's item vectors, written and materialised (`atelier
predict item-vectors`, `atelier materialize`): the lake's `item_vectors` table with rows of the
`champion` alias's version and the Feast online store holding `customer_history` and
`item_vectors` (the script checks, says what is missing and exits 2). For each online store:

- `sqlite`: W as it is (the embedded profile, `<W>/feast/online.db`);
- `redis`: a private `redis-server` on a free 127.0.0.1 port (temporary folder, no
  persistence). `feast apply` and the gated materialisation of `customer_history` and
  `item_vectors` load it (the embedded profile's duckdb offline store over W's lake, with the
  online store and the registry overridden: Redis and a temporary SQL registry, so W's own
  registry and materialisation state stay as they were; the gate records its validations in
  W's gx folder, as `atelier materialize` does); the server then runs the `scale`
  profile through the variables Settings reads (`ATELIER_FEAST__PROFILE=scale`,
  `ATELIER_FEAST__REDIS`, `ATELIER_FEAST__REGISTRY_URL`), online reads only.

then starts `atelier --workdir W serve --port P --poll-seconds 0` with that store's environment,
waits for `/ready`, warms it up for `--warmup` seconds and drives it at each rate for
`--duration` seconds with an open-loop generator (asyncio on uvloop, `RawClient`: keep-alive
HTTP/1.1 writing request bytes directly): request i is due at
t0 + i / rate whatever the earlier ones are doing, and its latency runs from that due time to
its response, so a stalled server is charged for every request it delays (no coordinated
omission). The mix (the same sequence for every store at a given rate, `--seed`):
`MIX["similar"]` GET /products/{id}/similar?k=10; the rest POST /recommendations with k=10 for
customers of the lake's `customer_history`, `MIX["unknown"]` of them unknown ids (popularity
fallback), `MIX["explain"]` with explain, `MIX["filters"]` with a one-value filter on one of the
commonest attribute values among the candidates.

Per store and rate: requests sent, answered, errors by kind (non-2xx status or exception),
achieved rate, client latency p50/p95/p99/max, the generator's own send lag, fallbacks by
reason (the responses' `fallback`), the CPU used by the generator and by the server, and the
server's view from `/metrics` scraped before and after (`atelier_request_seconds` buckets of
the API endpoints -> p50/p99 estimates, fallbacks and online store errors). Results go to
`--out`/serving.json and serving.md; progress to stderr. Not a test: numbers depend on the
machine, and the generator shares its cores with the server unless pinned.

Options for issue 15 (the highest rate held, the generator on its own core):

- `--workers 1,2`: per store, one server per count (`serve --workers N`, N uvicorn processes
  on one port); rows carry `workers`. The server's CPU is its process tree's (every worker).
- `--pin-generator C`: the generator's threads run on CPU C during the runs, the server (its
  affinity set right after the start, so the workers it forks inherit it) and redis-server
  on the other CPUs (`os.sched_setaffinity`), so the two stop taking each other's core; the
  server tree's affinity is checked after `/ready` and recorded. Needs 2 CPUs or more.
- `--find-max`: instead of the fixed rates, a search from the first of `--rates`: double while
  the rate held (client p99 <= `--p99-ms`, 0 errors, no `online_store_unavailable` fallback,
  >= 95% of the rate reached), then bisect between the highest held and the lowest failed rate
  until `--resolution` req/s apart or `--max-steps` runs; the report gives every rate tried and
  the highest held per store and worker count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

STORES = ("sqlite", "redis")
K = 10
# Shares of the request mix: similar-products calls; among recommendation calls, unknown
# customers, explain=true, one attribute filter.
MIX = {"similar": 0.10, "unknown": 0.15, "explain": 0.20, "filters": 0.15}
GOAL = {"rate": 200.0, "p50_ms": 5.0, "p99_ms": 20.0, "errors": 0}
# Issue 15: the highest rate held (see `held`) at p99 <= 20 ms, generator pinned, 2 cores.
HELD_GOAL = {"rate": 400.0, "p99_ms": 20.0}
# Lake tables the server reads (serving.state.SOURCES) and the Feast views it reads online.
SERVED_TABLES = ("customer_history", "item_vectors")
# (predicted_attributes is optional: without it the server uses the known labels.)
LAKE_TABLES = ("products", "item_vectors", "interactions", "customer_history")
API_SKIP = ("/metrics", "/ready", "/health")  # endpoints that are not the API under test
FEAST_ENV = ("ATELIER_FEAST__PROFILE", "ATELIER_FEAST__REDIS", "ATELIER_FEAST__REGISTRY_URL")


def say(message: str) -> None:
    """Progress on stderr, so stdout carries only the results."""
    print(message, file=sys.stderr, flush=True)


# -- pure helpers ------------------------------------------------------------------------------


def summary(values_ms: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max/mean of latencies in ms (numpy's linear percentiles); None when empty."""
    if len(values_ms) == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    a = np.asarray(values_ms, dtype=float)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' `histogram_quantile`: `buckets` = cumulative (upper bound, count) pairs,
    +Inf last; linear within the bucket holding the rank. None without observations; the
    highest finite bound when the rank falls in the +Inf bucket."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


@dataclass
class Scrape:
    """What the benchmark reads from one `/metrics` page."""

    buckets: dict[tuple[str, str, float], float] = field(default_factory=dict)  # cumulative
    fallbacks: dict[str, float] = field(default_factory=dict)
    online_errors: float = 0.0


def parse_metrics(text: str) -> Scrape:
    """The latency buckets (endpoint, status class, le), fallbacks by reason and online store
    errors of a Prometheus text page."""
    from prometheus_client.parser import text_string_to_metric_families

    out = Scrape()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "atelier_request_seconds_bucket":
                key = (s.labels["endpoint"], s.labels["status"], float(s.labels["le"]))
                out.buckets[key] = out.buckets.get(key, 0.0) + s.value
            elif s.name == "atelier_recommendation_fallbacks_total":
                out.fallbacks[s.labels["reason"]] = s.value
            elif s.name == "atelier_online_store_errors_total":
                out.online_errors = s.value
    return out


def server_view(before: Scrape, after: Scrape, skip: Iterable[str] = API_SKIP) -> dict:
    """The server's own account of the requests between two scrapes: requests, p50/p99 (ms)
    estimated from the summed histogram of the API endpoints, non-2xx, fallbacks, online store
    errors."""
    skip = set(skip)
    summed: dict[float, float] = {}
    bad = 0.0
    endpoints: Counter = Counter()
    for (endpoint, status, le), count in after.buckets.items():
        if endpoint in skip:
            continue
        delta = count - before.buckets.get((endpoint, status, le), 0.0)
        summed[le] = summed.get(le, 0.0) + delta
        if math.isinf(le):
            endpoints[endpoint] += delta
            if status != "2xx":
                bad += delta
    pairs = sorted(summed.items())
    p50, p99 = histogram_quantile(0.50, pairs), histogram_quantile(0.99, pairs)
    return {
        "requests": int(sum(endpoints.values())),
        "by_endpoint": {e: int(n) for e, n in sorted(endpoints.items())},
        "non_2xx": int(bad),
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
        "fallbacks": {
            r: int(n - before.fallbacks.get(r, 0.0))
            for r, n in sorted(after.fallbacks.items())
            if n - before.fallbacks.get(r, 0.0)
        },
        "online_store_errors": int(after.online_errors - before.online_errors),
    }


@dataclass(frozen=True)
class Call:
    """One request of the mix."""

    kind: str  # "known", "unknown", "similar"
    method: str
    path: str
    body: bytes | None = None


def request_mix(
    n: int,
    customers: Sequence[str],
    products: Sequence[str],
    filters: Sequence[tuple[str, str]],
    rng: np.random.Generator,
    mix: Mapping[str, float] = MIX,
) -> list[Call]:
    """`n` calls drawn with `rng` (see `MIX`); bodies are serialised once, here."""
    calls = []
    for _ in range(n):
        if rng.random() < mix["similar"]:
            product = products[rng.integers(len(products))]
            calls.append(Call("similar", "GET", f"/products/{product}/similar?k={K}"))
            continue
        if rng.random() < mix["unknown"]:
            kind, customer = "unknown", f"bench-unknown-{rng.integers(10**9):09d}"
        else:
            kind, customer = "known", customers[rng.integers(len(customers))]
        body: dict = {"customer_id": customer, "k": K}
        if rng.random() < mix["explain"]:
            body["explain"] = True
        if filters and rng.random() < mix["filters"]:
            attribute, value = filters[rng.integers(len(filters))]
            body["filters"] = {attribute: [value]}
        calls.append(Call(kind, "POST", "/recommendations", json.dumps(body).encode()))
    return calls


@dataclass(frozen=True)
class Outcome:
    """One call's times (`now`, s) and result."""

    kind: str
    due: float
    sent: float
    done: float
    error: str | None  # "http_<status>" or the exception's class name
    fallback: str | None = None
    answered: bool = True  # an HTTP response came back (any status)


def rate_result(
    rate: float, duration: float, t0: float, outcomes: Sequence[Outcome]
) -> dict[str, object]:
    """Counts, achieved rate and latency summaries of one rate's outcomes (t0: the first due
    time). Achieved rate = answered / the longer of the schedule (sent / rate) and t0 to the
    last answer. Latency (from the due time) and service time (from the actual send) over
    answered calls; send lag = how late the generator sent."""
    answered = [o for o in outcomes if o.answered]
    errors = Counter(o.error for o in outcomes if o.error)
    fallbacks = Counter(o.fallback for o in outcomes if o.fallback)
    end = max((o.done for o in outcomes), default=t0)
    elapsed = max(end - t0, len(outcomes) / rate, 1e-9)
    by_kind = {}
    for kind in sorted({o.kind for o in outcomes}):
        mine = [(o.done - o.due) * 1000 for o in answered if o.kind == kind]
        by_kind[kind] = {"requests": sum(o.kind == kind for o in outcomes), **summary(mine)}
    return {
        "rate": rate,
        "duration_s": duration,
        "sent": len(outcomes),
        "answered": len(answered),
        "ok": sum(o.answered and o.error is None for o in outcomes),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(sorted(errors.items())),
        "achieved_rate": len(answered) / elapsed,
        "elapsed_s": elapsed,
        "latency_ms": summary([(o.done - o.due) * 1000 for o in answered]),
        "service_ms": summary([(o.done - o.sent) * 1000 for o in answered]),
        "send_lag_ms": summary([(o.sent - o.due) * 1000 for o in outcomes]),
        "by_kind": by_kind,
        "fallbacks": dict(sorted(fallbacks.items())),
    }


def goal_status(
    rows: Sequence[Mapping], store: str, goal: Mapping = GOAL, workers: int | None = None
) -> dict:
    """Whether `store` (with `workers` server processes, when given) met the goal at the goal's
    rate: p50, p99, 0 errors, no online store failure hidden behind a popularity answer, and the
    rate actually reached (>= 95%)."""
    at = [
        r
        for r in rows
        if r["store"] == store
        and r["rate"] == goal["rate"]
        and (workers is None or r.get("workers", 1) == workers)
    ]
    if not at:
        return {"met": None, "detail": f"not measured at {goal['rate']:g} req/s"}
    r = at[0]
    lat = r["latency_ms"]
    hidden = r["fallbacks"].get("online_store_unavailable", 0)
    checks = [
        (lat["p50"] is not None and lat["p50"] <= goal["p50_ms"], f"p50 {_ms(lat['p50'])} ms"),
        (lat["p99"] is not None and lat["p99"] <= goal["p99_ms"], f"p99 {_ms(lat['p99'])} ms"),
        (r["errors"] <= goal["errors"], f"{r['errors']} errors"),
        (hidden == 0, f"{hidden} online-store-unavailable fallbacks"),
        (
            r["achieved_rate"] >= 0.95 * goal["rate"],
            f"achieved {r['achieved_rate']:.1f} req/s",
        ),
    ]
    return {"met": all(ok for ok, _ in checks), "detail": ", ".join(text for _, text in checks)}


def held(row: Mapping, p99_ms: float = GOAL["p99_ms"]) -> bool:
    """Whether one rate's result held: client p99 <= `p99_ms`, 0 errors (an
    `online_store_unavailable` fallback counts as one: a store failure behind a 200) and >= 95%
    of the rate reached (a generator or server that falls behind has not held it)."""
    p99 = row["latency_ms"]["p99"]
    return (
        p99 is not None
        and p99 <= p99_ms
        and row["errors"] == 0
        and row.get("fallbacks", {}).get("online_store_unavailable", 0) == 0
        and row["achieved_rate"] >= 0.95 * row["rate"]
    )


def next_rate(
    history: Sequence[tuple[float, bool]], start: float, resolution: float, max_steps: int
) -> float | None:
    """The search's next rate after `history` ((rate, held) in the order run); None when done.
    `start` first; double while every rate held; then bisect between the highest rate held
    below the lowest failed one (0 when none held) and that failed one, until the two are
    `resolution` apart or `max_steps` rates ran."""
    if not history:
        return float(start)
    if len(history) >= max_steps:
        return None
    failed = [rate for rate, ok in history if not ok]
    if not failed:
        return 2 * history[-1][0]
    high = min(failed)
    low = max((rate for rate, ok in history if ok and rate < high), default=0.0)
    if high - low <= resolution:
        return None
    return (low + high) / 2


def highest_held(history: Sequence[tuple[float, bool]]) -> float | None:
    """The highest rate of `history` that held; None when none did."""
    return max((rate for rate, ok in history if ok), default=None)


def split_cpus(all_cpus: Iterable[int], generator_cpu: int) -> tuple[set[int], set[int]]:
    """(the generator's CPUs, the server's): `generator_cpu` alone, and every other one.
    ValueError with fewer than 2 CPUs or a `generator_cpu` outside them."""
    cpus = set(all_cpus)
    if len(cpus) < 2:
        raise ValueError(
            f"pinning the generator needs 2 CPUs or more; this process may use {sorted(cpus)}"
        )
    if generator_cpu not in cpus:
        raise ValueError(f"CPU {generator_cpu} is not one this process may use: {sorted(cpus)}")
    return {generator_cpu}, cpus - {generator_cpu}


def label(store: str, workers: int = 1) -> str:
    """A store and worker count as the report names them (one worker: the store alone)."""
    return store if workers == 1 else f"{store}, {workers} workers"


def find_max_summary(
    rows: Sequence[Mapping], p99_ms: float, goal: Mapping = HELD_GOAL
) -> list[dict]:
    """Per (store, workers), in the order run: the rates tried with whether each held, the
    highest held, and whether that meets `goal` (None when `p99_ms` is looser than the
    goal's, which makes the two incomparable)."""
    tried: dict[tuple[str, int], list[tuple[float, bool]]] = {}
    for r in rows:
        tried.setdefault((r["store"], r.get("workers", 1)), []).append(
            (r["rate"], r["held"] if "held" in r else held(r, p99_ms))
        )
    out = []
    for (store, workers), history in tried.items():
        best = highest_held(history)
        met = None if p99_ms > goal["p99_ms"] else best is not None and best >= goal["rate"]
        out.append(
            {
                "store": store,
                "workers": workers,
                "highest_held": best,
                "goal_met": met,
                "tried": [{"rate": rate, "held": ok} for rate, ok in history],
            }
        )
    return out


def _ms(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _mark(met: bool | None) -> str:
    return {True: "**met**", False: "**NOT met**", None: "not measured"}[met]


def render(result: Mapping) -> str:
    """The Markdown report."""
    m, cat, mix = result["machine"], result["catalogue"], result["mix"]
    pin = result.get("pinning")
    placement = (
        f" Pinned (`os.sched_setaffinity`): the generator to CPU "
        f"{', '.join(map(str, pin['generator_cpus']))}, the server (every worker) and "
        f"redis-server to CPU {', '.join(map(str, pin['server_cpus']))}."
        if pin
        else ""
    )
    counts = list(result.get("workers", [1]))
    processes = (
        "one process"
        if counts == [1]
        else f"N processes on the port for N = {', '.join(map(str, counts))}, with "
        "`--workers N` when N > 1"
    )
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}. Machine: {m['cpus']} CPUs ({m['cpu_model']}), "
        f"{m['platform']}, Python {m['python']}; load average at the start "
        f"{m['loadavg_start']}. The load generator (one asyncio process on uvloop, a raw "
        "keep-alive HTTP/1.1 client) runs on the "
        f"same machine as the server, and Redis beside them.{placement}",
        "",
        "## Setup",
        "",
        f"- Catalogue (`{result['workdir']}`): {cat['products']:,} products, "
        f"{cat['products_with_vectors']:,} with item vectors of `{cat['model_version']}` "
        f"(the candidates); {cat['customers_with_history']:,} customers with a history in "
        "`customer_history`.",
        f"- Server: `atelier --workdir W serve --port P --poll-seconds 0` (uvicorn, {processes}, "
        f"one JSON access-log line per request to a file); stores: "
        + ", ".join(
            dict.fromkeys(s["store"] + " (" + s["online_store"] + ")" for s in result["stores"])
        )
        + ".",
        f"- Load: open loop, request i due at t0 + i/rate, latency from the due time to the "
        f"response (no coordinated omission); {result['duration_s']:g} s per rate after a "
        f"{result['warmup_s']:g} s warm-up; per-request timeout {result['timeout_s']:g} s.",
        f"- Mix: {mix['similar']:.0%} GET `/products/{{id}}/similar?k={K}`; the rest POST "
        f"`/recommendations` k={K}, of which {mix['unknown']:.0%} unknown customers "
        f"(popularity fallback), {mix['explain']:.0%} with `explain`, {mix['filters']:.0%} "
        f"with one attribute filter ({', '.join(f'{a}={v}' for a, v in result['filters'])}).",
        "",
        "## Results",
        "",
        "Client latency in ms (due time to response). Server p50/p99: estimated from the "
        "`atelier_request_seconds` buckets of the API endpoints between two `/metrics` "
        "scrapes (linear within a bucket), i.e. without the client and the network stack. "
        "CPU: share of one core used by the generator / the server (its process tree: every "
        "worker) (/ redis-server) during the rate.",
        "",
        "| store | rate req/s | sent | achieved req/s | p50 | p95 | p99 | max | errors | "
        "fallbacks | server p50 | server p99 | CPU client / server |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        lat, srv, cpu = r["latency_ms"], r["server"], r["cpu"]
        errors = str(r["errors"])
        if r["errors_by_kind"]:
            errors += " (" + ", ".join(f"{k} {n}" for k, n in r["errors_by_kind"].items()) + ")"
        falls = ", ".join(f"{k} {n}" for k, n in r["fallbacks"].items()) or "0"
        server_cpu = _pct(cpu["server"])
        if cpu.get("redis") is not None:
            server_cpu += f" / {_pct(cpu['redis'])}"
        lines.append(
            f"| {label(r['store'], r.get('workers', 1))} | {r['rate']:g} | {r['sent']:,} | "
            f"{r['achieved_rate']:.1f} | "
            f"{_ms(lat['p50'])} | {_ms(lat['p95'])} | {_ms(lat['p99'])} | {_ms(lat['max'])} | "
            f"{errors} | {falls} | {_ms(srv['p50_ms'])} | {_ms(srv['p99_ms'])} | "
            f"{_pct(cpu['client'])} / {server_cpu} |"
        )
    lines += [
        "",
        "Send lag (generator behind schedule, ms), p99 / max: "
        + "; ".join(
            f"{label(r['store'], r.get('workers', 1))} {r['rate']:g}: "
            f"{_ms(r['send_lag_ms']['p99'])} / "
            f"{_ms(r['send_lag_ms']['max'])}"
            for r in result["results"]
        )
        + ".",
        "",
        "Generator CPU per request (ms): "
        + "; ".join(
            f"{label(r['store'], r.get('workers', 1))} {r['rate']:g}: "
            f"{_ms(r.get('cpu_ms_per_request', {}).get('client'))}"
            for r in result["results"]
        )
        + ".",
        "",
    ]
    search = result.get("find_max")
    if search:
        lines += [
            "## Highest rate held",
            "",
            f"Search from {search['start']:g} req/s: doubled while the rate held (client p99 "
            f"≤ {search['p99_ms']:g} ms, 0 errors, no `online_store_unavailable` fallback, "
            f"≥ 95% of the rate reached), then bisected between the highest held and the "
            f"lowest failed rate down to {search['resolution']:g} req/s or "
            f"{search['max_steps']} runs. Goal (issue 15): ≥ {HELD_GOAL['rate']:g} req/s at "
            f"p99 ≤ {HELD_GOAL['p99_ms']:g} ms, the generator on its own core"
            + ("." if pin else " (not pinned here: `--pin-generator`)."),
            "",
        ]
        for h in search["highest_held"]:
            best = "none" if h["highest_held"] is None else f"{h['highest_held']:g} req/s"
            runs = ", ".join(f"{t['rate']:g} {'✓' if t['held'] else '✗'}" for t in h["tried"])
            lines.append(
                f"- {label(h['store'], h['workers'])}: highest rate held at p99 <= "
                f"{search['p99_ms']:g} ms, 0 errors: {best} (goal "
                f"{_mark(h['goal_met']) if h['goal_met'] is not None else 'not comparable'}; "
                f"tried {runs})"
            )
        lines.append("")
    lines += [
        "## Goal",
        "",
        f"p50 ≤ {GOAL['p50_ms']:g} ms and p99 ≤ {GOAL['p99_ms']:g} ms at {GOAL['rate']:g} "
        f"req/s, {GOAL['errors']} errors (also required here: no `online_store_unavailable` "
        "fallback, which would hide a store failure behind a 200, and ≥ 95% of the rate "
        "reached).",
        "",
    ]
    lines += [f"- {s}: {_mark(g['met'])} ({g['detail']})" for s, g in result["goal"].items()]
    lines += ["", "## Reading the results", "", "_To be written._", ""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def command_line(argv: Sequence[str]) -> str:
    """The command as typed, with the ATELIER_* settings of the environment in front."""
    env = [
        f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("ATELIER_")
    ]
    return " ".join([*env, "python benchmarks/serving.py", shlex.join(argv)])


# -- the workdir -------------------------------------------------------------------------------


@dataclass
class Catalogue:
    """What the request mix draws from, and the sizes the report quotes."""

    model_version: str
    products: int
    candidates: list[str]
    customers: list[str]
    filters: list[tuple[str, str]]


def inspect_workdir(settings) -> tuple[Catalogue | None, list[str]]:
    """(catalogue, []) when W is ready to serve, else (None, what is missing with the command
    that makes it)."""
    from atelier.lake import Lake
    from serving.state import StateError, champion

    lake = Lake(settings)
    missing = [f"lake table {t!r}" for t in LAKE_TABLES if not lake.exists(t)]
    if missing:
        return None, [
            *missing,
            "(`make demo`, or: atelier ingest, embed, features, train recommender, promote, "
            "predict attributes, predict item-vectors, materialize)",
        ]
    try:
        model_version, _ = champion(settings)
    except StateError as e:
        return None, [str(e)]
    products = set(map(str, lake.read_arrow("products", ["product_id"])[0].to_pylist()))
    vectors = lake.read_arrow("item_vectors", ["product_id", "model_version"]).to_pydict()
    candidates = sorted(
        {p for p, v in zip(vectors["product_id"], vectors["model_version"]) if v == model_version}
        & products
    )
    if not candidates:
        return None, [
            f"item vectors of the champion {model_version} in the lake's item_vectors "
            "(atelier predict item-vectors, then atelier materialize)"
        ]
    customers = sorted(
        set(map(str, lake.read_arrow("customer_history", ["customer_id"])[0].to_pylist()))
    )
    if not customers:
        return None, ["customers in the lake's customer_history (atelier features)"]
    missing = online_missing(settings, customers, candidates, model_version)
    if missing:
        return None, missing
    return Catalogue(
        model_version, len(products), candidates, customers, common_filters(lake, candidates)
    ), []


def online_missing(
    settings, customers: Sequence[str], products: Sequence[str], model_version: str, store=None
) -> list[str]:
    """What the Feast online store lacks of what serving reads: histories of (a sample of) the
    customers, item vectors of the champion for (a sample of) the candidates."""
    from atelier.feast_store import feature_store

    sample_c, sample_p = list(customers[:50]), list(products[:50])
    where = "the Feast online store"
    try:
        store = store or feature_store(settings)
        where = f"the Feast online store ({store.config.online_store.type})"
        history = store.get_online_features(
            features=["customer_history:history"],
            entity_rows=[{"customer_id": c} for c in sample_c],
        ).to_dict()["history"]
        online = store.get_online_features(
            features=["item_vectors:vector", "item_vectors:model_version"],
            entity_rows=[{"product_id": p} for p in sample_p],
        ).to_dict()
    except Exception as e:  # no registry, no online table: the same advice
        return [f"{where}: {type(e).__name__}: {e} (atelier materialize)"]
    missing = []
    if all(h is None for h in history):
        missing.append(
            f"customer_history in {where}: none of {len(sample_c)} customers of the lake's "
            "customer_history is there (atelier materialize)"
        )
    if not any(
        v is not None and m == model_version
        for v, m in zip(online["vector"], online["model_version"])
    ):
        missing.append(
            f"item_vectors of {model_version} in {where}: none of {len(sample_p)} candidates "
            "has one (atelier materialize)"
        )
    return missing


def common_filters(lake, candidates: Sequence[str], n: int = 3) -> list[tuple[str, str]]:
    """The `n` commonest (attribute, value) pairs among the candidates: filters that keep
    results non-empty."""
    table = "predicted_attributes" if lake.exists("predicted_attributes") else "product_labels"
    columns = ["product_id", "attribute", "value"]
    rows = lake.read_arrow(table, columns + (["source"] if table == "predicted_attributes" else []))
    data = rows.to_pydict()
    # Serving leaves predictions below the minimum confidence out.
    shown = [s != "below_confidence" for s in data.get("source", [None] * rows.num_rows)]
    keep = set(candidates)
    counts = Counter(
        (a, v)
        for p, a, v, ok in zip(data["product_id"], data["attribute"], data["value"], shown)
        if p in keep and v is not None and ok
    )
    return [pair for pair, _ in counts.most_common(n)]


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (Linux /proc); None elsewhere."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (Linux /proc): the server and its uvicorn workers."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def tree_cpu_seconds(pid: int | None) -> float | None:
    """`cpu_seconds` summed over `pid`'s process tree (with N workers, the supervisor alone
    uses next to nothing); None when `pid` cannot be read."""
    if pid is None or cpu_seconds(pid) is None:
        return None
    return sum(c for c in map(cpu_seconds, process_tree(pid)) if c is not None)


def set_affinity(pid: int, cpus: Iterable[int]) -> None:
    """Every thread of `pid` on `cpus` (`sched_setaffinity` of a pid sets its main thread's
    only; threads and processes started later inherit the starting thread's)."""
    cpus = set(cpus)
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def affinities(pid: int) -> dict[int, list[int]]:
    """The CPUs each process of `pid`'s tree may run on."""
    out = {}
    for p in process_tree(pid):
        try:
            out[p] = sorted(os.sched_getaffinity(p))
        except OSError:
            pass
    return out


@contextmanager
def pinned(cpus: set[int] | None):
    """This process's threads on `cpus` inside the block (nothing when None), then back."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    set_affinity(os.getpid(), cpus)
    try:
        yield
    finally:
        set_affinity(os.getpid(), before)


class Redis:
    """A private redis-server on 127.0.0.1 (temporary folder, no persistence)."""

    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found: install it (Debian: apt-get install redis-server) or "
                "leave redis out of --stores"
            )
        self.version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on {self.url}") from None
                time.sleep(0.05)
        self.client = client

    def keys(self) -> int:
        return int(self.client.dbsize())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def load_redis(settings, redis_url: str, registry_url: str) -> dict:
    """`feast apply` + gated materialisation of the served views into Redis, with a SQL
    registry at `registry_url`; W's own registry and materialisation state are left as they
    were. Returns the materialisation result; RuntimeError when a view did not load."""
    from atelier.feast_store import STATE_FILE, apply, feature_store
    from spark_jobs.materialize import materialize

    overrides = {
        "online_store": {"type": "redis", "connection_string": redis_url},
        "registry": {"registry_type": "sql", "path": registry_url},
    }
    store = feature_store(settings, overrides)
    state_file = settings.feast_dir / STATE_FILE
    saved = state_file.read_bytes() if state_file.is_file() else None
    try:
        apply(settings, store=store)
        result = materialize(settings, tables=SERVED_TABLES, store=store)
    finally:  # the state is per online store, but W should not keep a temporary Redis in it
        if saved is None:
            state_file.unlink(missing_ok=True)
        else:
            state_file.write_bytes(saved)
    failed = {v: r for v, r in result.items() if r["status"] != "materialized"}
    if failed:
        raise RuntimeError(f"materialising into Redis failed: {failed}")
    return result


def atelier_command() -> list[str]:
    exe = Path(sys.executable).with_name("atelier")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "cli.main"]


class Server:
    """`atelier --workdir W serve [--workers N]` on a free 127.0.0.1 port; output to `log`;
    on `cpus` when given."""

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str],
        log: Path,
        workers: int = 1,
        cpus: set[int] | None = None,
    ):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [
            *atelier_command(),
            "--workdir", str(workdir), "--log-level", "WARNING",
            "serve", "--host", "127.0.0.1", "--port", str(self.port), "--poll-seconds", "0",
        ]  # fmt: skip
        if workers != 1:
            cmd += ["--workers", str(workers)]
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            cmd, env=dict(env), stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT
        )
        if cpus:
            # Now, while it is one thread still importing: the workers it forks later inherit.
            set_affinity(self.proc.pid, cpus)

    def wait_ready(self, timeout: float, workers: int = 1) -> dict:
        """Poll `/ready` on fresh connections until `workers` distinct processes (its `pid`)
        have answered 200: a request may reach any worker, and one still loading would charge
        its load time to the first rate. Returns the last 200 answer."""
        import httpx

        deadline = time.monotonic() + timeout
        last, ready_pids = "no answer", set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"atelier serve exited with {self.proc.returncode}:\n{self.tail()}"
                )
            try:
                r = httpx.get(f"{self.base}/ready", timeout=5)
                if r.status_code == 200:
                    answer = r.json()
                    ready_pids.add(answer.get("pid"))
                    if len(ready_pids) >= workers:
                        return answer
                    last = f"{len(ready_pids)} of {workers} workers ready"
                    time.sleep(0.05)  # soon again: the next connection may reach another
                    continue
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.5)
        raise RuntimeError(f"/ready not 200 after {timeout:g} s ({last}):\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        workers = process_tree(self.proc.pid)[1:] if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.terminate()  # uvicorn's supervisor stops its workers
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in workers:  # left over when the supervisor had to be killed
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        self._out.close()


# -- the load generator ------------------------------------------------------------------------


# Times of the load generator: not the event loop's clock, which uvloop keeps in whole
# milliseconds (latencies came out as 6.00, 7.00, 8.00 ms).
now = time.perf_counter


class HTTPProtocolError(Exception):
    """The server's answer is not an HTTP/1.1 response this client can read."""


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, for the load generator.

    Why not httpx: its per-request Python work (~3–5 ms of CPU here) matched the server's own,
    so the generator saturated its core below 200 req/s and measured itself. This client writes
    the request bytes directly (the mix's bodies are serialised once) and reads a status line,
    the headers and a Content-Length body (what uvicorn answers for JSON and the metrics page);
    chunked bodies are refused. Connections are pooled, at most `max_connections`; one that
    errs is closed, never reused. An idle one is dropped after `keepalive_expiry` s (uvicorn
    closes its side after 5 s), and a request whose reused connection turns out closed before
    any answer is sent once more on a new one.
    """

    def __init__(
        self, base: str, max_connections: int, timeout: float, keepalive_expiry: float = 2.0
    ):
        host_port = base.split("://", 1)[-1].rstrip("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        self.timeout = timeout
        self.keepalive_expiry = keepalive_expiry
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.opened = 0  # connections opened (keep-alive: far fewer than requests)
        self.retried = 0  # requests sent again after their reused connection was found closed

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()

    def encode(self, method: str, path: str, body: bytes | None) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + (body or b"")

    def _reusable(self):
        """The most recently used idle connection still fresh, or None (stale ones closed)."""
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now() - since < self.keepalive_expiry and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    async def request(self, method: str, path: str, body: bytes | None = None):
        """(status, body bytes); raises OSError, TimeoutError or HTTPProtocolError."""
        data = self.encode(method, path, body)
        async with self._slots:
            conn = self._reusable()
            if conn is not None:
                try:
                    return await self._exchange(*conn, data)
                except ConnectionError:  # closed by the server while idle: not answered
                    self.retried += 1
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout
            )
            self.opened += 1
            return await self._exchange(reader, writer, data)

    async def _exchange(self, reader, writer, data: bytes):
        try:
            writer.write(data)
            status, payload, keep = await asyncio.wait_for(_response(reader), self.timeout)
        except BaseException:
            writer.close()
            raise
        if keep:
            self._idle.append((reader, writer, now()))
        else:
            writer.close()
        return status, payload


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Read one response: (status, body, whether the connection stays open)."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("the server closed the connection without answering")
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HTTPProtocolError(f"not an HTTP/1.1 status line: {line[:80]!r}")
    status = int(parts[1])
    length, keep = None, parts[0] == b"HTTP/1.1"
    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            raise HTTPProtocolError("chunked responses are not supported")
        elif name == b"connection":
            keep = value.strip().lower() != b"close"
    if length is None:
        raise HTTPProtocolError(f"HTTP {status} without Content-Length")
    return status, await reader.readexactly(length), keep


async def _call(client: RawClient, call: Call, due: float) -> Outcome:
    sent = now()
    try:
        status, body = await client.request(call.method, call.path, call.body)
        done = now()
        error = None if 200 <= status < 300 else f"http_{status}"
        fallback = None
        if error is None and call.kind != "similar":
            fallback = json.loads(body).get("fallback")
        return Outcome(call.kind, due, sent, done, error, fallback)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, HTTPProtocolError) as e:
        return Outcome(call.kind, due, sent, now(), type(e).__name__, answered=False)
    except Exception as e:  # a body that is not JSON, ...: counted, never fatal
        return Outcome(call.kind, due, sent, now(), type(e).__name__)


async def open_loop(client, calls: Sequence[Call], rate: float) -> tuple[float, list[Outcome]]:
    """Send `calls[i]` at t0 + i / rate whatever the earlier ones are doing; (t0, outcomes)."""
    t0 = now() + 0.05
    tasks = []
    for i, call in enumerate(calls):
        due = t0 + i / rate
        wait = due - now()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(_call(client, call, due)))
    return t0, list(await asyncio.gather(*tasks))


@dataclass
class Plan:
    rates: list[float]
    duration: float
    warmup: float
    pause: float
    timeout: float
    max_connections: int
    seed: int
    search: Search | None = None  # --find-max: the rates come from `next_rate`

    def next_rate(self, history: Sequence[tuple[float, bool]]) -> float | None:
        """The rate to run after `history` ((rate, held) so far); None when done."""
        if self.search is None:
            return self.rates[len(history)] if len(history) < len(self.rates) else None
        s = self.search
        return next_rate(history, self.rates[0], s.resolution, s.max_steps)

    @property
    def p99_ms(self) -> float:
        return GOAL["p99_ms"] if self.search is None else self.search.p99_ms


@dataclass(frozen=True)
class Search:
    """--find-max: what held means (client p99) and when the search stops."""

    p99_ms: float
    resolution: float
    max_steps: int


async def drive(
    base: str,
    plan: Plan,
    catalogue: Catalogue,
    store: str,
    server_pid: int,
    redis_pid: int | None,
    progress: Callable[[str], None],
    workers: int = 1,
) -> list[dict]:
    """Warm-up, then every rate of `plan` (or of its search) against `base`; one result dict
    per rate."""
    rows = []
    async with RawClient(base, plan.max_connections, plan.timeout) as client:
        if plan.warmup > 0:
            rate = min(plan.rates) if plan.search is None else plan.rates[0]
            rng = np.random.default_rng([plan.seed, 0])
            calls = request_mix(
                max(1, round(rate * plan.warmup)),
                catalogue.customers,
                catalogue.candidates,
                catalogue.filters,
                rng,
            )
            _, outcomes = await open_loop(client, calls, rate)
            bad = Counter(o.error for o in outcomes if o.error)
            progress(
                f"{label(store, workers)}: warm-up {len(calls)} requests at {rate:g} req/s, "
                f"errors {dict(bad)}"
            )
        history: list[tuple[float, bool]] = []
        while (rate := plan.next_rate(history)) is not None:
            if history and plan.pause > 0:
                await asyncio.sleep(plan.pause)
            # Fixed rates: the i-th rate's sequence; searched: the rate's, whatever its turn,
            # so that every store and worker count sees the same requests at a rate.
            i = len(history) + 1 if plan.search is None else 0
            rng = np.random.default_rng([plan.seed, i, int(rate * 1000)])
            calls = request_mix(
                max(1, round(rate * plan.duration)),
                catalogue.customers,
                catalogue.candidates,
                catalogue.filters,
                rng,
            )
            before = parse_metrics((await client.request("GET", "/metrics"))[1].decode())
            load = os.getloadavg()
            cpu0 = (time.process_time(), tree_cpu_seconds(server_pid), cpu_seconds(redis_pid))
            wall0 = time.perf_counter()
            t0, outcomes = await open_loop(client, calls, rate)
            wall = time.perf_counter() - wall0
            cpu1 = (time.process_time(), tree_cpu_seconds(server_pid), cpu_seconds(redis_pid))
            after = parse_metrics((await client.request("GET", "/metrics"))[1].decode())
            row = {
                "store": store,
                "workers": workers,
                **rate_result(rate, plan.duration, t0, outcomes),
            }
            row["server"] = server_view(before, after)
            used = {
                name: None if a is None or b is None else b - a
                for name, a, b in zip(("client", "server", "redis"), cpu0, cpu1)
            }
            row["cpu"] = {k: None if v is None else v / wall for k, v in used.items()}
            row["cpu_ms_per_request"] = {
                k: None if v is None else v * 1000 / len(calls) for k, v in used.items()
            }
            row["loadavg_1m_before"] = round(load[0], 2)
            ok = held(row, plan.p99_ms)
            if plan.search is not None:
                row["held"] = ok
            history.append((rate, ok))
            rows.append(row)
            progress(progress_line(row))
    return rows


def progress_line(r: Mapping) -> str:
    lat, srv = r["latency_ms"], r["server"]
    errors = f"{r['errors']} errors" + (f" {r['errors_by_kind']}" if r["errors"] else "")
    verdict = "" if "held" not in r else (" -> held" if r["held"] else " -> not held")
    return (
        f"{label(r['store'], r.get('workers', 1))} {r['rate']:g} req/s: {r['sent']} sent, "
        f"{r['answered']} answered, "
        f"{errors}, achieved {r['achieved_rate']:.1f} req/s; p50 {_ms(lat['p50'])} "
        f"p95 {_ms(lat['p95'])} p99 {_ms(lat['p99'])} max {_ms(lat['max'])} ms; server p50 "
        f"~{_ms(srv['p50_ms'])} p99 ~{_ms(srv['p99_ms'])} ms; send lag p99 "
        f"{_ms(r['send_lag_ms']['p99'])} ms; fallbacks {r['fallbacks'] or 0}{verdict}"
    )


# -- main --------------------------------------------------------------------------------------


def store_env(base_env: Mapping[str, str], store: str, redis_url: str = "", registry_url: str = ""):
    """The server's environment for `store` (W comes from --workdir, not ATELIER_WORKDIR)."""
    env = {k: v for k, v in base_env.items() if k not in (*FEAST_ENV, "ATELIER_WORKDIR")}
    if store == "redis":
        env.update(
            ATELIER_FEAST__PROFILE="scale",
            ATELIER_FEAST__REDIS=redis_url,
            ATELIER_FEAST__REGISTRY_URL=registry_url,
        )
    else:
        env["ATELIER_FEAST__PROFILE"] = "embedded"
    return env


def bench_store(
    store: str,
    settings,
    catalogue: Catalogue,
    plan: Plan,
    base_env: Mapping[str, str],
    scratch: Path,
    ready_timeout: float,
    workers: Sequence[int] = (1,),
    cpus: tuple[set[int], set[int]] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Prepare `store` once; per worker count, serve W over it and drive every rate; (one
    info per worker count, rows). `cpus`: (the generator's, the server's) when pinned."""
    from atelier.settings import Settings

    redis = None
    info: dict = {"store": store}
    server_cpus = cpus[1] if cpus else None
    try:
        if store == "redis":
            t = time.perf_counter()
            redis = Redis(scratch / "redis")
            if server_cpus:
                set_affinity(redis.proc.pid, server_cpus)
            registry = f"sqlite:///{scratch / 'feast-registry.sqlite'}"
            say(
                f"redis: {redis.version.split(' sha=')[0]} on {redis.url}; "
                "feast apply + materialise"
            )
            loaded = load_redis(settings, redis.url, registry)
            scale = Settings(
                workdir=settings.workdir,
                feast={"profile": "scale", "redis": redis.url, "registry_url": registry},
            )
            missing = online_missing(
                scale, catalogue.customers, catalogue.candidates, catalogue.model_version
            )
            if missing:
                raise RuntimeError(
                    "Redis was loaded but serving cannot read it: " + "; ".join(missing)
                )
            info.update(
                online_store=f"redis-server on {redis.url}, {redis.keys()} keys",
                redis_version=redis.version,
                prepare_s=round(time.perf_counter() - t, 1),
                materialized={v: r.get("rows") for v, r in loaded.items()},
            )
            env = store_env(base_env, store, redis.url, registry)
            say(f"redis: loaded {info['materialized']} in {info['prepare_s']} s")
        else:
            online = settings.feast.online_sqlite or str(settings.feast_dir / "online.db")
            info["online_store"] = f"sqlite {online}"
            env = store_env(base_env, store)
        infos, rows = [], []
        for n in workers:
            one, more = serve_and_drive(
                store, n, settings, catalogue, plan, env, scratch, ready_timeout, redis, cpus
            )
            infos.append({**info, **one})
            rows += more
        return infos, rows
    finally:
        if redis is not None:
            redis.stop()


def serve_and_drive(
    store: str,
    workers: int,
    settings,
    catalogue: Catalogue,
    plan: Plan,
    env: Mapping[str, str],
    scratch: Path,
    ready_timeout: float,
    redis: Redis | None,
    cpus: tuple[set[int], set[int]] | None,
) -> tuple[dict, list[dict]]:
    """`atelier serve --workers N` over the prepared store, every rate; (server info, rows)."""
    generator_cpus, server_cpus = cpus if cpus else (None, None)
    name = label(store, workers)
    info: dict = {"workers": workers}
    t = time.perf_counter()
    server = Server(
        settings.workdir, env, scratch / f"serve-{store}-{workers}.log", workers, server_cpus
    )
    try:
        ready = server.wait_ready(ready_timeout, workers)
        info.update(ready_s=round(time.perf_counter() - t, 1), ready=ready, port=server.port)
        say(
            f"{name}: atelier serve ready in {info['ready_s']} s on {server.base} "
            f"({ready['model_version']}, {ready['products']} candidates)"
        )
        if server_cpus:
            # Checked, not assumed: every process of the tree should have inherited the pin.
            seen = affinities(server.proc.pid)
            inherited = all(set(c) == server_cpus for c in seen.values())
            if not inherited:
                say(f"{name}: server affinity {seen}, not {sorted(server_cpus)}: pinning again")
                for pid in seen:
                    set_affinity(pid, server_cpus)
            info["affinity"] = {
                "generator_cpus": sorted(generator_cpus),
                "server_cpus": sorted(server_cpus),
                "server_processes": len(seen),
                "inherited": inherited,
                "redis_cpus": sorted(os.sched_getaffinity(redis.proc.pid)) if redis else None,
            }
        with pinned(generator_cpus):
            rows = run_async(
                drive(
                    server.base,
                    plan,
                    catalogue,
                    store,
                    server.proc.pid,
                    redis.proc.pid if redis else None,
                    say,
                    workers,
                )
            )
        if server.proc.poll() is not None:
            raise RuntimeError(f"atelier serve died during the run:\n{server.tail()}")
        return info, rows
    finally:
        server.stop()


def run_async(coro):
    """Run `coro` on uvloop when it is installed (uvicorn's standard extra brings it): the
    generator's event loop costs less CPU per request than asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def parse_rates(text: str) -> list[float]:
    rates = [float(r) for r in text.split(",") if r.strip()]
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive numbers, got {text!r}")
    return rates


def parse_workers(text: str) -> list[int]:
    try:
        counts = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        counts = []
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"workers must be counts >= 1, got {text!r}")
    return list(dict.fromkeys(counts))


def parse_stores(text: str) -> list[str]:
    stores = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(stores) - set(STORES))
    if not stores or unknown:
        raise argparse.ArgumentTypeError(f"stores are {', '.join(STORES)}; got {text!r}")
    return list(dict.fromkeys(stores))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    base_env = dict(os.environ)  # before Feast: importing it sets PROMETHEUS_MULTIPROC_DIR
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True, help="champion's vectors materialised")
    p.add_argument("--rates", type=parse_rates, default="50,100,200", help="req/s, comma-separated")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per rate")
    p.add_argument("--stores", type=parse_stores, default="sqlite,redis")
    p.add_argument(
        "--warmup", type=float, default=10.0, help="seconds at the lowest rate, unrecorded"
    )
    p.add_argument("--pause", type=float, default=2.0, help="seconds between rates")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    p.add_argument("--max-connections", type=int, default=512)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=20181)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--workers", type=parse_workers, default="1", help="server processes, comma-separated"
    )
    p.add_argument(
        "--pin-generator",
        type=int,
        metavar="CPU",
        help="run the generator on this CPU and the server (and redis-server) on the others",
    )
    p.add_argument(
        "--find-max",
        action="store_true",
        help="search the highest rate held from the first of --rates instead of the rates",
    )
    p.add_argument("--p99-ms", type=float, default=GOAL["p99_ms"], help="held: client p99")
    p.add_argument("--resolution", type=float, default=25.0, help="search stop, req/s")
    p.add_argument("--max-steps", type=int, default=8, help="search stop, runs")
    args = p.parse_args(argv)
    if args.duration <= 0:
        p.error(f"--duration must be > 0, got {args.duration}")
    if args.p99_ms <= 0 or args.resolution <= 0 or args.max_steps < 1:
        p.error("--p99-ms and --resolution must be > 0, --max-steps >= 1")
    cpus = None
    if args.pin_generator is not None:
        try:
            cpus = split_cpus(os.sched_getaffinity(0), args.pin_generator)
        except ValueError as e:
            say(f"--pin-generator {args.pin_generator}: {e}")
            return 2
    if not args.workdir.is_dir():
        say(f"no workdir {args.workdir}")
        return 2

    from atelier.logs import setup_logging
    from atelier.settings import Settings

    setup_logging("WARNING")  # progress lines come from `say`
    # Library warnings (GX's deprecations at import, during the gate) reach the log through
    # `logging.captureWarnings`; filtering the warnings does not hold, as a library (bigtree's
    # deprecation helper) resets the DeprecationWarning filter to "default" when it runs.
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    settings = Settings(
        workdir=args.workdir, feast={"profile": "embedded"}, gate={"build_data_docs": False}
    )
    catalogue, missing = inspect_workdir(settings)
    if catalogue is None:
        say(f"{settings.workdir} is not ready to serve; it lacks:\n  " + "\n  ".join(missing))
        return 2
    say(
        f"{settings.workdir}: {catalogue.model_version}, {len(catalogue.candidates)} candidates "
        f"of {catalogue.products} products, {len(catalogue.customers)} customers with a history"
    )
    plan = Plan(
        args.rates,
        args.duration,
        args.warmup,
        args.pause,
        args.timeout,
        args.max_connections,
        args.seed,
        Search(args.p99_ms, args.resolution, args.max_steps) if args.find_max else None,
    )
    result: dict = {
        "command": command_line(argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "loadavg_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        },
        "workdir": str(settings.workdir),
        "catalogue": {
            "model_version": catalogue.model_version,
            "products": catalogue.products,
            "products_with_vectors": len(catalogue.candidates),
            "customers_with_history": len(catalogue.customers),
        },
        "filters": catalogue.filters,
        "mix": MIX,
        "k": K,
        "rates": args.rates,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "timeout_s": args.timeout,
        "seed": args.seed,
        "workers": args.workers,
        "pinning": None
        if cpus is None
        else {"generator_cpus": sorted(cpus[0]), "server_cpus": sorted(cpus[1])},
        "find_max": None,
        "goal": {},
        "stores": [],
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        for store in args.stores:
            folder = Path(scratch) / store
            folder.mkdir()
            try:
                infos, rows = bench_store(
                    store,
                    settings,
                    catalogue,
                    plan,
                    base_env,
                    folder,
                    args.ready_timeout,
                    args.workers,
                    cpus,
                )
            except RuntimeError as e:
                say(f"{store}: {e}")
                return 1
            result["stores"] += infos
            result["results"] += rows
    result["goal"] = {
        label(s, n): goal_status(result["results"], s, workers=n)
        for s in args.stores
        for n in args.workers
    }
    for name, g in result["goal"].items():
        say(f"goal at {GOAL['rate']:g} req/s, {name}: {_mark(g['met'])} ({g['detail']})")
    if args.find_max:
        result["find_max"] = {
            "start": args.rates[0],
            "p99_ms": args.p99_ms,
            "resolution": args.resolution,
            "max_steps": args.max_steps,
            "highest_held": find_max_summary(result["results"], args.p99_ms),
        }
        for h in result["find_max"]["highest_held"]:
            say(
                f"{label(h['store'], h['workers'])}: highest rate held at p99 <= "
                f"{args.p99_ms:g} ms, 0 errors: {h['highest_held']} req/s"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "serving.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
