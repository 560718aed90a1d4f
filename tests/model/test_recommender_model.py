"""The recommender's item tower, customer vectors, WMRB loss, training step, scoring and saving."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.recommender.layers import ContentEncoder, ItemTower, l2_normalize, lift
from training.recommender.model import (
    RecommenderConfig,
    build_recommender,
    customer_vectors,
    item_vectors,
    load_item_tower,
    make_optimizer,
    make_train_step,
    recommend,
    save_item_tower,
    score,
    top_k,
    wmrb_loss,
)

pytestmark = pytest.mark.unit

N_ITEMS = 12
BLOCKS = {"price": 1, "popularity": 3, "tfidf": 7, "image": 5}
CATEGORICAL = {"type": 4}


def config(**overrides) -> RecommenderConfig:
    values = dict(
        variant="hybrid",
        n_items=N_ITEMS,
        block_dims=BLOCKS,
        categorical_dims=CATEGORICAL,
        k=8,
        hidden_units=(16,),
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


def batch(seed: int = 0, b: int = 4, h: int = 3, z: int = 6):
    rng = np.random.default_rng(seed + 100)
    mask = (rng.random((b, h)) < 0.8).astype(np.float32)
    mask[:, 0] = 1.0
    return products((b, h), seed), mask, products((b,), seed + 1), products((z,), seed + 2)


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


def test_customer_vector_is_exactly_the_masked_mean_of_its_items():
    history = np.array(
        [
            [[1.0, 2.0], [np.nan, 100.0], [3.0, -4.0]],  # middle item masked (and NaN)
            [[0.5, 0.5], [1.5, 2.5], [4.0, 0.0]],  # all three kept
            [[7.0, 7.0], [8.0, 8.0], [9.0, 9.0]],  # nothing kept
        ],
        np.float32,
    )
    mask = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0]], np.float32)
    # row 0: ([1, 2] + [3, -4]) / 2 = [2, -1]; row 1: [6, 3] / 3 = [2, 1]; row 2: zero vector
    expected = np.array([[2.0, -1.0], [2.0, 1.0], [0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(customer_vectors(history, mask)), expected)


def test_customer_vector_from_the_tower_is_the_mean_of_its_item_vectors():
    tower, scorer = build_recommender(config())
    history, mask, _, _ = batch()
    mask[1] = [1, 0, 1]
    customers = scorer.customer_vectors(history, mask)
    vectors = item_vectors(tower, history)  # (b, h, k)
    assert customers.shape == (4, 8) and vectors.shape == (4, 3, 8)
    for c in range(4):
        np.testing.assert_allclose(
            customers[c], vectors[c][mask[c] > 0].mean(axis=0), rtol=1e-6, atol=1e-7
        )


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


def test_config_lifts_narrow_blocks_by_default():
    assert config().lifted_blocks == ("popularity", "price")
    assert config(lifted_blocks=()).lifted_blocks == ()
    tower, _ = build_recommender(config())
    encoder = tower.get_layer("item_tower").content_encoder
    assert encoder.lifted_blocks == ("popularity", "price")
    assert encoder.feature_width == 5 + 4 + 2 + 7 + 4


# --- cold-start products --------------------------------------------------------------------


def test_never_bought_product_hybrid_uses_content_alone_and_cf_cannot_score_it():
    x = products((4,), seed=5)
    x["item_idx"] = np.array([0, 3, N_ITEMS + 7, 5])  # 0 never bought; N+7 unknown too

    hybrid, _ = build_recommender(config(variant="hybrid"))
    tower = hybrid.get_layer("item_tower")
    content_only = np64(tower.content_encoder(x))
    cf_part = np64(tower.collaborative(x["item_idx"]))
    vectors = item_vectors(hybrid, x)
    np.testing.assert_array_equal(cf_part[[0, 2]], 0.0)
    np.testing.assert_array_equal(vectors[[0, 2]], content_only[[0, 2]].astype(np.float32))
    assert np.abs(vectors[0]).sum() > 0
    np.testing.assert_allclose(vectors[1], content_only[1] + cf_part[1], rtol=1e-6)
    assert np.isfinite(score(np.ones((1, 8)), vectors)).all()

    cf, _ = build_recommender(config(variant="cf"))
    cf_vectors = item_vectors(cf, x)
    np.testing.assert_array_equal(cf_vectors[[0, 2]], 0.0)
    assert (np.abs(cf_vectors[[1, 3]]).sum(axis=1) > 0).all()
    # A customer who dislikes both known products: their dot products are negative, the cold
    # products' raw dot product would be 0 — `score` sets it to -inf, so it still ranks last.
    customer = -(cf_vectors[1] + cf_vectors[3])[None, :] * 10
    assert (customer @ cf_vectors[[1, 3]].T < 0).all()
    scores = score(customer, cf_vectors)
    assert np.isneginf(scores[0, [0, 2]]).all()
    assert top_k(scores, 4)[0, :2].tolist() in ([1, 3], [3, 1])


def test_score_and_top_k_by_hand():
    items = np.array([[1.0, 0.0], [0.0, -1.0], [0.0, 0.0], [1.0, 0.0], [2.0, 2.0]], np.float32)
    customers = np.array([[-1.0, 1.0], [1.0, 0.0]], np.float32)
    scores = score(customers, items)
    # customer 0: -1, -1, -inf (zero item), -1, 0; customer 1: 1, 0, -inf, 1, 2
    np.testing.assert_array_equal(scores, [[-1, -1, -np.inf, -1, 0], [1, 0, -np.inf, 1, 2]])
    assert top_k(scores, 5).tolist() == [[4, 0, 1, 3, 2], [4, 0, 3, 1, 2]]  # ties: lower index
    assert top_k(scores, 2).tolist() == [[4, 0], [4, 0]]
    assert top_k(scores, 99).shape == (2, 5)
    np.testing.assert_array_equal(
        recommend(customers, items, k=3, batch_size=1), [[4, 0, 1], [4, 0, 3]]
    )
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        score(customers, np.zeros((4, 3)))


def test_top_k_matches_a_full_stable_sort_with_many_ties():
    scores = np.random.default_rng(0).integers(0, 4, size=(50, 30)).astype(np.float32)
    scores[:, 7] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")
    for k in (1, 5, 29, 30):
        np.testing.assert_array_equal(top_k(scores, k), expected[:, :k])


# --- training -------------------------------------------------------------------------------


def train(cfg: RecommenderConfig, steps: int = 4):
    tower, _ = build_recommender(cfg)
    step = make_train_step(tower, make_optimizer(cfg), n_items_total=40)
    losses = [step(*batch(seed=i)) for i in range(steps)]
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
    moved = [not np.array_equal(a, b) for a, b in zip(first.get_weights(), untrained.get_weights())]
    assert all(moved)  # every variable (embedding, hidden, output) was trained
    other, _ = train(config(optimizer=optimizer, learning_rate=0.01, dropout=dropout, seed=4))
    assert not np.array_equal(first.get_weights()[0], other.get_weights()[0])


def test_training_steps_lower_the_loss_on_a_fixed_batch():
    cfg = config(variant="content", learning_rate=0.05)
    tower, _ = build_recommender(cfg)
    step = make_train_step(tower, make_optimizer(cfg), n_items_total=40)
    data = batch(seed=7)
    losses = [step(*data) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


def test_train_step_checks_shapes():
    tower, _ = build_recommender(config())
    step = make_train_step(tower, make_optimizer(config()), n_items_total=40)
    history, mask, positive, negative = batch()
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        step(history, mask[:, :2], positive, negative)
    with pytest.raises(ValueError, match=r"'image'"):
        step(history, mask, {k: v for k, v in positive.items() if k != "image"}, negative)
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        step(history, mask, positive, negative, negative_mask=np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"0"):
        make_train_step(tower, make_optimizer(config()), n_items_total=0)


# --- save / load and configs ----------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cf", "content", "hybrid"])
def test_save_load_round_trip_gives_identical_item_vectors(tmp_path, variant):
    cfg = config(variant=variant, dropout=0.25)
    tower, _ = train(cfg, steps=1)
    x = products((9,), seed=11)
    path = save_item_tower(tower, tmp_path / "model.keras")
    assert path.name == "model.keras"
    loaded = load_item_tower(path)
    np.testing.assert_array_equal(item_vectors(loaded, x), item_vectors(tower, x))
    layer = loaded.get_layer("item_tower")
    assert layer.get_config() == tower.get_layer("item_tower").get_config()
    with pytest.raises(ValueError, match=r"model\.h5"):
        save_item_tower(tower, tmp_path / "model.h5")


def test_layers_round_trip_their_config():
    encoder = ContentEncoder(8, BLOCKS, CATEGORICAL, hidden_units=(16, 4), lifted_blocks=["price"])
    again = ContentEncoder.from_config(encoder.get_config())
    assert again.get_config() == encoder.get_config()
    assert again.input_names == ("image", "popularity", "price", "tfidf", "type")
    tower = ItemTower("hybrid", 8, n_items=3, block_dims={"image": 5}, seed=1)
    assert ItemTower.from_config(tower.get_config()).get_config() == tower.get_config()
    assert tower.input_names == ("item_idx", "image")
    with pytest.raises(ValueError, match=r"'mf'"):
        ItemTower("mf", 8, n_items=3)
    with pytest.raises(ValueError, match=r"'colour'"):
        ContentEncoder(8, BLOCKS, lifted_blocks=("colour",))
    with pytest.raises(ValueError, match=r"'swish2'"):
        ContentEncoder(8, BLOCKS, activation="swish2")


def test_config_round_trips_through_json():
    cfg = config(hidden_units=[32, 16])
    assert cfg.hidden_units == (32, 16)
    again = RecommenderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert config(variant="cf").input_names == ("item_idx",)
    assert config(variant="content").input_names == (
        "image",
        "popularity",
        "price",
        "tfidf",
        "type",
    )


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
