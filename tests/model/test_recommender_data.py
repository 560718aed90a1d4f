"""Recommender data (training examples, time split, test set), the sales timeline, metrics,
popularity and Table 3."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from models.recommender.items import encode_items, item_index, to_micros, utc_timestamp
from training.recommender.baselines import popularity_recommendations, popularity_recommender
from training.recommender.data import (
    customer_histories,
    events,
    split_by_time,
    test_set,
    training_examples,
    window_products,
)
from training.recommender.evaluation import (
    MODES,
    _paired_t_numpy,
    cold_start_metrics,
    cold_start_products,
    markdown_table,
    paired_test,
    precision_recall_at_k,
    table3,
)
from training.recommender.timeline import MICROS_PER_DAY, SalesTimeline

pytestmark = pytest.mark.unit

TRAIN_END = "2020-05-31"  # midnight UTC; the last-month positive window is (05-01, 05-31]


def _frame(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "product_id", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    frame["kind"] = "purchase"
    return frame


def _micros(value) -> int:
    return pd.Timestamp(value, tz="UTC").value // 1000


# a: p1 is bought twice (a rebuy counts once in a history); p4 and p5 share a basket (neither is
#    the other's history); p6 sits exactly on train_end (inclusive); p9 is after train_end.
# b: r1 and r2 share b's first basket (no earlier purchase: no example); r3 is recorded twice
#    at the same time (one example).
ROWS = [
    ("a", "p1", "2020-03-01"),
    ("a", "p2", "2020-03-05"),
    ("a", "p1", "2020-04-01"),
    ("a", "p3", "2020-05-10"),
    ("a", "p5", "2020-05-20"),
    ("a", "p4", "2020-05-20"),
    ("a", "p6", "2020-05-31"),
    ("a", "p9", "2020-06-01"),
    ("b", "r2", "2020-05-15"),
    ("b", "r1", "2020-05-15"),
    ("b", "r3", "2020-05-16"),
    ("b", "r3", "2020-05-16"),
]
_ = None  # padding of a history shorter than n_recent
# Rolling, n_recent 3: every purchase with at least one distinct strictly-earlier product.
ROLLING = [
    ("a", "p2", "2020-03-05", ["p1", _, _]),
    ("a", "p1", "2020-04-01", ["p2", "p1", _]),
    ("a", "p3", "2020-05-10", ["p1", "p2", _]),  # p1 (04-01), p2, p1 (03-01): p1 once
    ("a", "p4", "2020-05-20", ["p3", "p1", "p2"]),
    ("a", "p5", "2020-05-20", ["p3", "p1", "p2"]),  # p4, same basket, is not in it
    ("a", "p6", "2020-05-31", ["p5", "p4", "p3"]),  # same-time ties: product descending
    ("b", "r3", "2020-05-16", ["r2", "r1", _]),
]


@pytest.fixture
def interactions() -> pd.DataFrame:
    return _frame(ROWS)


def _rows(ex) -> list[tuple]:
    """(customer, positive, day, history) per example, the history padded with None."""
    days = pd.to_datetime(ex.timestamps).strftime("%Y-%m-%d")
    return [
        (c, p, d, list(h))
        for c, p, d, h in zip(ex.customer_ids, ex.positives, days, ex.histories, strict=True)
    ]


# -- training examples --------------------------------------------------------------------


def test_training_examples_rolling_rows_and_histories_by_hand(interactions):
    ex = training_examples(interactions, TRAIN_END, n_recent=3)
    assert len(ex) == 7
    assert _rows(ex) == ROLLING
    assert ex.histories.shape == (7, 3) and ex.histories.dtype == object
    expected_masks = [[h is not None for h in row[3]] for row in ROLLING]
    np.testing.assert_array_equal(ex.masks, np.asarray(expected_masks, np.float32))
    assert ex.masks.dtype == np.float32
    assert ex.timestamps.dtype == np.dtype("datetime64[us]")
    # Each example's features are read 1 µs before its positive.
    assert ex.cutoffs.dtype == np.int64
    assert ex.cutoffs.tolist() == [_micros(day) - 1 for _, _, day, _ in ROLLING]


def test_training_examples_last_month_keeps_the_positives_of_the_last_days(interactions):
    # (05-01, 05-31]: p3, p4, p5, p6 and r3; their histories still read the whole window.
    ex = training_examples(interactions, TRAIN_END, scheme="last_month", n_recent=3)
    assert _rows(ex) == ROLLING[2:]
    # 60 days, (04-01, 05-31]: p1 on 04-01 sits on the exclusive start and is left out.
    wider = training_examples(
        interactions, TRAIN_END, scheme="last_month", positive_days=60, n_recent=3
    )
    assert _rows(wider) == ROLLING[2:]
    widest = training_examples(
        interactions, TRAIN_END, scheme="last_month", positive_days=61, n_recent=3
    )
    assert _rows(widest) == ROLLING[1:]


def test_training_examples_min_history_and_known(interactions):
    # Only positives with 3 distinct earlier products: p4, p5, p6 (r3 has 2).
    ex = training_examples(interactions, TRAIN_END, n_recent=3, min_history=3)
    assert _rows(ex) == ROLLING[3:6]
    # `known` limits what may enter a history; a product outside it is skipped, not counted.
    ex = training_examples(interactions, TRAIN_END, n_recent=2, known={"p1", "p3", "r1"})
    assert _rows(ex) == [
        ("a", "p2", "2020-03-05", ["p1", _]),
        ("a", "p1", "2020-04-01", ["p1", _]),
        ("a", "p3", "2020-05-10", ["p1", _]),
        ("a", "p4", "2020-05-20", ["p3", "p1"]),
        ("a", "p5", "2020-05-20", ["p3", "p1"]),
        ("a", "p6", "2020-05-31", ["p3", "p1"]),
        ("b", "r3", "2020-05-16", ["r1", _]),
    ]


def test_training_examples_are_independent_of_the_row_order(interactions):
    first = training_examples(interactions, TRAIN_END, n_recent=3)
    shuffled = interactions.sample(frac=1.0, random_state=1).reset_index(drop=True)
    again = training_examples(shuffled, TRAIN_END, n_recent=3)
    assert _rows(again) == _rows(first)
    np.testing.assert_array_equal(again.cutoffs, first.cutoffs)


def test_a_repeated_row_is_one_example(interactions):
    ex = training_examples(interactions, TRAIN_END, n_recent=3)
    assert list(ex.positives).count("r3") == 1
    tripled = pd.concat([interactions, interactions.iloc[[6, 6]]], ignore_index=True)  # p6 x3
    assert _rows(training_examples(tripled, TRAIN_END, n_recent=3)) == ROLLING


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
    base = training_examples(interactions, TRAIN_END, n_recent=3)
    leaked = training_examples(pd.concat([interactions, later]), TRAIN_END, n_recent=3)
    assert _rows(leaked) == _rows(base) == ROLLING


def test_training_examples_train_end_is_inclusive(interactions):
    ex = training_examples(interactions, "2020-05-30", n_recent=3)
    assert _rows(ex) == ROLLING[:5] + ROLLING[6:]  # p6 (05-31) is after the window
    ex = training_examples(interactions, pd.Timestamp("2020-05-31", tz="UTC"), n_recent=3)
    assert "p6" in set(ex.positives)
    # 01:59:59 in Paris (UTC+2) is 05-30 23:59:59 UTC: before p6.
    ex = training_examples(interactions, pd.Timestamp("2020-05-31 01:59:59", tz="Europe/Paris"))
    assert "p6" not in set(ex.positives)


def test_training_examples_with_train_start(interactions):
    # (03-05, 05-31]: p2 sits on the exclusive start and is never read; a's p1 (04-01) is
    # then its first purchase.
    ex = training_examples(interactions, TRAIN_END, n_recent=3, train_start="2020-03-05")
    assert _rows(ex) == [
        ("a", "p3", "2020-05-10", ["p1", _, _]),
        ("a", "p4", "2020-05-20", ["p3", "p1", _]),
        ("a", "p5", "2020-05-20", ["p3", "p1", _]),
        ("a", "p6", "2020-05-31", ["p5", "p4", "p3"]),
        ROLLING[6],
    ]


def test_training_examples_without_any_example_have_the_right_shapes(interactions):
    ex = training_examples(interactions, "2020-03-02", n_recent=4)  # only a's first purchase
    assert len(ex) == 0
    assert ex.histories.shape == (0, 4) and ex.masks.shape == (0, 4)
    assert ex.positives.shape == ex.customer_ids.shape == ex.cutoffs.shape == (0,)
    assert ex.timestamps.dtype == np.dtype("datetime64[us]")


def test_training_examples_errors_quote_the_values(interactions):
    with pytest.raises(ValueError, match="lacks columns \\['timestamp'\\]"):
        training_examples(interactions.drop(columns="timestamp"), TRAIN_END)
    with pytest.raises(ValueError, match="n_recent must be an integer >= 1, got 0"):
        training_examples(interactions, TRAIN_END, n_recent=0)
    with pytest.raises(ValueError, match="min_history must be an integer >= 1, got 0"):
        training_examples(interactions, TRAIN_END, min_history=0)
    with pytest.raises(ValueError, match="min_history 4 cannot exceed n_recent 3"):
        training_examples(interactions, TRAIN_END, n_recent=3, min_history=4)
    with pytest.raises(ValueError, match="positive_days must be an integer >= 1, got 0"):
        training_examples(interactions, TRAIN_END, positive_days=0)
    with pytest.raises(ValueError, match="scheme must be one of .*got 'weekly'"):
        training_examples(interactions, TRAIN_END, scheme="weekly")
    with pytest.raises(ValueError, match="train_end must be a date or timestamp, got 'soon'"):
        training_examples(interactions, "soon")
    with pytest.raises(ValueError, match="train_start 2020-06-01 00:00:00\\+00:00 must be before"):
        training_examples(interactions, TRAIN_END, train_start="2020-06-01")
    with pytest.raises(ValueError, match="null values in \\['product_id'\\]"):
        training_examples(interactions.assign(product_id=None), TRAIN_END)


def test_subset_and_split_by_time(interactions):
    ex = training_examples(interactions, TRAIN_END, n_recent=3)
    # Positives at or before the boundary train, those after it validate.
    before, after = split_by_time(ex, "2020-05-20")
    assert before.tolist() == [True, True, True, True, True, False, True]
    np.testing.assert_array_equal(after, ~before)
    valid = ex.subset(after)
    assert _rows(valid) == [ROLLING[5]]
    assert valid.cutoffs.tolist() == [_micros("2020-05-31") - 1]
    assert valid.masks.tolist() == [[1.0, 1.0, 1.0]]
    assert _rows(ex.subset(np.array([6, 0]))) == [ROLLING[6], ROLLING[0]]
    # One microsecond before p6: p6 validates; on it: p6 trains.
    _, after = split_by_time(ex, pd.Timestamp("2020-05-31", tz="UTC") - pd.Timedelta(1, "us"))
    assert after.sum() == 1
    assert split_by_time(ex, "2020-05-31")[1].sum() == 0
    with pytest.raises(ValueError, match="boundary must be a date or timestamp, got 'x'"):
        split_by_time(ex, "x")


def test_events_are_sorted_by_customer_time_then_product():
    frame = _frame(
        [
            ("b", "a", "2020-05-02"),
            ("a", "z", "2020-05-01"),  # bought first: comes first though its id is the highest
            ("a", "c", "2020-05-03"),
            ("a", "y", "2020-05-02"),
            ("a", "x", "2020-05-02"),  # same time as y: product order
            ("a", "late", "2020-06-01"),
        ]
    )
    got = events(frame, end=TRAIN_END)
    assert list(got.index) == [0, 1, 2, 3, 4]
    assert list(zip(got["customer_id"], got["product_id"])) == [
        ("a", "z"),
        ("a", "x"),
        ("a", "y"),
        ("a", "c"),
        ("b", "a"),
    ]
    assert str(got["timestamp"].dt.tz) == "UTC"
    assert list(got.columns) == ["customer_id", "product_id", "timestamp"]
    windowed = events(frame, end="2020-05-02", start="2020-05-01")  # (05-01, 05-02]
    assert list(windowed["product_id"]) == ["x", "y", "a"]
    # So a history is the most recent purchases, not the highest product ids.
    assert customer_histories(frame, TRAIN_END) == {"a": ["c", "y", "x", "z"], "b": ["a"]}


def test_utc_timestamp():
    assert utc_timestamp("2020-05-31") == pd.Timestamp("2020-05-31 00:00", tz="UTC")
    assert utc_timestamp(pd.Timestamp("2020-05-31 02:00", tz="Europe/Paris")) == pd.Timestamp(
        "2020-05-31 00:00", tz="UTC"
    )
    with pytest.raises(ValueError, match="when must be a date or timestamp, got None"):
        utc_timestamp(None, "when")


# -- sales timeline ---------------------------------------------------------------------------


def _sales() -> pd.DataFrame:
    return _frame(
        [
            ("c1", "x", "2020-01-01"),
            ("c2", "x", "2020-05-25"),
            ("c3", "x", "2020-05-31"),
            ("c4", "x", "2020-05-31"),  # two sales on one day: both count
            ("c1", "y", "2020-05-30"),
            ("c2", "w", "2020-05-30"),  # outside the catalogue: ignored
            ("c2", "w", "2020-05-31"),
        ]
    )


def test_timeline_counts_sales_up_to_each_cutoff():
    timeline = SalesTimeline(_sales(), ["x", "y", "z"])
    assert len(timeline) == 3 and timeline.windows == (7, 30, 90)
    end = _micros("2020-05-31")
    # Sales <= c: at midnight of 05-31 x has all 4; one microsecond earlier only 2.
    assert timeline.sales_up_to([0, 1, 2], end).tolist() == [4, 1, 0]
    assert timeline.sales_up_to([0, 1, 2], end - 1).tolist() == [2, 1, 0]
    assert timeline.sales_up_to(0, _micros("2019-12-31")).tolist() == 0
    # Broadcast: rows (1, 2) against cut-offs (3, 1) -> (3, 2).
    cuts = np.array([[_micros("2020-01-01") - 1], [_micros("2020-01-01")], [end]])
    assert timeline.sales_up_to([[0, 1]], cuts).tolist() == [[0, 0], [1, 0], [4, 1]]


def test_timeline_popularity_windows_are_open_at_the_start_and_closed_at_the_cutoff():
    timeline = SalesTimeline(_sales(), ["x", "y", "z"])
    end = _micros("2020-05-31")
    # (c - w, c]: x's 2020-01-01 sale is outside 90 days; 05-25 and 05-31 (x2) are inside 7.
    np.testing.assert_array_equal(
        timeline.popularity([0, 1, 2], end), [[3, 3, 3], [1, 1, 1], [0, 0, 0]]
    )
    # Read 1 µs before 05-31 (an example whose positive is that sale): neither 05-31 sale.
    np.testing.assert_array_equal(timeline.popularity([0], end - 1), [[1, 1, 1]])
    # At 06-01 the 7-day window (05-25, 06-01] no longer holds 05-25; 30 days still does.
    np.testing.assert_array_equal(timeline.popularity([0], _micros("2020-06-01")), [[2, 3, 3]])
    # x's 01-01 sale: 89 days before 03-30 (in the 90-day window); 90 days before 03-31, on
    # the window's exclusive start (out).
    np.testing.assert_array_equal(timeline.popularity([0], _micros("2020-03-30")), [[0, 0, 1]])
    np.testing.assert_array_equal(timeline.popularity([0], _micros("2020-03-31")), [[0, 0, 0]])
    assert timeline.popularity([0], end).dtype == np.float32
    short = SalesTimeline(_sales(), ["x"], windows=(1,))
    np.testing.assert_array_equal(short.popularity([0], end), [[2]])  # (05-30, 05-31]


def test_timeline_recency_is_years_since_the_first_sale_up_to_the_cutoff():
    timeline = SalesTimeline(_sales(), ["x", "y", "z"])
    end = _micros("2020-05-31")
    # x: 2020-01-01 -> 05-31 is 31 + 29 + 31 + 30 + 30 = 151 days; y: one day; z: never.
    np.testing.assert_allclose(
        timeline.recency_years([0, 1, 2], end), [151 / 365.25, 1 / 365.25, 0.0], rtol=1e-6
    )
    # Before the first sale, and exactly at it: 0.
    np.testing.assert_array_equal(
        timeline.recency_years([0, 0], [_micros("2019-12-31"), _micros("2020-01-01")]), [0, 0]
    )
    assert timeline.recency_years([1], _micros("2020-05-30") - 1).tolist() == [0.0]
    blocks = timeline.blocks([0, 1], [end, end])
    assert sorted(blocks) == ["popularity", "recency"]
    np.testing.assert_allclose(blocks["popularity"], np.log1p([[3, 3, 3], [1, 1, 1]]), rtol=1e-6)
    assert blocks["recency"].shape == (2, 1)
    np.testing.assert_allclose(blocks["recency"][:, 0], [151 / 365.25, 1 / 365.25], rtol=1e-6)
    # (…, 3) and (…, 1) for any leading shape, e.g. (rows 1 x cut-offs 2) -> (2, 2).
    grid = timeline.blocks(np.array([[0, 2]]), np.array([[end], [end - MICROS_PER_DAY * 7]]))
    assert grid["popularity"].shape == (2, 2, 3) and grid["recency"].shape == (2, 2, 1)


def test_timeline_ignores_products_outside_the_catalogue_and_row_order():
    sales = _sales()
    timeline = SalesTimeline(sales.sample(frac=1.0, random_state=3), ["z", "x"])
    end = _micros("2020-05-31")
    assert timeline.sales_up_to([0, 1], end).tolist() == [0, 4]  # w, y are not rows
    empty = SalesTimeline(sales.iloc[:0], ["x"])
    assert empty.sales_up_to([0], end).tolist() == [0]
    assert empty.recency_years([0], end).tolist() == [0.0]
    assert to_micros(
        ["2020-05-31", pd.Timestamp("2020-05-31 02:00", tz="Europe/Paris")]
    ).tolist() == [
        end,
        end,
    ]


# -- test set, histories, helpers -------------------------------------------------------------


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
    # Full histories by default, most recent first (same-time ties: product descending),
    # repeats kept (the customer vector's `recent_items` drops them).
    assert customer_histories(interactions, TRAIN_END) == {
        "a": ["p6", "p5", "p4", "p3", "p1", "p2", "p1"],
        "b": ["r3", "r3", "r2", "r1"],
    }
    history = customer_histories(interactions, TRAIN_END, customers=["a", "zz"], max_items=3)
    assert history == {"a": ["p6", "p5", "p4"]}
    with pytest.raises(ValueError, match="max_items must be an integer >= 1, got 0"):
        customer_histories(interactions, TRAIN_END, max_items=0)
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
    assert at3.hits == 3
    # k=1: only u1's A hits -> P 1/3, R (1/3)/3; k=10 divides by 10 even for short lists
    at1 = precision_recall_at_k(RECOMMENDED, RELEVANT, k=1)
    assert (at1.precision, at1.recall) == pytest.approx((1 / 3, 1 / 9))
    assert at1.hits == 1
    at10 = precision_recall_at_k(RECOMMENDED, RELEVANT, k=10)
    np.testing.assert_allclose(at10.precision_per_customer, [0.2, 0.1, 0.1])
    # hits: u1 A and C, u2 H (4th), u3 B -> 4
    assert at10.as_dict() == {
        "precision_at_10": pytest.approx(0.4 / 3),
        "recall_at_10": pytest.approx((2 / 3 + 1 + 1) / 3),
        "customers": 3,
        "hits": 4,
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
    assert ranked.hits == 2
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
    assert "| variant | runs | precision@10 | recall@10 | hits per run | customers |" in text
    # Runs without hit counts show dashes in the two new columns.
    assert "| hybrid | 2 | 0.40000 ± 0.14142 | 0.60000 ± 0.14142 | – | – |" in text
    assert "| popularity | 1 | 0.20000 | 0.40000 | – | – |" in text
    assert "Cold-start products" in text
    assert "| hybrid vs popularity | precision@10 | +0.20000 | 2.000 |" in text


def test_table3_carries_hits_per_run_and_customers():
    at = precision_recall_at_k(RECOMMENDED, RELEVANT, k=10)  # 4 hits over 3 customers
    other = {**at.as_dict(), "hits": 7}
    report = table3({"cf": [at, at], "hybrid": [at, other]})
    cf = report["variants"]["cf"]
    assert cf["precision_at_10"] == pytest.approx(at.precision)
    assert cf["hits_per_run"] == [4, 4] and cf["customers"] == 3
    assert "hits" not in cf  # counts are not averaged like the metrics
    assert report["variants"]["hybrid"]["hits_per_run"] == [4, 7]
    assert report["cold_start"] == {}
    json.dumps(report, allow_nan=False)
    text = markdown_table(report)
    assert "| cf | 2 | 0.13333 ± 0.00000 | 0.88889 ± 0.00000 | 4 | 3 |" in text
    assert "| hybrid | 2 | 0.13333 ± 0.00000 | 0.88889 ± 0.00000 | 4–7 (mean 5.5) | 3 |" in text
    assert MODES == ("all_products", "new_to_customer")


def test_table3_checks_runs():
    with pytest.raises(ValueError, match="runs\\['cf'\\]\\[0\\] lacks \\['recall_at_10'\\]"):
        table3({"cf": [{"precision_at_10": 0.1}]})
    with pytest.raises(ValueError, match="'hybrid' has 3 runs and 'cf' 2"):
        table3({"cf": [_run(0.1, 0.1)] * 2, "hybrid": [_run(0.2, 0.2)] * 3})
