"""The recommender's item tower, customer vectors, WMRB loss, training step, scoring and saving."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from models.ranking import DOT_BIAS, recommend, score, top_k
from models.ranking import customer_vectors as ranking_customer_vectors
from models.recommender.layers import BIAS_RATE, ContentEncoder, ItemTower, l2_normalize, lift
from models.recommender.model import (
    RecommenderConfig,
    build_recommender,
    customer_vectors,
    item_vectors,
    load_item_tower,
    save_item_tower,
)
from training.recommender.train_step import (
    Batch,
    cf_penalty,
    make_optimizer,
    make_train_step,
    wmrb_loss,
)

pytestmark = pytest.mark.unit

N_ITEMS = 12
K = 8
BLOCKS = {"price": 1, "popularity": 3, "tfidf": 7, "image": 5}
CATEGORICAL = {"type": 4}
STATIC = ("image", "price", "tfidf", "type")  # popularity is dynamic: it feeds the bias only


def config(**overrides) -> RecommenderConfig:
    values = dict(
        variant="hybrid",
        n_items=N_ITEMS,
        block_dims=BLOCKS,
        categorical_dims=CATEGORICAL,
        k=K,
        hidden_units=(16,),
        bias_units=4,
        seed=3,
    )
    return RecommenderConfig(**{**values, **overrides})


def products(lead, seed: int = 0) -> dict[str, np.ndarray]:
    """Random item inputs with leading shape `lead`; item_idx in 0..N_ITEMS (0 = never bought)."""
    rng = np.random.default_rng(seed)
    out = {"item_idx": rng.integers(0, N_ITEMS + 1, size=lead), "type": rng.integers(0, 4, lead)}
    for name, width in BLOCKS.items():
        out[name] = rng.normal(size=(*lead, width)).astype(np.float32)
    return out


def make_batch(seed: int = 0, b: int = 4, h: int = 3, u: int = 10, z: int = 6) -> Batch:
    """A `model.Batch` over U = `u` random products: histories, positives and `z` negatives
    are rows of them; a negative equal to a row's positive is masked for that row."""
    rng = np.random.default_rng(seed + 100)
    mask = (rng.random((b, h)) < 0.7).astype(np.float32)
    mask[:, 0] = 1.0
    pos = rng.integers(0, u, b)
    neg = rng.choice(u, z, replace=False)
    return Batch(
        static=products((u,), seed),
        hist_idx=rng.integers(0, u, (b, h)),
        hist_mask=mask,
        pos_idx=pos,
        neg_idx=neg,
        neg_mask=(neg[None, :] != pos[:, None]).astype(np.float32),
        pos_dyn={"popularity": rng.random((b, 3)).astype(np.float32) * 3},
        neg_dyn={"popularity": rng.random((b, z, 3)).astype(np.float32) * 3},
    )


def np64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# --- WMRB -----------------------------------------------------------------------------------


def test_wmrb_equals_hand_computation():
    # N = 30 products, z = 3 negatives: rank estimate = (30 / 3) * sum_j max(0, 1 - s+ + s-_j).
    pos = np.array([2.0, 0.5, 3.0], np.float32)
    neg = np.array([[1.5, 3.0, 0.0], [0.5, -1.0, 0.2], [1.0, 0.0, 1.5]], np.float32)
    # row 0: margins 1-2+1.5 = 0.5, 1-2+3 = 2.0, 1-2+0 = -1 -> 0; sum 2.5; rank 25; log(26)
    # row 1: margins 1-0.5+0.5 = 1.0, 1-0.5-1 = -0.5 -> 0, 1-0.5+0.2 = 0.7; sum 1.7; rank 17
    # row 2: margins all <= -0.5 -> 0; rank 0; log(1) = 0
    expected = [math.log(26.0), math.log(18.0), 0.0]  # 3.258097, 2.890372, 0
    losses = np64(wmrb_loss(pos, neg, 30, reduction="none"))
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    assert float(wmrb_loss(pos, neg, 30)) == pytest.approx(sum(expected) / 3, rel=1e-6)

    # Masking row 0's second negative: margins 0.5 + 0 over z = 2 kept -> rank (30/2)*0.5 = 7.5.
    mask = np.ones((3, 3), np.float32)
    mask[0, 1] = 0
    masked = np64(wmrb_loss(pos, neg, 30, negative_mask=mask, reduction="none"))
    np.testing.assert_allclose(masked, [math.log(8.5), math.log(18.0), 0.0], rtol=1e-6)


def test_wmrb_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"-5"):
        wmrb_loss(np.zeros(2), np.zeros((2, 3)), -5)
    with pytest.raises(ValueError, match=r"'sum'"):
        wmrb_loss(np.zeros(2), np.zeros((2, 3)), 5, reduction="sum")


# --- customer vectors -----------------------------------------------------------------------


def test_customer_vector_is_the_masked_mean_of_the_match_coordinates_then_one():
    # Item vectors (b=3, h=3, k + 1 = 3): two match coordinates, then the item's bias.
    history = np.array(
        [
            [[1.0, 2.0, 9.0], [np.nan, 100.0, 5.0], [3.0, -4.0, 7.0]],  # middle masked (NaN)
            [[0.5, 0.5, 1.0], [1.5, 2.5, 2.0], [4.0, 0.0, 3.0]],  # all three kept
            [[7.0, 7.0, 7.0], [8.0, 8.0, 8.0], [9.0, 9.0, 9.0]],  # nothing kept
        ],
        np.float32,
    )
    mask = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0]], np.float32)
    # row 0: ([1, 2] + [3, -4]) / 2 = [2, -1], then 1; row 1: [6, 3] / 3 = [2, 1], then 1;
    # row 2: no history, the zero vector (the items' biases never enter a customer vector).
    expected = np.array([[2.0, -1.0, 1.0], [2.0, 1.0, 1.0], [0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(customer_vectors(history, mask)), expected)
    # The same rule as `models.ranking` (evaluation and serving).
    np.testing.assert_array_equal(
        ranking_customer_vectors(np.nan_to_num(history), mask, DOT_BIAS), expected
    )


def test_customer_vector_from_the_tower_is_the_mean_of_its_items_match_parts():
    tower, scorer = build_recommender(config())
    history = products((4, 3), seed=1)
    mask = np.array([[1, 1, 1], [1, 0, 1], [1, 0, 0], [0, 0, 0]], np.float32)
    customers = scorer.customer_vectors(history, mask)
    vectors = item_vectors(tower, history)  # (b, h, k + 1)
    assert customers.shape == (4, K + 1) and vectors.shape == (4, 3, K + 1)
    for c in range(3):
        np.testing.assert_allclose(
            customers[c, :K], vectors[c][mask[c] > 0, :K].mean(axis=0), rtol=1e-6, atol=1e-7
        )
    np.testing.assert_array_equal(customers[:, K], [1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(customers[3], 0.0)


# --- content normalisation ------------------------------------------------------------------


def test_l2_normalize_and_lift_by_hand():
    x = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [3.0, np.nan, 4.0]], np.float32)
    np.testing.assert_allclose(
        np.asarray(l2_normalize(x)),
        [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0], [0.6, 0.0, 0.8]],  # zero stays zero; NaN counts 0
        rtol=1e-6,
    )
    # A lone scalar normalises to its sign; lifted, [x, 1] / sqrt(x^2 + 1) keeps its value.
    prices = np.array([[2.0], [0.5], [-3.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(l2_normalize(prices)), [[1.0], [1.0], [-1.0]])
    lifted = np.asarray(l2_normalize(lift(prices)))
    np.testing.assert_allclose(
        lifted,
        [[2 / 5**0.5, 1 / 5**0.5], [0.5 / 1.25**0.5, 1 / 1.25**0.5], [-3 / 10**0.5, 1 / 10**0.5]],
        rtol=1e-6,
    )


def test_content_encoder_makes_each_block_and_the_concatenation_unit_norm():
    encoder = ContentEncoder(
        8, BLOCKS, CATEGORICAL, hidden_units=(16,), lifted_blocks=("price", "popularity"), seed=0
    )
    x = products((5,))
    x["type"] = np.array([1, 2, 3, 0, 9])  # 0 unknown, 9 out of range: no type block
    x["image"][2] = np.nan  # missing image: zero block
    x["price"] = np.array([[2.0], [0.5], [-3.0], [0.0], [1.0]], np.float32)

    blocks = {k: np64(v) for k, v in encoder.normalized_blocks(x).items()}
    assert list(blocks) == ["image", "popularity", "price", "tfidf", "type"]  # name order
    for name, block in blocks.items():
        norms = np.linalg.norm(block, axis=1)
        present = np.ones(5, bool)
        if name == "image":
            present[2] = False
        if name == "type":
            present[3:] = False
        np.testing.assert_allclose(norms[present], 1.0, rtol=1e-6)
        np.testing.assert_array_equal(block[~present], 0.0)
    np.testing.assert_allclose(blocks["price"][0], [2 / 5**0.5, 1 / 5**0.5], rtol=1e-6)
    np.testing.assert_array_equal(blocks["type"][:3], np.eye(4)[[1, 2, 3]])
    assert blocks["popularity"].shape == (5, 4) and blocks["tfidf"].shape == (5, 7)

    features = np64(encoder.features(x))
    assert features.shape == (5, encoder.feature_width) == (5, 5 + 4 + 2 + 7 + 4)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-6)
    # Row 0 has all 5 blocks, each of norm 1: the concatenation is divided by sqrt(5).
    row0 = np.concatenate([blocks[n][0] for n in encoder.input_names]) / 5**0.5
    np.testing.assert_allclose(features[0], row0, rtol=1e-6)
    # Row 3 lacks its type: 4 blocks left, divided by 2.
    row3 = np.concatenate([blocks[n][3] for n in encoder.input_names]) / 2.0
    np.testing.assert_allclose(features[3], row3, rtol=1e-6)
    assert np.asarray(encoder(x)).shape == (5, 8)


def test_config_lifts_narrow_blocks_and_keeps_dynamic_blocks_out_of_the_match_part():
    assert config().lifted_blocks == ("popularity", "price")
    assert config(lifted_blocks=()).lifted_blocks == ()
    # popularity is time-dependent: by default it feeds only the item bias.
    assert config().dynamic_blocks == ("popularity",)
    tower, _ = build_recommender(config())
    layer = tower.get_layer("item_tower")
    assert layer.static_names == ("item_idx", *STATIC)
    assert layer.dynamic_names == ("popularity",)
    assert layer.content_encoder.input_names == STATIC
    assert layer.content_encoder.lifted_blocks == ("price",)
    assert layer.content_encoder.feature_width == 5 + 2 + 7 + 4
    assert sorted(tower.input) == sorted(["item_idx", "popularity", *STATIC])
    assert tower.output.shape[-1] == K + 1  # k match coordinates, then the bias
    # No dynamic blocks: popularity is content like the rest (lifted, in the match part).
    static, _ = build_recommender(config(dynamic_blocks=()))
    encoder = static.get_layer("item_tower").content_encoder
    assert encoder.lifted_blocks == ("popularity", "price")
    assert encoder.feature_width == 5 + 4 + 2 + 7 + 4
    both = config(block_dims={**BLOCKS, "recency": 1})
    assert both.dynamic_blocks == ("popularity", "recency")
    assert config(variant="cf").dynamic_blocks == ("popularity",)  # kept, read by no layer
    cf, _ = build_recommender(config(variant="cf"))
    assert list(cf.input) == ["item_idx"] and cf.get_layer("item_tower").dynamic_names == ()


# --- cold-start products --------------------------------------------------------------------


def test_never_bought_product_hybrid_uses_content_alone():
    x = products((4,), seed=5)
    x["item_idx"] = np.array([0, 3, N_ITEMS + 7, 5])  # 0 never bought; N+7 unknown too
    hybrid, _ = build_recommender(config(variant="hybrid"))
    layer = hybrid.get_layer("item_tower")
    vectors = item_vectors(hybrid, x)
    assert vectors.shape == (4, K + 1)
    # Content alone: the unit content vector times the scale, the content and dynamic biases.
    hidden, content = layer.content_encoder.encode(x)
    scale = float(np.asarray(layer.match_scale))
    match = np64(l2_normalize(content)) * scale
    bias = np64(layer.content_bias(hidden))[:, 0] * BIAS_RATE + np64(layer.dynamic_bias(x))
    np.testing.assert_allclose(vectors[[0, 2], :K], match[[0, 2]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vectors[[0, 2], K], bias[[0, 2]], rtol=1e-5, atol=1e-6)
    assert np.abs(vectors[0, :K]).sum() > 0
    assert np.isfinite(score(np.ones((1, K + 1)), vectors)).all()
    # Their vectors do not depend on the CF weights; a known product's do.
    rng = np.random.default_rng(0)
    layer.cf_embedding.embeddings.assign(rng.normal(size=(N_ITEMS + 1, K)).astype(np.float32))
    layer.cf_bias.embeddings.assign(rng.normal(size=(N_ITEMS + 1, 1)).astype(np.float32))
    again = item_vectors(hybrid, x)
    np.testing.assert_array_equal(again[[0, 2]], vectors[[0, 2]])
    assert not np.allclose(again[[1, 3]], vectors[[1, 3]])
    # Known product 3: the match is the unit (content + CF row) times the scale, and the bias
    # gains exactly its CF bias (times BIAS_RATE).
    row = np64(layer.cf_embedding.embeddings)[3]
    expected = (np64(content)[1] + row) / np.linalg.norm(np64(content)[1] + row) * scale
    np.testing.assert_allclose(again[1, :K], expected, rtol=1e-5, atol=1e-6)
    cf_bias = np64(layer.cf_bias.embeddings)[3, 0] * BIAS_RATE
    assert again[1, K] == pytest.approx(bias[1] + cf_bias, rel=1e-5, abs=1e-6)


def test_never_bought_product_cf_gets_the_zero_vector_and_scores_minus_infinity():
    x = products((4,), seed=5)
    x["item_idx"] = np.array([0, 3, N_ITEMS + 7, 5])
    cf, _ = build_recommender(config(variant="cf"))
    layer = cf.get_layer("item_tower")
    layer.cf_bias.embeddings.assign(np.ones((N_ITEMS + 1, 1), np.float32))  # biases too
    cf_vectors = item_vectors(cf, x)
    np.testing.assert_array_equal(cf_vectors[[0, 2]], 0.0)  # match and bias
    np.testing.assert_allclose(cf_vectors[[1, 3], K], BIAS_RATE, rtol=1e-6)
    # Known products: unit CF rows times the scale (2 at initialisation).
    np.testing.assert_allclose(np.linalg.norm(cf_vectors[[1, 3], :K], axis=1), 2.0, rtol=1e-5)
    # A customer who dislikes both known products: their scores are negative, the cold
    # products' dot product would be 0 — `score` sets it to -inf, so they never rank (the
    # list is padded with -1 instead).
    customer = np.concatenate([-(cf_vectors[1, :K] + cf_vectors[3, :K]) * 10, [1.0]])[None]
    assert (customer @ cf_vectors[[1, 3]].T < 0).all()
    scores = score(customer, cf_vectors)
    assert np.isneginf(scores[0, [0, 2]]).all()
    assert top_k(scores, 4)[0, 2:].tolist() == [-1, -1]
    assert sorted(top_k(scores[0], 4).tolist()) == [1, 3]


def test_match_vectors_are_unit_length_times_the_scale_unless_normalize_is_off():
    x = products((6,), seed=2)
    x["item_idx"] = np.arange(1, 7)
    for variant in ("content", "hybrid"):
        tower, _ = build_recommender(config(variant=variant))
        norms = np.linalg.norm(item_vectors(tower, x)[:, :K], axis=1)
        np.testing.assert_allclose(norms, 2.0, rtol=1e-5)  # match_scale starts at 2
        loose, _ = build_recommender(config(variant=variant, normalize=False))
        norms = np.linalg.norm(item_vectors(loose, x)[:, :K], axis=1)
        assert np.ptp(norms) > 1e-3
        assert "match_scale" not in [w.name for w in loose.weights]


def test_dynamic_blocks_change_only_the_bias_coordinate():
    x = products((5,), seed=4)
    busier = {**x, "popularity": x["popularity"] + 2.0}
    for variant in ("content", "hybrid"):
        tower, _ = build_recommender(config(variant=variant))
        before, after = item_vectors(tower, x), item_vectors(tower, busier)
        np.testing.assert_array_equal(before[:, :K], after[:, :K])  # the match part is static
        assert (np.abs(before[:, K] - after[:, K]) > 1e-6).all()
        # Static popularity (no dynamic blocks) moves the match part instead.
        static, _ = build_recommender(config(variant=variant, dynamic_blocks=()))
        assert not np.allclose(item_vectors(static, x)[:, :K], item_vectors(static, busier)[:, :K])


def test_score_and_top_k_by_hand():
    items = np.array([[1.0, 0.0], [0.0, -1.0], [0.0, 0.0], [1.0, 0.0], [2.0, 2.0]], np.float32)
    customers = np.array([[-1.0, 1.0], [1.0, 0.0]], np.float32)
    scores = score(customers, items)
    # customer 0: -1, -1, -inf (zero item), -1, 0; customer 1: 1, 0, -inf, 1, 2
    np.testing.assert_array_equal(scores, [[-1, -1, -np.inf, -1, 0], [1, 0, -np.inf, 1, 2]])
    # Ties: lower index first; the zero item never ranks (-1 pads the row).
    assert top_k(scores, 5).tolist() == [[4, 0, 1, 3, -1], [4, 0, 3, 1, -1]]
    assert top_k(scores[1], 5).tolist() == [4, 0, 3, 1]  # one row: no padding
    allowed = np.array([False, True, True, True, True])
    assert top_k(scores, 3, allowed).tolist() == [[4, 1, 3], [4, 3, 1]]
    assert top_k(scores, 2).tolist() == [[4, 0], [4, 0]]
    assert top_k(scores, 99).shape == (2, 5)
    np.testing.assert_array_equal(
        recommend(customers, items, k=3, batch_size=1), [[4, 0, 1], [4, 0, 3]]
    )
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        score(customers, np.zeros((4, 3)))


def test_top_k_of_one_row_equals_the_matrix_form_without_padding():
    rng = np.random.default_rng(1)
    for _ in range(50):
        row = rng.integers(0, 5, size=40).astype(np.float32)
        row[rng.random(40) < 0.2] = -np.inf
        allowed = rng.random(40) > 0.2
        for k in (1, 3, 10, 40):
            matrix = top_k(row[None], k, allowed)[0]
            np.testing.assert_array_equal(top_k(row, k, allowed), matrix[matrix >= 0])


def test_top_k_matches_a_full_stable_sort_with_many_ties():
    scores = np.random.default_rng(0).integers(0, 4, size=(50, 30)).astype(np.float32)
    scores[:, 7] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")
    for k in (1, 5, 29):
        np.testing.assert_array_equal(top_k(scores, k), expected[:, :k])
    # Column 7 (-inf) is last in the sort but never ranks: -1 in its place.
    assert (expected[:, 29] == 7).all()
    np.testing.assert_array_equal(top_k(scores, 30)[:, :29], expected[:, :29])
    assert (top_k(scores, 30)[:, 29] == -1).all()


# --- training -------------------------------------------------------------------------------


def train(cfg: RecommenderConfig, steps: int = 4, l2: float | None = None):
    tower, _ = build_recommender(cfg)
    step = make_train_step(tower, make_optimizer(cfg), 40, cfg.l2 if l2 is None else l2)
    losses = [step(make_batch(seed=i)) for i in range(steps)]
    return tower, losses


@pytest.mark.parametrize(("optimizer", "dropout"), [("adagrad", 0.0), ("adam", 0.25)])
def test_seeded_training_is_deterministic(optimizer, dropout):
    cfg = config(optimizer=optimizer, learning_rate=0.01, dropout=dropout)
    first, losses_a = train(cfg)
    second, losses_b = train(cfg)
    assert losses_a == losses_b and all(np.isfinite(losses_a))
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    untrained, _ = build_recommender(cfg)
    names = [w.path for w in untrained.weights]
    moved = {
        name: not np.array_equal(a, b)
        for name, a, b in zip(names, first.get_weights(), untrained.get_weights(), strict=True)
    }
    # Every variable (CF rows and biases, content network, bias networks, scale) was trained,
    # except the bias networks' output offsets: they add one constant to every product's
    # score, which WMRB cannot see (their gradient is zero up to rounding).
    offsets = {"item_tower/content_bias/bias", "item_tower/dynamic_bias/bias"}
    assert offsets <= set(moved)
    assert all(v for name, v in moved.items() if name not in offsets), moved
    other, _ = train(config(optimizer=optimizer, learning_rate=0.01, dropout=dropout, seed=4))
    assert not np.array_equal(first.get_weights()[0], other.get_weights()[0])


def test_training_steps_lower_the_loss_on_a_fixed_batch():
    cfg = config(variant="content", learning_rate=0.05)
    tower, _ = build_recommender(cfg)
    step = make_train_step(tower, make_optimizer(cfg), n_items_total=40)
    data = make_batch(seed=7)
    losses = [step(data) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    assert step.loss(data) < losses[-1]  # after the last update


@pytest.mark.parametrize("variant", ["cf", "content", "hybrid"])
def test_train_step_loss_is_wmrb_of_the_towers_own_scores(variant):
    """Each row's positive and negatives are scored with the dynamic blocks of THAT row: the
    step's loss equals WMRB over full tower vectors built per (row, product) pair."""
    cfg = config(variant=variant)
    tower, _ = build_recommender(cfg)
    step = make_train_step(tower, make_optimizer(cfg), n_items_total=40)
    batch = make_batch(seed=3)
    b, h = batch.hist_idx.shape
    z = batch.neg_idx.size
    static = {name: batch.static[name] for name in ("item_idx", *STATIC)}

    def vectors(rows, popularity):
        inputs = {name: values[rows] for name, values in static.items()}
        return item_vectors(tower, {**inputs, "popularity": popularity})

    history = vectors(batch.hist_idx, np.zeros((b, h, 3), np.float32))
    customers = ranking_customer_vectors(history, batch.hist_mask, DOT_BIAS)
    positives = vectors(batch.pos_idx, batch.pos_dyn["popularity"])  # (b, k + 1)
    negatives = vectors(np.broadcast_to(batch.neg_idx, (b, z)), batch.neg_dyn["popularity"])
    pos = np.einsum("bd,bd->b", customers, positives)
    neg = np.einsum("bd,bzd->bz", customers, negatives)
    expected = float(wmrb_loss(pos, neg, 40, batch.neg_mask))
    assert step.loss(batch) == pytest.approx(expected, rel=1e-5)
    weights = [np.array(w) for w in tower.get_weights()]
    assert step.loss(batch) == step.loss(batch)  # no update
    for a, w in zip(weights, tower.get_weights(), strict=True):
        np.testing.assert_array_equal(a, w)
    # The step returns the loss before its update, then the weights move.
    assert step(batch) == pytest.approx(expected, rel=1e-5)
    assert step.loss(batch) != pytest.approx(expected, rel=1e-5)


def test_cf_penalty_is_the_mean_squared_norm_of_the_batchs_cf_rows_and_biases():
    tower, _ = build_recommender(config(variant="hybrid"))
    layer = tower.get_layer("item_tower")
    rows = np.zeros((N_ITEMS + 1, K), np.float32)
    rows[1, :2] = [3.0, 4.0]  # |row|^2 = 25
    rows[2, 0] = 1.0
    biases = np.zeros((N_ITEMS + 1, 1), np.float32)
    biases[1] = 10.0  # times BIAS_RATE: 1.0, squared 1.0
    biases[2] = -20.0  # -2.0, squared 4.0
    layer.cf_embedding.embeddings.assign(rows)
    layer.cf_bias.embeddings.assign(biases)
    # items 1, 2 and 0 (no CF row: 0): (25 + 1 + 1 + 4 + 0) / 3
    got = float(cf_penalty(layer, {"item_idx": np.array([1, 2, 0], np.int32)}))
    assert got == pytest.approx(31 / 3, rel=1e-6)
    content, _ = build_recommender(config(variant="content"))
    assert cf_penalty(content.get_layer("item_tower"), {}) == 0.0


def test_l2_pulls_cf_rows_towards_zero():
    cfg = config(variant="cf", learning_rate=0.01)
    plain, _ = train(cfg, steps=6, l2=0.0)
    shrunk, _ = train(cfg, steps=6, l2=100.0)

    def norm(tower):
        return float(np.linalg.norm(tower.get_layer("item_tower").cf_embedding.embeddings))

    assert norm(shrunk) < norm(plain)


def test_train_step_checks_shapes():
    tower, _ = build_recommender(config())
    step = make_train_step(tower, make_optimizer(config()), n_items_total=40)
    good = make_batch()
    b, h = good.hist_idx.shape
    z = good.neg_idx.size

    def bad(**change):
        return Batch(**{**good.__dict__, **change})

    with pytest.raises(ValueError, match=r"hist_mask must be \(4, 3\) and pos_idx \(4,\)"):
        step(bad(hist_mask=good.hist_mask[:, :2]))
    with pytest.raises(ValueError, match=r"got \(4, 3\) and \(3,\)"):
        step(bad(pos_idx=good.pos_idx[:3]))
    with pytest.raises(ValueError, match=r"neg_mask must be \(4, 6\) with m >= 1, got \(4, 5\)"):
        step(bad(neg_mask=np.ones((b, z - 1))))
    with pytest.raises(ValueError, match=r"'image'"):
        step(bad(static={k: v for k, v in good.static.items() if k != "image"}))
    with pytest.raises(ValueError, match=r"lead with \(U,\), got \(2, 5\)"):
        step(bad(static=products((2, 5))))
    with pytest.raises(ValueError, match=r"dynamic block 'popularity' must be \(4, 3\)"):
        step(bad(pos_dyn={}))
    with pytest.raises(ValueError, match=r"\(4, 6, 3\) for negatives"):
        step(bad(neg_dyn={"popularity": np.zeros((b, z, 2))}))
    with pytest.raises(ValueError, match=r"n_items_total must be a positive number, got 0"):
        make_train_step(tower, make_optimizer(config()), n_items_total=0)
    with pytest.raises(ValueError, match=r"l2 must be a number >= 0, got -1"):
        make_train_step(tower, make_optimizer(config()), 40, l2=-1)
    with pytest.raises(ValueError, match=r"optimizer must be a keras Optimizer, got 'adam'"):
        make_train_step(tower, "adam", 40)
    assert math.isfinite(step(good))  # the good batch still trains


# --- save / load and configs ----------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cf", "content", "hybrid"])
def test_save_load_round_trip_gives_identical_item_vectors(tmp_path, variant):
    cfg = config(variant=variant, dropout=0.25)
    tower, _ = train(cfg, steps=1)
    x = products((9,), seed=11)
    path = save_item_tower(tower, tmp_path / "model.keras")
    assert path.name == "model.keras"
    loaded = load_item_tower(path)
    before, after = item_vectors(tower, x), item_vectors(loaded, x)
    assert after.shape == (9, K + 1) and after.dtype == np.float32
    np.testing.assert_array_equal(after, before)
    layer = loaded.get_layer("item_tower")
    assert layer.get_config() == tower.get_layer("item_tower").get_config()
    with pytest.raises(ValueError, match=r"model\.h5"):
        save_item_tower(tower, tmp_path / "model.h5")
    with pytest.raises(ValueError, match=r"no saved item tower at"):
        load_item_tower(tmp_path / "missing.keras")


def test_layers_round_trip_their_config():
    encoder = ContentEncoder(8, BLOCKS, CATEGORICAL, hidden_units=(16, 4), lifted_blocks=["price"])
    again = ContentEncoder.from_config(encoder.get_config())
    assert again.get_config() == encoder.get_config()
    assert again.input_names == ("image", "popularity", "price", "tfidf", "type")
    tower = ItemTower("hybrid", 8, n_items=3, block_dims={"image": 5}, seed=1)
    assert ItemTower.from_config(tower.get_config()).get_config() == tower.get_config()
    assert tower.input_names == ("item_idx", "image")
    dynamic = ItemTower(
        "content",
        8,
        block_dims={"image": 5, "popularity": 3},
        dynamic_blocks=("popularity",),
        bias_units=3,
        normalize=False,
    )
    config_ = dynamic.get_config()
    assert config_["dynamic_blocks"] == ["popularity"] and config_["bias_units"] == 3
    assert config_["block_dims"] == {"image": 5, "popularity": 3} and not config_["normalize"]
    assert ItemTower.from_config(config_).get_config() == config_
    assert dynamic.input_names == ("image", "popularity")
    with pytest.raises(ValueError, match=r"'mf'"):
        ItemTower("mf", 8, n_items=3)
    with pytest.raises(ValueError, match=r"'colour'"):
        ContentEncoder(8, BLOCKS, lifted_blocks=("colour",))
    with pytest.raises(ValueError, match=r"'swish2'"):
        ContentEncoder(8, BLOCKS, activation="swish2")
    with pytest.raises(ValueError, match=r"dynamic_blocks must name dense blocks .*\['colour'\]"):
        ItemTower("content", 8, block_dims={"image": 5}, dynamic_blocks=("colour",))


def test_config_defaults_and_json_round_trip():
    cfg = config(hidden_units=[32, 16], dynamic_blocks=["popularity"])
    assert cfg.hidden_units == (32, 16) and cfg.dynamic_blocks == ("popularity",)
    values = cfg.to_dict()
    assert values["dynamic_blocks"] == ["popularity"] and values["hidden_units"] == [32, 16]
    again = RecommenderConfig.from_dict(json.loads(json.dumps(values)))
    assert again == cfg
    assert config(variant="cf").input_names == ("item_idx",)
    assert config(variant="content").input_names == (
        "image",
        "popularity",
        "price",
        "tfidf",
        "type",
    )
    bare = RecommenderConfig(variant="cf", n_items=3)
    assert (bare.optimizer, bare.learning_rate, bare.negatives) == ("adam", 0.002, "mixed")
    assert (bare.l2, bare.normalize, bare.bias_units) == (1e-4, True, 16)


@pytest.mark.parametrize(
    ("overrides", "quoted"),
    [
        ({"variant": "mf"}, "'mf'"),
        ({"k": 0}, "got 0"),
        ({"variant": "cf", "n_items": 0}, "got 0"),
        ({"block_dims": {"image": 0}}, "got 0"),
        ({"block_dims": {"item_idx": 3}}, "'item_idx'"),
        ({"block_dims": {}, "categorical_dims": {}}, "block_dims={}"),
        ({"categorical_dims": {"image": 3}}, "['image']"),
        ({"lifted_blocks": ("colour",)}, "['colour']"),
        ({"hidden_units": 64}, "got 64"),
        ({"dropout": 1.5}, "1.5"),
        ({"optimizer": "sgd"}, "'sgd'"),
        ({"learning_rate": -0.1}, "-0.1"),
        ({"n_negatives": 0}, "got 0"),
        ({"seed": -2}, "-2"),
        ({"negatives": "hard"}, "negatives must be one of ('uniform', 'mixed'), got 'hard'"),
        ({"l2": -0.5}, "l2 must be a finite number >= 0, got -0.5"),
        ({"l2": float("nan")}, "got nan"),
        ({"l2": True}, "got True"),
        ({"dynamic_blocks": ("colour",)}, "dynamic_blocks must name dense blocks"),
        ({"dynamic_blocks": ("type",)}, "got ['type']"),  # categorical, not dense
        ({"dynamic_blocks": "popularity"}, "got 'popularity'"),
        ({"bias_units": 0}, "bias_units must be an integer >= 1, got 0"),
    ],
)
def test_config_validation_quotes_bad_values(overrides, quoted):
    with pytest.raises(ValueError) as error:
        config(**overrides)
    assert quoted in str(error.value)


def test_config_from_dict_rejects_unknown_keys_and_content_variant_needs_no_items():
    with pytest.raises(ValueError, match=r"'epochs'"):
        RecommenderConfig.from_dict({**config().to_dict(), "epochs": 3})
    assert config(variant="content", n_items=0).n_items == 0
