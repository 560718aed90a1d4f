"""Training and test data of the recommender, as in the paper's Section 3 (pure pandas/numpy).

Time semantics, used by every function here: a window ending at `train_end` is INCLUSIVE of
`train_end` (`timestamp <= train_end`) and exclusive of its start (`timestamp > train_start`);
the test period is `(train_end, test_end]`. An interaction stamped exactly `train_end` is training
data, one a nanosecond later is test data. Times are UTC: naive timestamps (and a date-only
`train_end` such as "2020-05-31", i.e. that day's midnight) are read as UTC. H&M-layout data is
stamped at midnight of the day, so `train_end="2020-05-31"` keeps all of May 31 in training.

Inputs are DataFrames with the `interactions` contract columns `customer_id`, `product_id` and
`timestamp` (other columns are ignored). Rows are sorted by (customer, timestamp, product) before
anything random happens, so results depend on the rows and the seed, not on the row order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

COLUMNS = ("customer_id", "product_id", "timestamp")
UNKNOWN_ITEM = 0  # item index of a product the CF embedding has no row for


def utc_timestamp(value, name: str = "time") -> pd.Timestamp:
    """`value` (str, datetime, Timestamp) as a UTC Timestamp; a naive value is taken as UTC."""
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a date or timestamp, got {value!r}") from err
    if ts is pd.NaT:
        raise ValueError(f"{name} must be a date or timestamp, got {value!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


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
    frame = frame[keep].sort_values(list(COLUMNS), kind="mergesort")
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


def _sample_without_replacement(
    rng: np.random.Generator, population: np.ndarray, size: int
) -> np.ndarray:
    """(m, size) distinct indices in [0, population[i]) per row, ascending (Floyd's algorithm,
    vectorised over rows; every size-subset is equally likely). Needs population >= size."""
    m = population.size
    picks = np.empty((m, size), dtype=np.int64)
    u = rng.random((m, size))
    for i in range(size):
        j = population - size + i
        t = np.minimum((u[:, i] * (j + 1)).astype(np.int64), j)  # guard float rounding up to j+1
        taken = (picks[:, :i] == t[:, None]).any(axis=1)
        picks[:, i] = np.where(taken, j, t)
    return np.sort(picks, axis=1)


@dataclass(frozen=True)
class TrainingExamples:
    """One row per (customer, positive interaction): `customer_ids` (n,), `histories` (n, n_inputs)
    product ids of the sampled earlier interactions (chronological), `positives` (n,) product ids,
    `timestamps` (n,) the positives' times (datetime64, UTC)."""

    customer_ids: np.ndarray
    histories: np.ndarray
    positives: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return int(self.positives.size)

    def subset(self, rows) -> TrainingExamples:
        """The examples selected by `rows` (bool mask or index array)."""
        return TrainingExamples(
            self.customer_ids[rows],
            self.histories[rows],
            self.positives[rows],
            self.timestamps[rows],
        )


def training_examples(
    interactions: pd.DataFrame,
    train_end,
    positive_days: int = 30,
    n_inputs: int = 5,
    min_interactions: int = 6,
    seed: int = 0,
    train_start=None,
) -> TrainingExamples:
    """The paper's training examples, point-in-time at `train_end`.

    Only interactions in the training window `(train_start, train_end]` are read (nothing after
    `train_end`). Customers with fewer than `min_interactions` of them are left out. Every
    interaction of the remaining customers in the last `positive_days` of the window,
    `(train_end - positive_days, train_end]`, is a positive; its inputs are `n_inputs` distinct
    interactions of the same customer drawn at random (seeded) among those STRICTLY earlier than
    the positive — interactions at the same timestamp (e.g. the same basket/day) are not inputs of
    each other. A positive with fewer than `n_inputs` earlier interactions is dropped, so every
    example has exactly `n_inputs` inputs. Rows are ordered by (customer, timestamp, product).
    """
    end, start = _check_window(train_end, train_start)
    positive_days = _positive_int(positive_days, "positive_days")
    n_inputs = _positive_int(n_inputs, "n_inputs")
    min_interactions = _positive_int(min_interactions, "min_interactions")

    frame = events(interactions, end, start)
    counts = frame.groupby("customer_id", sort=False)["customer_id"].transform("size")
    frame = frame[(counts >= min_interactions).to_numpy()].reset_index(drop=True)

    customers = frame["customer_id"].to_numpy()
    times = frame["timestamp"].dt.tz_convert(None).to_numpy()  # datetime64, UTC
    products = frame["product_id"].to_numpy()
    row = np.arange(len(frame))
    group_start = _run_starts(customers)
    earlier = _run_starts(customers, times) - group_start  # interactions strictly before the row
    first_positive = (end - pd.Timedelta(days=positive_days)).tz_convert(None).to_datetime64()
    selected = row[(times > first_positive) & (earlier >= n_inputs)]

    rng = np.random.default_rng(seed)
    picks = _sample_without_replacement(rng, earlier[selected], n_inputs)
    history_rows = group_start[selected][:, None] + picks
    return TrainingExamples(
        customer_ids=customers[selected],
        histories=products[history_rows].reshape(selected.size, n_inputs),
        positives=products[selected],
        timestamps=times[selected],
    )


def validation_split(customers, fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Bool mask over `customers` (ids, repeats allowed, e.g. `TrainingExamples.customer_ids`):
    True for the validation customers. round(fraction × distinct customers), at least 1 and at
    most all but 1, distinct customers are drawn (seeded, from the sorted ids), so every example
    of a customer falls on the same side."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction!r}")
    customers = np.asarray(customers)
    distinct = np.unique(customers)
    if distinct.size < 2:
        raise ValueError(f"a split needs at least 2 distinct customers, got {distinct.size}")
    n_validation = min(max(int(round(fraction * distinct.size)), 1), distinct.size - 1)
    rng = np.random.default_rng(seed)
    chosen = distinct[rng.permutation(distinct.size)[:n_validation]]
    return np.isin(customers, chosen)


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
    (same-time ties: product id descending), at most `max_items`; for the frozen customer vectors
    at test time. `customers` limits the keys (a customer without history is absent)."""
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


def item_index(product_ids: Iterable) -> dict:
    """product id → 1..n in sorted order; 0 (`UNKNOWN_ITEM`) is kept for unknown products."""
    return {p: i + 1 for i, p in enumerate(sorted(set(product_ids)))}


def encode_items(product_ids, index: Mapping) -> np.ndarray:
    """`product_ids` (any shape) → int32 item indices of the same shape, 0 for unknown ids."""
    ids = np.asarray(product_ids, dtype=object)
    if not index:
        return np.full(ids.shape, UNKNOWN_ITEM, dtype=np.int32)
    values = np.fromiter(index.values(), dtype=np.int32, count=len(index))
    position = pd.Index(list(index)).get_indexer(ids.ravel())
    out = np.where(position >= 0, values[position], UNKNOWN_ITEM).astype(np.int32)
    return out.reshape(ids.shape)
