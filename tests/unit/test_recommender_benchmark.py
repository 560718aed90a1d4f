"""The recommender benchmark's pure helpers: LightFM's content matrix and its projection, the
seen-product filter, hybrid-vs-others tests, the goals and the split check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.recommender import (
    check_same_split,
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


def test_goals_mark_met_not_met_and_not_measured():
    variants = {
        "popularity": {"precision_at_10": 0.010},
        "cf": {"precision_at_10": 0.012},
        "hybrid": {"precision_at_10": 0.014},
    }
    got = goals(variants, 1.2)
    assert [g["met"] for g in got] == [True, True, None, False]
    assert got[1]["detail"] == "hybrid 0.01400 = 1.40 × popularity 0.01000"
    assert got[2]["detail"] == "not measured: no lightfm"
    assert got[3]["detail"] == "ratio 1.20"


def test_check_same_split_names_the_differing_keys():
    check_same_split({"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 9}, ("a", "b"))
    with pytest.raises(ValueError, match=r"'b': \(2, 3\)"):
        check_same_split({"a": 1, "b": 2}, {"a": 1, "b": 3}, ("a", "b"))
