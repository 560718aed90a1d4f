"""Feast over the lake's Delta tables: apply, gated materialisation, online and point-in-time reads.

Every test writes its own small feature tables (following `atelier.contracts`) into a temporary
workdir. The Redis tests start a private `redis-server` on 127.0.0.1 and skip without one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from atelier import feast_store
from atelier.contracts import contract
from atelier.lake import Lake
from spark_jobs.materialize import materialize

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2020, 3, 1, tzinfo=UTC)
END = T0 + timedelta(days=30)
DIM = 512
VIEWS = {
    "image_embedding",
    "colour_features",
    "text_features",
    "product_features",
    "customer_history",
    "predicted_attributes",
    "item_vectors",
}


# -- table builders (contract schemas) -------------------------------------------------------
def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def embeddings(ids, vecs, shots=None, event=T0, created=T0) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "product_id": list(ids),
            "shot": list(shots or [0] * n),
            "content_hash": [f"h{i}" for i in range(n)],
            "weights": ["random:1"] * n,
            "input_size": ["64x64"] * n,
            "embedding": [np.asarray(v, dtype=np.float32).tolist() for v in vecs],
            "event_timestamp": [event] * n,
            "created_timestamp": [created] * n,
        }
    ).cast(contract("image_embeddings").schema())


def texts(ids, length: int) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "product_id": list(ids),
            "vocab_version": ["v1"] * n,
            "token_ids": [[i + 2] + [0] * (length - 1) for i in range(n)],
            "n_tokens": [1] * n,
            "tfidf": [[1.0, 0.0]] * n,
            "event_timestamp": [T0] * n,
            "created_timestamp": [T0] * n,
        }
    ).cast(contract("text_features").schema())


def product_rows(rows) -> pa.Table:
    """rows: (product_id, event_timestamp, type_idx, popularity_7d)."""
    n = len(rows)
    return pa.table(
        {
            "product_id": [r[0] for r in rows],
            "type_idx": [r[2] for r in rows],
            "brand_idx": [1] * n,
            "division_idx": [2] * n,
            "log_price": [0.5] * n,
            "first_seen": [T0] * n,
            "recency_days": [(r[1] - T0).days for r in rows],
            "popularity_7d": [r[3] for r in rows],
            "popularity_30d": [r[3] for r in rows],
            "popularity_90d": [r[3] for r in rows],
            "event_timestamp": [r[1] for r in rows],
            "created_timestamp": [r[1] for r in rows],
        }
    ).cast(contract("product_features").schema())


def as_f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


# -- the feast CLI on the repository ---------------------------------------------------------
def test_feast_cli_works_in_the_workdirs_own_repo_without_environment(settings):
    Lake(settings).merge("image_embeddings", embeddings(["p0"], vectors(1, 0)))
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    printed = subprocess.run(
        [str(bindir / "atelier"), "--workdir", str(settings.workdir), "feast-repo"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert printed.returncode == 0, printed.stderr
    repo = Path(printed.stdout.strip().splitlines()[-1])
    assert repo == settings.feast_dir / "repo"
    assert "${" not in (repo / "feature_store.yaml").read_text()  # the workdir is filled in
    run = subprocess.run(
        f"{bindir / 'feast'} -c {repo} apply && {bindir / 'feast'} -c {repo} feature-views list",
        shell=True,
        cwd=settings.workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (settings.feast_dir / "registry.db").is_file()
    assert (settings.feast_dir / "online.db").is_file()
    listed = run.stdout.split("feature-views", 1)[-1]
    for name in VIEWS:
        assert name in listed, run.stdout
    # The registry the CLI wrote is the one atelier reads, and its sources are absolute paths
    # into this workdir's lake.
    store = feast_store.feature_store(settings)
    assert {fv.name for fv in store.list_feature_views()} == VIEWS
    source = store.get_data_source("image_embeddings_source")
    assert source.path == str(settings.lake_dir / "image_embeddings")
    assert type(source.file_format).__name__ == "DeltaFormat"


# -- embedded profile: apply, materialise, online ---------------------------------------------
def test_materialize_then_online_returns_the_stored_vector(settings):
    lake = Lake(settings)
    vec = vectors(3, 1)
    # p0 has a second shot: the view serves the main one (shot 0) unless asked otherwise.
    lake.merge("image_embeddings", embeddings(["p0", "p1", "p0"], vec, shots=[0, 0, 1]))
    lake.merge("text_features", texts(["p0", "p1"], settings.text.sequence_length))
    lake.merge(
        "product_features",
        product_rows([("p0", T0, 3, 1), ("p0", T0 + timedelta(days=10), 4, 7), ("p1", T0, 5, 0)]),
    )

    applied = feast_store.apply(settings)
    assert {"image_embedding", "attributes_v1", "recommender_v1"} <= set(applied["changed"])
    assert feast_store.apply(settings)["changed"] == []  # idempotent, like `feast apply`

    result = materialize(settings, end=END)
    for view in ("image_embedding", "text_features", "product_features"):
        assert result[view]["status"] == "materialized", result[view]
        assert result[view]["failures"] == []
    assert result["customer_history"] == {
        "table": "customer_history",
        "status": "missing",
        "failures": [],
    }

    row = feast_store.online_features(settings, ["p0", "p1", "nope"])
    assert row["product_id"] == ["p0", "p1", "nope"]
    assert len(row["embedding"][0]) == DIM
    np.testing.assert_array_equal(as_f32(row["embedding"][0]), vec[0])  # bit for bit
    np.testing.assert_array_equal(as_f32(row["embedding"][1]), vec[1])
    assert row["embedding"][2] is None
    assert row["type_idx"] == [4, 5, None]  # p0's latest row (day 10)
    assert row["token_ids"][1][:2] == [3, 0]

    store = feast_store.feature_store(settings)
    other = store.get_online_features(
        features=["image_embedding:embedding"], entity_rows=[{"product_id": "p0", "shot": 1}]
    ).to_dict()
    np.testing.assert_array_equal(as_f32(other["embedding"][0]), vec[2])

    # Nothing new: the second run is a no-op; a later end loads incrementally.
    again = materialize(settings, end=END, tables=["image_embeddings"])
    assert again["image_embedding"]["status"] == "up_to_date"
    later = materialize(
        settings, end=END + timedelta(days=1), tables=["image_embeddings"]
    )
    assert later["image_embedding"]["mode"] == "incremental"

    # Re-embedded in place: same key and event time (first_seen), a later write. An
    # incremental window (event times after the last end) would never load it; the changed
    # Delta version makes the next run reload the view's window.
    fresh = vectors(1, 11)
    lake.merge("image_embeddings", embeddings(["p0"], fresh, created=END + timedelta(days=2)))
    reloaded = materialize(
        settings, end=END + timedelta(days=3), tables=["image_embeddings"]
    )
    assert reloaded["image_embedding"]["mode"] == "window"
    row = feast_store.online_features(settings, ["p0"], ["image_embedding:embedding"])
    np.testing.assert_array_equal(as_f32(row["embedding"][0]), fresh[0])


# -- point in time on Delta ------------------------------------------------------------------
def test_historical_features_are_point_in_time_correct_on_delta(settings):
    lake = Lake(settings)
    old, new, other = vectors(3, 2)
    lake.merge("image_embeddings", embeddings(["p0", "p1"], [old, other]))
    lake.merge("text_features", texts(["p0", "p1"], settings.text.sequence_length))
    day10 = T0 + timedelta(days=10)
    lake.merge("product_features", product_rows([("p0", T0, 3, 1), ("p0", day10, 4, 9)]))
    feast_store.apply(settings)

    # The table is overwritten: p0 gets a new vector with the same timestamps, p1 is gone.
    # The old Parquet files stay in the folder (only _delta_log says they are removed).
    lake.overwrite("image_embeddings", embeddings(["p0"], [new]))
    loose = pa.concat_tables(
        pa.parquet.read_table(f) for f in (settings.lake_dir / "image_embeddings").glob("*.parquet")
    )
    assert sorted(loose["product_id"].to_pylist()) == ["p0", "p0", "p1"]  # the stale trap

    entity = pd.DataFrame(
        {
            "product_id": ["p0", "p0", "p0", "p0", "p1"],
            "event_timestamp": [
                T0 - timedelta(days=1),  # before anything was true
                T0 + timedelta(days=5),  # sees the day-0 row only
                day10 + timedelta(hours=1),  # sees the day-10 row
                day10 + timedelta(days=3 * 365),  # still the day-10 row: no expiry (definitions)
                T0 + timedelta(days=5),
            ],
        }
    )
    df = feast_store.historical_features(settings, entity, "attributes_v1")
    df = df.sort_values(["product_id", "event_timestamp"]).reset_index(drop=True)
    assert df["product_id"].tolist() == ["p0", "p0", "p0", "p0", "p1"]
    assert (df["shot"] == 0).all()  # added: the main image
    # product_features: the latest row at or before each event, nothing before the first.
    assert pd.isna(df.loc[0, "type_idx"])
    assert df.loc[1:3, "type_idx"].tolist() == [3, 4, 4]
    # Content holds from its event time (first_seen here T0): not the day before, then the
    # overwritten value — never the replaced one, though its Parquet file is still there.
    assert df.loc[0, "embedding"] is None
    for i in (1, 2, 3):
        np.testing.assert_array_equal(as_f32(df.loc[i, "embedding"]), new)
    assert df.loc[4, "embedding"] is None  # p1 was removed by the overwrite: no stale value
    assert pd.isna(df.loc[4, "type_idx"])  # p1 never had product features


# -- the gate --------------------------------------------------------------------------------
def test_a_table_failing_the_gate_is_not_materialised(settings):
    lake = Lake(settings)
    vec = vectors(2, 3)
    vec[1, 7] = np.nan
    lake.merge("image_embeddings", embeddings(["p0", "p1"], vec))
    # A duplicated key (the first write does not deduplicate).
    lake.merge("text_features", texts(["p0", "p0"], settings.text.sequence_length))
    lake.merge("product_features", product_rows([("p0", T0, 3, 1)]))
    feast_store.apply(settings)

    result = materialize(settings, end=END)
    image = result["image_embedding"]
    assert image["status"] == "gate_failed"
    assert any("embedding__non_finite" in f for f in image["failures"]), image["failures"]
    text = result["text_features"]
    assert text["status"] == "gate_failed"
    assert any("unique(product_id)" in f for f in text["failures"]), text["failures"]
    assert result["product_features"]["status"] == "materialized"

    row = feast_store.online_features(settings, ["p0"])
    assert row["embedding"] == [None] and row["token_ids"] == [None]
    assert row["type_idx"] == [3]

    # Fixed upstream: the next run serves it.
    lake.overwrite("image_embeddings", embeddings(["p0", "p1"], np.nan_to_num(vec)))
    fixed = materialize(settings, end=END, tables=["image_embeddings"])
    assert fixed["image_embedding"]["status"] == "materialized"
    row = feast_store.online_features(settings, ["p1"], ["image_embedding:embedding"])
    np.testing.assert_array_equal(as_f32(row["embedding"][0]), np.nan_to_num(vec)[1])


def test_commits_a_run_has_not_published_are_not_materialised(settings):
    """Feast reads a table's latest commit, so materialisation waits for the run's publication
    (a run that died between its commits keeps the online store on its last complete run)."""
    lake = Lake(settings)
    lake.merge("product_features", product_rows([("p0", T0, 3, 1)]))
    feast_store.apply(settings)
    assert materialize(settings, end=END)["product_features"]["status"] == "materialized"

    with pytest.raises(KeyboardInterrupt), lake.publishing("product_features", "r2"):
        lake.merge("product_features", product_rows([("p0", T0, 4, 1)]))
        raise KeyboardInterrupt  # the run dies before its publication
    result = materialize(settings, end=END)["product_features"]
    assert result["status"] == "unpublished" and result["version"] == 0
    assert "version 1 is committed but its run has not published it" in result["failures"][0]
    assert feast_store.online_features(settings, ["p0"])["type_idx"] == [3]

    with lake.publishing("product_features", "r2"):  # the rerun
        lake.merge("product_features", product_rows([("p0", T0, 4, 1)]))
    assert materialize(settings, end=END)["product_features"]["status"] == "materialized"
    assert feast_store.online_features(settings, ["p0"])["type_idx"] == [4]


# -- Redis -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_url():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server not found: install it (Debian: apt-get install redis-server) "
            "to test the Redis online store"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"redis-server did not start on 127.0.0.1:{port}")
            time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    client.close()
    proc.terminate()
    proc.wait(timeout=10)


def test_redis_online_store_serves_the_materialised_vector(settings, redis_url):
    import redis

    lake = Lake(settings)
    vec = vectors(2, 4)
    lake.merge("image_embeddings", embeddings(["p0", "p1"], vec))
    host, port = redis_url.split(":")
    client = redis.Redis(host=host, port=int(port))
    client.flushall()

    overrides = {"online_store": {"type": "redis", "connection_string": redis_url}}
    store = feast_store.feature_store(settings, overrides=overrides)
    assert type(store.config.online_store).__name__ == "RedisOnlineStoreConfig"
    feast_store.apply(settings, store=store)
    result = materialize(settings, end=END, tables=["image_embeddings"], store=store)
    assert result["image_embedding"]["status"] == "materialized"
    assert client.dbsize() == 2  # one hash per (product, shot)

    row = feast_store.online_features(
        settings, ["p1", "p0"], ["image_embedding:embedding"], store=store
    )
    np.testing.assert_array_equal(as_f32(row["embedding"][0]), vec[1])
    np.testing.assert_array_equal(as_f32(row["embedding"][1]), vec[0])
    assert not (settings.feast_dir / "online.db").exists()  # sqlite was not used


def test_scale_profile_spark_delta_sources_sql_registry_and_redis(settings, redis_url, tmp_path):
    settings.feast.profile = "scale"
    settings.feast.redis = redis_url
    settings.feast.registry_url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    # Without delta-spark's jars: temp views of the published snapshots, no Delta extension.
    assert feast_store.lake_views(settings)
    bare = feast_store.definitions(settings)["image_embeddings_source"]
    assert (bare.table, bare.path) == ("atelier_image_embeddings", None)
    conf = feast_store.repo_config(settings).offline_store.spark_conf
    assert "spark.sql.extensions" not in conf
    # With the jars configured (never loaded here: nothing below starts Spark): Delta paths.
    settings.spark.jars = ["/opt/jars/delta-spark_4.2_2.13-4.4.1.jar"]
    assert not feast_store.lake_views(settings)
    config = feast_store.repo_config(settings)
    assert config.offline_store.spark_conf["spark.sql.extensions"].startswith("io.delta")
    assert config.offline_store.spark_conf["spark.jars"] == settings.spark.jars[0]
    assert config.offline_store.type == "spark"
    assert config.offline_store.spark_conf["spark.master"] == settings.spark.master
    assert config.online_store.connection_string == redis_url
    assert config.registry.registry_type == "sql"
    assert config.registry.path == settings.feast.registry_url

    objects = feast_store.definitions(settings)
    source = objects["image_embeddings_source"]
    assert type(source).__name__ == "SparkSource"
    assert source.path == str(settings.lake_dir / "image_embeddings")
    assert source.table_format.format_type.value == "delta"

    store = feast_store.feature_store(settings)
    with warnings.catch_warnings():
        # Feast warns on every SparkSource it reads back from the registry ("experimental").
        warnings.simplefilter("ignore", RuntimeWarning)
        feast_store.apply(settings, store=store)
        stored = store.get_data_source("image_embeddings_source")
        services = {s.name for s in store.list_feature_services()}
    assert stored.table_format.format_type.value == "delta"
    assert stored.path == source.path
    assert services == {
        "attributes_v1",
        "attributes_v2",
        "recommender_v1",
        "predicted_attributes_v1",
        "serving_v1",
    }
