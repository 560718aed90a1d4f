"""Sales features of products at any cut-off, from the interactions alone (pure numpy).

The recommender's time-dependent content — popularity over the last 7, 30 and 90 days and the
recency of the first sale — must be read as of each training example's own cut-off (just before
its positive), or a positive's popularity counts its own sale and its first sale may lie in the
future. One Feast point-in-time join per example would be far too slow, so `SalesTimeline`
answers "as of time c" for any (product, c) pairs with two binary searches over the sales.

Semantics, the same as the `product_features` job (and so as Feast's rows of it) at c:
- `popularity_{w}d` at c = sales of the product in (c − w days, c];
- the first sale as of c = the earliest sale ≤ c (none yet: recency 0, like a product Feast
  has no row for); recency = (c − first sale) in years.
A training example whose positive is at t is read at c = t − 1 µs: nothing at or after t counts.
Blocks come out as `features.content_blocks` builds them: `popularity` = log1p(counts) (…, 3),
`recency` = years (…, 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from models.recommender.items import to_micros
from training.recommender.data import events

MICROS_PER_DAY = 86_400 * 1_000_000
DAYS_PER_YEAR = 365.25
WINDOWS = (7, 30, 90)
POPULARITY, RECENCY = "popularity", "recency"
DYNAMIC_BLOCKS = (POPULARITY, RECENCY)


class SalesTimeline:
    """Point-in-time popularity and recency of `product_ids` (the row order of every answer).

    `interactions`: the `interactions` contract columns; sales of products outside
    `product_ids` are ignored. `windows`: the popularity windows in days.
    """

    def __init__(self, interactions: pd.DataFrame, product_ids: Sequence, windows=WINDOWS):
        self.product_ids = np.asarray(product_ids, dtype=object)
        self.windows = tuple(int(w) for w in windows)
        frame = events(interactions)
        rows = pd.Index(self.product_ids).get_indexer(frame["product_id"])
        times = to_micros(frame["timestamp"].to_numpy())
        keep = rows >= 0
        rows, times = rows[keep].astype(np.int64), times[keep]
        # Rank-encode the times so (row, time) fits one sortable int64 key.
        self._times = np.unique(times)
        ranks = np.searchsorted(self._times, times) + 1  # 1..M
        self._span = np.int64(self._times.size + 1)
        self._keys = np.sort(rows * self._span + ranks)
        n = self.product_ids.size
        self._starts = np.searchsorted(self._keys, np.arange(n, dtype=np.int64) * self._span)
        first = np.full(n, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, rows, times)
        self._first = first

    def __len__(self) -> int:
        return int(self.product_ids.size)

    def sales_up_to(self, rows, cutoffs) -> np.ndarray:
        """int64 count of sales ≤ cut-off of each product row (`rows`, `cutoffs` in µs,
        broadcast against each other)."""
        rows, cutoffs = np.broadcast_arrays(np.asarray(rows, np.int64), np.asarray(cutoffs))
        rank = np.searchsorted(self._times, cutoffs.astype(np.int64), side="right")
        ends = np.searchsorted(self._keys, rows * self._span + rank, side="right")
        return ends - self._starts[rows]

    def popularity(self, rows, cutoffs) -> np.ndarray:
        """(…, len(windows)) float32 sales counts in (c − w, c] per window."""
        cutoffs = np.asarray(cutoffs, np.int64)
        upto = self.sales_up_to(rows, cutoffs)
        counts = [upto - self.sales_up_to(rows, cutoffs - w * MICROS_PER_DAY) for w in self.windows]
        return np.stack(counts, axis=-1).astype(np.float32)

    def recency_years(self, rows, cutoffs) -> np.ndarray:
        """(…,) float32 years since the first sale ≤ c; 0 when there is none yet."""
        rows, cutoffs = np.broadcast_arrays(np.asarray(rows, np.int64), np.asarray(cutoffs))
        first = self._first[rows]
        sold = first <= cutoffs
        days = np.where(sold, (cutoffs - np.where(sold, first, 0)) / MICROS_PER_DAY, 0.0)
        return (days / DAYS_PER_YEAR).astype(np.float32)

    def blocks(self, rows, cutoffs) -> dict[str, np.ndarray]:
        """The dynamic content blocks at the cut-offs: `popularity` (…, 3) log1p counts and
        `recency` (…, 1) years, as `features.content_blocks` builds them."""
        return {
            POPULARITY: np.log1p(self.popularity(rows, cutoffs)).astype(np.float32),
            RECENCY: self.recency_years(rows, cutoffs)[..., None],
        }
