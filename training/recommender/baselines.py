"""The popularity baseline of the paper's Table 3: everyone gets the products most interacted with
in the last `window_days` of the training window (pure pandas; nothing after `train_end`)."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from models.recommender.items import utc_timestamp
from training.recommender.data import events


def popularity_recommender(
    interactions: pd.DataFrame, train_end, window_days: int | None = 30, k: int | None = None
) -> list:
    """Product ids ranked by their number of interactions in `(train_end - window_days,
    train_end]` (the whole history up to `train_end` when `window_days` is None), most first;
    ties by product id ascending. Only products with an interaction in the window are ranked;
    `k` keeps the first k."""
    end = utc_timestamp(train_end, "train_end")
    start = None
    if window_days is not None:
        if isinstance(window_days, bool) or not isinstance(window_days, int) or window_days < 1:
            raise ValueError(f"window_days must be a positive integer or None, got {window_days!r}")
        start = end - pd.Timedelta(days=window_days)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive integer or None, got {k!r}")
    counts = events(interactions, end, start)["product_id"].value_counts()
    ranked = counts.rename("count").rename_axis("product_id").reset_index()
    ranked = ranked.sort_values(["count", "product_id"], ascending=[False, True], kind="mergesort")
    return list(ranked["product_id"])[:k]


def popularity_recommendations(ranking: list, customers: Iterable, k: int = 10) -> dict:
    """customer → the first `k` products of `ranking` (one shared list) for every customer, the
    shape `evaluation.precision_recall_at_k` takes."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    top = list(ranking[:k])
    return dict.fromkeys(customers, top)


def buy_again_recommendations(histories, k: int = 10) -> dict:
    """customer → their `k` most recent distinct purchases (`histories`: customer → product ids,
    most recent first): the "buy it again" row of the all-products table."""
    from models.ranking import recent_items

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return {c: recent_items(items, k) for c, items in histories.items()}


def without_seen(ranking: list, histories, k: int = 10) -> dict:
    """customer → the first `k` products of `ranking` they have not bought (`histories`:
    customer → product ids): the popularity row of the new-to-customer table."""
    out = {}
    for customer, items in histories.items():
        seen = set(items)
        out[customer] = [p for p in ranking if p not in seen][:k]
    return out
