"""Recommender content inputs, the standardised content blocks, training and recommending."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.recommender import trainer as trainer_module
from training.recommender.data import training_examples
from training.recommender.features import ContentFeatures, content_blocks, content_inputs
from training.recommender.model import RecommenderConfig
from training.recommender.trainer import (
    product_vectors,
    recommend_for,
    train_recommender_model,
)

pytestmark = pytest.mark.unit

TRAIN_END = pd.Timestamp("2020-05-31", tz="UTC")
GROUPS = ("a", "b")
PER_GROUP = 4
COLD = "a_new"  # group a's content, never bought: not in the CF index


# --- a tiny world: two styles, customers loyal to one ---------------------------------------


def products() -> list[str]:
    return [f"{g}{i}" for g in GROUPS for i in range(PER_GROUP)] + [COLD]


def world_features(seed: int = 0) -> ContentFeatures:
    """Content of the products: type and TF-IDF say the style; the image is the style's
    centroid plus a little noise; price is noise."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(sorted(products()), dtype=object)
    group = np.array([GROUPS.index(p[0]) for p in ids])
    centroids = rng.normal(size=(len(GROUPS), 6))
    blocks = {
        "type": (group + 1).astype(np.int32),
        "tfidf": np.eye(3, dtype=np.float32)[group],
        "image": (centroids[group] + 0.1 * rng.normal(size=(len(ids), 6))).astype(np.float32),
        "price": rng.normal(size=(len(ids), 1)).astype(np.float32),
    }
    return ContentFeatures(
        product_ids=ids,
        index={p: i for i, p in enumerate(ids)},
        blocks=blocks,
        block_dims={"image": 6, "price": 1, "tfidf": 3},
        categorical_dims={"type": 3},
    )


def world_interactions(n_customers: int = 30, per_customer: int = 8, seed: int = 0):
    """Each customer buys `per_customer` products of their style over the last 60 days."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_customers):
        g = GROUPS[c % 2]
        days = np.sort(rng.choice(60, size=per_customer, replace=False))
        for d in days:
            product = f"{g}{rng.integers(PER_GROUP)}"
            rows.append((f"c{c:02d}", product, TRAIN_END - pd.Timedelta(days=int(d))))
    return pd.DataFrame(rows, columns=["customer_id", "product_id", "timestamp"])


def world_examples(seed: int = 0):
    return training_examples(
        world_interactions(seed=seed),
        TRAIN_END,
        positive_days=30,
        n_inputs=3,
        min_interactions=4,
        seed=seed,
    )


def config(features: ContentFeatures, variant: str = "hybrid", **overrides):
    values = dict(k=8, hidden_units=(16,), n_negatives=4, seed=1, learning_rate=0.1)
    return features.recommender_config(variant, **{**values, **overrides})


def train(variant: str = "hybrid", epochs: int = 2, seed: int = 0, **kwargs):
    features = world_features()
    examples = world_examples()
    window = sorted(set(examples.histories.ravel()) | set(examples.positives))
    return (
        train_recommender_model(
            examples,
            features,
            config(features, variant),
            candidates=window,
            epochs=epochs,
            batch_size=16,
            seed=seed,
            **{"progress": lambda line: None, **kwargs},
        ),
        features,
        examples,
    )


# --- content inputs -------------------------------------------------------------------------


def small_features() -> ContentFeatures:
    ids = np.array(["p0", "p1", "p2"], dtype=object)
    return ContentFeatures(
        product_ids=ids,
        index={"p0": 0, "p1": 1, "p2": 2},
        blocks={
            "type": np.array([1, 0, 2], np.int32),
            "price": np.array([[0.5], [-1.0], [2.0]], np.float32),
            "tfidf": np.arange(6, dtype=np.float32).reshape(3, 2),
        },
        block_dims={"price": 1, "tfidf": 2},
        categorical_dims={"type": 3},
    )


def test_content_inputs_builds_the_rows_with_the_towers_dtypes():
    features = small_features()
    rows = np.array([[2, 0], [1, 1]])
    out = content_inputs(features, rows, {"p0": 1, "p2": 2, "elsewhere": 3})
    assert sorted(out) == ["item_idx", "price", "tfidf", "type"]
    assert out["item_idx"].dtype == np.int32 and out["type"].dtype == np.int32
    assert out["price"].dtype == np.float32 and out["tfidf"].dtype == np.float32
    np.testing.assert_array_equal(out["item_idx"], [[2, 1], [0, 0]])  # p1: not in the CF index
    np.testing.assert_array_equal(out["type"], [[2, 1], [0, 0]])
    assert out["price"].shape == (2, 2, 1)
    np.testing.assert_array_equal(out["price"][..., 0], [[2.0, 0.5], [-1.0, -1.0]])
    np.testing.assert_array_equal(out["tfidf"][0], [[4.0, 5.0], [0.0, 1.0]])
    # A precomputed CF array gives the same; no index: everything unknown (0).
    cf = features.cf_indices({"p0": 1, "p2": 2})
    np.testing.assert_array_equal(cf, [1, 0, 2])
    np.testing.assert_array_equal(content_inputs(features, rows, cf)["item_idx"], [[2, 1], [0, 0]])
    np.testing.assert_array_equal(content_inputs(features, [0, 1])["item_idx"], [0, 0])
    # Only the inputs asked for (a content config has no item_idx).
    assert sorted(content_inputs(features, [0], names=("price", "type"))) == ["price", "type"]


def test_content_inputs_rejects_bad_rows_and_unknown_blocks():
    features = small_features()
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 3\), got values in \[0, 3\]"):
        content_inputs(features, [0, 3])
    with pytest.raises(ValueError, match="no blocks \\['image'\\]"):
        content_inputs(features, [0], names=("image",))
    with pytest.raises(ValueError, match="1 products have no content features, e.g. \\['p9'\\]"):
        features.rows(["p0", "p9"])
    np.testing.assert_array_equal(features.rows([["p2", "p0"]]), [[2, 0]])


# --- standardised content blocks (pure) -----------------------------------------------------


def test_content_blocks_standardise_scalars_and_zero_missing_values():
    as_of = pd.Timestamp("2020-05-31", tz="UTC")
    frame = pd.DataFrame(
        {
            "type_idx": [3, None, 1],
            "log_price": [0.25, np.nan, -1.5],
            # a year before as_of; launched after as_of (not yet: 0); unknown
            "first_seen": [as_of - pd.Timedelta(days=365.25), as_of + pd.Timedelta(days=3), None],
            "popularity_7d": [0, 1, None],
            "popularity_30d": [math.e - 1, 3, None],
            "popularity_90d": [9, 3, None],
            "tfidf": [[0.6, 0.8], None, [1.0, 0.0]],
            "embedding": [None, [1.0] * 512, [np.nan] + [2.0] * 511],
            "attribute_vector": [None, [0.0, 1.0, 0.5], None],
        }
    )
    blocks, dims, categorical = content_blocks(frame, as_of, with_attributes=True)
    assert categorical == {"type": 4}  # largest index 3, plus 0 for unknown
    assert dims == {
        "attributes": 3,
        "image": 512,
        "popularity": 3,
        "price": 1,
        "recency": 1,
        "tfidf": 2,
    }
    np.testing.assert_array_equal(blocks["type"], [3, 0, 1])
    np.testing.assert_allclose(blocks["price"][:, 0], [0.25, 0.0, -1.5])
    np.testing.assert_allclose(blocks["recency"][:, 0], [1.0, 0.0, 0.0])  # years
    np.testing.assert_allclose(
        blocks["popularity"],
        [[0.0, 1.0, math.log(10)], [math.log(2), math.log(4), math.log(4)], [0.0, 0.0, 0.0]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(blocks["tfidf"], [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]])
    assert not blocks["image"][0].any() and blocks["image"][2, 0] == 0.0  # missing, NaN -> 0
    assert blocks["image"][2, 1] == 2.0
    np.testing.assert_allclose(blocks["attributes"], [[0, 0, 0], [0, 1, 0.5], [0, 0, 0]])
    for name, block in blocks.items():
        assert block.dtype == (np.int32 if name == "type" else np.float32)

    # No attribute vector anywhere: no attributes block; no TF-IDF anywhere: tfidf_dim zeros.
    bare = frame.assign(attribute_vector=None, tfidf=None)
    blocks, dims, categorical = content_blocks(
        bare, as_of, type_size=7, tfidf_dim=5, with_attributes=True
    )
    assert "attributes" not in blocks and dims["tfidf"] == 5 and categorical == {"type": 7}
    with pytest.raises(ValueError, match="type_size must be at least 4"):
        content_blocks(frame, as_of, type_size=3)
    with pytest.raises(ValueError, match=r"tfidf vectors must all have one length, got "):
        content_blocks(frame.assign(tfidf=[[1.0], [1.0, 0.0], None]), as_of)


# --- training -------------------------------------------------------------------------------


def weights_of(trained) -> list[np.ndarray]:
    return [np.array(w) for w in trained.item_tower.get_weights()]


def test_training_is_seeded_deterministic():
    first, _, _ = train("hybrid", epochs=2, seed=5)
    second, _, _ = train("hybrid", epochs=2, seed=5)
    other, _, _ = train("hybrid", epochs=2, seed=6)
    assert first.epochs == second.epochs == 2 and len(first.history["train_loss"]) == 2
    a, b = weights_of(first), weights_of(second)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert first.history == second.history
    assert any(not np.array_equal(x, y) for x, y in zip(a, weights_of(other)))
    # The CF index covers the window's products: n_items set from it; the cold product is out.
    assert first.config.n_items == len(first.item_index) == 2 * PER_GROUP
    assert COLD not in first.item_index
    assert all(s >= 0 for s in first.epoch_seconds) and first.seconds_per_epoch >= 0


def test_validation_customers_are_disjoint_from_training_customers():
    trained, _, examples = train("cf", epochs=1, validation_fraction=0.2)
    customers = set(examples.customer_ids)
    validation = set(trained.validation_customers)
    assert len(validation) == round(0.2 * len(customers))
    assert validation.isdisjoint(trained.train_customers)
    assert validation | set(trained.train_customers) == customers
    assert math.isfinite(trained.history["val_loss"][0])


def test_early_stopping_restores_the_best_epoch_and_waits_patience_epochs(monkeypatch):
    scripted = iter([3.0, 2.0, 2.5, 2.1, 2.4, 0.5, 0.1])
    seen = []

    def fake_validation_loss(item_tower, *args, **kwargs):
        seen.append([np.array(w) for w in item_tower.get_weights()])
        return next(scripted)

    monkeypatch.setattr(trainer_module, "validation_loss", fake_validation_loss)
    lines = []
    trained, _, _ = train("hybrid", epochs=10, patience=3, progress=lines.append)
    # Best at epoch 2; epochs 3, 4, 5 are not better -> stop after epoch 5.
    assert trained.best_epoch == 2 and trained.stopped_early and trained.epochs == 5
    assert trained.history["val_loss"] == [3.0, 2.0, 2.5, 2.1, 2.4]
    assert len(seen) == 5
    assert any(not np.array_equal(x, y) for x, y in zip(seen[1], seen[4]))  # it did move on
    for restored, best in zip(weights_of(trained), seen[1]):
        np.testing.assert_array_equal(restored, best)
    assert len(lines) == 6 and lines[1].startswith("epoch 2/10:") and "(best)" in lines[1]
    assert lines[-1].startswith("early stop after epoch 5") and "keeping epoch 2" in lines[-1]


def test_without_validation_the_last_epoch_is_kept():
    trained, _, _ = train("content", epochs=3, validation_fraction=0.0)
    assert trained.best_epoch == 3 and not trained.stopped_early
    assert len(trained.validation_customers) == 0
    assert all(math.isnan(v) for v in trained.history["val_loss"])


def test_training_rejects_mismatched_features_and_unknown_products():
    features = world_features()
    examples = world_examples()
    bad = RecommenderConfig(variant="content", block_dims={"tfidf": 9})
    with pytest.raises(ValueError, match="config block 'tfidf' has width 9 but the features"):
        train_recommender_model(examples, features, bad)
    with pytest.raises(ValueError, match="have no content features, e.g. \\['zz'\\]"):
        train_recommender_model(examples, features, config(features), candidates=["a0", "zz"])


# --- recommending ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_variants():
    return {v: train(v, epochs=25, seed=0)[0] for v in ("cf", "content", "hybrid")}


def test_a_never_bought_product_is_recommended_by_content_and_hybrid_never_by_cf(
    trained_variants,
):
    features = world_features()
    style_a = {"c00": ["a2", "a0", "a1", "a3"], "c02": ["a1", "a3"]}
    style_b = {"c01": ["b0", "b2", "b1"]}
    everything = len(features)
    for variant in ("content", "hybrid"):
        trained = trained_variants[variant]
        # Style-a customers get it among their top 5 (style a has 4 bought products) ...
        top = recommend_for(trained, features, style_a, k=PER_GROUP + 1)
        for customer, ranked in top.items():
            assert COLD in ranked, (variant, customer, ranked)
        # ... a style-b customer does not: their top 4 is style b.
        ranked = recommend_for(trained, features, style_b, k=PER_GROUP)["c01"]
        assert all(p.startswith("b") for p in ranked), (variant, ranked)
    cf = trained_variants["cf"]
    ranked = recommend_for(cf, features, {**style_a, **style_b}, k=everything)
    for items in ranked.values():
        assert COLD not in items and len(items) == everything - 1
    # Its vector: content alone in hybrid (the CF part is zero), nothing at all in cf.
    row = features.index[COLD]
    assert not product_vectors(cf, features)[row].any()
    assert product_vectors(trained_variants["hybrid"], features)[row].any()


def test_recommend_for_uses_the_most_recent_items_and_can_exclude_seen(trained_variants):
    from training.recommender.model import score, top_k

    trained = trained_variants["hybrid"]
    features = world_features()
    vectors = product_vectors(trained, features)
    history = ["b1", "a0", "a3", "b2"]  # most recent first
    got = recommend_for(trained, features, {"x": history, "nobody": ["zz"]}, k=3, n_recent=2)
    customer = vectors[[features.index["b1"], features.index["a0"]]].mean(axis=0)
    expected = top_k(score(customer[None, :], vectors), 3)[0]
    assert got["x"] == [features.product_ids[i] for i in expected]
    assert got["nobody"] == []  # no history item with content features
    unseen = recommend_for(trained, features, {"x": history}, k=5, exclude_seen=True)["x"]
    assert len(unseen) == 5 and not set(unseen) & set(history)
    only = recommend_for(trained, features, {"x": history}, k=5, candidates=["a1", COLD, "b3"])
    assert sorted(only["x"]) == sorted(["a1", COLD, "b3"])
