"""Recommender data (training examples, splits, test set), metrics, popularity and Table 3."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from training.recommender.baselines import popularity_recommendations, popularity_recommender
from training.recommender.data import (
    _sample_without_replacement,
    customer_histories,
    encode_items,
    item_index,
    test_set,
    training_examples,
    utc_timestamp,
    validation_split,
    window_products,
)
from training.recommender.evaluation import (
    _paired_t_numpy,
    cold_start_metrics,
    cold_start_products,
    markdown_table,
    paired_test,
    precision_recall_at_k,
    table3,
)

pytestmark = pytest.mark.unit

TRAIN_END = "2020-05-31"  # midnight UTC; the positive window is (2020-05-01, 2020-05-31]


def _frame(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "product_id", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    frame["kind"] = "purchase"
    return frame


# a: 8 interactions in the window. p6 sits exactly on the positive window's (exclusive) start, p8
#    exactly on train_end (inclusive): positives are p7 (6 earlier) and p8 (7 earlier); p9 is
#    after train_end.
# b: 5 interactions in the window (+2 after it): left out, as the count is taken in the window.
# c: q1..q5, then q6 and q7 in the same basket: each has exactly 5 STRICTLY earlier
#    interactions, so both inputs are q1..q5 and neither is the other's input.
# d: 6 interactions but all within one day: no positive has 5 earlier ones.
ROWS = [
    ("a", "p1", "2020-03-01"),
    ("a", "p2", "2020-03-05"),
    ("a", "p3", "2020-03-10"),
    ("a", "p4", "2020-04-01"),
    ("a", "p5", "2020-04-15"),
    ("a", "p6", "2020-05-01"),
    ("a", "p7", "2020-05-10"),
    ("a", "p8", "2020-05-31"),
    ("a", "p9", "2020-06-01"),
    *[("b", f"r{i}", f"2020-05-0{i + 1}") for i in range(5)],
    ("b", "r5", "2020-06-02"),
    ("b", "r6", "2020-06-03"),
    *[("c", f"q{i}", f"2020-04-0{i}") for i in range(1, 6)],
    ("c", "q7", "2020-05-20"),
    ("c", "q6", "2020-05-20"),
    *[("d", f"s{i}", "2020-05-15") for i in range(6)],
]


@pytest.fixture
def interactions() -> pd.DataFrame:
    return _frame(ROWS)


# -- training examples --------------------------------------------------------------------


def test_training_examples_rows_and_inputs(interactions):
    ex = training_examples(interactions, TRAIN_END, seed=3)
    assert len(ex) == 4
    assert list(ex.customer_ids) == ["a", "a", "c", "c"]
    assert list(ex.positives) == ["p7", "p8", "q6", "q7"]
    assert ex.histories.shape == (4, 5)
    assert list(pd.to_datetime(ex.timestamps).strftime("%Y-%m-%d")) == [
        "2020-05-10",
        "2020-05-31",
        "2020-05-20",
        "2020-05-20",
    ]
    earlier = {"p7": ["p1", "p2", "p3", "p4", "p5", "p6"], "p8": [f"p{i}" for i in range(1, 8)]}
    for history, positive in zip(ex.histories[:2], ex.positives[:2]):
        assert len(set(history)) == 5
        assert set(history) <= set(earlier[positive])
        # chronological order, so sorted by the p-number here
        assert list(history) == sorted(history)
    assert [list(h) for h in ex.histories[2:]] == [["q1", "q2", "q3", "q4", "q5"]] * 2


def test_training_examples_parameters(interactions):
    # 60 positive days: (04-01, 05-31] -> p5 (4 earlier), p6, p7, p8; p4 on 04-01 is excluded.
    # min 8 interactions keeps a only; 2 inputs each.
    ex = training_examples(
        interactions, TRAIN_END, positive_days=60, n_inputs=2, min_interactions=8, seed=0
    )
    assert list(ex.customer_ids) == ["a"] * 4
    assert list(ex.positives) == ["p5", "p6", "p7", "p8"]
    assert ex.histories.shape == (4, 2)
    for history, positive in zip(ex.histories, ex.positives):
        assert len(set(history)) == 2
        assert all(int(h[1:]) < int(positive[1:]) for h in history)
    # d has 6 interactions in one day: with a 1-input minimum it still has no earlier one
    ex = training_examples(interactions, TRAIN_END, n_inputs=1, min_interactions=6)
    assert "d" not in set(ex.customer_ids)
    assert "b" not in set(ex.customer_ids)


def test_training_examples_is_seeded_and_order_free(interactions):
    first = training_examples(interactions, TRAIN_END, seed=7)
    shuffled = interactions.sample(frac=1.0, random_state=1).reset_index(drop=True)
    again = training_examples(shuffled, TRAIN_END, seed=7)
    np.testing.assert_array_equal(first.histories, again.histories)
    np.testing.assert_array_equal(first.positives, again.positives)
    others = [training_examples(interactions, TRAIN_END, seed=s).histories for s in range(1, 8)]
    assert any(not np.array_equal(first.histories, h) for h in others)


def test_training_examples_ignore_everything_after_train_end(interactions):
    later = _frame(
        [
            ("a", "p1", "2020-05-31 00:00:01"),
            ("a", "late", "2020-06-15"),
            ("b", "late", "2020-06-15"),
            ("e", "late", "2020-07-01"),
        ]
        + [("e", f"x{i}", f"2020-06-1{i}") for i in range(6)]
    )
    base = training_examples(interactions, TRAIN_END, seed=5)
    leaked = training_examples(pd.concat([interactions, later]), TRAIN_END, seed=5)
    np.testing.assert_array_equal(base.customer_ids, leaked.customer_ids)
    np.testing.assert_array_equal(base.histories, leaked.histories)
    np.testing.assert_array_equal(base.positives, leaked.positives)


def test_training_examples_train_end_is_inclusive(interactions):
    # a day earlier p8 (05-31) is out of the window: positives (04-30, 05-30] are p6 and p7
    ex = training_examples(interactions, "2020-05-30", seed=0)
    assert list(ex.positives[ex.customer_ids == "a"]) == ["p6", "p7"]
    ex = training_examples(interactions, pd.Timestamp("2020-05-31", tz="UTC"), seed=0)
    assert "p8" in set(ex.positives)


def test_training_examples_with_train_start(interactions):
    # (03-05, 05-31]: a keeps p3..p8 = 6 interactions; p7 has 4 earlier, p8 has 5
    ex = training_examples(interactions, TRAIN_END, train_start="2020-03-05", seed=0)
    assert list(ex.positives[ex.customer_ids == "a"]) == ["p8"]
    assert list(ex.histories[0]) == ["p3", "p4", "p5", "p6", "p7"]


def test_training_examples_errors(interactions):
    with pytest.raises(ValueError, match="lacks columns \\['timestamp'\\]"):
        training_examples(interactions.drop(columns="timestamp"), TRAIN_END)
    with pytest.raises(ValueError, match="n_inputs must be an integer >= 1, got 0"):
        training_examples(interactions, TRAIN_END, n_inputs=0)
    with pytest.raises(ValueError, match="train_end must be a date or timestamp, got 'soon'"):
        training_examples(interactions, "soon")


def test_sampler_is_uniform_and_distinct():
    rng = np.random.default_rng(0)
    picks = _sample_without_replacement(rng, np.full(30_000, 6), 5)
    assert picks.min() == 0 and picks.max() == 5
    assert (np.diff(picks, axis=1) > 0).all()  # distinct, ascending
    frequency = np.bincount(picks.ravel(), minlength=6) / 30_000
    np.testing.assert_allclose(frequency, 5 / 6, atol=0.02)
    pairs = _sample_without_replacement(rng, np.full(30_000, 4), 2)
    _, counts = np.unique(pairs, axis=0, return_counts=True)
    assert counts.size == 6
    np.testing.assert_allclose(counts / 30_000, 1 / 6, atol=0.02)


def test_utc_timestamp():
    assert utc_timestamp("2020-05-31") == pd.Timestamp("2020-05-31 00:00", tz="UTC")
    assert utc_timestamp(pd.Timestamp("2020-05-31 02:00", tz="Europe/Paris")) == pd.Timestamp(
        "2020-05-31 00:00", tz="UTC"
    )


# -- splits, test set, helpers --------------------------------------------------------------


def test_validation_split_by_customer():
    customers = np.array(["a", "a", "b", "c", "c", "c", "d", "e"])
    mask = validation_split(customers, fraction=0.4, seed=1)
    chosen = set(customers[mask])
    assert len(chosen) == 2  # round(0.4 * 5)
    assert not chosen & set(customers[~mask])  # a customer is on one side only
    np.testing.assert_array_equal(mask, validation_split(customers, fraction=0.4, seed=1))
    assert validation_split(customers, fraction=0.01).sum() >= 1  # at least one customer
    with pytest.raises(ValueError, match="fraction must be in \\(0, 1\\), got 1.0"):
        validation_split(customers, fraction=1.0)
    with pytest.raises(ValueError, match="at least 2 distinct customers, got 1"):
        validation_split(["a", "a"])


def test_test_set_window_and_history():
    frame = _frame(
        [
            ("a", "p1", "2020-05-10"),
            ("a", "p2", "2020-05-31"),  # on train_end: training
            ("a", "p3", "2020-05-31 00:00:01"),  # just after: test
            ("a", "p4", "2020-06-30"),  # on test_end: test
            ("a", "p3", "2020-06-12"),  # repeat purchase: one set entry
            ("a", "p5", "2020-07-01"),  # after test_end
            ("b", "p1", "2020-06-05"),  # no history: not tested
            ("c", "p1", "2020-04-01"),  # history but no test purchase: absent
        ]
    )
    assert test_set(frame, TRAIN_END, "2020-06-30") == {"a": {"p3", "p4"}}
    assert test_set(frame, TRAIN_END, "2020-06-30", min_history=3) == {}
    with pytest.raises(ValueError, match="must be after train_end"):
        test_set(frame, TRAIN_END, "2020-05-01")


def test_histories_products_and_index(interactions):
    history = customer_histories(interactions, TRAIN_END, customers=["a", "c", "zz"], max_items=3)
    assert history == {"a": ["p8", "p7", "p6"], "c": ["q7", "q6", "q5"]}
    products = window_products(interactions, "2020-03-05")
    assert list(products) == ["p1", "p2"]
    index = item_index(["p2", "p1", "p2"])
    assert index == {"p1": 1, "p2": 2}
    np.testing.assert_array_equal(
        encode_items([["p2", "new"], ["p1", "p1"]], index), [[2, 0], [1, 1]]
    )


# -- metrics --------------------------------------------------------------------------------

RECOMMENDED = {
    "u1": ["A", "B", "C", "D"],
    "u2": ["E", "F", "G", "H"],
    "u3": ["A", "A", "B"],
    "u4": ["X"],  # bought nothing: not scored
}
RELEVANT = {"u1": {"A", "C", "Z"}, "u2": {"H"}, "u3": {"B"}, "u5": set()}


def test_precision_recall_at_k_by_hand():
    # k=3: u1 top [A,B,C] 2 hits -> P 2/3, R 2/3; u2 [E,F,G] 0 hits; u3 {A,B} 1 hit -> P 1/3, R 1
    at3 = precision_recall_at_k(RECOMMENDED, RELEVANT, k=3)
    assert list(at3.customers) == ["u1", "u2", "u3"]
    np.testing.assert_allclose(at3.precision_per_customer, [2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(at3.recall_per_customer, [2 / 3, 0, 1])
    assert at3.precision == pytest.approx(1 / 3)
    assert at3.recall == pytest.approx(5 / 9)
    # k=1: only u1's A hits -> P 1/3, R (1/3)/3; k=10 divides by 10 even for short lists
    at1 = precision_recall_at_k(RECOMMENDED, RELEVANT, k=1)
    assert (at1.precision, at1.recall) == pytest.approx((1 / 3, 1 / 9))
    at10 = precision_recall_at_k(RECOMMENDED, RELEVANT, k=10)
    np.testing.assert_allclose(at10.precision_per_customer, [0.2, 0.1, 0.1])
    assert at10.as_dict() == {
        "precision_at_10": pytest.approx(0.4 / 3),
        "recall_at_10": pytest.approx((2 / 3 + 1 + 1) / 3),
        "customers": 3,
    }


def test_precision_recall_errors():
    with pytest.raises(ValueError, match="no recommendations, e.g. \\['u2'\\]"):
        precision_recall_at_k({"u1": ["A"]}, {"u1": {"A"}, "u2": {"B"}})
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        precision_recall_at_k(RECOMMENDED, RELEVANT, k=0)
    with pytest.raises(ValueError, match="nothing to score"):
        precision_recall_at_k(RECOMMENDED, {"u1": set()})


def test_cold_start_products():
    frame = _frame(
        [
            ("a", "old", "2020-05-01"),
            ("a", "new", "2020-06-02"),
            ("b", "old", "2020-06-03"),
            ("b", "edge", "2020-05-31"),  # on train_end: seen in training
            ("b", "new2", "2020-05-31 00:00:01"),
        ]
    )
    assert cold_start_products(frame, TRAIN_END) == {"new", "new2"}
    assert cold_start_products(frame, TRAIN_END, catalogue=["old", "new", "never"]) == {
        "new",
        "never",
    }
    # a product seen only before train_start is also unknown to the model
    assert cold_start_products(frame, TRAIN_END, train_start="2020-05-01") == {"old", "new", "new2"}


def test_cold_start_metrics_by_hand():
    recommended = {"u1": ["A", "B", "D", "C", "Z"], "u2": ["G", "H"], "u3": ["B"]}
    cold = {"C", "Z", "G"}
    # relevant limited to cold: u1 {C, Z}; u2 {H} and u3 {B} have none -> only u1 is scored.
    at3 = cold_start_metrics(recommended, RELEVANT, cold, k=3)
    assert list(at3.customers) == ["u1"]
    assert (at3.precision, at3.recall) == (0.0, 0.0)  # top 3 of all products: A, B, D
    ranked = cold_start_metrics(recommended, RELEVANT, cold, k=3, among_cold_only=True)
    assert (ranked.precision, ranked.recall) == pytest.approx((2 / 3, 1.0))  # [C, Z]
    with pytest.raises(ValueError, match="no customer bought a cold-start product"):
        cold_start_metrics(recommended, RELEVANT, {"nothing"})


# -- significance -----------------------------------------------------------------------------


def test_paired_test_by_hand():
    # d = [2, 3, 1, 4]: mean 2.5, var 5/3 -> t = 2.5 / sqrt(5/12) = sqrt(15), df 3;
    # two-sided p for df 3: 1 - (2/pi) (atan(t/sqrt3) + (t/sqrt3) / (1 + t^2/3))
    expected_p = 1 - (2 / math.pi) * (math.atan(math.sqrt(5)) + math.sqrt(5) / 6)
    result = paired_test([3, 5, 4, 6], [1, 2, 3, 2])
    assert result["t"] == pytest.approx(math.sqrt(15))
    assert result["p_value"] == pytest.approx(expected_p)
    assert result["mean_diff"] == pytest.approx(2.5)
    assert result["n"] == 4
    t, p = _paired_t_numpy(np.array([3.0, 5, 4, 6]), np.array([1.0, 2, 3, 2]))
    assert (t, p) == pytest.approx((math.sqrt(15), expected_p))


def test_paired_test_numpy_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 40):
        a, b = rng.normal(size=n), rng.normal(size=n) + 0.3
        ref = stats.ttest_rel(a, b)
        t, p = _paired_t_numpy(a, b)
        assert t == pytest.approx(ref.statistic, rel=1e-10)
        assert p == pytest.approx(ref.pvalue, rel=1e-8)
    assert _paired_t_numpy(np.array([2.0, 3, 4]), np.array([1.0, 2, 3])) == (math.inf, 0.0)
    t, p = _paired_t_numpy(np.ones(3), np.ones(3))
    assert math.isnan(t) and math.isnan(p)


def test_paired_test_treats_rounding_noise_as_no_spread():
    # 0.15 - 0.1 and 0.1 - 0.05 differ in the last bits; the differences are constant.
    result = paired_test([0.15, 0.1], [0.1, 0.05])
    assert result["t"] == math.inf and result["p_value"] == 0.0
    assert result["mean_diff"] == pytest.approx(0.05)
    same = paired_test([0.3, 0.2], [0.3, 0.2])
    assert math.isnan(same["t"]) and math.isnan(same["p_value"]) and same["mean_diff"] == 0.0


def test_paired_test_errors():
    with pytest.raises(ValueError, match="equal length, got \\(2,\\) and \\(3,\\)"):
        paired_test([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2 runs, got 1"):
        paired_test([1], [2])


# -- popularity ---------------------------------------------------------------------------------


def test_popularity_ranking_in_window():
    rows = [
        ("c1", "X", "2020-05-01"),  # on the window's exclusive start: not counted
        *[(f"c{i}", "X", "2020-05-10") for i in range(3)],
        *[(f"c{i}", "Y", "2020-05-20") for i in range(2)],
        ("c9", "Y", "2020-05-31"),  # on train_end: counted
        ("c1", "Z", "2020-05-02"),
        *[(f"c{i}", "W", "2020-05-15") for i in range(2)],
        *[(f"c{i}", "W", "2020-04-15") for i in range(5)],  # before the window
        *[(f"c{i}", "V", "2020-06-01") for i in range(10)],  # after train_end
    ]
    frame = _frame(rows)
    # X 3, Y 3 (tie -> product id), W 2, Z 1
    assert popularity_recommender(frame, TRAIN_END) == ["X", "Y", "W", "Z"]
    assert popularity_recommender(frame, TRAIN_END, k=2) == ["X", "Y"]
    # whole history up to train_end: W 7, X 4, Y 3, Z 1
    assert popularity_recommender(frame, TRAIN_END, window_days=None) == ["W", "X", "Y", "Z"]
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert popularity_recommender(shuffled, TRAIN_END) == ["X", "Y", "W", "Z"]
    recs = popularity_recommendations(["X", "Y", "W"], ["u1", "u2"], k=2)
    assert recs == {"u1": ["X", "Y"], "u2": ["X", "Y"]}
    with pytest.raises(ValueError, match="window_days must be a positive integer or None, got 0"):
        popularity_recommender(frame, TRAIN_END, window_days=0)


# -- Table 3 -------------------------------------------------------------------------------------


def _run(p: float, r: float) -> dict:
    return {"precision_at_10": p, "recall_at_10": r}


def test_table3_shape_and_values():
    runs = {
        "hybrid": [_run(0.3, 0.5), _run(0.5, 0.7)],
        "popularity": [_run(0.2, 0.4)],
        "cf": [_run(0.25, 0.45), _run(0.25, 0.55)],
    }
    cold = {"hybrid": [_run(0.1, 0.2), _run(0.1, 0.4)], "cf": [_run(0.0, 0.0), _run(0.0, 0.0)]}
    report = table3(runs, cold_start=cold)
    assert set(report) == {"variants", "cold_start", "significance"}
    assert list(report["variants"]) == ["popularity", "cf", "hybrid"]
    hybrid = report["variants"]["hybrid"]
    assert set(hybrid) == {
        "precision_at_10",
        "recall_at_10",
        "precision_at_10_std",
        "recall_at_10_std",
        "runs",
    }
    assert hybrid["precision_at_10"] == pytest.approx(0.4)
    assert hybrid["precision_at_10_std"] == pytest.approx(math.sqrt(0.02))  # ddof 1
    assert hybrid["runs"] == 2
    assert report["variants"]["popularity"]["precision_at_10_std"] == 0.0
    assert list(report["cold_start"]) == ["cf", "hybrid"]
    assert report["cold_start"]["hybrid"]["recall_at_10"] == pytest.approx(0.3)

    sig = report["significance"]
    assert list(sig) == ["cf_vs_popularity", "hybrid_vs_popularity", "hybrid_vs_cf"]
    # hybrid vs repeated popularity: d = [0.1, 0.3] -> mean 0.2, sd sqrt(0.02), t = 0.2 / 0.1
    test = sig["hybrid_vs_popularity"]["precision_at_10"]
    assert test["t"] == pytest.approx(2.0)
    assert test["mean_diff"] == pytest.approx(0.2)
    assert test["n"] == 2
    # cf precision differs from popularity by exactly 0.05 in both runs: t = inf -> null
    assert sig["cf_vs_popularity"]["precision_at_10"]["t"] is None
    json.dumps(report, allow_nan=False)

    text = markdown_table(report)
    assert "| hybrid | 2 | 0.40000 ± 0.14142 | 0.60000 ± 0.14142 |" in text
    assert "| popularity | 1 | 0.20000 | 0.40000 |" in text
    assert "Cold-start products" in text
    assert "| hybrid vs popularity | precision@10 | +0.20000 | 2.000 |" in text


def test_table3_accepts_atk_and_checks_runs():
    at = precision_recall_at_k(RECOMMENDED, RELEVANT, k=10)
    report = table3({"cf": [at, at]})
    assert report["variants"]["cf"]["precision_at_10"] == pytest.approx(at.precision)
    assert report["cold_start"] == {} and report["significance"] == {}
    with pytest.raises(ValueError, match="runs\\['cf'\\]\\[0\\] lacks \\['recall_at_10'\\]"):
        table3({"cf": [{"precision_at_10": 0.1}]})
    with pytest.raises(ValueError, match="'hybrid' has 3 runs and 'cf' 2"):
        table3({"cf": [_run(0.1, 0.1)] * 2, "hybrid": [_run(0.2, 0.2)] * 3})
