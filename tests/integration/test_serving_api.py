"""The serving API against a real workdir made by the real pipeline (no mocked stores).

The workdir comes from `atelier demo` on a small catalogue, run once for the module (as
tests/integration/test_demo_pipeline.py runs it). `ATELIER_TEST_SERVING_WORKDIR=DIR` reuses a
workdir made by an earlier demo run instead: it is copied first, the tests never change DIR.
Expected values are recomputed here from the lake's tables (item_vectors, customer_history,
predicted_attributes, interactions), the way the recommender's evaluation scores customers:
the demo model's item vectors are "dot+bias" (k match coordinates, then the item's bias) and a
customer's vector is [mean match part of their N_RECENT most recent distinct products with a
vector, 1].
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "atelier-recommender/1"
LOCAL = ("127.0.0.1", 50000)  # the test client's address: loopback, as `atelier serve`'s default
N_RECENT = 5  # recommender.n_recent of the demo's training run (the default)
LAYOUT = "dot+bias"  # vector_layout of the demo's training run


@pytest.fixture(scope="module")
def settings(demo_workdir):
    from atelier.settings import load_settings

    # Reload tests call /admin/reload back to back: no cooldown here (tested on its own).
    settings = load_settings(workdir=demo_workdir)
    return settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"reload_min_interval_s": 0.0})}
    )


@pytest.fixture(scope="module")
def client(settings):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.state import StateHolder

    holder = StateHolder(settings)
    holder.reload("start")
    with TestClient(create_app(settings, holder), client=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def lake(settings):
    from atelier.lake import Lake

    return Lake(settings)


@pytest.fixture(scope="module")
def vectors(lake) -> dict[str, np.ndarray]:
    frame = lake.read_pandas("item_vectors")
    assert set(frame["model_version"]) == {MODEL}
    return {p: np.asarray(v, np.float32) for p, v in zip(frame["product_id"], frame["vector"])}


@pytest.fixture(scope="module")
def histories(lake) -> dict[str, list[str]]:
    """Each customer's latest history row: what materialisation put online."""
    frame = lake.read_pandas("customer_history").sort_values(
        ["customer_id", "event_timestamp", "created_timestamp"]
    )
    latest = frame.groupby("customer_id").tail(1)
    return {c: list(h) for c, h in zip(latest["customer_id"], latest["history"])}


@pytest.fixture(scope="module")
def attributes(lake) -> pd.DataFrame:
    return lake.read_pandas("predicted_attributes")


@pytest.fixture(scope="module")
def customer(histories) -> str:
    """A customer whose history is longer than the averaged part: exclusion matters."""
    return max(histories, key=lambda c: (len(set(histories[c])), c))


def customer_vector(vectors, history) -> np.ndarray:
    """By hand: the mean of the N_RECENT most recent distinct products with a vector (a rebuy
    counts once), its bias slot set to 1 (score = match + the item's bias)."""
    chosen = [p for p in dict.fromkeys(history) if p in vectors][:N_RECENT]
    out = np.mean(np.stack([vectors[p] for p in chosen]), axis=0, dtype=np.float32)
    out[-1] = 1.0
    return out


def expected_top(vectors, history, k, *, exclude: bool) -> list[tuple[str, float]]:
    customer = customer_vector(vectors, history)
    scored = [(p, float(v @ customer)) for p, v in vectors.items()]
    scored = [(p, s) for p, s in scored if not (exclude and p in set(history))]
    return sorted(scored, key=lambda ps: (-ps[1], ps[0]))[:k]


def expected_popular(lake, settings, k) -> list[tuple[str, float]]:
    bought = lake.read_pandas("interactions", ["product_id", "timestamp"])
    start = bought["timestamp"].max() - timedelta(days=settings.recommender.popularity_days)
    counts = bought[bought["timestamp"] > start]["product_id"].value_counts()
    products = lake.read_pandas("products", ["product_id"])["product_id"]
    scored = [(p, float(counts.get(p, 0))) for p in products]
    return sorted(scored, key=lambda ps: (-ps[1], ps[0]))[:k]


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


def test_health_and_ready_name_the_champion(client):
    assert client.get("/health").json() == {"status": "ok", "pid": os.getpid()}
    ready = client.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["model_version"] == MODEL
    assert body["products"] == 150
    assert body["sources"]["item_vectors"] == 0
    assert body["pid"] == os.getpid()  # which worker answered (serve --workers)
    state = client.app.state.holder.state
    assert (state.n_recent, state.layout) == (N_RECENT, LAYOUT)
    assert state.candidates.layout == LAYOUT


def test_known_customer_gets_the_recomputed_top_k(client, customer, histories, vectors):
    r = recommend(client, customer, k=10, exclude_purchased=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["customer_id"] == customer and body["model_version"] == MODEL
    assert body["fallback"] is None and body["mode"] == "new_to_customer"
    items = body["items"]
    assert [i["rank"] for i in items] == list(range(1, 11))
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    assert not {i["product_id"] for i in items} & set(histories[customer])
    want = expected_top(vectors, histories[customer], 10, exclude=True)
    assert [i["product_id"] for i in items] == [p for p, _ in want]
    np.testing.assert_allclose(scores, [s for _, s in want], rtol=1e-5, atol=1e-7)
    assert all("explanation" not in i for i in items)


def test_exclude_purchased_false_ranks_the_whole_catalogue(client, customer, histories, vectors):
    body = recommend(client, customer, k=100, exclude_purchased=False).json()
    assert body["mode"] == "all_products"
    want = expected_top(vectors, histories[customer], 100, exclude=False)
    assert [i["product_id"] for i in body["items"]] == [p for p, _ in want]
    assert {i["product_id"] for i in body["items"]} & set(histories[customer])


def test_exclude_purchased_left_out_follows_the_settings_default(client, settings, customer):
    assert settings.recommender.exclude_seen is False  # the paper's protocol: all products
    body = recommend(client, customer, k=100).json()
    assert body["mode"] == "all_products" and body["fallback"] is None
    explicit = recommend(client, customer, k=100, exclude_purchased=False).json()
    assert body["items"] == explicit["items"]


def test_blend_mixes_rebuys_with_new_products_by_the_champions_rule(
    client, settings, customer, histories, vectors
):
    """The rule is the one the champion's training run logged; rebuys and new products are
    ranked by it, every item carries the model's score."""
    from mlflow import MlflowClient

    from models.blend import BlendRule, blend
    from serving.state import champion

    _, run_id = champion(settings)
    run = MlflowClient(settings.tracking_uri, settings.registry_uri).get_run(run_id)
    rule = BlendRule.from_dict(json.loads(run.data.params["recommender.blend_rule"]))
    assert client.app.state.holder.state.blend_rule == rule

    r = recommend(client, customer, k=10, blend=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["mode"], body["fallback"], body["model_version"]) == ("blend", None, MODEL)
    items = body["items"]
    assert [i["rank"] for i in items] == list(range(1, 11))
    got = [i["product_id"] for i in items]
    assert len(set(got)) == 10
    history = histories[customer]
    new = [p for p, _ in expected_top(vectors, history, max(10, rule.k), exclude=True)]
    want = blend(new, [p for p in history if p in vectors], rule, 10)
    want += [p for p in new if p not in set(want)][: 10 - len(want)]
    assert got == want
    customer_vec = customer_vector(vectors, history)
    np.testing.assert_allclose(
        [i["score"] for i in items], [float(vectors[p] @ customer_vec) for p in got], rtol=1e-5
    )

    r = recommend(client, customer, blend=True, exclude_purchased=True)
    assert r.status_code == 422 and "cannot exclude purchased products" in r.json()["detail"]


def test_blend_of_a_model_without_a_rule_is_422(client, settings, customer):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.state import StateHolder

    ruleless = dataclasses.replace(client.app.state.holder.state, blend_rule=None)
    holder = StateHolder(settings, builder=lambda _settings: ruleless)
    holder.reload("start")
    with TestClient(create_app(settings, holder)) as c:
        r = recommend(c, customer, blend=True)
        assert r.status_code == 422
        assert r.json()["detail"] == (
            f"model {MODEL} has no blend rule: retrain with recommender.blend true"
        )
        assert recommend(c, customer).json()["mode"] == "all_products"


def test_filters_keep_only_matching_products(client, customer, histories, attributes, vectors):
    attr = "graphical_appearance_name"
    values = attributes[attributes["attribute"] == attr]
    # A value that some but not most products have (k=100 must not cut the list).
    counts = values["value"].value_counts()
    top = next(v for v, n in counts.items() if 5 <= n <= 60 and v != "other")
    matching = set(values[values["value"] == top]["product_id"])
    r = recommend(client, customer, k=100, filters={attr: [top]}, exclude_purchased=True)
    assert r.status_code == 200, r.text
    got = [i["product_id"] for i in r.json()["items"]]
    assert set(got) == matching - set(histories[customer])
    ranked = [
        p for p, _ in expected_top(vectors, histories[customer], 150, exclude=True) if p in matching
    ]
    assert got == ranked
    # Two attributes: both must match.
    other = "product_group_name"
    group = attributes[(attributes["attribute"] == other) & attributes["product_id"].isin(got)]
    pick = group["value"].iloc[0]
    both = set(group[group["value"] == pick]["product_id"])
    r = recommend(
        client, customer, k=100, filters={attr: [top], other: [pick]}, exclude_purchased=True
    )
    assert {i["product_id"] for i in r.json()["items"]} == both


def test_unknown_filter_attribute_and_bad_k_are_422(client, customer):
    r = recommend(client, customer, filters={"sleeve_length": ["Long"]})
    assert r.status_code == 422
    assert "unknown filter attribute 'sleeve_length'" in r.json()["detail"]
    assert "graphical_appearance_name" in r.json()["detail"]
    for k in (0, 101):
        r = recommend(client, customer, k=k)
        assert r.status_code == 422 and "k" in str(r.json()["detail"])
    assert client.post("/recommendations", json={"k": 3}).status_code == 422
    assert recommend(client, customer, filters={"section_name": []}).status_code == 422


def test_explain_counts_attributes_shared_with_the_history(client, customer, histories, attributes):
    body = recommend(client, customer, k=10, explain=True).json()
    bought = attributes[attributes["product_id"].isin(set(histories[customer]))]
    explained = 0
    for item in body["items"]:
        own = attributes[attributes["product_id"] == item["product_id"]]
        own = dict(zip(own["attribute"], own["value"]))
        for e in item["explanation"]:
            assert own[e["attribute"]] == e["value"]
            same = bought[(bought["attribute"] == e["attribute"]) & (bought["value"] == e["value"])]
            assert e["count"] == same["product_id"].nunique() > 0
            noun = "item" if e["count"] == 1 else "items"
            assert e["text"] == f"{e['value']}, like {e['count']} {noun} you bought"
            explained += 1
    assert explained > 0


def test_unknown_customer_gets_popularity_flagged(client, lake, settings):
    r = recommend(client, "no-such-customer", k=7, explain=True)
    assert r.status_code == 200
    body = r.json()
    assert body["fallback"] == "unknown_customer" and body["model_version"] == MODEL
    want = expected_popular(lake, settings, 7)
    assert [(i["product_id"], i["score"]) for i in body["items"]] == want
    assert all(i["explanation"] == [] for i in body["items"])


def test_similar_products_are_cosine_neighbours_without_the_seed(client, vectors):
    seed = sorted(vectors)[3]
    r = client.get(f"/products/{seed}/similar", params={"k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["product_id"] == seed and body["model_version"] == MODEL
    # Cosine of the match coordinates: the bias (last) says nothing about likeness.
    unit = {p: v[:-1] / np.linalg.norm(v[:-1]) for p, v in vectors.items()}
    cosine = sorted(
        ((p, float(unit[p] @ unit[seed])) for p in unit if p != seed), key=lambda ps: -ps[1]
    )[:5]
    assert [i["product_id"] for i in body["items"]] == [p for p, _ in cosine]
    np.testing.assert_allclose([i["score"] for i in body["items"]], [s for _, s in cosine], 1e-5)
    assert client.get("/products/nope/similar").status_code == 404
    assert client.get(f"/products/{seed}/similar", params={"k": 0}).status_code == 422


def test_attributes_known_and_predicted_with_confidence(client, attributes):
    sources = attributes.groupby("product_id")["source"].nunique()
    pid = sources[sources == 2].index[0]  # a product with known and predicted attributes
    r = client.get(f"/products/{pid}/attributes")
    assert r.status_code == 200
    got = {a["attribute"]: a for a in r.json()["attributes"]}
    rows = attributes[attributes["product_id"] == pid]
    assert set(got) == set(rows["attribute"])
    for row in rows.itertuples():
        a = got[row.attribute]
        assert (a["value"], a["source"]) == (row.value, row.source)
        assert a["confidence"] == pytest.approx(row.confidence, rel=1e-6)
    assert {a["source"] for a in got.values()} == {"label", "predicted"}
    r = client.get("/products/nope/attributes")
    assert r.status_code == 404 and r.json()["detail"] == "unknown product 'nope'"


def test_without_predicted_attributes_the_known_labels_are_served(demo_workdir, tmp_path, customer):
    """A catalogue with no attribute model yet is served, with filters on the known labels."""
    from fastapi.testclient import TestClient

    from atelier.lake import Lake
    from atelier.settings import load_settings
    from serving.app import create_app
    from serving.state import StateHolder

    copy = tmp_path / "w"
    shutil.copytree(demo_workdir, copy, symlinks=True)
    settings = load_settings(workdir=copy)
    lake = Lake(settings)
    shutil.rmtree(lake.path("predicted_attributes"))
    labels = lake.read_pandas("product_labels")
    holder = StateHolder(settings)
    holder.reload("start")
    with TestClient(create_app(settings, holder)) as c:
        pid = labels["product_id"].value_counts().index[0]
        r = c.get(f"/products/{pid}/attributes")
        assert r.status_code == 200, r.text
        mine = labels[labels["product_id"] == pid]
        assert {
            (a["attribute"], a["value"], a["source"], a["confidence"])
            for a in r.json()["attributes"]
        } == {(a, v, "label", 1.0) for a, v in zip(mine["attribute"], mine["value"])}
        attr = "product_group_name"
        value = labels[labels["attribute"] == attr]["value"].value_counts().index[0]
        known = set(
            labels[(labels["attribute"] == attr) & (labels["value"] == value)]["product_id"]
        )
        r = recommend(c, customer, k=100, filters={attr: [value]})
        assert r.status_code == 200, r.text
        got = {i["product_id"] for i in r.json()["items"]}
        assert got and got <= known


def test_metrics_expose_latency_fallbacks_and_model(client):
    recommend(client, "another-stranger", k=3)
    text = client.get("/metrics").text
    assert "# TYPE atelier_request_seconds histogram" in text
    assert (
        metric(
            text,
            "atelier_request_seconds_count",
            endpoint="/recommendations",
            method="POST",
            status="2xx",
        )
        >= 5
    )
    bucket = metric(
        text,
        "atelier_request_seconds_bucket",
        endpoint="/recommendations",
        method="POST",
        status="2xx",
        le="+Inf",
    )
    assert bucket >= 5
    assert metric(text, "atelier_recommendation_fallbacks_total", reason="unknown_customer") >= 2
    assert metric(text, "atelier_model_info", model_version=MODEL) == 1.0
    assert metric(text, "atelier_candidate_products") == 150.0


def test_online_store_unreadable_falls_back_to_popularity_then_recovers(
    client, settings, customer, lake
):
    db = settings.feast_dir / "online.db"
    backup = db.with_name("online.db.bak")
    shutil.copy2(db, backup)
    client.app.state.holder.state.online.retry_seconds = 0.0
    try:
        # Emptied in place: the open connection fails, and so does a reopened one.
        with open(db, "r+b") as f:
            f.truncate(0)
        for _ in range(2):
            r = recommend(client, customer, k=5)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["fallback"] == "online_store_unavailable"
            assert body["model_version"] == MODEL
            want = expected_popular(lake, settings, 5)
            assert [(i["product_id"], i["score"]) for i in body["items"]] == want
    finally:
        os.replace(backup, db)
    text = client.get("/metrics").text
    assert (
        metric(text, "atelier_recommendation_fallbacks_total", reason="online_store_unavailable")
        == 2
    )
    assert metric(text, "atelier_online_store_errors_total") == 2
    assert recommend(client, customer, k=5).json()["fallback"] is None


def test_reload_under_concurrent_requests_fails_nothing(client, customer):
    failures, answers = [], []
    stop = threading.Event()

    def hammer(who: str) -> None:
        sent = 0
        while not stop.is_set() or sent < 3:
            sent += 1
            try:
                r = recommend(client, who, k=10, filters={"product_group_name": ["Shoes"]})
            except Exception as e:  # a failed request must not vanish with its thread
                failures.append(repr(e))
                continue
            if r.status_code != 200 or r.json()["model_version"] != MODEL:
                failures.append((r.status_code, r.text[:200]))
            answers.append(r.status_code)

    threads = [
        threading.Thread(target=hammer, args=(who,))
        for who in (customer, customer, "stranger", customer)
    ]
    for t in threads:
        t.start()
    reloads = []
    try:
        while len(answers) < 4 and not failures:  # requests in flight before the first swap
            threading.Event().wait(0.01)
        for _ in range(3):
            reloads.append(client.post("/admin/reload"))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert failures == []
    assert len(answers) >= 12
    for r in reloads:
        assert r.status_code == 200, r.text
        assert r.json() == {"model_version": MODEL, "previous": MODEL, "products": 150}
    text = client.get("/metrics").text
    assert metric(text, "atelier_reloads_total", trigger="admin", outcome="swapped") == 3


def test_new_vectors_are_served_after_a_poll(client, lake, customer, histories, vectors):
    """A product added to the catalogue with a vector of the champion is recommendable once
    the holder notices the new Delta versions (what the poll thread does)."""
    import pyarrow as pa

    from atelier.contracts import ITEM_VECTORS, PRODUCTS

    holder = client.app.state.holder
    assert holder.refresh_if_changed() is False
    # Along the customer's vector, bias 100: it scores 100 (|match|^2 + 1), far above the rest.
    direction = customer_vector(vectors, histories[customer])
    now = datetime.now(UTC)
    new = "9999999001"
    lake.merge("products", pa.Table.from_pylist([{
        "product_id": new, "type": "T-shirt", "brand": "H&M", "division": "Menswear",
        "title": "New tee", "description": None, "price": 0.02, "first_seen": now,
        "source": "hm"}], schema=PRODUCTS.schema()))  # fmt: skip
    lake.merge("item_vectors", pa.Table.from_pylist([{
        "product_id": new, "vector": (100 * direction).astype(np.float32).tolist(),
        "variant": "hybrid", "model_version": MODEL, "event_timestamp": now,
        "created_timestamp": now}], schema=ITEM_VECTORS.schema()))  # fmt: skip
    assert holder.refresh_if_changed() is True
    body = recommend(client, customer, k=3).json()
    assert body["items"][0]["product_id"] == new
    assert client.get("/ready").json()["products"] == 151
    assert client.get(f"/products/{new}/similar", params={"k": 2}).status_code == 200
    text = client.get("/metrics").text
    assert metric(text, "atelier_reloads_total", trigger="poll", outcome="swapped") == 1


def test_a_new_champion_is_served_once_its_vectors_exist(
    client, settings, lake, customer, histories
):
    """Promotion moves the alias; serving swaps only when the lake holds the new version's
    vectors, and until then keeps answering with version 1."""
    import pyarrow as pa
    from mlflow import MlflowClient

    from atelier import registry
    from atelier.contracts import ITEM_VECTORS

    registry.configure(settings)
    mlflow_client = MlflowClient()
    name = settings.mlflow.recommender_model
    first = mlflow_client.get_model_version_by_alias(name, registry.CHAMPION)
    second = mlflow_client.create_model_version(name, first.source, run_id=first.run_id)
    mlflow_client.set_registered_model_alias(name, registry.CHAMPION, second.version)
    promoted = f"{name}/{second.version}"
    assert promoted != MODEL

    r = client.post("/admin/reload")
    assert r.status_code == 503
    assert r.json()["detail"].startswith(f"reload failed, still serving {MODEL}")
    assert f"holds no vectors of {promoted}" in r.json()["detail"]
    assert recommend(client, customer, k=3).json()["model_version"] == MODEL
    assert client.get("/ready").json()["model_version"] == MODEL

    # The new version's vectors: not an orthogonal map of the old ones, so rankings change.
    rows = lake.read_pandas("item_vectors").to_dict("records")
    weights = np.arange(1, len(rows[0]["vector"]) + 1, dtype=np.float32)
    for row in rows:
        row["vector"] = (np.asarray(row["vector"], np.float32) * weights).tolist()
        row["model_version"] = promoted
    lake.merge("item_vectors", pa.Table.from_pylist(rows, schema=ITEM_VECTORS.schema()))

    r = client.post("/admin/reload")
    assert r.status_code == 200, r.text
    assert (r.json()["model_version"], r.json()["previous"]) == (promoted, MODEL)
    body = recommend(client, customer, k=10).json()
    assert body["model_version"] == promoted and body["fallback"] is None
    # The online store still holds version 1's vectors: the state's version 2 ones are used.
    served = {row["product_id"]: np.asarray(row["vector"], np.float32) for row in rows}
    want = expected_top(served, histories[customer], 10, exclude=False)
    assert [i["product_id"] for i in body["items"]] == [p for p, _ in want]
    np.testing.assert_allclose([i["score"] for i in body["items"]], [s for _, s in want], 1e-5)
    seed = body["items"][0]["product_id"]
    assert client.get(f"/products/{seed}/similar").json()["model_version"] == promoted
    text = client.get("/metrics").text
    assert metric(text, "atelier_model_info", model_version=promoted) == 1.0
    assert metric(text, "atelier_model_info", model_version=MODEL) == 0.0
    assert metric(text, "atelier_stale_online_vectors_total") >= 1
    assert metric(text, "atelier_reloads_total", trigger="admin", outcome="failed") == 1


def test_atelier_serve_prints_working_examples_and_answers(demo_workdir, histories):
    """`atelier serve` as `make demo` starts it: the printed curl call works on a real server."""
    import json
    import shlex
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "atelier"), "--workdir", str(demo_workdir), "serve",
         "--port", str(port), "--poll-seconds", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, ATELIER_LOG_LEVEL="WARNING"),
    )  # fmt: skip
    try:
        # The banner ends with the reload call; warnings printed before it do not matter.
        banner = []
        while not banner or "/admin/reload" not in banner[-1]:
            line = server.stdout.readline()
            assert line, "atelier serve exited before its banner:\n" + "".join(banner)
            banner.append(line)
        text = "".join(banner)
        base = f"http://127.0.0.1:{port}"
        assert f"gallery {base}/ui/" in text, text
        call = next(line for line in banner if "/recommendations" in line)
        body = json.loads(shlex.split(call)[-1])
        assert body["customer_id"] in histories  # a real customer, not a placeholder
        deadline = time.monotonic() + 300
        while True:
            try:
                ready = httpx.get(f"{base}/ready", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "atelier serve never became ready"
            time.sleep(1)
        answer = httpx.post(f"{base}/recommendations", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        payload = answer.json()
        # The champion of this module's workdir (earlier tests here promote a second version).
        assert payload["model_version"] == ready.json()["model_version"]
        assert payload["model_version"].startswith("atelier-recommender/")
        assert payload["fallback"] is None
        assert len(payload["items"]) == 5
        assert all("explanation" in item for item in payload["items"])
        page = httpx.get(f"{base}/ui/customers/{body['customer_id']}", timeout=30)
        assert page.status_code == 200 and "<img" in page.text
    finally:
        server.terminate()
        server.wait(timeout=30)


def _admin_app(client, settings, **serving):
    from fastapi.testclient import TestClient

    from serving.app import create_app

    changed = settings.model_copy(update={"serving": settings.serving.model_copy(update=serving)})
    return lambda address=LOCAL: TestClient(
        create_app(changed, client.app.state.holder), client=address
    )


def test_admin_reload_needs_loopback_or_the_token(client, settings):
    from pydantic import SecretStr

    open_app = _admin_app(client, settings)
    remote = open_app(("203.0.113.7", 40000)).post("/admin/reload")
    assert remote.status_code == 403 and "admin_token" in remote.json()["detail"]
    assert open_app().post("/admin/reload").status_code == 200

    guarded = _admin_app(client, settings, admin_token=SecretStr("s3cret"))
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
        r = guarded().post("/admin/reload", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    # With a token, the address no longer matters: the token does.
    ok = guarded(("203.0.113.7", 40000)).post(
        "/admin/reload", headers={"authorization": "Bearer s3cret"}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["model_version"] == client.app.state.holder.state.model_version


def test_admin_reloads_are_rate_limited(client, settings):
    app = _admin_app(client, settings, reload_min_interval_s=60.0)()
    assert app.post("/admin/reload").status_code == 200
    again = app.post("/admin/reload")
    assert again.status_code == 429
    assert 59 <= int(again.headers["retry-after"]) <= 60
    assert recommend(client, "stranger", k=3).status_code == 200  # serving goes on


def test_a_tombstoned_product_is_no_longer_served(client, lake, customer):
    """ingest --deletes tombstones a product gone from its source: at the next poll it leaves
    the candidates (no list, no neighbours) while its row and purchases stay in the lake."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from atelier.contracts import contract

    top = recommend(client, customer, k=1).json()["items"][0]["product_id"]
    stone = {"product_id": top, "deleted_at": datetime.now(UTC), "run_id": "test"}
    schema = contract("product_tombstones").schema()
    lake.merge("product_tombstones", pa.Table.from_pylist([stone], schema=schema))
    try:
        assert client.app.state.holder.refresh_if_changed() is True
        listed = [i["product_id"] for i in recommend(client, customer, k=100).json()["items"]]
        assert top not in listed and len(listed) == 100
        assert client.get(f"/products/{top}/similar").status_code == 404
        assert top in set(lake.read_arrow("products")["product_id"].to_pylist())
    finally:
        lake.delete("product_tombstones", pa.table({"product_id": [top]}))
        client.app.state.holder.refresh_if_changed()
