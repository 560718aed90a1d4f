"""Benchmark peers (LightFM WARP, implicit ALS) on a tiny two-group dataset.

The peer tests skip when the `bench` extra (lightfm-next, implicit) is not installed; the input
helpers are plain scipy/pandas and always run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from benchmarks.peers import interaction_matrix, lightfm_item_features

pytestmark = pytest.mark.unit

TRAIN_END = "2020-05-31"
# Catalogue order interleaves the groups, so ties broken by position favour neither.
GROUP_A = ["a0", "a1", "a2", "a3", "a4"]
GROUP_B = ["b0", "b1", "b2", "b3", "b4"]
COLD = ["a_new", "b_new"]  # never bought in training, content says which group
PRODUCTS = [p for pair in zip(GROUP_A, GROUP_B) for p in pair] + COLD


def two_groups(customers_per_group: int = 12, seed: int = 0) -> pd.DataFrame:
    """Customers u0.. buy only group-A products, v0.. only group-B ones, in May 2020 (one
    purchase exactly at train_end); after train_end everyone buys the OTHER group's products,
    which a peer must not see."""
    rng = np.random.default_rng(seed)
    rows = []
    for prefix, own, other in (("u", GROUP_A, GROUP_B), ("v", GROUP_B, GROUP_A)):
        for i in range(customers_per_group):
            customer = f"{prefix}{i}"
            for product in rng.choice(own, size=4, replace=False):
                day = int(rng.integers(1, 31))
                rows.append((customer, product, pd.Timestamp(2020, 5, day)))
            rows.append((customer, own[i % 5], pd.Timestamp(2020, 5, 31)))  # == train_end: kept
            for product in other:
                rows.append((customer, product, pd.Timestamp(2020, 6, 1 + i % 5)))
    return pd.DataFrame(rows, columns=["customer_id", "product_id", "timestamp"])


def group_features() -> np.ndarray:
    """Content: one-hot group (A, B) plus a constant column, rows aligned with PRODUCTS."""
    return np.array([[p.startswith("a"), p.startswith("b"), 1.0] for p in PRODUCTS], np.float32)


def customers_of(frame: pd.DataFrame, prefix: str) -> list:
    return sorted(c for c in frame["customer_id"].unique() if c.startswith(prefix))


# -- inputs (no bench extra needed) -----------------------------------------------------------


def test_interaction_matrix_counts_the_window_inclusive_of_train_end():
    frame = pd.DataFrame(
        {
            "customer_id": ["x", "x", "y", "x", "y"],
            "product_id": ["p2", "p2", "p1", "p1", "p2"],
            "timestamp": ["2020-05-01", "2020-05-31", "2020-05-31", "2020-06-01", "2020-04-01"],
        }
    )
    customers, counts = interaction_matrix(frame, TRAIN_END, ["p1", "p2", "p3"])
    assert list(customers) == ["x", "y"]
    # x: p2 twice (May 1 and train_end itself), June row dropped; y: p1 once, p2 once.
    np.testing.assert_array_equal(counts.toarray(), [[0, 2, 0], [1, 1, 0]])
    assert counts.dtype == np.float32
    customers, counts = interaction_matrix(frame, TRAIN_END, ["p1", "p2"], train_start="2020-04-30")
    np.testing.assert_array_equal(counts.toarray(), [[0, 2], [1, 0]])


def test_interaction_matrix_rejects_bad_catalogues():
    frame = pd.DataFrame({"customer_id": ["x"], "product_id": ["p9"], "timestamp": ["2020-05-01"]})
    with pytest.raises(ValueError, match="p9"):
        interaction_matrix(frame, TRAIN_END, ["p1"])
    with pytest.raises(ValueError, match="duplicates.*p1"):
        interaction_matrix(frame, TRAIN_END, ["p1", "p1", "p9"])
    with pytest.raises(ValueError, match="no interactions"):
        interaction_matrix(frame, "2020-04-01", ["p9"])


def test_lightfm_item_features_are_identity_plus_unit_norm_content():
    content = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    expected = np.array(
        [
            [1, 0, 0, 0.6, 0.8],
            [0, 1, 0, 0.0, 0.0],  # an all-zero content row stays zero
            [0, 0, 1, 0.0, -1.0],
        ],
        np.float32,
    )
    for given in (content, sp.csr_matrix(content)):
        features = lightfm_item_features(given, 3)
        assert sp.isspmatrix_csr(features) and features.dtype == np.float32
        np.testing.assert_allclose(features.toarray(), expected, rtol=1e-6)
    np.testing.assert_array_equal(lightfm_item_features(None, 2).toarray(), np.eye(2))
    with pytest.raises(ValueError, match="2 rows for 3 product_ids"):
        lightfm_item_features(content[:2], 3)
    with pytest.raises(ValueError, match="NaN"):
        lightfm_item_features(np.array([[np.nan], [1.0], [1.0]]), 3)


# -- LightFM ----------------------------------------------------------------------------------


def fit_lightfm(frame, seed=0, epochs=30):
    from benchmarks.peers import lightfm_warp

    return lightfm_warp(
        frame,
        TRAIN_END,
        group_features(),
        PRODUCTS,
        epochs=epochs,
        no_components=8,
        seed=seed,
        progress=lambda _m: None,
    )


def test_lightfm_recommends_each_group_its_own_products():
    pytest.importorskip("lightfm")
    frame = two_groups()
    info, recommend, seconds = fit_lightfm(frame)
    assert info["n_customers"] == 24 and info["n_products"] == len(PRODUCTS)
    assert info["n_interactions"] == int(interaction_matrix(frame, TRAIN_END, PRODUCTS)[1].nnz)
    assert info["n_item_features"] == len(PRODUCTS) + 3
    assert len(info["epoch_seconds"]) == 30 and seconds > 0
    for prefix, own in (("u", GROUP_A), ("v", GROUP_B)):
        recs = recommend(customers_of(frame, prefix), k=3)  # top 5: 2 misses in 720 (30 seeds)
        for customer, products in recs.items():
            assert len(products) == 3 and set(products) <= set(own), (customer, products)


def test_lightfm_scores_a_cold_product_by_its_content():
    pytest.importorskip("lightfm")
    frame = two_groups()
    _, recommend, _ = fit_lightfm(frame)
    ranks = recommend(customers_of(frame, "u") + customers_of(frame, "v"), k=len(PRODUCTS))
    for customer, ranking in ranks.items():
        own_cold, other_cold = (
            ("a_new", "b_new") if customer.startswith("u") else ("b_new", "a_new")
        )
        assert ranking.index(own_cold) < ranking.index(other_cold), (customer, ranking)


def test_lightfm_is_deterministic_with_one_thread():
    pytest.importorskip("lightfm")
    frame = two_groups()
    first, second, other = (fit_lightfm(frame, seed=s, epochs=3).recommend for s in (5, 5, 6))
    np.testing.assert_array_equal(first.item_vectors, second.item_vectors)
    np.testing.assert_array_equal(first.customer_vectors, second.customer_vectors)
    assert not np.array_equal(first.item_vectors, other.item_vectors)


def test_lightfm_rejects_unknown_customers():
    pytest.importorskip("lightfm")
    _, recommend, _ = fit_lightfm(two_groups(), epochs=1)
    with pytest.raises(ValueError, match="nobody"):
        recommend(["u0", "nobody"], k=3)


# -- implicit ALS ----------------------------------------------------------------------------


def fit_als(frame, seed=0):
    from benchmarks.peers import implicit_als

    return implicit_als(
        frame, TRAIN_END, PRODUCTS, factors=2, iterations=10, seed=seed, progress=lambda _m: None
    )


def test_als_recommends_each_group_its_own_products_and_never_a_cold_one():
    pytest.importorskip("implicit")
    frame = two_groups()
    info, recommend, seconds = fit_als(frame)
    assert info["n_customers"] == 24 and len(info["epoch_seconds"]) == 10 and seconds > 0
    cold = [PRODUCTS.index(p) for p in COLD]
    assert not recommend.item_vectors[cold].any()  # no trained factors
    for prefix, own in (("u", GROUP_A), ("v", GROUP_B)):
        recs = recommend(customers_of(frame, prefix), k=len(PRODUCTS))
        for customer, ranking in recs.items():
            assert set(ranking[:5]) == set(own), (customer, ranking)
            # Without factors a product cannot be scored: `models.ranking.top_k` leaves it out.
            assert len(ranking) == len(PRODUCTS) - len(COLD), (customer, ranking)
            assert not set(ranking) & set(COLD), (customer, ranking)


def test_als_is_deterministic():
    pytest.importorskip("implicit")
    frame = two_groups()
    first, second, other = (fit_als(frame, seed=s).recommend for s in (5, 5, 6))
    np.testing.assert_array_equal(first.item_vectors, second.item_vectors)
    np.testing.assert_array_equal(first.customer_vectors, second.customer_vectors)
    assert not np.array_equal(first.item_vectors, other.item_vectors)
