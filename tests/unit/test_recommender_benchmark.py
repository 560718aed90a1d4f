"""The recommender benchmark's pure helpers: LightFM's content matrix and its projection, the
seen-product filter, hybrid-vs-others tests, the goals and the two-mode tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.recommender import (
    content_matrix,
    drop_seen,
    goals,
    project,
    versus,
)

pytestmark = pytest.mark.unit


def test_content_matrix_normalises_blocks_like_the_encoder():
    blocks = {
        "type": np.array([2, 0]),
        "price": np.array([[1.0], [0.0]]),
        "image": np.array([[3.0, 4.0], [0.0, 0.0]]),
    }
    got = content_matrix(blocks, {"type": 3}, lifted=("price",))
    # name order image | price (lifted: [x, 1]) | type one-hot, each unit norm, then the whole.
    row0 = np.array([0.6, 0.8, 1 / math.sqrt(2), 1 / math.sqrt(2), 0.0, 0.0, 1.0]) / math.sqrt(3)
    row1 = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # only the lift survives
    np.testing.assert_allclose(got, np.stack([row0, row1]), atol=1e-6)


def test_svd_projection_keeps_zero_rows_and_all_energy_of_a_rank_one_matrix():
    matrix = np.array([[1.0, 2.0, 2.0], [2.0, 4.0, 4.0], [0.0, 0.0, 0.0]], np.float32)
    got, info = project(matrix, 1, "svd")
    assert got.shape == (3, 1)
    np.testing.assert_allclose(got[:, 0], [3.0, 6.0, 0.0], atol=1e-5)  # |row| along (1,2,2)/3
    assert info == {"input_columns": 3, "method": "svd", "columns": 1, "energy_kept": 1.0}


def test_projection_is_identity_when_dim_is_zero_or_wide_and_random_is_seeded():
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    same, info = project(matrix, 0)
    np.testing.assert_array_equal(same, matrix)
    assert info["method"] == "none" and info["columns"] == 3
    a, _ = project(matrix, 2, "random", seed=5)
    b, _ = project(matrix, 2, "random", seed=5)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="'pca'"):
        project(matrix, 2, "pca")


def test_drop_seen_removes_history_then_cuts_to_k():
    recs = {"u": ["a", "b", "c", "d"], "v": ["a", "b"]}
    assert drop_seen(recs, {"u": ["b"]}, 2) == {"u": ["a", "c"], "v": ["a", "b"]}


def test_versus_flips_pairs_where_hybrid_comes_first():
    significance = {
        "hybrid_vs_cf": {"p": {"t": 2.0, "p_value": 0.1, "mean_diff": 0.3, "n": 3}},
        "lightfm_vs_hybrid": {"p": {"t": 1.5, "p_value": 0.2, "mean_diff": 0.1, "n": 3}},
        "als_vs_lightfm": {"p": {"t": None, "p_value": None, "mean_diff": 0.0, "n": 3}},
    }
    got = versus(significance, "hybrid")
    assert got["cf"]["p"] == {"t": 2.0, "p_value": 0.1, "mean_diff": 0.3, "n": 3}
    assert got["lightfm"]["p"] == {"t": -1.5, "p_value": 0.2, "mean_diff": -0.1, "n": 3}
    assert set(got) == {"cf", "lightfm"}


def _row(p):
    return {"precision_at_10": p}


def _sig(p_hc, p_cp):
    test = {"t": 3.0, "mean_diff": 0.001, "n": 10}
    return {
        "hybrid_vs_cf": {"precision_at_10": {**test, "p_value": p_hc}},
        "cf_vs_popularity": {"precision_at_10": {**test, "p_value": p_cp}},
    }


def test_goals_mark_met_not_met_and_not_measured():
    tables = {
        "all_products": {
            "variants": {
                "popularity": _row(0.010),
                "cf": _row(0.012),
                "hybrid": _row(0.014),
                "buy_again": _row(0.020),
                "blend": _row(0.023),
            },
            "cold_start": {"hybrid": _row(0.001), "lightfm": _row(0.0)},
            "significance": _sig(0.01, 0.2),
        },
        "new_to_customer": {
            "variants": {
                "popularity": _row(0.010),
                "cf": _row(0.012),
                "hybrid": _row(0.014),
                "lightfm": _row(0.013),
            },
            "cold_start": {},
            "significance": _sig(0.01, 0.01),
        },
    }
    diversity = {"all_products": {"hybrid": {"distinct_products": 151.0}}, "new_to_customer": {}}
    got = {g["goal"]: g for g in goals(tables, diversity, 1.2)}
    order = hybrid_cf = "[all_products] hybrid > cf > popularity, paired p < 0.05"
    assert got[order]["met"] is False  # cf vs popularity: p 0.2
    assert got["[new_to_customer] hybrid > cf > popularity, paired p < 0.05"]["met"] is True
    assert got[hybrid_cf]["detail"].endswith("p(hybrid vs cf) 0.01, p(cf vs popularity) 0.2")
    ratio = got["[all_products] hybrid ≥ 1.35 × popularity"]
    assert ratio["met"] is True and ratio["detail"] == "hybrid 0.01400 = 1.40 × popularity 0.01000"
    assert got["[all_products] cold start: hybrid > 0 and > LightFM"]["met"] is True
    assert got["[new_to_customer] cold start: hybrid > 0 and > LightFM"]["met"] is None
    assert got["[all_products] hybrid recommends ≥ 150 distinct products across customers"]["met"]
    assert got["[new_to_customer] hybrid ≥ lightfm"]["met"] is True
    assert got["[new_to_customer] hybrid ≥ als"]["met"] is None  # not measured
    blend = got["[all_products] blend ≥ 1.1 × buy again"]
    assert blend["met"] is True and blend["detail"] == "blend 0.02300 = 1.15 × buy again 0.02000"
    assert got["hybrid / LightFM seconds per epoch ≤ 1.0"] == {
        "goal": "hybrid / LightFM seconds per epoch ≤ 1.0",
        "met": False,
        "detail": "ratio 1.20",
    }


def test_combine_adds_the_peers_to_each_mode_with_paired_tests():
    from benchmarks.recommender import combine
    from training.recommender.evaluation import AtK

    def at(precision):
        per = np.array([precision, precision])
        return AtK(precision, precision, per, per, np.array(["a", "b"], dtype=object), 10)

    out = {
        "runs": {
            "all_products": {"popularity": [at(0.1)], "hybrid": [at(0.2), at(0.3)]},
            "new_to_customer": {"popularity": [at(0.05)], "hybrid": [at(0.1), at(0.2)]},
        },
        "cold_runs": {
            "all_products": {"popularity": [None], "hybrid": [None, None]},
            "new_to_customer": {"popularity": [None], "hybrid": [None, None]},
        },
    }
    peers = {
        "lightfm": {
            "runs": {"all_products": [at(0.1), at(0.2)], "new_to_customer": [at(0.0), at(0.1)]},
            "cold": {"all_products": [None, None], "new_to_customer": [None, None]},
        }
    }
    tables = combine(out, peers)
    assert list(tables["all_products"]["variants"]) == ["popularity", "hybrid", "lightfm"]
    assert tables["new_to_customer"]["variants"]["lightfm"]["precision_at_10"] == pytest.approx(
        0.05
    )
    test = tables["all_products"]["significance"]["lightfm_vs_hybrid"]["precision_at_10"]
    assert test["mean_diff"] == pytest.approx(-0.1) and test["n"] == 2
    assert tables["all_products"]["variants"]["hybrid"]["hits_per_run"] == [4, 6]
