"""The shared history rule and customer vector (`models.ranking`) and the rebuy blend
(`models.blend`), by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.blend import PRIOR_WEIGHT, BlendRule, blend, fit_blend, repeat_candidates
from models.ranking import (
    DOT,
    DOT_BIAS,
    LAYOUTS,
    check_layout,
    customer_vector,
    customer_vectors,
    match_part,
    mean_pairwise_cosine,
    recent_items,
)

pytestmark = pytest.mark.unit


# -- recent_items ---------------------------------------------------------------------------


def test_recent_items_takes_the_first_distinct_products():
    history = ["a", "b", "a", "c", "b", "d"]  # most recent first
    assert recent_items(history, 3) == ["a", "b", "c"]  # the rebuy of a counts once
    assert recent_items(history, 10) == ["a", "b", "c", "d"]
    assert recent_items(history, 1) == ["a"]
    assert recent_items([], 3) == []
    assert recent_items(iter(history), 2) == ["a", "b"]  # any iterable


def test_recent_items_skips_unknown_products_without_counting_them():
    history = ["a", "b", "a", "c", "b", "d"]
    assert recent_items(history, 2, known={"b", "d"}) == ["b", "d"]
    assert recent_items(history, 3, known={"b": 0, "c": 1}) == ["b", "c"]  # a mapping's keys
    assert recent_items(history, 2, known=lambda p: p != "a") == ["b", "c"]
    assert recent_items(history, 2, known=set()) == []


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "3"])
def test_recent_items_rejects_a_bad_n_recent(bad):
    with pytest.raises(ValueError, match=f"n_recent must be an integer >= 1, got {bad!r}"):
        recent_items(["a"], bad)


# -- customer vectors -------------------------------------------------------------------------


def test_customer_vector_in_both_layouts_by_hand():
    items = [[1.0, 2.0, 5.0], None, [3.0, -4.0, 9.0]]  # None: no vector, skipped
    dot = customer_vector(items, DOT)
    assert dot.dtype == np.float32
    np.testing.assert_array_equal(dot, [2.0, -1.0, 7.0])  # the mean of all coordinates
    # dot+bias: the mean of the match part, then 1 (score = match + the item's bias).
    np.testing.assert_array_equal(customer_vector(items, DOT_BIAS), [2.0, -1.0, 1.0])
    assert customer_vector([None, None], DOT_BIAS) is None
    assert customer_vector([], DOT) is None
    # score of the customer against an item [m1, m2, bias] = match + bias
    item = np.array([0.5, 1.0, 0.25], np.float32)
    assert float(customer_vector(items, DOT_BIAS) @ item) == 2 * 0.5 - 1 * 1.0 + 0.25
    with pytest.raises(ValueError, match="layout must be one of .*got 'cosine'"):
        customer_vector(items, "cosine")


def test_customer_vectors_batched_by_hand():
    vectors = np.array(
        [
            [[1.0, 2.0, 3.0], [3.0, 6.0, -3.0], [100.0, 100.0, 100.0]],  # last one masked
            [[4.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
            [[7.0, 7.0, 7.0], [8.0, 8.0, 8.0], [9.0, 9.0, 9.0]],  # nothing kept
        ],
        np.float32,
    )
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(
        customer_vectors(vectors, mask, DOT), [[2.0, 4.0, 0.0], [4.0, 0.0, 2.0], [0.0, 0.0, 0.0]]
    )
    np.testing.assert_array_equal(
        customer_vectors(vectors, mask, DOT_BIAS),
        [[2.0, 4.0, 1.0], [4.0, 0.0, 1.0], [0.0, 0.0, 0.0]],  # no history: the zero vector
    )
    # The batched rule is the single one, row by row.
    for row in range(2):
        kept = [v for v, m in zip(vectors[row], mask[row]) if m]
        np.testing.assert_array_equal(
            customer_vectors(vectors, mask, DOT_BIAS)[row], customer_vector(kept, DOT_BIAS)
        )
    with pytest.raises(ValueError, match=r"got \(3, 3, 3\) and \(3, 2\)"):
        customer_vectors(vectors, mask[:, :2])


def test_match_part_and_layouts():
    vectors = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    np.testing.assert_array_equal(match_part(vectors, DOT), vectors)
    np.testing.assert_array_equal(match_part(vectors, DOT_BIAS), vectors[..., :2])
    np.testing.assert_array_equal(match_part([[1, 2, 3]], DOT_BIAS), [[1, 2]])
    assert LAYOUTS == ("dot", "dot+bias") and check_layout(DOT_BIAS) == DOT_BIAS
    with pytest.raises(ValueError, match="got 'bias'"):
        match_part(vectors, "bias")


def test_mean_pairwise_cosine_by_hand():
    # unit rows e1, e2, (e1 + e2)/sqrt2: cosines 0, 1/sqrt2, 1/sqrt2 -> mean sqrt2 / 3
    rows = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.0, 0.0]])  # zero row left out
    assert mean_pairwise_cosine(rows) == pytest.approx(math.sqrt(2) / 3)
    assert mean_pairwise_cosine([[1.0, 0.0], [-1.0, 0.0]]) == pytest.approx(-1.0)
    assert mean_pairwise_cosine(np.ones((50, 4)), max_rows=10) == pytest.approx(1.0)
    assert math.isnan(mean_pairwise_cosine([[1.0, 2.0], [0.0, 0.0]]))
    # Sampled rows: the same seed, the same value.
    rng = np.random.default_rng(0)
    many = rng.normal(size=(40, 3))
    assert mean_pairwise_cosine(many, max_rows=10, seed=1) == mean_pairwise_cosine(
        many, max_rows=10, seed=1
    )
    unit = many / np.linalg.norm(many, axis=1, keepdims=True)
    full = (unit @ unit.T)[~np.eye(40, dtype=bool)].mean()
    assert mean_pairwise_cosine(many) == pytest.approx(full)


# -- blend ----------------------------------------------------------------------------------


def test_repeat_candidates_mark_products_bought_more_than_once():
    history = ["A", "B", "A", "C", "D"]
    assert repeat_candidates(history, 3) == [("A", 1), ("B", 0), ("C", 0)]
    assert repeat_candidates(history, 10) == [("A", 1), ("B", 0), ("C", 0), ("D", 0)]
    # The count covers the whole history, not only the k kept.
    assert repeat_candidates(["A", "B", "C", "B"], 1) == [("A", 0)]
    assert repeat_candidates(["A", "B", "C", "B"], 2) == [("A", 0), ("B", 1)]


def test_fit_blend_rates_by_hand():
    new_lists = {"u1": ["N1", "N2"], "u2": ["N3", "N4"], "u3": ["N5"]}
    histories = {"u1": ["A", "B", "A"], "u2": ["C", "D"], "u3": ["E"]}
    relevant = {"u1": {"A", "N2"}, "u2": {"D"}}  # u3 bought nothing: misses
    rule = fit_blend(new_lists, histories, relevant, k=2)
    assert PRIOR_WEIGHT == 10.0 and rule.k == 2
    # new: rank 1 seen 3 (N1, N3, N5), 0 hits; rank 2 seen 2 (N2, N4), 1 hit; overall 1/5.
    # Shrunk: (0 + 10 * 0.2) / 13 = 2/13 and (1 + 2) / 12 = 0.25 -> running min: 2/13 twice.
    assert rule.new == pytest.approx((2 / 13, 2 / 13))
    # repeat, bought once (m = 0): rank 1 C, E (0 hits / 2), rank 2 B, D (1 / 2); overall 1/4:
    # (0 + 2.5) / 12 and (1 + 2.5) / 12 -> running min 2.5/12 twice.
    # bought more than once (m = 1): rank 1 A (1 / 1), rank 2 never seen; overall 1:
    # (1 + 10) / 11 = 1 and (0 + 10) / 10 = 1.
    assert [r[0] for r in rule.repeat] == pytest.approx([2.5 / 12, 2.5 / 12])
    assert [r[1] for r in rule.repeat] == pytest.approx([1.0, 1.0])
    # Without any observation a rate is 0 (overall 0), not NaN.
    empty = fit_blend({}, {"u": []}, {}, k=3)
    assert empty.new == (0.0, 0.0, 0.0) and empty.repeat == ((0.0, 0.0),) * 3


def test_fit_blend_keeps_a_rate_without_shrinkage_when_it_is_the_overall_rate():
    # Every new rank-1 recommendation hit and there is only rank 1: rate 1 whatever the weight.
    rule = fit_blend(
        {"u": ["N"], "v": ["M"]}, {"u": ["A"], "v": ["B"]}, {"u": {"N"}, "v": {"M"}}, k=1
    )
    assert rule.new == (1.0,)
    assert rule.repeat == ((0.0, 0.0),)


def test_blend_mixes_by_rate_ties_to_the_rebuy_and_dedupes():
    rule = BlendRule(new=(0.3, 0.2, 0.1), repeat=((0.5, 0.9), (0.2, 0.6), (0.05, 0.05)))
    history = ["A", "B", "A", "C"]  # A bought twice (0.9), B once at rank 2 (0.2), C (0.05)
    new_list = ["N1", "N2", "B", "N4"]  # N1 0.3, N2 0.2, B 0.1; N4 beyond the rule's k
    # A .9, N1 .3, B .2 (the rebuy wins the tie with N2 .2), N2 .2, B again (dropped), C .05
    assert blend(new_list, history, rule, k=3) == ["A", "N1", "B"]
    assert blend(new_list, history, rule, k=5) == ["A", "N1", "B", "N2", "C"]
    assert blend(new_list, history, rule, k=10) == ["A", "N1", "B", "N2", "C"]
    assert blend(new_list, [], rule, k=2) == ["N1", "N2"]
    assert blend([], history, rule, k=2) == ["A", "B"]
    # A customer whose rebuys are unlikely gets the model's list first.
    cold = BlendRule(new=(0.3, 0.2, 0.1), repeat=((0.01, 0.01),) * 3)
    assert blend(new_list, history, cold, k=4) == ["N1", "N2", "B", "A"]


def test_blend_rule_round_trips_and_checks_its_lists():
    rule = BlendRule(new=(0.3, 0.2), repeat=((0.5, 0.9), (0.2, 0.6)))
    assert rule.to_dict() == {"new": [0.3, 0.2], "repeat": [[0.5, 0.9], [0.2, 0.6]]}
    assert BlendRule.from_dict(rule.to_dict()) == rule
    with pytest.raises(ValueError, match="needs 'new' \\(k,\\) and 'repeat' \\(k, 2\\)"):
        BlendRule.from_dict({"new": [0.1]})
    with pytest.raises(ValueError, match="must both have k entries"):
        BlendRule.from_dict({"new": [0.1, 0.2], "repeat": [[0.1, 0.2]]})
    with pytest.raises(ValueError, match="must both have k entries"):
        BlendRule.from_dict({"new": [], "repeat": []})
