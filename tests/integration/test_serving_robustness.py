"""The serving API under hostile input and a failing online store (issue 6, item 7).

- schemathesis generates requests for every operation of the app's OpenAPI schema (schema
  examples, boundary values, random valid and invalid data): no answer may be a 5xx, and every
  answer must have a documented status, content type and body shape (FastAPI's own 400 and
  422 excepted, see `check_case`); driven through hypothesis directly, because schemathesis's
  pytest fixture loader (`schemathesis.pytest.from_fixture`) does not run under pytest 9.2;
- a real `redis-server` (private port, no persistence) is loaded with `feast apply` and the
  gated materialisation of `customer_history` and `item_vectors` (a temporary SQL registry);
  the app serves it through the `scale` profile, then Redis is stopped: recommendations answer
  200 with popularity flagged `online_store_unavailable` and count it in /metrics; Redis comes
  back (restarted on the same port and loaded again) and the model ranks again.

The workdir is a copy of the session's demo run (or of ATELIER_TEST_SERVING_WORKDIR), as in
tests/integration/test_serving_api.py; no store is mocked.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "atelier-recommender/1"
SERVED_TABLES = ("customer_history", "item_vectors")


@pytest.fixture(scope="module")
def app_settings(demo_workdir):
    from atelier.settings import load_settings

    return load_settings(workdir=demo_workdir)


@pytest.fixture(scope="module")
def app(app_settings):
    """The API over the embedded profile (sqlite online store), its state loaded."""
    from serving.app import create_app
    from serving.state import StateHolder

    holder = StateHolder(app_settings)
    holder.reload("start")
    return create_app(app_settings, holder)


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def customer(app_settings) -> str:
    """The customer with the longest online history (the model ranks for them)."""
    from atelier.lake import Lake

    frame = Lake(app_settings).read_pandas("customer_history")
    frame = frame.sort_values(["customer_id", "event_timestamp", "created_timestamp"])
    latest = frame.groupby("customer_id").tail(1)
    histories = dict(zip(latest["customer_id"], latest["history"]))
    return max(histories, key=lambda c: (len(set(histories[c])), c))


def recommend(client, customer_id, **body):
    return client.post("/recommendations", json={"customer_id": customer_id, **body})


def metric(text: str, name: str, **labels) -> float:
    """The value of the sample `name` whose labels are exactly `labels` (0 when absent)."""
    for line in text.splitlines():
        found = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if found and found.group(1) == name:
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or ""))
            if pairs == {k: str(v) for k, v in labels.items()}:
                return float(found.group(3))
    return 0.0


# -- schemathesis ------------------------------------------------------------------------------
# Every operation of the schema; True where it takes input (path, query or body), so that
# invalid data can be generated for it. A new endpoint fails the completeness test below until
# it is listed here.
OPERATIONS = {
    "GET /health": False,
    "GET /ready": False,
    "POST /recommendations": True,
    "GET /products/{product_id}/similar": True,
    "GET /products/{product_id}/attributes": True,
    "POST /admin/reload": False,  # each call rebuilds the state and swaps it
    "GET /metrics": False,
}
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same cases on every run
    database=None,  # no example database kept between runs
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def check_case(case) -> None:
    """Send `case` to the app: never a 5xx, a documented status, content type and body.

    Two client errors are FastAPI's own and not fully documented by its schema: 400 for a body
    that cannot be decoded (not UTF-8; the schema lists no 400), and 422, whose body shape is
    not checked (the schema documents FastAPI's list of validation errors, while the API's own
    422, an unknown filter attribute, carries a sentence). Both must say what was wrong.
    """
    response = case.call()
    status = response.status_code
    assert status < 500, (
        f"{case.method} {case.formatted_path} -> {status}: {response.text[:500]}\n"
        f"{case.as_curl_command()}"
    )
    checks = [not_a_server_error, content_type_conformance]
    if status in (400, 422):
        assert response.json()["detail"], response.text
    else:
        checks.append(response_schema_conformance)
    if status != 400:
        checks.append(status_code_conformance)
    case.validate_response(response, checks=checks)
    if case.path == "/recommendations" and response.status_code == 200:
        # The store is healthy here: no input may break the online read (which would also
        # put every customer on popularity until the store is retried).
        assert response.json()["fallback"] != "online_store_unavailable", response.text


def test_every_operation_of_the_schema_is_fuzzed(api_schema):
    assert {r.ok().label for r in api_schema.get_all_operations()} == set(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_generated_request_gets_a_server_error(api_schema, label):
    """schemathesis's cases for one operation: its coverage cases (schema examples, boundary
    values, missing and mistyped fields), then `FUZZ.max_examples` random valid ones and as
    many invalid ones."""
    method, path = label.split(" ", 1)
    operation = api_schema[path][method]
    covered = 0
    for case in api_schema.iter_coverage_cases(
        operation,
        generation_modes=list(GenerationMode),
        generation_config=api_schema.config.generation_for(operation=operation),
    ):
        check_case(case)
        covered += 1
    assert covered > 0
    modes = list(GenerationMode) if OPERATIONS[label] else [GenerationMode.POSITIVE]
    for mode in modes:

        @FUZZ
        @given(case=operation.as_strategy(mode))
        def fuzz(case):
            check_case(case)

        fuzz()


def test_a_lone_surrogate_in_the_body_is_a_422_not_a_500(client):
    """JSON may escape a lone surrogate ("\\ud800"); the validation error that echoes it must
    still be encodable (FastAPI's default handler answered 500)."""
    r = client.post(
        "/recommendations",
        content=b'{"customer_id": "\\ud800", "k": 3}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "customer_id"]


# -- the online store stopped ----------------------------------------------------------------
class RedisServer:
    """A private redis-server on 127.0.0.1 (its own folder, no persistence); start and stop it
    as often as needed, always on the same port."""

    def __init__(self, binary: str, folder: Path):
        self.binary = binary
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 15
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        self.stop()
                        pytest.fail(f"redis-server did not start on {self.url}")
                    time.sleep(0.05)
        finally:
            client.close()

    def keys(self) -> int:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            return int(client.dbsize())
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def redis_server(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server not found: install it (Debian: apt-get install redis-server) to test "
            "the fallback while the Redis online store is stopped"
        )
    server = RedisServer(binary, tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def load_redis(settings, redis_url: str, registry_url: str) -> dict:
    """`feast apply` + the gated materialisation of the served views into Redis (the embedded
    profile's offline store over the lake; Redis and a SQL registry as online store and
    registry). The workdir's materialisation state is left as it was, so every call loads the
    whole window again (a restarted Redis is empty)."""
    from atelier.feast_store import STATE_FILE, apply, feature_store
    from spark_jobs.materialize import materialize

    store = feature_store(
        settings,
        {
            "online_store": {"type": "redis", "connection_string": redis_url},
            "registry": {"registry_type": "sql", "path": registry_url},
        },
    )
    state_file = settings.feast_dir / STATE_FILE
    saved = state_file.read_bytes() if state_file.is_file() else None
    try:
        apply(settings, store=store)
        result = materialize(settings, tables=SERVED_TABLES, store=store)
    finally:
        if saved is None:
            state_file.unlink(missing_ok=True)
        else:
            state_file.write_bytes(saved)
    assert {r["status"] for r in result.values()} == {"materialized"}, result
    return result


def test_redis_stopped_falls_back_to_popularity_then_recovers(
    app_settings, client, customer, redis_server, tmp_path
):
    from fastapi.testclient import TestClient

    from atelier.settings import load_settings
    from serving.app import create_app
    from serving.state import StateHolder

    registry = f"sqlite:///{tmp_path / 'feast-registry.sqlite'}"
    load_redis(app_settings, redis_server.url, registry)
    assert redis_server.keys() > 0
    scale = load_settings(
        workdir=app_settings.workdir,
        feast={"profile": "scale", "redis": redis_server.url, "registry_url": registry},
    )
    holder = StateHolder(scale)
    holder.reload("start")
    online = holder.state.online
    # The reference: the same customer served from the sqlite online store.
    reference = recommend(client, customer, k=10).json()
    assert reference["fallback"] is None

    with TestClient(create_app(scale, holder)) as c:
        # Counts are compared as differences: once Feast has set PROMETHEUS_MULTIPROC_DIR in
        # this process (any earlier online read), apps share their series.
        before = c.get("/metrics").text

        def grew(text, name, **labels):
            return metric(text, name, **labels) - metric(before, name, **labels)

        r = recommend(c, customer, k=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["fallback"] is None and body["model_version"] == MODEL
        assert body["items"] == reference["items"]  # Redis serves what sqlite serves
        popular = recommend(c, "no-such-customer", k=10).json()
        assert popular["fallback"] == "unknown_customer"

        # Redis goes away. The first request finds the connection broken (redis-py retries,
        # then Feast raises); the second finds the store in its retry pause.
        online.retry_seconds = 60.0
        redis_server.stop()
        for _ in range(2):
            start = time.monotonic()
            r = recommend(c, customer, k=10)
            took = time.monotonic() - start
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["fallback"] == "online_store_unavailable", body
            assert body["model_version"] == MODEL
            # No history is known: nothing is excluded, the plain popularity ranking.
            assert body["items"] == popular["items"]
            assert took < 60, f"a fallback answer took {took:.1f} s"
        # What does not read the online store goes on as before.
        seed = reference["items"][0]["product_id"]
        assert c.get(f"/products/{seed}/similar", params={"k": 3}).status_code == 200
        assert c.get(f"/products/{seed}/attributes").status_code == 200
        assert c.get("/ready").status_code == 200
        text = c.get("/metrics").text
        assert (
            grew(text, "atelier_recommendation_fallbacks_total", reason="online_store_unavailable")
            == 2
        )
        assert grew(text, "atelier_online_store_errors_total") == 2
        assert (
            grew(
                text,
                "atelier_request_seconds_count",
                endpoint="/recommendations",
                method="POST",
                status="5xx",
            )
            == 0
        )

        # Redis is back on the same port, empty (no persistence): load it again. The store is
        # reopened by the first request after the retry pause (none here).
        redis_server.start()
        load_redis(app_settings, redis_server.url, registry)
        online.retry_seconds = 0.0
        r = recommend(c, customer, k=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["fallback"] is None, body
        assert body["items"] == reference["items"]
        text = c.get("/metrics").text
        assert grew(text, "atelier_online_store_errors_total") == 2
