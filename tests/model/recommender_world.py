"""A small synthetic fashion world for recommender model tests (pure numpy/pandas).

Two customer segments with distinct tastes (styles "a" and "b"), products of each style with a
skewed popularity, and a few products of each style that never sell (cold start). A product's
content says its style: the type, a TF-IDF block and an image block near the style's centroid.
Popularity and recency are the `SalesTimeline`'s, as of the end of training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.recommender.features import ContentFeatures
from training.recommender.timeline import SalesTimeline

TRAIN_END = pd.Timestamp("2020-05-31", tz="UTC")
STYLES = ("a", "b")
PER_STYLE = 12
COLD_PER_STYLE = 2


def product_ids() -> list[str]:
    sold = [f"{s}{i:02d}" for s in STYLES for i in range(PER_STYLE)]
    cold = [f"{s}_new{i}" for s in STYLES for i in range(COLD_PER_STYLE)]
    return sorted(sold + cold)


def style(product: str) -> str:
    return product[0]


def interactions(n_customers: int = 40, per_customer: int = 10, days: int = 120, seed: int = 0):
    """Customer c belongs to segment STYLES[c % 2] and buys `per_customer` products of that
    style (Zipf-skewed within the style) on distinct days of the last `days` days; one in ten
    purchases is of the other style (taste is not a wall)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, PER_STYLE + 1)
    weights /= weights.sum()
    rows = []
    for c in range(n_customers):
        own = STYLES[c % 2]
        other = STYLES[1 - c % 2]
        for d in np.sort(rng.choice(days, size=per_customer, replace=False))[::-1]:
            s = own if rng.random() > 0.1 else other
            product = f"{s}{rng.choice(PER_STYLE, p=weights):02d}"
            rows.append((f"c{c:03d}", product, TRAIN_END - pd.Timedelta(days=int(d))))
    return pd.DataFrame(rows, columns=["customer_id", "product_id", "timestamp"])


def segment(customer: str) -> str:
    return STYLES[int(customer[1:]) % 2]


def features(frame: pd.DataFrame, as_of=TRAIN_END, seed: int = 0) -> ContentFeatures:
    """Content of every product; popularity and recency as of `as_of` from `frame`."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(product_ids(), dtype=object)
    group = np.array([STYLES.index(style(p)) for p in ids])
    centroids = rng.normal(size=(len(STYLES), 8))
    timeline = SalesTimeline(frame, ids)
    cut = np.full(len(ids), pd.Timestamp(as_of).value // 1000, np.int64)
    dynamic = timeline.blocks(np.arange(len(ids)), cut)
    blocks = {
        "type": (group + 1).astype(np.int32),
        "tfidf": (np.eye(4)[group] + 0.2 * rng.random((len(ids), 4))).astype(np.float32),
        "image": (centroids[group] + 0.3 * rng.normal(size=(len(ids), 8))).astype(np.float32),
        "price": rng.normal(size=(len(ids), 1)).astype(np.float32),
        **dynamic,
    }
    return ContentFeatures(
        product_ids=ids,
        index={p: i for i, p in enumerate(ids)},
        blocks=blocks,
        block_dims={"image": 8, "popularity": 3, "price": 1, "recency": 1, "tfidf": 4},
        categorical_dims={"type": 3},
        as_of=pd.Timestamp(as_of),
    )
