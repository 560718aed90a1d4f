"""The serving benchmark's pure helpers: latency summaries, the Prometheus histogram quantile
and scrape differences, the request mix, per-rate results, the goal and the report."""

from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest

from benchmarks.serving import (
    Call,
    HTTPProtocolError,
    Outcome,
    Plan,
    RawClient,
    Scrape,
    Search,
    _call,
    cpu_seconds,
    find_max_summary,
    goal_status,
    held,
    highest_held,
    histogram_quantile,
    label,
    next_rate,
    parse_metrics,
    parse_workers,
    pinned,
    process_tree,
    rate_result,
    render,
    request_mix,
    server_view,
    split_cpus,
    summary,
    tree_cpu_seconds,
)

pytestmark = pytest.mark.unit

INF = float("inf")


def test_summary_of_latencies_and_of_nothing():
    got = summary(list(range(1, 101)))
    assert got["p50"] == pytest.approx(50.5)
    assert got["p99"] == pytest.approx(99.01)
    assert got["max"] == 100 and got["mean"] == pytest.approx(50.5)
    assert summary([]) == dict.fromkeys(("p50", "p95", "p99", "max", "mean"))


def test_histogram_quantile_interpolates_within_the_bucket_like_prometheus():
    buckets = [(0.001, 0.0), (0.002, 50.0), (0.005, 100.0), (INF, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.002)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.0015)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.002 + 0.003 * 49 / 50)
    # In the +Inf bucket: the highest finite bound; no observations: None.
    assert histogram_quantile(0.99, [(0.001, 1.0), (INF, 10.0)]) == 0.001
    assert histogram_quantile(0.5, [(0.001, 0.0), (INF, 0.0)]) is None


def page(a: int, b: int, m: int, f: int, e: int) -> str:
    """A /metrics page: /recommendations has `a` observations <= 1 ms and `b` <= 10 ms,
    /metrics `m`; `f` unknown-customer fallbacks, `e` online store errors."""
    lines = ["# TYPE atelier_request_seconds histogram"]
    for endpoint, method, counts in (
        ("/recommendations", "POST", (a, b, b)),
        ("/metrics", "GET", (m, m, m)),
    ):
        labels = f'endpoint="{endpoint}",method="{method}",status="2xx"'
        for le, n in zip(("0.001", "0.01", "+Inf"), counts):
            lines.append(f'atelier_request_seconds_bucket{{{labels},le="{le}"}} {n}')
        lines.append(f"atelier_request_seconds_count{{{labels}}} {counts[-1]}")
        lines.append(f"atelier_request_seconds_sum{{{labels}}} 0.1")
    lines += [
        "# TYPE atelier_recommendation_fallbacks counter",
        f'atelier_recommendation_fallbacks_total{{reason="unknown_customer"}} {f}',
        "# TYPE atelier_online_store_errors counter",
        f"atelier_online_store_errors_total {e}",
    ]
    return "\n".join(lines) + "\n"


def test_server_view_is_the_difference_of_two_scrapes_without_ops_endpoints():
    before = parse_metrics(page(a=10, b=10, m=5, f=3, e=0))
    after = parse_metrics(page(a=10, b=30, m=6, f=7, e=1))
    view = server_view(before, after)
    assert view["requests"] == 20 and view["by_endpoint"] == {"/recommendations": 20}
    assert view["non_2xx"] == 0
    # All 20 new observations lie in (1 ms, 10 ms]: the median interpolates to 5.5 ms.
    assert view["p50_ms"] == pytest.approx(5.5)
    assert view["fallbacks"] == {"unknown_customer": 4}
    assert view["online_store_errors"] == 1
    assert server_view(Scrape(), Scrape())["p50_ms"] is None


def test_request_mix_shares_and_bodies():
    rng = np.random.default_rng(0)
    calls = request_mix(4000, ["c1", "c2"], ["p1", "p2"], [("pattern", "Stripe")], rng)
    kinds = [c.kind for c in calls]
    assert 0.08 < kinds.count("similar") / len(calls) < 0.12
    recs = [c for c in calls if c.kind != "similar"]
    assert 0.12 < sum(c.kind == "unknown" for c in recs) / len(recs) < 0.18
    bodies = [json.loads(c.body) for c in recs]
    assert all(b["k"] == 10 for b in bodies)
    assert {b["customer_id"] for b, c in zip(bodies, recs) if c.kind == "known"} == {"c1", "c2"}
    assert any(b.get("filters") == {"pattern": ["Stripe"]} for b in bodies)
    assert any(b.get("explain") for b in bodies)
    assert all(c.path.startswith("/products/p") for c in calls if c.kind == "similar")
    # The same seed gives the same sequence (every store sees the same requests).
    again = request_mix(4000, ["c1", "c2"], ["p1", "p2"], [("pattern", "Stripe")],
                        np.random.default_rng(0))  # fmt: skip
    assert again == calls


def test_rate_result_counts_errors_latency_from_the_due_time_and_fallbacks():
    outcomes = [
        Outcome("known", due=0.0, sent=0.001, done=0.004, error=None),
        Outcome("unknown", due=0.5, sent=0.5, done=0.502, error=None, fallback="unknown_customer"),
        Outcome("similar", due=1.0, sent=1.0, done=1.1, error="http_500"),
        Outcome("known", due=1.5, sent=1.5, done=2.0, error="ReadTimeout", answered=False),
    ]
    r = rate_result(2.0, 2.0, 0.0, outcomes)
    assert (r["sent"], r["answered"], r["ok"], r["errors"]) == (4, 3, 2, 2)
    assert r["errors_by_kind"] == {"ReadTimeout": 1, "http_500": 1}
    assert r["fallbacks"] == {"unknown_customer": 1}
    assert r["latency_ms"]["max"] == pytest.approx(100.0)
    assert r["send_lag_ms"]["max"] == pytest.approx(1.0)
    assert r["achieved_rate"] == pytest.approx(3 / 2.0)


def _row(store, rate, p50, p99, errors=0, achieved=None, fallbacks=None):
    return {
        "store": store,
        "rate": rate,
        "sent": int(rate * 60),
        "achieved_rate": rate if achieved is None else achieved,
        "latency_ms": {"p50": p50, "p95": p99, "p99": p99, "max": p99},
        "send_lag_ms": {"p50": 0.1, "p95": 0.2, "p99": 0.3, "max": 1.0},
        "errors": errors,
        "errors_by_kind": {"http_500": errors} if errors else {},
        "fallbacks": fallbacks or {},
        "server": {"p50_ms": p50 / 2, "p99_ms": p99 / 2},
        "cpu": {"client": 0.2, "server": 0.5, "redis": None},
    }


def test_goal_needs_latency_no_errors_no_hidden_store_failure_and_the_rate():
    rows = [
        _row("sqlite", 200.0, 3.0, 15.0),
        _row("redis", 200.0, 3.0, 25.0),
        _row("a", 200.0, 3.0, 15.0, errors=1),
        _row("b", 200.0, 3.0, 15.0, fallbacks={"online_store_unavailable": 2}),
        _row("c", 200.0, 3.0, 15.0, achieved=150.0),
        _row("d", 100.0, 3.0, 15.0),
    ]
    assert goal_status(rows, "sqlite")["met"] is True
    assert goal_status(rows, "redis")["met"] is False
    assert "p99 25.00 ms" in goal_status(rows, "redis")["detail"]
    assert [goal_status(rows, s)["met"] for s in "abc"] == [False, False, False]
    assert goal_status(rows, "d")["met"] is None


def _result(rows, **extra):
    return {
        "command": "python benchmarks/serving.py --workdir W",
        "date": "2026-11-25 21:00",
        "machine": {
            "cpus": 2,
            "cpu_model": "Some CPU",
            "platform": "Linux",
            "python": "3.11.9",
            "loadavg_start": "1.00 1.00 1.00",
        },
        "workdir": "/w",
        "catalogue": {
            "model_version": "atelier-recommender/1",
            "products": 150,
            "products_with_vectors": 150,
            "customers_with_history": 40,
        },
        "stores": [{"store": "sqlite", "online_store": "sqlite /w/feast/online.db"}],
        "duration_s": 60.0,
        "warmup_s": 10.0,
        "timeout_s": 10.0,
        "mix": {"similar": 0.1, "unknown": 0.15, "explain": 0.2, "filters": 0.15},
        "filters": [("pattern", "Stripe")],
        "results": rows,
        "goal": {"sqlite": goal_status(rows, "sqlite")},
        **extra,
    }


def test_render_has_the_command_the_table_the_goal_and_an_empty_reading_section():
    rows = [_row("sqlite", 50.0, 2.0, 9.0), _row("sqlite", 200.0, 6.0, 30.0, errors=2)]
    md = render(_result(rows))
    assert "Command: `python benchmarks/serving.py --workdir W`" in md
    assert "| sqlite | 200 | 12,000 | 200.0 | 6.00 |" in md
    assert "2 (http_500 2)" in md
    assert "- sqlite: **NOT met**" in md
    assert md.rstrip().endswith("## Reading the results\n\n_To be written._")
    assert "(uvicorn, one process, " in md and "Pinned" not in md
    assert "## Highest rate held" not in md


def search(passes, start=50.0, resolution=25.0, max_steps=8):
    """The rates `next_rate` runs when a rate holds iff `passes(rate)`."""
    history = []
    while (rate := next_rate(history, start, resolution, max_steps)) is not None:
        history.append((rate, passes(rate)))
    return history


def test_search_doubles_while_held_then_bisects_to_the_resolution():
    history = search(lambda rate: rate <= 330)
    assert [r for r, _ in history] == [50, 100, 200, 400, 300, 350, 325]
    assert highest_held(history) == 325
    # A fine resolution runs out of steps: at most max_steps rates.
    history = search(lambda rate: rate <= 1000)
    assert [r for r, _ in history] == [50, 100, 200, 400, 800, 1600, 1200, 1000]
    assert highest_held(history) == 1000
    assert len(search(lambda rate: rate <= 330, resolution=1, max_steps=5)) == 5


def test_search_below_a_failed_start_and_when_nothing_holds():
    history = search(lambda rate: rate <= 30)
    assert history == [(50, False), (25, True)]
    assert highest_held(history) == 25
    history = search(lambda rate: False)
    assert [r for r, _ in history] == [50, 25]
    assert highest_held(history) is None
    assert next_rate([], 75, 25, 8) == 75.0


def test_plan_runs_the_fixed_rates_in_order_or_the_search():
    plan = Plan([50.0, 200.0, 100.0], 60, 10, 2, 10, 512, 1)
    assert plan.next_rate([]) == 50 and plan.next_rate([(50, True)]) == 200
    assert plan.next_rate([(50, True), (200, False)]) == 100  # fixed: held does not matter
    assert plan.next_rate([(50, True), (200, True), (100, True)]) is None
    assert plan.p99_ms == 20.0
    plan.search = Search(p99_ms=15.0, resolution=25.0, max_steps=8)
    assert plan.next_rate([(50, True)]) == 100 and plan.p99_ms == 15.0


def test_held_needs_p99_no_errors_no_hidden_store_failure_and_the_rate():
    assert held(_row("s", 400.0, 3.0, 20.0)) is True
    assert held(_row("s", 400.0, 3.0, 20.1)) is False
    assert held(_row("s", 400.0, 3.0, 25.0), p99_ms=30.0) is True
    assert held(_row("s", 400.0, 3.0, 10.0, errors=1)) is False
    assert held(_row("s", 400.0, 3.0, 10.0, fallbacks={"online_store_unavailable": 1})) is False
    assert held(_row("s", 400.0, 3.0, 10.0, fallbacks={"unknown_customer": 9})) is True
    assert held(_row("s", 400.0, 3.0, 10.0, achieved=379.0)) is False
    assert held(_row("s", 400.0, 3.0, 10.0, achieved=380.0)) is True
    row = _row("s", 400.0, 3.0, 10.0)
    row["latency_ms"]["p99"] = None  # nothing answered
    assert held(row) is False


def test_split_cpus_gives_the_generator_one_and_the_server_the_rest():
    assert split_cpus({0, 1}, 1) == ({1}, {0})
    assert split_cpus(range(4), 0) == ({0}, {1, 2, 3})
    with pytest.raises(ValueError, match="CPU 2 is not one"):
        split_cpus({0, 1}, 2)
    with pytest.raises(ValueError, match="2 CPUs or more"):
        split_cpus({0}, 0)


def test_parse_workers():
    assert parse_workers("1") == [1]
    assert parse_workers("1, 2,2,4") == [1, 2, 4]
    for bad in ("", "0", "1,x", "-1"):
        with pytest.raises(Exception, match="workers must be"):
            parse_workers(bad)


def test_goal_per_worker_count_and_labels():
    rows = [
        {**_row("sqlite", 200.0, 3.0, 25.0), "workers": 1},
        {**_row("sqlite", 200.0, 3.0, 15.0), "workers": 2},
    ]
    assert goal_status(rows, "sqlite", workers=1)["met"] is False
    assert goal_status(rows, "sqlite", workers=2)["met"] is True
    assert goal_status(rows, "sqlite", workers=4)["met"] is None
    assert label("sqlite") == "sqlite" and label("redis", 2) == "redis, 2 workers"


def test_find_max_summary_and_report_per_store_and_workers():
    def run(store, workers, rate, p99):
        return {**_row(store, rate, 2.0, p99), "workers": workers, "held": p99 <= 20.0}

    rows = [
        run("sqlite", 1, 100.0, 5.0),
        run("sqlite", 1, 200.0, 30.0),
        run("sqlite", 1, 150.0, 12.0),
        run("sqlite", 2, 200.0, 8.0),
        run("sqlite", 2, 400.0, 19.0),
        run("sqlite", 2, 800.0, 90.0),
    ]
    got = find_max_summary(rows, 20.0)
    assert [(h["store"], h["workers"], h["highest_held"], h["goal_met"]) for h in got] == [
        ("sqlite", 1, 150.0, False),
        ("sqlite", 2, 400.0, True),
    ]
    assert got[0]["tried"] == [
        {"rate": 100.0, "held": True},
        {"rate": 200.0, "held": False},
        {"rate": 150.0, "held": True},
    ]
    assert find_max_summary(rows, 30.0)[1]["goal_met"] is None  # looser than the goal's p99
    # Without a `held` field (fixed rates), held is computed at the given p99.
    plain = [{k: v for k, v in r.items() if k != "held"} for r in rows]
    assert find_max_summary(plain, 20.0) == got

    search_info = {"start": 100.0, "p99_ms": 20.0, "resolution": 25.0, "max_steps": 8}
    md = render(
        _result(
            rows,
            workers=[1, 2],
            pinning={"generator_cpus": [1], "server_cpus": [0]},
            find_max={**search_info, "highest_held": got},
        )
    )
    assert "| sqlite, 2 workers | 400 | 24,000 | 400.0 | 2.00 |" in md
    assert "| sqlite | 150 | 9,000 | 150.0 |" in md
    assert "the generator to CPU 1, the server (every worker) and redis-server to CPU 0" in md
    assert "N processes on the port for N = 1, 2, with `--workers N` when N > 1" in md
    assert (
        "- sqlite: highest rate held at p99 <= 20 ms, 0 errors: 150 req/s (goal **NOT met**; "
        "tried 100 ✓, 200 ✗, 150 ✓)" in md
    )
    assert "- sqlite, 2 workers: highest rate held at p99 <= 20 ms, 0 errors: 400 req/s" in md
    assert md.index("## Highest rate held") < md.index("## Goal")
    assert "(not pinned here" not in md
    unpinned = render(_result(rows, find_max={**search_info, "highest_held": got}))
    assert "the generator on its own core (not pinned here: `--pin-generator`)." in unpinned


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity")
def test_pinned_sets_and_restores_this_process_and_the_tree_has_it_first():
    before = os.sched_getaffinity(0)
    one = min(before)
    with pinned({one}):
        assert os.sched_getaffinity(0) == {one}
    assert os.sched_getaffinity(0) == before
    with pinned(None):
        assert os.sched_getaffinity(0) == before
    assert process_tree(os.getpid())[0] == os.getpid()
    assert tree_cpu_seconds(os.getpid()) >= cpu_seconds(os.getpid()) > 0
    assert tree_cpu_seconds(None) is None


def test_disruption_phases_count_errors_5xx_fallbacks_and_versions():
    from benchmarks.serving_disruption import Answer, phase_of, phase_rows, window

    assert [phase_of(t, 30, 30, 80) for t in (0, 29.9, 30, 59.9, 60, 79.9, 80, 119)] == [
        "before", "before", "outage", "outage", "recovered", "recovered", "promoted", "promoted",
    ]  # fmt: skip
    answers = [
        Answer(1.0, 4.0, 200, None, None, "m/1"),
        Answer(31.0, 9.0, 200, None, "online_store_unavailable", "m/1"),
        Answer(32.0, 10_000.0, None, "ReadTimeout", None, None),
        Answer(61.0, 5.0, 503, "http_503", None, None),
        Answer(81.0, 6.0, 200, None, None, "m/2"),
    ]
    rows = {r["phase"]: r for r in phase_rows(answers, 30, 30, 80)}
    assert rows["before"]["errors"] == 0 and rows["before"]["model_versions"] == {"m/1": 1}
    assert rows["outage"]["fallbacks"] == {"online_store_unavailable": 1}
    assert rows["outage"]["errors_by_kind"] == {"ReadTimeout": 1}
    assert rows["outage"]["latency_ms"]["max"] == 9.0  # no answer, no latency
    assert rows["recovered"]["server_errors_5xx"] == 1
    assert rows["promoted"]["model_versions"] == {"m/2": 1}
    assert window(answers, 0, 40)["p50"] == 6.5


def _serve_canned(answers: list[bytes]):
    """A TCP server that records each request it reads (head + body) and answers the next
    canned response; a response starting with b"CLOSE" closes the connection instead."""
    seen: list[bytes] = []

    async def handle(reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:  # the client closed it
                break
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            seen.append(head + (await reader.readexactly(length) if length else b""))
            answer = answers.pop(0)
            if answer.startswith(b"CLOSE"):
                break
            writer.write(answer)
            await writer.drain()
        writer.close()

    return handle, seen


def test_raw_client_keeps_connections_alive_and_reads_status_and_body():
    body = json.dumps({"fallback": "unknown_customer", "items": []}).encode()
    ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    answers = [ok % (len(body), body), b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}",
               b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"CLOSE"]  # fmt: skip

    async def scenario():
        handle, seen = _serve_canned(answers)
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with RawClient(f"http://127.0.0.1:{port}", 4, timeout=2.0) as client:
            post = Call("unknown", "POST", "/recommendations", b'{"customer_id": "x"}')
            first = await _call(client, post, 0.0)
            status, payload = await client.request("GET", "/nothing")
            with pytest.raises(HTTPProtocolError, match="chunked"):
                await client.request("GET", "/chunked")
            # The connection that erred was closed: the next call opens another, which the
            # server closes without an answer: counted as not answered, never raised.
            lost = await _call(client, Call("similar", "GET", "/p"), 0.0)
            opened = client.opened
        server.close()
        await server.wait_closed()
        return first, (status, payload), lost, opened, seen

    first, second, lost, opened, seen = asyncio.run(scenario())
    assert (first.error, first.fallback, first.answered) == (None, "unknown_customer", True)
    assert second == (404, b"{}")
    assert (lost.error, lost.answered) == ("ConnectionError", False)
    assert opened == 2  # the first three requests went over one kept-alive connection
    assert seen[0].startswith(b"POST /recommendations HTTP/1.1\r\n")
    assert b"Content-Length: 20\r\n" in seen[0] and seen[0].endswith(b'{"customer_id": "x"}')
    assert seen[1].startswith(b"GET /nothing HTTP/1.1\r\n") and b"Content-Length" not in seen[1]


def test_raw_client_sends_again_when_a_kept_connection_was_closed_and_drops_stale_ones():
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    answers = [ok, b"CLOSE", ok, ok]  # the server drops the kept connection at request 2

    async def scenario():
        handle, seen = _serve_canned(answers)
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        async with RawClient(base, 2, timeout=2.0, keepalive_expiry=0.2) as client:
            got = [await client.request("GET", "/a"), await client.request("GET", "/b")]
            counts = [(client.opened, client.retried)]
            await asyncio.sleep(0.3)  # idle past the expiry: not reused
            got.append(await client.request("GET", "/c"))
            counts.append((client.opened, client.retried))
        server.close()
        await server.wait_closed()
        return got, counts, seen

    got, counts, seen = asyncio.run(scenario())
    assert got == [(200, b"{}")] * 3
    assert counts == [(2, 1), (3, 1)]
    assert [r.split(b" ")[1] for r in seen] == [b"/a", b"/b", b"/b", b"/c"]
