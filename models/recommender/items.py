"""Product ids and times as the recommender's arrays see them (pure numpy/pandas).

Item indices: 1..n for the products the CF embedding has rows for, 0 (`UNKNOWN_ITEM`) for any
other. Times: UTC everywhere, a naive value is read as UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

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


def to_micros(times) -> np.ndarray:
    """Times (datetime64, Timestamps, strings; naive = UTC) → int64 microseconds since epoch."""
    values = pd.to_datetime(pd.Series(np.asarray(times).ravel()), utc=True)
    out = values.dt.tz_convert(None).to_numpy("datetime64[us]").astype(np.int64)
    return out.reshape(np.shape(times))
