"""The recommender bundle: item vectors from content features, save → load, the raw Feast frame
path through `content_blocks`, and the MLflow pyfunc (log → load → predict)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from models.recommender.bundle import FORMAT_VERSION, RecommenderBundle
from models.recommender.features import IMAGE_DIM, ContentFeatures, content_blocks
from models.recommender.layers import BIAS_RATE, l2_normalize
from models.recommender.model import build_item_tower
from training.recommender.data import split_by_time, training_examples
from training.recommender.timeline import SalesTimeline
from training.recommender.trainer import product_vectors, train_recommender_model

pytestmark = pytest.mark.unit

AS_OF = pd.Timestamp("2020-05-31", tz="UTC")
GROUPS = ("a", "b")
PER_GROUP = 4
COLD = "a_new"  # group a's content, never bought: no CF row
K = 8
N_RECENT = 3


def raw_frame(seed: int = 0) -> pd.DataFrame:
    """Feast-shaped content columns of 9 products: the type and TF-IDF say the style."""
    rng = np.random.default_rng(seed)
    ids = sorted([f"{g}{i}" for g in GROUPS for i in range(PER_GROUP)] + [COLD])
    group = np.array([GROUPS.index(p[0]) for p in ids])
    centroids = rng.normal(size=(len(GROUPS), IMAGE_DIM))
    image = centroids[group] + 0.1 * rng.normal(size=(len(ids), IMAGE_DIM))
    return pd.DataFrame(
        {
            "product_id": ids,
            "type_idx": group + 1,
            "log_price": rng.normal(size=len(ids)),
            "first_seen": [AS_OF - pd.Timedelta(days=30 * (i + 1)) for i in range(len(ids))],
            "recency_days": [30.0 * (i + 1) for i in range(len(ids))],
            "popularity_7d": rng.integers(0, 5, len(ids)),
            "popularity_30d": rng.integers(5, 20, len(ids)),
            "popularity_90d": rng.integers(20, 60, len(ids)),
            "tfidf": [np.eye(3)[g].tolist() for g in group],
            "embedding": [row.tolist() for row in image.astype(np.float32)],
        }
    )


def features_of(frame: pd.DataFrame, as_of=AS_OF) -> ContentFeatures:
    blocks, dims, categorical = content_blocks(frame, as_of, type_size=4)
    ids = np.asarray(frame["product_id"], dtype=object)
    return ContentFeatures(ids, {p: i for i, p in enumerate(ids)}, blocks, dims, categorical)


def interactions(n_customers: int = 20, per_customer: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_customers):
        g = GROUPS[c % 2]
        for d in np.sort(rng.choice(60, size=per_customer, replace=False)):
            product = f"{g}{rng.integers(PER_GROUP)}"
            rows.append((f"c{c:02d}", product, AS_OF - pd.Timedelta(days=int(d))))
    return pd.DataFrame(rows, columns=["customer_id", "product_id", "timestamp"])


def train(variant: str, features: ContentFeatures):
    frame = interactions()
    examples = training_examples(frame, AS_OF, n_recent=N_RECENT)
    fit, valid = split_by_time(examples, AS_OF - pd.Timedelta(days=10))
    config = features.recommender_config(
        variant, k=K, hidden_units=(16,), bias_units=4, n_negatives=4, seed=3
    )
    return train_recommender_model(
        examples.subset(fit),
        features,
        config,
        SalesTimeline(frame, features.product_ids),
        validation=examples.subset(valid),
        epochs=1,
        batch_size=16,
        seed=3,
        n_recent=N_RECENT,
        progress=lambda line: None,
    )


@pytest.fixture(scope="module")
def world():
    frame = raw_frame()
    features = features_of(frame)
    trained = train("hybrid", features)
    bundle = RecommenderBundle.from_trained(
        trained, features, {"train_end": str(AS_OF), "precision_at_10": 0.25}
    )
    return frame, features, trained, bundle


def test_item_vectors_are_the_trained_towers_and_a_new_product_gets_its_content(world):
    frame, features, trained, bundle = world
    assert bundle.variant == "hybrid" and bundle.k == K
    assert bundle.blocks == features.block_dims and bundle.categorical == {"type": 4}
    assert COLD not in bundle.item_index and bundle.item_index["a0"] >= 1
    vectors = bundle.item_vectors(features)
    assert vectors.shape == (9, K + 1) and vectors.dtype == np.float32  # match, then bias
    np.testing.assert_array_equal(vectors, product_vectors(trained, features))

    # Give the new product a0's content (dynamic blocks included): their vectors then differ
    # by a0's CF row alone. Match: unit(content) vs unit(content + CF row), times the scale;
    # bias: exactly a0's CF bias (times BIAS_RATE) apart.
    twin = frame.copy()
    cold_row = int(np.flatnonzero(twin["product_id"] == COLD)[0])
    a0_row = int(np.flatnonzero(twin["product_id"] == "a0")[0])
    for column in twin.columns.drop("product_id"):
        twin.at[cold_row, column] = twin.at[a0_row, column]
    twin_features = features_of(twin)
    v = bundle.item_vectors(twin_features)
    layer = bundle.item_tower.get_layer("item_tower")
    assert layer.dynamic_names == ("popularity", "recency")
    index = bundle.item_index["a0"]
    row = layer.cf_embedding.embeddings.numpy()[index].astype(np.float64)
    cf_bias = float(layer.cf_bias.embeddings.numpy()[index, 0]) * BIAS_RATE
    scale = float(np.asarray(layer.match_scale))
    names = layer.content_encoder.input_names
    content = np.asarray(
        layer.content_encoder({n: twin_features.blocks[n][[a0_row]] for n in names}),
        np.float64,
    )[0]
    np.testing.assert_allclose(
        v[cold_row, :K], np.asarray(l2_normalize(content)) * scale, atol=1e-5
    )
    both = content + row
    np.testing.assert_allclose(v[a0_row, :K], both / np.linalg.norm(both) * scale, atol=1e-5)
    assert v[a0_row, K] - v[cold_row, K] == pytest.approx(cf_bias, abs=1e-6)
    assert np.isfinite(v[cold_row]).all() and np.abs(v[cold_row]).sum() > 0


def test_dynamic_blocks_move_only_the_bias(world):
    frame, _, _, bundle = world
    busier = frame.assign(popularity_7d=frame["popularity_7d"] + 50)
    before = np.array(bundle.predict(frame, AS_OF)["vector"].tolist())
    after = np.array(bundle.predict(busier, AS_OF)["vector"].tolist())
    np.testing.assert_allclose(after[:, :K], before[:, :K], rtol=1e-6, atol=1e-7)
    assert (np.abs(after[:, K] - before[:, K]) > 1e-6).all()


def test_save_load_round_trip_gives_identical_vectors(world, tmp_path):
    _, features, trained, bundle = world
    assert bundle.n_recent == trained.n_recent == N_RECENT and bundle.layout == "dot+bias"
    assert bundle.metadata == {
        "train_end": str(AS_OF),
        "precision_at_10": 0.25,
        "n_recent": N_RECENT,
        "layout": "dot+bias",
    }
    bundle.save(tmp_path / "b")
    assert {p.name for p in (tmp_path / "b").iterdir()} == {"model.keras", "bundle.json"}
    state = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert state["format"] == FORMAT_VERSION == 2
    assert state["metadata"]["n_recent"] == N_RECENT and state["metadata"]["layout"] == "dot+bias"
    loaded = RecommenderBundle.load(tmp_path / "b")
    assert loaded.config == bundle.config and loaded.variant == "hybrid"
    assert loaded.item_index == bundle.item_index and loaded.metadata == bundle.metadata
    assert loaded.blocks == bundle.blocks and loaded.categorical == bundle.categorical
    assert loaded.n_recent == N_RECENT and loaded.layout == "dot+bias"
    vectors = loaded.item_vectors(features)
    assert vectors.shape == (9, K + 1)
    np.testing.assert_array_equal(vectors, bundle.item_vectors(features))
    with pytest.raises(FileNotFoundError, match="not a recommender bundle"):
        RecommenderBundle.load(tmp_path)


def test_a_format_1_bundle_is_refused_with_a_message_to_retrain(world, tmp_path):
    _, _, _, bundle = world
    bundle.save(tmp_path / "old")
    path = tmp_path / "old" / "bundle.json"
    state = json.loads(path.read_text())
    state["format"] = 1
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="bundle format 1 is not the supported 2: retrain"):
        RecommenderBundle.load(tmp_path / "old")
    del state["format"]
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="bundle format None is not the supported 2"):
        RecommenderBundle.load(tmp_path / "old")


def test_metadata_defaults_and_checks(world):
    _, _, _, bundle = world
    bare = RecommenderBundle(bundle.item_tower, bundle.config)
    assert bare.metadata == {"layout": "dot+bias", "n_recent": 5}
    assert bare.n_recent == 5 and bare.layout == "dot+bias"
    given = RecommenderBundle(bundle.item_tower, bundle.config, metadata={"n_recent": 2})
    assert given.n_recent == 2
    for bad in (0, "5", True):
        with pytest.raises(
            ValueError, match=f"metadata n_recent must be an integer >= 1, got {bad!r}"
        ):
            RecommenderBundle(bundle.item_tower, bundle.config, metadata={"n_recent": bad})
    narrow = type(bundle.config)(**{**bundle.config.to_dict(), "k": 4})
    with pytest.raises(ValueError, match="output width 9 differs from config k=4 \\+ 1"):
        RecommenderBundle(bundle.item_tower, narrow)


def test_cf_gives_a_never_bought_product_the_zero_vector(world):
    _, features, _, _ = world
    trained = train("cf", features)
    bundle = RecommenderBundle.from_trained(trained, features)
    vectors = bundle.item_vectors(features)
    assert vectors.shape == (9, K + 1)
    assert not vectors[features.index[COLD]].any()  # match and bias: never ranked
    assert np.abs(vectors[features.index["a0"]]).sum() > 0
    assert bundle.knows(["a0", COLD, "zz"]).tolist() == [True, False, False]


def test_raw_frame_goes_through_content_blocks_like_training(world):
    frame, features, _, bundle = world
    got = bundle.predict(frame, as_of=AS_OF)
    assert list(got.columns) == ["product_id", "vector"]
    assert list(got["product_id"]) == list(frame["product_id"])
    assert {len(v) for v in got["vector"]} == {K + 1}
    np.testing.assert_allclose(np.array(got["vector"].tolist()), bundle.item_vectors(features))
    # A product type added after training is unknown (0) to the model, not an error.
    newer = frame.assign(type_idx=np.where(frame["product_id"] == COLD, 9, frame["type_idx"]))
    zero = frame.assign(type_idx=np.where(frame["product_id"] == COLD, 0, frame["type_idx"]))
    np.testing.assert_allclose(
        np.array(bundle.predict(newer, AS_OF)["vector"].tolist()),
        np.array(bundle.predict(zero, AS_OF)["vector"].tolist()),
    )
    # Online rows carry no first_seen: recency is recency_days in years (here the same).
    online = frame.drop(columns=["first_seen"])
    np.testing.assert_allclose(
        np.array(bundle.predict(online)["vector"].tolist()),
        np.array(got["vector"].tolist()),
        atol=1e-6,
    )
    # as_of from a one-valued event_timestamp column.
    stamped = frame.assign(event_timestamp=AS_OF)
    pd.testing.assert_frame_equal(bundle.predict(stamped), got)


def test_layout_mismatches_raise_quoting_the_values(world):
    frame, features, trained, bundle = world
    wide = frame.assign(tfidf=[[*row, 0.0] for row in frame["tfidf"]])
    with pytest.raises(ValueError, match="'tfidf' has width 4 but the model was trained with 3"):
        bundle.predict(wide, AS_OF)
    with pytest.raises(ValueError, match="duplicate product ids"):
        bundle.predict(pd.concat([frame, frame.iloc[:1]]), AS_OF)
    with pytest.raises(ValueError, match="'product_id'"):
        bundle.predict(frame.drop(columns=["product_id"]), AS_OF)
    with pytest.raises(ValueError, match="2 different times"):
        bundle.predict(frame.assign(event_timestamp=[AS_OF] * 8 + [AS_OF + pd.Timedelta(1, "D")]))
    with pytest.raises(ValueError, match="variant 'cf' differs"):
        RecommenderBundle(bundle.item_tower, bundle.config, variant="cf")
    with pytest.raises(ValueError, match=r"item_index\['x'\] must be in \[1, "):
        RecommenderBundle(bundle.item_tower, bundle.config, item_index={"x": 99})
    cf_tower = build_item_tower(type(bundle.config)(**{**bundle.config.to_dict(), "variant": "cf"}))
    with pytest.raises(ValueError, match="item tower inputs"):
        RecommenderBundle(cf_tower, bundle.config)
    # A block the features lack (no predicted attributes yet) is zeros; extra blocks dropped.
    extra = ContentFeatures(
        features.product_ids,
        features.index,
        {**features.blocks, "attributes": np.ones((9, 2), np.float32)},
        {**features.block_dims, "attributes": 2},
        features.categorical_dims,
    )
    np.testing.assert_array_equal(bundle.item_vectors(extra), bundle.item_vectors(features))


# -- MLflow pyfunc --------------------------------------------------------------------------


@pytest.fixture
def tracking(tmp_path):
    import mlflow

    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), list(sys.path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment(
        "recommender-bundle-test", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    mlflow.set_experiment(experiment_id=experiment)
    yield mlflow
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])
    sys.path[:] = before[2]  # loading a pyfunc prepends its code path


def test_pyfunc_log_load_predict_equals_the_bundle(world, tracking):
    from models.recommender.pyfunc import load_bundle, log_recommender_model

    frame, features, _, bundle = world
    mlflow = tracking
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_recommender_model(bundle)
    with mlflow.start_run():
        info = log_recommender_model(bundle, registered_model_name="atelier-recommender-test")
    assert info.registered_model_version == 1

    model = mlflow.pyfunc.load_model(info.model_uri)
    stamped = frame.assign(event_timestamp=AS_OF)
    got = model.predict(stamped)
    want = bundle.item_vectors(features)
    np.testing.assert_allclose(np.array(got["vector"].tolist()), want, rtol=1e-6, atol=1e-7)
    assert list(got["product_id"]) == list(frame["product_id"])

    for uri in (info.model_uri, "models:/atelier-recommender-test/1"):
        loaded = load_bundle(uri)
        assert loaded.item_index == bundle.item_index and loaded.metadata == bundle.metadata
        np.testing.assert_array_equal(loaded.item_vectors(features), want)
