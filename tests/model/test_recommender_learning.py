"""The recommender learns (issue 11): every variant lowers its loss and moves its weights, two
customer segments get their own lists, no feature sees its label, and training, evaluation and
serving build the same customer vector. On the synthetic world of `recommender_world`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.ranking import DOT_BIAS, customer_vector, mean_pairwise_cosine, recent_items
from tests.model import recommender_world as world
from training.recommender.data import customer_histories, split_by_time, training_examples
from training.recommender.timeline import SalesTimeline
from training.recommender.trainer import (
    BatchMaker,
    customer_matrix,
    product_vectors,
    recommend_for,
    train_recommender_model,
)

pytestmark = pytest.mark.unit

VARIANTS = ("cf", "content", "hybrid")
# Stated margins: the last epoch's training loss is at least this much below the first
# epoch's (which already learns; its untrained value is higher still).
LOSS_DROP = {"cf": 0.10, "content": 0.05, "hybrid": 0.10}


@pytest.fixture(scope="module")
def data():
    frame = world.interactions()
    features = world.features(frame)
    timeline = SalesTimeline(frame, features.product_ids)
    examples = training_examples(frame, world.TRAIN_END, n_recent=5, known=features.index)
    return frame, features, timeline, examples


def config(features, variant, **overrides):
    values = dict(k=8, hidden_units=(16,), n_negatives=10, seed=1, learning_rate=0.01)
    return features.recommender_config(variant, **{**values, **overrides})


@pytest.fixture(scope="module")
def trained(data):
    frame, features, timeline, examples = data
    fit, valid = split_by_time(examples, world.TRAIN_END - pd.Timedelta(days=20))
    out = {}
    for variant in VARIANTS:
        model = train_recommender_model(
            examples.subset(fit),
            features,
            config(features, variant),
            timeline,
            validation=examples.subset(valid),
            epochs=12,
            batch_size=32,
            patience=12,
            progress=lambda line: None,
        )
        out[variant] = model
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_lowers_the_loss_and_moves_the_weights(data, trained, variant):
    _, features, timeline, examples = data
    model = trained[variant]
    train = model.history["train_loss"]
    valid = model.history["val_loss"]
    assert 1 - train[-1] / train[0] >= LOSS_DROP[variant], train
    assert min(valid) < valid[0], valid  # the held-out window improves too
    # The same config and seed, untrained: the trained tower's weights differ.
    from models.recommender.model import build_item_tower

    fresh = build_item_tower(model.config)
    moved = [
        float(np.abs(a - b).max())
        for a, b in zip(fresh.get_weights(), model.item_tower.get_weights())
    ]
    assert min(moved) > 1e-4, moved  # every weight tensor moved (biases included)
    if variant in ("cf", "hybrid"):
        layer = model.item_tower.get_layer("item_tower")
        rows = np.asarray(layer.cf_embedding.embeddings)[1:]
        start = np.asarray(fresh.get_layer("item_tower").cf_embedding.embeddings)[1:]
        # CF rows of bought products move well beyond their ±0.05 initial values.
        assert np.median(np.linalg.norm(rows - start, axis=1)) > 0.05


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_segments_get_their_own_lists_and_far_apart_vectors(data, trained, variant):
    frame, features, _, _ = data
    model = trained[variant]
    histories = customer_histories(frame, world.TRAIN_END)
    lists = recommend_for(model, features, histories, k=10)
    for seg in world.STYLES:
        members = [c for c in lists if world.segment(c) == seg]
        share = np.mean([np.mean([world.style(p) == seg for p in lists[c]]) for c in members])
        assert share >= 0.6, (variant, seg, share)  # dominated by the segment's own taste
    vectors = product_vectors(model, features)
    customers, matrix = customer_matrix(vectors, features, histories, model.n_recent)
    match = matrix[:, :-1]
    by_segment = {s: match[[world.segment(c) == s for c in customers]] for s in world.STYLES}
    unit = {s: v / np.linalg.norm(v, axis=1, keepdims=True) for s, v in by_segment.items()}
    across = float(np.mean(unit["a"] @ unit["b"].T))
    within = np.mean([mean_pairwise_cosine(by_segment[s]) for s in world.STYLES])
    assert within - across > 0.3, (variant, within, across)
    # Not one shared list: the customers' lists cover both styles' products.
    assert len({p for items in lists.values() for p in items}) >= 12


def test_cold_start_products_are_reachable_only_through_content(data, trained):
    frame, features, _, _ = data
    histories = customer_histories(frame, world.TRAIN_END)
    cold = {p for p in features.product_ids if "_new" in p}
    for variant in ("content", "hybrid"):
        vectors = product_vectors(trained[variant], features)
        rows = [features.index[p] for p in cold]
        assert (np.abs(vectors[rows]).sum(axis=1) > 0).all()  # content gives them a vector
    lists = recommend_for(trained["cf"], features, histories, k=30)
    assert not cold & {p for items in lists.values() for p in items}


def test_a_positive_whose_only_sale_is_itself_has_popularity_zero(data):
    frame, features, timeline, _ = data
    day = world.TRAIN_END - pd.Timedelta(days=3)
    extra = pd.DataFrame(
        {
            "customer_id": ["c000", "c000"],
            "product_id": ["a_new0", "a_new0"],
            "timestamp": [day, day],  # two units in one basket: still its own first sale
        }
    )
    both = pd.concat([frame, extra], ignore_index=True)
    timeline = SalesTimeline(both, features.product_ids)
    examples = training_examples(both, world.TRAIN_END, n_recent=5, known=features.index)
    row = np.flatnonzero(examples.positives == "a_new0")
    assert row.size == 1  # one example per (customer, product, time)
    make = BatchMaker(
        examples,
        features,
        timeline,
        features.cf_indices(None),
        np.arange(len(features)),
        config(features, "hybrid"),
        ("type",),
        ("popularity", "recency"),
    )
    batch = make(row, np.random.default_rng(0))
    assert batch.pos_dyn["popularity"].tolist() == [[0.0, 0.0, 0.0]]
    assert batch.pos_dyn["recency"].tolist() == [[0.0]]
    # Read as of train_end (scoring), the same product has that sale in every window.
    end = timeline.blocks([features.index["a_new0"]], [world.TRAIN_END.value // 1000])
    assert np.expm1(end["popularity"]).round().tolist() == [[2.0, 2.0, 2.0]]
    # Its history: products c000 bought strictly before that day, the most recent first.
    mine = frame[frame["customer_id"] == "c000"].sort_values("timestamp", ascending=False)
    before = mine[mine["timestamp"] < day]["product_id"].tolist()
    history = examples.histories[row[0]][examples.masks[row[0]] > 0].tolist()
    assert history == recent_items(before, 5)


def test_training_evaluation_and_serving_build_the_same_customer_vector(data, trained):
    """The same purchases → the same vector through the TF training graph, evaluation
    (`customer_matrix`) and serving (`models.ranking.customer_vector` on item vectors)."""
    import keras

    frame, features, timeline, examples = data
    model = trained["hybrid"]
    customer = "c003"
    history = customer_histories(frame, world.TRAIN_END)[customer]
    history = [history[0], history[0], *history]  # a rebuy counts once
    vectors = product_vectors(model, features)
    _, evaluation = customer_matrix(vectors, features, {customer: history}, model.n_recent)

    chosen = recent_items(history, model.n_recent, features.index)
    assert len(chosen) == model.n_recent and len(set(chosen)) == len(chosen)
    serving = customer_vector([vectors[features.index[p]] for p in chosen], DOT_BIAS)

    from models.recommender.model import customer_vectors as graph_vectors

    rows = [features.index[p] for p in chosen]
    graph = keras.ops.convert_to_numpy(
        graph_vectors(vectors[rows][None], np.ones((1, len(rows)), np.float32))
    )
    np.testing.assert_allclose(evaluation[0], serving, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(graph[0], serving, rtol=1e-6, atol=1e-6)
    assert serving[-1] == 1.0  # the bias coordinate: score = match + item bias
