"""Item vectors: the change detection by hand, then the job end to end on five products with a
tiny registered champion (untrained, k=8), checked against the bundle on Feast's own
point-in-time content features; reruns, the gate, `atelier similar` and materialisation.

The feature tables follow `atelier.contracts` and are written straight into a temporary lake.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from atelier.contracts import contract
from spark_jobs.materialize import materialize

T0 = datetime(2020, 1, 1, tzinfo=UTC)
AS_OF = datetime(2020, 5, 31, tzinfo=UTC)
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
SEED = 7
K = 8
IDS = ["p0", "p1", "p2", "p3", "p4"]


def table(name: str, columns: dict) -> pa.Table:
    return pa.table(columns).cast(contract(name).schema())


def stamps(times) -> dict:
    times = list(times)
    return {"event_timestamp": times, "created_timestamp": times}


def product_features(rows) -> pa.Table:
    """rows: (product_id, event_timestamp, type_idx, log_price, popularity_7d)."""
    return table(
        "product_features",
        {
            "product_id": [r[0] for r in rows],
            "type_idx": [r[2] for r in rows],
            "brand_idx": [1] * len(rows),
            "division_idx": [1] * len(rows),
            "log_price": [r[3] for r in rows],
            "first_seen": [T0] * len(rows),
            "recency_days": [(r[1] - T0).days for r in rows],
            "popularity_7d": [r[4] for r in rows],
            "popularity_30d": [2 * r[4] for r in rows],
            "popularity_90d": [3 * r[4] for r in rows],
            **stamps(r[1] for r in rows),
        },
    )


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------
@pytest.mark.unit
def test_the_default_as_of_is_the_start_of_the_runs_day():
    from spark_jobs.item_vectors import default_as_of

    assert default_as_of(NOW) == datetime(2026, 11, 25, tzinfo=UTC)
    assert default_as_of(datetime(2026, 11, 25, 23, 59, 59)) == datetime(2026, 11, 25, tzinfo=UTC)


@pytest.mark.spark
def test_changed_vectors_by_hand(spark):
    from spark_jobs.item_vectors import changed_vectors

    schema = (
        "product_id STRING, vector ARRAY<FLOAT>, variant STRING, model_version STRING, "
        "event_timestamp TIMESTAMP"
    )
    t1, t2 = datetime(2020, 1, 1), datetime(2020, 2, 1)
    existing = spark.createDataFrame(
        [
            ("same", [1.0, 2.0], "hybrid", "m/1", t1),
            ("tiny", [100.0, 0.0], "hybrid", "m/1", t1),  # scale 100: tolerance 1e-3
            ("moved", [1.0, 2.0], "hybrid", "m/1", t1),
            ("longer", [1.0, 2.0], "hybrid", "m/1", t1),
            ("model", [1.0, 2.0], "hybrid", "m/1", t1),
        ],
        schema,
    )
    new = spark.createDataFrame(
        [
            ("same", [1.0, 2.0], "hybrid", "m/1", t2),  # later event time alone: unchanged
            ("tiny", [100.0005, 0.0], "hybrid", "m/1", t2),  # 5e-4 <= 1e-5 * 100
            ("moved", [1.0, 2.0001], "hybrid", "m/1", t2),  # 1e-4 > 1e-5 * 2
            ("longer", [1.0, 2.0, 0.0], "hybrid", "m/1", t2),
            ("model", [1.0, 2.0], "hybrid", "m/2", t2),
            ("new", [0.0, 0.0], "hybrid", "m/1", t2),
        ],
        schema,
    )
    now = datetime(2020, 3, 1, tzinfo=UTC)
    rows = changed_vectors(new, existing, now).collect()
    assert sorted(r["product_id"] for r in rows) == ["longer", "model", "moved", "new"]
    assert {r["created_timestamp"].replace(tzinfo=UTC) for r in rows} == {now}
    assert {r["event_timestamp"] for r in rows} == {t2}
    assert changed_vectors(new, existing.limit(0), now).count() == 6


# ---------------------------------------------------------------------------------------------
# The job end to end
# ---------------------------------------------------------------------------------------------
def _lake(settings):
    """p0, p1 bought in training (the CF index); p2, p3 never bought; p4 has no features."""
    from atelier.lake import Lake

    lake = Lake(settings)
    lake.merge(
        "products",
        table(
            "products",
            {
                "product_id": IDS,
                "type": ["Dress", "Top", "Dress", "Skirt", "Top"],
                "brand": ["b"] * 5,
                "division": ["d"] * 5,
                "title": [f"Product {i}" for i in range(5)],
                "description": [""] * 5,
                "price": [10.0] * 5,
                "first_seen": [T0] * 5,
                "source": ["hm"] * 5,
            },
        ),
    )
    lake.merge(
        "category_index",
        table(
            "category_index",
            {"column": ["type"] * 3, "value": ["Dress", "Top", "Skirt"], "idx": [1, 2, 3]},
        ),
    )
    lake.merge(
        "product_features",
        product_features(
            [
                ("p0", T0, 1, 0.5, 1),
                ("p0", AS_OF + timedelta(days=5), 1, 0.5, 9),  # after as_of: never seen
                ("p1", T0 + timedelta(days=30), 2, -0.5, 3),
                ("p2", T0, 1, 1.5, 0),
                ("p3", T0, 3, None, 0),
            ]
        ),
    )
    lake.merge(
        "text_features",
        table(
            "text_features",
            {
                "product_id": IDS[:4],
                "vocab_version": ["v1"] * 4,
                "token_ids": [[2, 0]] * 4,
                "n_tokens": [1] * 4,
                "tfidf": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]],
                **stamps([T0] * 4),
            },
        ),
    )
    images = np.random.default_rng(SEED).normal(size=(4, 512)).astype(np.float32)
    lake.merge(
        "image_embeddings",
        table(
            "image_embeddings",
            {
                "product_id": ["p0", "p0", "p2", "p3"],  # p0's shot 1 is not the main image
                "shot": [0, 1, 0, 0],
                "content_hash": ["h0", "h1", "h2", "h3"],
                "weights": [f"random:{SEED}"] * 4,
                "input_size": ["64x64"] * 4,
                "embedding": [v.tolist() for v in images],
                **stamps([T0] * 4),
            },
        ),
    )
    lake.merge(
        "attribute_vectors",
        table(
            "attribute_vectors",
            {
                "product_id": ["p0", "p1"],  # the others have no predicted attributes
                "attribute_vector": [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]],
                "attribute_values": [["x", "y"], ["z", "y"]],
                "model_version": ["atelier-attributes/1"] * 2,
                **stamps([T0, T0]),
            },
        ),
    )
    return lake


def _champion(settings, features):
    """A tiny untrained hybrid bundle on `features`' layout, registered and promoted."""
    import mlflow

    from atelier import registry
    from models.recommender.bundle import RecommenderBundle
    from models.recommender.model import build_item_tower
    from models.recommender.pyfunc import log_recommender_model

    config = features.recommender_config("hybrid", n_items=2, k=K, hidden_units=(8,), seed=SEED)
    bundle = RecommenderBundle(
        item_tower=build_item_tower(config),
        config=config,
        item_index={"p0": 1, "p1": 2},
        blocks=dict(features.block_dims),
        categorical=dict(features.categorical_dims),
        metadata={"feature_service": "recommender_v1"},
    )
    registry.configure(settings)
    with mlflow.start_run(run_name="tiny-recommender"):
        info = log_recommender_model(bundle)
    name = settings.mlflow.recommender_model
    version = registry.register(settings, info.model_uri, name, "precision_at_10", 0.1)
    assert registry.promote(settings, name).promoted
    return bundle, f"{name}/{version}"


def _rows(lake) -> dict:
    return {r["product_id"]: r for r in lake.read_arrow("item_vectors").to_pylist()}


@pytest.fixture(scope="module")
def published(tmp_path_factory, spark):
    """The lake, Feast applied, the champion registered, one run as of AS_OF."""
    from atelier import feast_store
    from atelier.settings import Settings
    from models.recommender.features import load_content_features
    from spark_jobs.item_vectors import run_item_vectors

    settings = Settings(
        workdir=tmp_path_factory.mktemp("item_vectors") / "w",
        spark={"master": "local[2]", "shuffle_partitions": 4},
        gate={"build_data_docs": False},
        embed={"partitions": 2, "tf_threads": 1},
    )
    lake = _lake(settings)
    feast_store.apply(settings)
    features = load_content_features(settings, AS_OF)  # Feast's point-in-time join
    bundle, model_version = _champion(settings, features)
    report = run_item_vectors(settings, spark=spark, now=NOW, as_of=AS_OF)
    return settings, lake, bundle, model_version, features, report


@pytest.mark.spark
@pytest.mark.integration
def test_every_product_gets_the_champions_vector_as_of(published):
    settings, lake, bundle, model_version, features, report = published
    name = settings.mlflow.recommender_model
    assert report["model_uri"] == f"models:/{name}@champion"
    assert report["model_version"] == model_version
    assert (report["variant"], report["k"]) == ("hybrid", K)
    assert report["published"] and report["failures"] == []
    assert report["products"] == report["scored"] == 5
    assert report["cf_known"] == 2 and report["zero_vectors"] == 0
    assert report["item_vectors"]["written"] == report["item_vectors"]["inserted"] == 5

    arrow = lake.read_arrow("item_vectors")
    assert arrow.schema == contract("item_vectors").schema()
    rows = _rows(lake)
    assert sorted(rows) == IDS  # never-bought p2, p3 and feature-less p4 included
    # The Spark job's point-in-time content equals Feast's: same vectors as the bundle on
    # load_content_features (p0's row after as_of, p0's second shot and gaps ignored alike).
    assert list(features.product_ids) == IDS
    expected = bundle.item_vectors(features)
    for i, pid in enumerate(IDS):
        row = rows[pid]
        # k match coordinates, then the product's bias (layout "dot+bias")
        assert len(row["vector"]) == K + 1 and np.isfinite(row["vector"]).all()
        np.testing.assert_allclose(row["vector"], expected[i], rtol=1e-5, atol=1e-6)
        assert (row["variant"], row["model_version"]) == ("hybrid", model_version)
        assert row["event_timestamp"] == AS_OF
        assert row["created_timestamp"] == NOW
    # Hybrid: the CF rows add to the content path, so known products differ from content
    # alone; never-bought products get content alone (the same bundle without its CF index).
    bundle_index, bundle.item_index = bundle.item_index, {}
    try:
        content_only = bundle.item_vectors(features)
    finally:
        bundle.item_index = bundle_index
    assert not np.allclose(content_only[0], expected[0])
    np.testing.assert_allclose(content_only[2:], expected[2:], rtol=1e-6)
    assert (settings.reports_dir / "item_vectors" / "latest.json").is_file()


@pytest.mark.spark
@pytest.mark.integration
def test_rerun_writes_nothing_and_a_changed_feature_rewrites_only_its_product(published, spark):
    from spark_jobs.item_vectors import format_report, run_item_vectors

    settings, lake, bundle, model_version, features, _ = published
    version = lake.version("item_vectors")
    before = _rows(lake)

    again = run_item_vectors(settings, spark=spark, now=NOW + timedelta(hours=1), as_of=AS_OF)
    assert again["item_vectors"] == {"written": 0, "inserted": 0, "updated": 0, "version": version}
    assert "item_vectors          written 0 (ins. 0, upd. 0)" in format_report(again)
    assert lake.version("item_vectors") == version

    # p2 sells before as_of: its popularity changes, so does its vector, and only its.
    lake.merge("product_features", product_features([("p2", AS_OF - timedelta(days=1), 1, 1.5, 4)]))
    later = NOW + timedelta(hours=2)
    changed = run_item_vectors(settings, spark=spark, now=later, as_of=AS_OF)
    assert changed["item_vectors"]["written"] == changed["item_vectors"]["updated"] == 1
    after = _rows(lake)
    assert after["p2"]["created_timestamp"] == later
    assert not np.allclose(after["p2"]["vector"], before["p2"]["vector"])
    for pid in ("p0", "p1", "p3", "p4"):
        assert after[pid] == before[pid]


@pytest.mark.spark
@pytest.mark.integration
def test_the_gate_rejects_a_wrong_length_and_non_finite_vectors(published):
    from expectations.gate import validate_table
    from expectations.suites import gate_checks

    settings, lake, *_ = published
    good = lake.read_arrow("item_vectors")
    products = {"product_id": lake.read_arrow("products")["product_id"].to_pylist()}
    checks = gate_checks(settings, "item_vectors", vector_size=K + 1)
    ok = validate_table(
        settings,
        "item_vectors",
        good,
        row_count_band=(1, 10),
        reference_values=products,
        list_checks=checks,
    )
    assert ok.success, ok.failures
    bad = good.to_pylist()
    bad[0]["vector"] = bad[0]["vector"][:-1]
    bad[1]["vector"] = [float("nan")] + bad[1]["vector"][1:]
    result = validate_table(
        settings,
        "item_vectors",
        pa.Table.from_pylist(bad, good.schema),
        row_count_band=(1, 10),
        reference_values=products,
        list_checks=checks,
    )
    assert not result.success
    text = " ".join(result.failures)
    assert "vector__length" in text and "vector__non_finite" in text


@pytest.mark.spark
@pytest.mark.integration
def test_similar_cli_lists_cosine_neighbours_from_the_lake(published):
    from typer.testing import CliRunner

    from cli.main import app
    from models.recommender.similar import similar_products

    settings, lake, _, model_version, *_ = published
    rows = _rows(lake)
    # cosine over the match coordinates: the last one is the bias
    want = similar_products(IDS, [rows[p]["vector"][:-1] for p in IDS], "p0", n=2)
    runner = CliRunner()
    out = runner.invoke(
        app,
        ["--workdir", str(settings.workdir), "similar", "p0", "--variant", "hybrid", "--n", "2"],
    )
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0] == (
        f"similar to p0 Product 0 (Dress) [hybrid, lake table item_vectors ({model_version})]:"
    )
    assert len(lines) == 3
    for rank, (line, (pid, sim)) in enumerate(zip(lines[1:], want), 1):
        assert line.split()[:3] == [f"{rank}.", pid, f"{sim:.4f}"]

    # The table holds the hybrid champion only: cf needs a cf model.
    out = runner.invoke(
        app, ["--workdir", str(settings.workdir), "similar", "p0", "--variant", "cf"]
    )
    assert out.exit_code == 1
    assert "no 'cf' item vectors" in out.output and "'hybrid': 5" in out.output
    out = runner.invoke(app, ["--workdir", str(settings.workdir), "similar", "nope"])
    assert out.exit_code == 1 and "'nope' has no item vector" in out.output

    # With --model-uri the vectors are computed here, from Feast's content features as of
    # today (p0's later sales now count), not read from the table.
    uri = f"models:/{model_version}"
    out = runner.invoke(
        app, ["--workdir", str(settings.workdir), "similar", "p3", "--n", "4", "--model-uri", uri]
    )
    assert out.exit_code == 0, out.output
    # stderr (MLflow's download bars, ending in a carriage return) comes first
    lines = out.output[out.output.index("similar to p3") :].strip().splitlines()
    assert lines[0].endswith(f"[hybrid, computed now with {model_version}]:")
    assert sorted(line.split()[1] for line in lines[1:]) == ["p0", "p1", "p2", "p4"]


@pytest.mark.spark
@pytest.mark.integration
def test_materialize_serves_the_vectors_online(published):
    from atelier import feast_store

    settings, lake, *_ = published
    result = materialize(settings, end=NOW + timedelta(days=1), tables=["item_vectors"])
    assert result["item_vectors"]["status"] == "materialized", result
    online = feast_store.online_features(settings, ["p3", "nope"], ["item_vectors:vector"])
    np.testing.assert_allclose(online["vector"][0], _rows(lake)["p3"]["vector"], rtol=1e-6)
    assert online["vector"][1] is None
    service = feast_store.definitions(settings)["serving_v1"]
    served = {f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features}
    assert served == {"item_vectors:vector", "customer_history:history"}


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.integration
def test_spark_submit_and_cli_rerun_write_nothing(published):
    """The job as users type it (`spark-submit`, `atelier predict item-vectors`) on the same
    workdir: the champion and content are unchanged, so nothing is rewritten."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import REPO

    settings, lake, *_ = published
    version = lake.version("item_vectors")
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               ATELIER_GATE__BUILD_DATA_DOCS="false")
    for command in (
        [str(bin_dir / "spark-submit"), "--master", "local[2]", "spark_jobs/item_vectors.py",
         "--workdir", str(settings.workdir), "--as-of", AS_OF.isoformat()],
        [str(bin_dir / "atelier"), "--workdir", str(settings.workdir), "predict",
         "item-vectors", "--as-of", AS_OF.strftime("%Y-%m-%d")],
    ):
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env,
                             timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "products 5: scored 5" in out.stdout, out.stdout
        assert "item_vectors          written 0 (ins. 0, upd. 0)" in out.stdout, out.stdout
        assert "published" in out.stdout
    assert lake.version("item_vectors") == version
