"""benchmarks/repeat_baseline.py against a hand-worked split."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from benchmarks.repeat_baseline import repeat_baseline

pytestmark = pytest.mark.unit


def test_recent_distinct_purchases_scored_like_table3():
    rows = [
        # c1: bought a, b, a (newest a), then buys a again and z in the test period.
        ("c1", "a", "2020-05-01"),
        ("c1", "b", "2020-05-10"),
        ("c1", "a", "2020-05-20"),
        ("c1", "a", "2020-06-03"),
        ("c1", "z", "2020-06-04"),
        # c2: a history of twelve products; buys p0 (its oldest: outside the top 2) and p11.
        *[("c2", f"p{i}", f"2020-04-{i + 1:02d}") for i in range(12)],
        ("c2", "p0", "2020-06-10"),
        ("c2", "p11", "2020-06-11"),
        # c3 buys in the test period without a history; c4 has a history, buys nothing.
        ("c3", "a", "2020-06-05"),
        ("c4", "b", "2020-05-05"),
        ("c1", "b", "2020-07-15"),  # after the test period
    ]
    frame = pd.DataFrame(rows, columns=["customer_id", "product_id", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    out = repeat_baseline(frame, datetime(2020, 5, 31), test_days=30, k=2)
    # c1: top 2 = [a, b], relevant {a, z}: 1 hit. c2: top 2 = [p11, p10], relevant {p0, p11}.
    assert out == {
        "test_customers": 2,
        "test_pairs": 4,
        "repeat_pairs": 3,  # a (c1), p0 and p11 (c2)
        "precision_at_2": pytest.approx((1 / 2 + 1 / 2) / 2),
        "recall_at_2": pytest.approx((1 / 2 + 1 / 2) / 2),
    }
