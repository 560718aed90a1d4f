"""Training and test data of the recommender, as in the paper's Section 3 (pure pandas/numpy).

Time semantics, used by every function here: a window ending at `train_end` is INCLUSIVE of
`train_end` (`timestamp <= train_end`) and exclusive of its start (`timestamp > train_start`);
the test period is `(train_end, test_end]`. An interaction stamped exactly `train_end` is training
data, one a nanosecond later is test data. Times are UTC: naive timestamps (and a date-only
`train_end` such as "2020-05-31", i.e. that day's midnight) are read as UTC. H&M-layout data is
stamped at midnight of the day, so `train_end="2020-05-31"` keeps all of May 31 in training.

Inputs are DataFrames with the `interactions` contract columns `customer_id`, `product_id` and
`timestamp` (other columns are ignored). Rows are sorted by (customer, timestamp, product) first,
so results depend on the rows, not on their order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.recommender.items import utc_timestamp

COLUMNS = ("customer_id", "product_id", "timestamp")



def events(interactions: pd.DataFrame, end=None, start=None) -> pd.DataFrame:
    """The (customer_id, product_id, timestamp) rows with `start < timestamp <= end` (either bound
    may be None), timestamps as UTC, sorted by (customer, timestamp, product), index 0..n-1."""
    if not isinstance(interactions, pd.DataFrame):
        raise ValueError(f"interactions must be a pandas DataFrame, got {type(interactions)!r}")
    missing = [c for c in COLUMNS if c not in interactions.columns]
    if missing:
        raise ValueError(
            f"interactions lacks columns {missing!r} (has {list(interactions.columns)!r})"
        )
    frame = interactions.loc[:, list(COLUMNS)].copy()
    nulls = [c for c in COLUMNS if frame[c].isna().any()]
    if nulls:
        raise ValueError(f"interactions has null values in {nulls!r}")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    keep = np.ones(len(frame), dtype=bool)
    if end is not None:
        keep &= (frame["timestamp"] <= utc_timestamp(end, "end")).to_numpy()
    if start is not None:
        keep &= (frame["timestamp"] > utc_timestamp(start, "start")).to_numpy()
    # (customer, time, product): histories read "most recent first" off this order. (It was
    # sorted by COLUMNS — customer, product, time — so every "most recent" history was in
    # fact the customer's highest product ids.)
    frame = frame[keep].sort_values(["customer_id", "timestamp", "product_id"], kind="mergesort")
    return frame.reset_index(drop=True)


def _check_window(train_end, train_start):
    end = utc_timestamp(train_end, "train_end")
    start = None if train_start is None else utc_timestamp(train_start, "train_start")
    if start is not None and start >= end:
        raise ValueError(f"train_start {start} must be before train_end {end}")
    return end, start


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _run_starts(*keys: np.ndarray) -> np.ndarray:
    """For each row of sorted `keys`, the index of the first row of its run of equal keys."""
    n = keys[0].size
    new = np.ones(n, dtype=bool)
    if n > 1:
        same = np.ones(n - 1, dtype=bool)
        for key in keys:
            same &= key[1:] == key[:-1]
        new[1:] = ~same
    starts = np.flatnonzero(new)
    return starts[np.cumsum(new) - 1]


SCHEMES = ("last_month", "rolling")


@dataclass(frozen=True)
class TrainingExamples:
    """One row per (customer, positive purchase).

    `customer_ids` (n,); `histories` (n, n_recent) object: the customer's most recent distinct
    products strictly before the positive (`models.ranking.recent_items`, most recent first,
    None where the history is shorter; `masks` (n, n_recent) float32 1/0 says which are real);
    `positives` (n,) product ids; `timestamps` (n,) the positives' times (datetime64[us], UTC);
    `cutoffs` (n,) int64 microseconds: the time the example's features are read at, 1 µs
    before its positive, so nothing at or after the positive counts.
    """

    customer_ids: np.ndarray
    histories: np.ndarray
    positives: np.ndarray
    timestamps: np.ndarray
    masks: np.ndarray
    cutoffs: np.ndarray

    def __len__(self) -> int:
        return int(self.positives.size)

    def subset(self, rows) -> TrainingExamples:
        """The examples selected by `rows` (bool mask or index array)."""
        return TrainingExamples(
            self.customer_ids[rows],
            self.histories[rows],
            self.positives[rows],
            self.timestamps[rows],
            self.masks[rows],
            self.cutoffs[rows],
        )


def training_examples(
    interactions: pd.DataFrame,
    train_end,
    scheme: str = "rolling",
    positive_days: int = 30,
    n_recent: int = 5,
    min_history: int = 1,
    train_start=None,
    known=None,
) -> TrainingExamples:
    """Training examples up to `train_end`, each with its own cut-off (nothing after
    `train_end` is read; nothing at or after an example's positive enters its history).

    `scheme`: "last_month" — the paper's: the purchases of the last `positive_days` of the
    window, `(train_end - positive_days, train_end]`, are the positives; "rolling" — every
    purchase of the window is a positive (more examples, the same time order). The inputs of a
    positive at time t are the customer's `n_recent` most recent distinct products bought
    strictly before t (`models.ranking.recent_items`, the rule evaluation and serving use;
    `known`: products that may enter a history, e.g. those with content features). A positive
    with fewer than `min_history` such products is dropped; a repeated (customer, product,
    time) row is one example. Rows are ordered by (customer, timestamp, product).
    """
    from models.ranking import recent_items

    end, start = _check_window(train_end, train_start)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES!r}, got {scheme!r}")
    positive_days = _positive_int(positive_days, "positive_days")
    n_recent = _positive_int(n_recent, "n_recent")
    min_history = _positive_int(min_history, "min_history")
    if min_history > n_recent:
        raise ValueError(f"min_history {min_history} cannot exceed n_recent {n_recent}")

    frame = events(interactions, end, start).drop_duplicates(list(COLUMNS))
    first_positive = None
    if scheme == "last_month":
        first_positive = (end - pd.Timedelta(days=positive_days)).tz_convert(None)
    customers = frame["customer_id"].to_numpy()
    products = frame["product_id"].to_numpy()
    times = frame["timestamp"].dt.tz_convert(None).to_numpy("datetime64[us]")
    starts = _run_starts(customers)
    rows_out, hist_out = [], []
    for group in np.unique(starts):
        stop = group
        while stop < len(customers) and starts[stop] == group:
            stop += 1
        i = group
        while i < stop:
            j = i
            while j < stop and times[j] == times[i]:
                j += 1
            # Purchases strictly before times[i], most recent first (ties: product descending,
            # as `customer_histories` orders them).
            if first_positive is None or times[i] > first_positive.to_datetime64():
                history = recent_items(products[group:i][::-1], n_recent, known)
                if len(history) >= min_history:
                    for r in range(i, j):
                        rows_out.append(r)
                        hist_out.append(history)
            i = j
    n = len(rows_out)
    histories = np.full((n, n_recent), None, dtype=object)
    masks = np.zeros((n, n_recent), np.float32)
    for r, history in enumerate(hist_out):
        histories[r, : len(history)] = history
        masks[r, : len(history)] = 1.0
    rows = np.asarray(rows_out, np.int64)
    stamps = times[rows] if n else np.zeros(0, "datetime64[us]")
    return TrainingExamples(
        customer_ids=customers[rows] if n else np.zeros(0, object),
        histories=histories,
        positives=products[rows] if n else np.zeros(0, object),
        timestamps=stamps,
        masks=masks,
        cutoffs=stamps.astype(np.int64) - 1,
    )


def split_by_time(examples: TrainingExamples, boundary) -> tuple[np.ndarray, np.ndarray]:
    """(before, after) bool masks over `examples`: positives at or before `boundary` train,
    those after it validate — the time-based validation window (`(boundary, train_end]`)."""
    cut = utc_timestamp(boundary, "boundary").tz_convert(None).to_datetime64()
    after = examples.timestamps > cut
    return ~after, after


def test_set(
    interactions: pd.DataFrame, train_end, test_end, min_history: int = 1, train_start=None
) -> dict:
    """customer → set of products they interacted with in the test period `(train_end, test_end]`,
    for customers with at least `min_history` interactions in the training window
    `(train_start, train_end]` (the model only recommends to customers with a history). Keys are
    sorted."""
    end, start = _check_window(train_end, train_start)
    stop = utc_timestamp(test_end, "test_end")
    if stop <= end:
        raise ValueError(f"test_end {stop} must be after train_end {end}")
    min_history = _positive_int(min_history, "min_history")
    history = events(interactions, end, start)["customer_id"].value_counts()
    known = set(history.index[history >= min_history])
    test = events(interactions, stop, end)
    test = test[test["customer_id"].isin(known)]
    return {c: set(g) for c, g in test.groupby("customer_id", sort=True)["product_id"]}


test_set.__test__ = False  # not a pytest test where it is imported


def customer_histories(
    interactions: pd.DataFrame, end, customers: Iterable | None = None, max_items: int | None = None
) -> dict:
    """customer → product ids of their interactions up to `end` (inclusive), most recent first
    (same-time ties: product id descending), at most `max_items` (default all: the customer
    vector takes `models.ranking.recent_items` of it, new-to-customer evaluation drops all of
    it). `customers` limits the keys (a customer without history is absent)."""
    frame = events(interactions, end)
    if customers is not None:
        frame = frame[frame["customer_id"].isin(set(customers))]
    if max_items is not None:
        max_items = _positive_int(max_items, "max_items")
    out = {}
    for customer, group in frame.groupby("customer_id", sort=True)["product_id"]:
        out[customer] = list(group.to_numpy()[::-1][:max_items])
    return out


def window_products(interactions: pd.DataFrame, train_end, train_start=None) -> np.ndarray:
    """Sorted distinct products with an interaction in `(train_start, train_end]`: the products
    available in the training window, which WMRB's negatives are sampled from."""
    end, start = _check_window(train_end, train_start)
    return np.asarray(sorted(events(interactions, end, start)["product_id"].unique()), dtype=object)
