"""Recommender content inputs, the standardised content blocks, batches, training and
recommending."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.ranking import DOT_BIAS, score, top_k
from models.ranking import customer_vector as ranking_customer_vector
from models.recommender.features import ContentFeatures, content_blocks, content_inputs
from models.recommender.model import RecommenderConfig
from tests.model import recommender_world as big_world
from training.recommender import trainer as trainer_module
from training.recommender.data import split_by_time, training_examples
from training.recommender.timeline import SalesTimeline
from training.recommender.trainer import (
    BatchMaker,
    customer_matrix,
    product_vectors,
    recommend_for,
    train_recommender_model,
)

pytestmark = pytest.mark.unit

TRAIN_END = pd.Timestamp("2020-05-31", tz="UTC")
GROUPS = ("a", "b")
PER_GROUP = 4
COLD = "a_new"  # group a's content, never bought: not in the CF index
K = 8
N_RECENT = 3


# --- a tiny world: two styles, customers loyal to one ---------------------------------------


def products() -> list[str]:
    return [f"{g}{i}" for g in GROUPS for i in range(PER_GROUP)] + [COLD]


def world_features(seed: int = 0) -> ContentFeatures:
    """Content of the products: type and TF-IDF say the style; the image is the style's
    centroid plus a little noise; price is noise. No time-dependent blocks."""
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


def world_examples(frame: pd.DataFrame | None = None):
    frame = world_interactions() if frame is None else frame
    return training_examples(frame, TRAIN_END, n_recent=N_RECENT)


def config(features: ContentFeatures, variant: str = "hybrid", **overrides):
    values = dict(k=K, hidden_units=(16,), n_negatives=4, seed=1, learning_rate=0.02)
    return features.recommender_config(variant, **{**values, **overrides})


def train(variant: str = "hybrid", epochs: int = 2, seed: int = 0, examples=None, **kwargs):
    features = world_features()
    frame = world_interactions()
    examples = world_examples(frame) if examples is None else examples
    timeline = SalesTimeline(frame, features.product_ids)
    bought = sorted(set(frame["product_id"]))
    overrides = kwargs.pop("overrides", {})
    trained = train_recommender_model(
        examples,
        features,
        config(features, variant, **overrides),
        timeline,
        candidates=kwargs.pop("candidates", bought),
        epochs=epochs,
        batch_size=32,
        seed=seed,
        n_recent=N_RECENT,
        **{"progress": lambda line: None, **kwargs},
    )
    return trained, features, examples


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


# --- batches --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dynamic_world():
    frame = big_world.interactions(n_customers=8, per_customer=6)
    features = big_world.features(frame)
    timeline = SalesTimeline(frame, features.product_ids)
    examples = training_examples(frame, big_world.TRAIN_END, n_recent=3, known=features.index)
    return features, timeline, examples


@pytest.mark.parametrize("negatives", ["uniform", "mixed"])
def test_batch_maker_builds_rows_negatives_and_dynamic_blocks_per_cutoff(dynamic_world, negatives):
    features, timeline, examples = dynamic_world
    cfg = features.recommender_config("hybrid", k=4, n_negatives=5, negatives=negatives)
    cf = features.cf_indices({p: i + 1 for i, p in enumerate(features.product_ids)})
    candidates = np.arange(0, len(features), 2)  # every other product may be a negative
    static = ("item_idx", "image", "price", "tfidf", "type")
    make = BatchMaker(
        examples, features, timeline, cf, candidates, cfg, static, ("popularity", "recency")
    )
    rows = np.array([4, 0, 9, 2])
    batch = make(rows, np.random.default_rng(7))

    # Negatives: 5 drawn uniformly from the candidates (the same generator, the same draw),
    # plus, when mixed, the batch's distinct positives.
    positives = features.rows(examples.positives[rows])
    negatives = candidates[np.random.default_rng(7).choice(candidates.size, size=5, replace=False)]
    if cfg.negatives == "mixed":
        negatives = np.concatenate([negatives, np.unique(positives)])
    m = negatives.size
    assert batch.neg_idx.shape == (m,) and batch.neg_mask.shape == (4, m)
    # Indices point into the batch's distinct products: their static inputs are those rows'.
    tfidf, idx = batch.static["tfidf"], batch.static["item_idx"]
    assert len(np.unique(idx)) == len(idx)  # each product once
    np.testing.assert_array_equal(tfidf[batch.pos_idx], features.blocks["tfidf"][positives])
    np.testing.assert_array_equal(idx[batch.pos_idx], cf[positives])
    np.testing.assert_array_equal(idx[batch.neg_idx], cf[negatives])
    kept = examples.masks[rows] > 0
    history = features.rows(examples.histories[rows][kept])
    np.testing.assert_array_equal(idx[batch.hist_idx[kept]], cf[history])
    np.testing.assert_array_equal(batch.hist_mask, examples.masks[rows])
    assert sorted(batch.static) == sorted(static)
    # A row's own positive is never its negative.
    np.testing.assert_array_equal(batch.neg_mask, negatives[None, :] != positives[:, None])
    if cfg.negatives == "mixed":  # every row's positive is among the negatives, masked
        assert (batch.neg_mask == 0).any(axis=1).all()
    else:
        assert m == 5
    # Dynamic blocks as of each ROW's cut-off (1 µs before its positive), for its positive
    # and for every negative.
    cut = examples.cutoffs[rows]
    at = timeline.blocks(positives, cut)
    np.testing.assert_array_equal(batch.pos_dyn["popularity"], at["popularity"])
    np.testing.assert_array_equal(batch.pos_dyn["recency"], at["recency"])
    grid = timeline.blocks(negatives[None, :], cut[:, None])
    assert batch.neg_dyn["popularity"].shape == (4, m, 3)
    np.testing.assert_array_equal(batch.neg_dyn["popularity"], grid["popularity"])
    np.testing.assert_array_equal(batch.neg_dyn["recency"], grid["recency"])
    # Popularity read at the cut-off leaves out the positive's own sale.
    own = np.expm1(batch.pos_dyn["popularity"][:, 0]).round()
    end = np.expm1(timeline.blocks(positives, cut + 1)["popularity"][:, 0]).round()
    assert (end >= own + 1).all()


# --- training -------------------------------------------------------------------------------


def weights_of(trained) -> list[np.ndarray]:
    return [np.array(w) for w in trained.item_tower.get_weights()]


def test_training_is_seeded_deterministic():
    first, _, examples = train("hybrid", epochs=2, seed=5)
    second, _, _ = train("hybrid", epochs=2, seed=5)
    other, _, _ = train("hybrid", epochs=2, seed=6)
    assert first.epochs == second.epochs == 2 and len(first.history["train_loss"]) == 2
    a, b = weights_of(first), weights_of(second)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    for key in ("train_loss", "val_loss"):
        np.testing.assert_array_equal(first.history[key], second.history[key])  # NaN == NaN
    assert any(not np.array_equal(x, y) for x, y in zip(a, weights_of(other)))
    # The CF index covers the examples' products: n_items set from it; the cold product is out.
    assert first.config.n_items == len(first.item_index) == 2 * PER_GROUP
    assert first.item_index == {p: i + 1 for i, p in enumerate(sorted(first.item_index))}
    assert COLD not in first.item_index
    assert first.n_train == len(examples) and first.n_validation == 0
    assert first.n_recent == N_RECENT and first.layout == DOT_BIAS and first.seed == 5
    assert list(first.candidates) == sorted(first.item_index)
    assert all(s >= 0 for s in first.epoch_seconds) and first.seconds_per_epoch >= 0


def test_early_stopping_restores_the_best_epoch_and_waits_patience_epochs(monkeypatch):
    scripted = iter([3.0, 2.0, 2.5, 2.1, 2.4, 0.5, 0.1])
    seen = []

    def fake_validation_loss(step, make, n, batch_size, seed):
        assert make is not None and n == n_validation
        seen.append([np.array(w) for w in step.item_tower.get_weights()])
        return next(scripted)

    examples = world_examples()
    fit, valid = split_by_time(examples, TRAIN_END - pd.Timedelta(days=10))
    n_validation = int(valid.sum())
    assert 0 < n_validation < len(examples)
    monkeypatch.setattr(trainer_module, "_validation_loss", fake_validation_loss)
    lines = []
    trained, _, _ = train(
        "hybrid",
        epochs=10,
        patience=3,
        examples=examples.subset(fit),
        validation=examples.subset(valid),
        progress=lines.append,
    )
    # Best at epoch 2; epochs 3, 4, 5 are not better -> stop after epoch 5.
    assert trained.best_epoch == 2 and trained.stopped_early and trained.epochs == 5
    assert trained.history["val_loss"] == [3.0, 2.0, 2.5, 2.1, 2.4]
    assert trained.best_validation_loss == 2.0
    assert trained.n_train == len(examples) - n_validation
    assert trained.n_validation == n_validation
    assert len(seen) == 5
    assert any(not np.array_equal(x, y) for x, y in zip(seen[1], seen[4]))  # it did move on
    for restored, best in zip(weights_of(trained), seen[1], strict=True):
        np.testing.assert_array_equal(restored, best)
    assert len(lines) == 6 and lines[1].startswith("epoch 2/10:") and "(best)" in lines[1]
    assert "(best)" not in lines[2]
    assert lines[-1].startswith("early stop after epoch 5") and "keeping epoch 2" in lines[-1]


def test_validation_loss_is_measured_on_the_same_negatives_every_epoch():
    examples = world_examples()
    fit, valid = split_by_time(examples, TRAIN_END - pd.Timedelta(days=10))
    trained, _, _ = train(
        "cf",
        epochs=3,
        patience=3,
        examples=examples.subset(fit),
        validation=examples.subset(valid),
    )
    losses = trained.history["val_loss"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert trained.best_validation_loss == min(losses)
    assert trained.best_epoch == 1 + int(np.argmin(losses))


def test_without_validation_the_last_epoch_is_kept():
    trained, _, _ = train("content", epochs=3, patience=1)
    assert trained.epochs == 3 and trained.best_epoch == 3 and not trained.stopped_early
    assert trained.n_validation == 0
    assert all(math.isnan(v) for v in trained.history["val_loss"])
    assert trained.best_validation_loss == math.inf
    assert len(trained.history["train_loss"]) == 3
    # An empty validation set is no validation.
    examples = world_examples()
    empty = examples.subset(np.zeros(len(examples), bool))
    again, _, _ = train("content", epochs=2, patience=1, validation=empty)
    assert again.epochs == again.best_epoch == 2 and not again.stopped_early


def test_training_rejects_mismatched_inputs_quoting_them():
    features = world_features()
    frame = world_interactions()
    examples = world_examples(frame)
    timeline = SalesTimeline(frame, features.product_ids)
    bad = RecommenderConfig(variant="content", block_dims={"tfidf": 9})
    with pytest.raises(
        ValueError, match="config block 'tfidf' has width 9 but the features have 3"
    ):
        train_recommender_model(examples, features, bad, timeline, epochs=1)
    shuffled = SalesTimeline(frame, features.product_ids[::-1])
    with pytest.raises(ValueError, match="sales timeline's rows must be the features' products"):
        train_recommender_model(examples, features, config(features), shuffled, epochs=1)
    with pytest.raises(ValueError, match="have no content features, e.g. \\['zz'\\]"):
        train_recommender_model(
            examples, features, config(features), timeline, candidates=["a0", "zz"], epochs=1
        )
    unknown = pd.concat(
        [frame, pd.DataFrame([("c00", "zz", TRAIN_END)], columns=frame.columns)],
        ignore_index=True,
    )
    with pytest.raises(ValueError, match="1 products have no content features, e.g. \\['zz'\\]"):
        train_recommender_model(
            world_examples(unknown), features, config(features), timeline, epochs=1
        )
    with pytest.raises(ValueError, match="examples must be non-empty TrainingExamples"):
        train_recommender_model(
            examples.subset(np.zeros(len(examples), bool)), features, config(features), timeline
        )
    for name in ("epochs", "batch_size", "patience"):
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 1, got 0"):
            train_recommender_model(examples, features, config(features), timeline, **{name: 0})
    with pytest.raises(ValueError, match="candidates .* must not be empty"):
        train_recommender_model(
            examples, features, config(features, "cf"), timeline, candidates=[COLD], epochs=1
        )


# --- recommending ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_variants():
    return {v: train(v, epochs=20, seed=0)[0] for v in ("cf", "content", "hybrid")}


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
    # Its vector: content alone in hybrid (no CF row), nothing at all in cf (bias included).
    row = features.index[COLD]
    assert product_vectors(cf, features).shape == (everything, K + 1)
    assert not product_vectors(cf, features)[row].any()
    assert product_vectors(trained_variants["hybrid"], features)[row, :K].any()


def test_recommend_for_uses_the_most_recent_distinct_items_and_can_exclude_seen(
    trained_variants,
):
    trained = trained_variants["hybrid"]
    features = world_features()
    vectors = product_vectors(trained, features)
    history = ["b1", "b1", "zz", "a0", "a3", "b2"]  # most recent first; zz has no features
    got = recommend_for(trained, features, {"x": history, "nobody": ["zz"]}, k=3, n_recent=2)
    # n_recent = 2 distinct known products: b1 (once) and a0; the customer vector is the mean
    # of their match coordinates, then 1.
    match = vectors[[features.index["b1"], features.index["a0"]], :K].mean(axis=0)
    customer = np.concatenate([match, [1.0]]).astype(np.float32)
    expected = top_k(score(customer[None, :], vectors), 3)[0]
    assert got["x"] == [features.product_ids[i] for i in expected]
    assert got["nobody"] == []  # no history item with content features
    # Default n_recent: the trained model's (3: b1, a0, a3).
    chosen = [vectors[features.index[p]] for p in ("b1", "a0", "a3")]
    customer = ranking_customer_vector(chosen, DOT_BIAS)
    expected = top_k(score(customer[None, :], vectors), 4)[0]
    assert recommend_for(trained, features, {"x": history}, k=4)["x"] == [
        features.product_ids[i] for i in expected
    ]
    # exclude_seen drops EVERY product of the history, not only the n_recent averaged.
    unseen = recommend_for(trained, features, {"x": history}, k=9, exclude_seen=True, n_recent=1)
    assert sorted(unseen["x"]) == sorted(set(features.product_ids) - set(history))
    only = recommend_for(trained, features, {"x": history}, k=5, candidates=["a1", COLD, "b3"])
    assert sorted(only["x"]) == sorted(["a1", COLD, "b3"])
    again = recommend_for(trained, features, {"x": history}, k=3, n_recent=2, vectors=vectors)
    assert again["x"] == got["x"]


def test_customer_matrix_by_models_ranking(trained_variants):
    trained = trained_variants["content"]
    features = world_features()
    vectors = product_vectors(trained, features)
    histories = {"u": ["a1", "a1", "b0", "a2"], "none": ["zz"], "w": ["b3"]}
    customers, matrix = customer_matrix(vectors, features, histories, n_recent=2)
    assert customers == ["u", "w"] and matrix.shape == (2, K + 1)
    for customer, row in zip(customers, matrix, strict=True):
        chosen = [p for p in dict.fromkeys(histories[customer]) if p in features.index][:2]
        expected = ranking_customer_vector([vectors[features.index[p]] for p in chosen], DOT_BIAS)
        np.testing.assert_allclose(row, expected, rtol=1e-6, atol=1e-7)
    assert customer_matrix(vectors, features, {"none": ["zz"]}, 2)[1].shape == (0, K + 1)
    with pytest.raises(ValueError, match="n_recent must be an integer >= 1, got 0"):
        customer_matrix(vectors, features, histories, 0)
