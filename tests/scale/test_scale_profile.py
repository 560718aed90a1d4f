"""The scale profile on the local cluster (`make scale-up`): the demo pipeline run on the Spark
standalone cluster with Feast's Spark offline store, Redis online store and SQL registry on
PostgreSQL and the MLflow tracking server, beside the same pipeline embedded (Spark local,
duckdb, sqlite). Same seed, same catalogue: the same lake tables, online features and served
recommendations.

Each run of this module uses its own Feast project and registered model names, so runs do not
see each other's objects in the shared registry and tracking server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, embed_env
from tests.tables import comparable_rows

pytestmark = [pytest.mark.scale, pytest.mark.integration, pytest.mark.spark]

CLUSTER = Path(os.environ.get("ATELIER_CLUSTER_DIR", REPO / ".cluster"))
BIN = Path(sys.executable).parent
PRODUCTS, CUSTOMERS = 60, 20
# Written differently by each run: when (created_timestamp), by which run.
IGNORED = {"created_timestamp", "run_id", "model_version", "published_at"}
TABLES = (
    "products", "customers", "interactions", "product_labels", "product_images",
    "image_embeddings", "colour_features", "vocabulary", "text_features", "category_index",
    "product_features", "customer_history", "predicted_attributes", "attribute_vectors",
    "item_vectors",
)  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> dict:
    """The running local cluster's settings (fails, with what to do, when it is not up)."""
    import yaml

    from atelier.cluster import status

    states = status(CLUSTER)
    if not states or not all(states.values()):
        pytest.fail(f"the local cluster in {CLUSTER} is not running ({states}): make scale-up")
    return yaml.safe_load((CLUSTER / "atelier.scale.yaml").read_text())


def _apps(cluster: dict) -> list[dict]:
    """Applications the Spark master has run (its JSON status page)."""
    from atelier.cluster import urls

    with urllib.request.urlopen(f"{urls()['spark_ui']}/json/", timeout=5) as r:
        status = json.load(r)
    return status.get("completedapps", []) + status.get("activeapps", [])


def _demo(workdir: Path, env: dict) -> float:
    t0 = time.monotonic()
    out = subprocess.run(
        [
            str(BIN / "atelier"),
            "--workdir",
            str(workdir),
            "demo",
            "--seed",
            "7",
            "--products",
            str(PRODUCTS),
            "--customers",
            str(CUSTOMERS),
        ],  # fmt: skip
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The demo on both profiles; (embedded settings, scale settings, seconds of each)."""
    from atelier.settings import Settings

    root = tmp_path_factory.mktemp("scale")
    tag = uuid.uuid4().hex[:8]
    names = {
        "ATELIER_FEAST__PROJECT": f"atelier_{tag}",
        "ATELIER_MLFLOW__ATTRIBUTES_MODEL": f"atelier-attributes-{tag}",
        "ATELIER_MLFLOW__RECOMMENDER_MODEL": f"atelier-recommender-{tag}",
        "ATELIER_MLFLOW__EXPERIMENT": f"atelier-scale-{tag}",
    }
    base = {
        **os.environ,
        **embed_env(),
        **names,
        "PYSPARK_PYTHON": sys.executable,
        "ATELIER_GATE__BUILD_DATA_DOCS": "false",
        "ATELIER_CONFIG": str(root / "none.yaml"),  # no atelier.yaml of the checkout
    }
    apps_before = len(_apps(cluster))
    seconds = {
        # The embedded default: Spark local, the lake written through the driver (`auto`).
        "embedded": _demo(root / "embedded", {**base, "ATELIER_SPARK__MASTER": "local[2]"}),
        "scale": _demo(
            root / "scale", {**base, "ATELIER_CONFIG": str(CLUSTER / "atelier.scale.yaml")}
        ),
    }
    print(f"demo seconds: {seconds}", flush=True)
    ran_on_cluster = len(_apps(cluster)) - apps_before
    overrides = {"feast": {"project": names["ATELIER_FEAST__PROJECT"]}}
    mlflow_names = {
        "attributes_model": names["ATELIER_MLFLOW__ATTRIBUTES_MODEL"],
        "recommender_model": names["ATELIER_MLFLOW__RECOMMENDER_MODEL"],
        "experiment": names["ATELIER_MLFLOW__EXPERIMENT"],
    }
    embedded = Settings(workdir=root / "embedded", feast=overrides["feast"], mlflow=mlflow_names)
    scale = Settings(
        workdir=root / "scale",
        spark=cluster["spark"],
        feast={**cluster["feast"], **overrides["feast"]},
        mlflow={**cluster["mlflow"], **mlflow_names},
    )
    return embedded, scale, seconds, ran_on_cluster


# Every table agrees to float32 precision. The attribute model's outputs differ in the last
# bits between the two runs (TensorFlow on two single-thread cluster workers vs `local[2]`:
# ~4e-7 in predicted probabilities); the recommender, trained on them, amplifies that, so its
# item vectors agree to ~5e-4 (mean difference ~1e-5; the same metrics, the same rankings).
LOOSE = {"item_vectors", "item_vectors:vector"}


def _close(a, b, atol: float = 1e-5) -> bool:
    if isinstance(a, list) and a and isinstance(a[0], float):
        return len(a) == len(b) and bool(np.allclose(a, b, rtol=1e-4, atol=atol))
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-4, atol=1e-6, equal_nan=True))
    return a == b


def _differences(got: list[dict], want: list[dict], atol: float = 1e-5) -> list[str]:
    if len(got) != len(want):
        return [f"{len(got)} rows vs {len(want)}"]
    out = []
    for g, w in zip(got, want):
        bad = [k for k in w if not _close(g.get(k), w[k], atol)]
        if bad:
            out.append(f"{ {k: w[k] for k in list(w)[:2]} }: {bad}")
    return out[:5]


def test_the_pipeline_ran_on_the_cluster_and_tracked_on_the_server(runs):
    import mlflow

    embedded, scale, seconds, ran_on_cluster = runs
    # ingest, embed, features, predict, item vectors, materialise: each job a Spark app there.
    assert ran_on_cluster >= 1
    client = mlflow.MlflowClient(scale.tracking_uri, scale.registry_uri)
    for name in (scale.mlflow.attributes_model, scale.mlflow.recommender_model):
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.run_id
        assert client.get_run(champion.run_id).info.status == "FINISHED"
    # Nothing of the scale run went to the embedded stores under its workdir.
    assert not (scale.workdir / "mlflow" / "mlflow.db").exists()
    assert not (scale.workdir / "feast" / "online.db").exists()


def test_both_profiles_give_the_same_lake_tables(runs):
    from atelier.lake import Lake

    embedded, scale, _, _ = runs
    found = {}
    for table in TABLES:
        want, got = (
            comparable_rows(Lake(embedded), table, IGNORED),
            comparable_rows(Lake(scale), table, IGNORED),
        )
        assert want, f"{table}: empty in the embedded run"
        found[table] = _differences(got, want, 1e-3 if table in LOOSE else 1e-5)
    assert not any(found.values()), {t: d for t, d in found.items() if d}


def test_both_profiles_serve_the_same_online_features(runs):
    from atelier.feast_store import online_features
    from atelier.lake import Lake

    embedded, scale, _, _ = runs
    ids = sorted(Lake(embedded).read_arrow("products", ["product_id"])["product_id"].to_pylist())
    sample = ids[:: max(1, len(ids) // 12)]
    # Product-keyed services and views (one call each: two views name model_version).
    for features in ("attributes_v2", "predicted_attributes_v1", ["item_vectors:vector"]):
        want = online_features(embedded, sample, features)
        got = online_features(scale, sample, features)
        assert sorted(got) == sorted(want)
        atol = 1e-3 if features == ["item_vectors:vector"] else 1e-5
        for name in want:
            assert all(v is not None for v in want[name]), f"{features}.{name}: not served"
            bad = [p for p, a, b in zip(sample, got[name], want[name]) if not _close(a, b, atol)]
            assert not bad, f"{features}.{name}: differs for {bad}"


def test_both_profiles_recommend_the_same_lists(runs):
    from fastapi.testclient import TestClient

    from atelier.lake import Lake
    from serving.app import create_app
    from serving.state import StateHolder

    embedded, scale, _, _ = runs
    customers = sorted(
        Lake(embedded).read_arrow("customers", ["customer_id"])["customer_id"].to_pylist()
    )[:8]
    answers = {}
    for name, settings in (("embedded", embedded), ("scale", scale)):
        with TestClient(create_app(settings, StateHolder(settings), poll_seconds=0)) as c:
            deadline = time.monotonic() + 120
            while c.get("/ready").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            answers[name] = {
                cid: c.post("/recommendations", json={"customer_id": cid, "k": 10}).json()
                for cid in customers
            }
    for cid in customers:
        want, got = answers["embedded"][cid], answers["scale"][cid]
        assert [i["product_id"] for i in got["items"]] == [
            i["product_id"] for i in want["items"]
        ], cid
        assert got["model_version"].split("/")[-1] == want["model_version"].split("/")[-1]
