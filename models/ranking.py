"""Ranking shared by training, evaluation, the item-vector job and serving (numpy only).

One history rule and one customer vector, so that a customer is represented the same way when
the model is trained, evaluated and served:

- `recent_items`: a customer's history (most recent first) → the first `n_recent` DISTINCT
  products the model has a vector for. A product bought twice counts once (a rebuy says the
  same thing about taste twice); products without a vector are skipped, not counted.
- `customer_vector(s)`: the mean of those products' vectors, in the item vectors' layout.
- `score`, `top_k`, `recommend`: dot-product scores and the exact top-k every list is cut by.

Item vectors come in one of two layouts (`LAYOUTS`):

- `"dot"`: k floats, score = customer · item (the paper's factorisation);
- `"dot+bias"`: k + 1 floats, the last one the item's bias (how likely anyone buys it, e.g. its
  popularity), kept apart from the customer–item match so that popularity does not have to live
  in a direction every vector shares. The customer vector is [mean of the items' first k, 1], so
  the dot product is match + bias.

A customer with no usable history has no vector (None, or a zero row in a batch).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

import numpy as np

DOT, DOT_BIAS = "dot", "dot+bias"
LAYOUTS = (DOT, DOT_BIAS)


def check_layout(layout: str) -> str:
    """`layout` if it is one of `LAYOUTS`, else ValueError."""
    if layout not in LAYOUTS:
        raise ValueError(f"vector layout must be one of {LAYOUTS!r}, got {layout!r}")
    return layout


def recent_items(
    history: Iterable,
    n_recent: int,
    known: Collection | Callable[[object], bool] | None = None,
) -> list:
    """The first `n_recent` distinct products of `history` (most recent first) that are
    `known` (a collection, a predicate, or None for all), in that order."""
    if isinstance(n_recent, bool) or not isinstance(n_recent, int | np.integer) or n_recent < 1:
        raise ValueError(f"n_recent must be an integer >= 1, got {n_recent!r}")
    if known is None:
        accept = None
    elif callable(known):
        accept = known
    else:
        accept = known.__contains__
    out, seen = [], set()
    for product in history:
        if product in seen or (accept is not None and not accept(product)):
            continue
        seen.add(product)
        out.append(product)
        if len(out) == n_recent:
            break
    return out


def customer_vector(history_vectors: Sequence, layout: str = DOT) -> np.ndarray | None:
    """(d,) float32 customer vector of the chosen history items' vectors (each (d,), None
    skipped), or None when none is left. See the module docstring for the layouts."""
    check_layout(layout)
    kept = [np.asarray(v, np.float32) for v in history_vectors if v is not None]
    if not kept:
        return None
    out = np.mean(np.stack(kept), axis=0, dtype=np.float32)
    if layout == DOT_BIAS:
        out[-1] = 1.0
    return out


def customer_vectors(history_vectors, mask, layout: str = DOT) -> np.ndarray:
    """Batched `customer_vector`: (b, h, d) vectors and (b, h) 1/0 mask → (b, d) float32;
    a row with no unmasked item is all zeros (it scores 0 against every product)."""
    check_layout(layout)
    vectors = np.asarray(history_vectors, np.float32)
    keep = np.asarray(mask) > 0
    if vectors.ndim != 3 or keep.shape != vectors.shape[:2]:
        raise ValueError(
            f"customer_vectors needs (b, h, d) vectors and a (b, h) mask, got "
            f"{vectors.shape!r} and {keep.shape!r}"
        )
    kept = np.where(keep[..., None], vectors, 0.0)
    count = keep.sum(axis=1, keepdims=True).astype(np.float32)
    out = (kept.sum(axis=1) / np.maximum(count, 1.0)).astype(np.float32)
    if layout == DOT_BIAS:
        out[:, -1] = (count[:, 0] > 0).astype(np.float32)
    return out


def match_part(vectors, layout: str = DOT) -> np.ndarray:
    """The customer–item match coordinates of item vectors (..., d): all of them for `"dot"`,
    all but the bias for `"dot+bias"` (what cosine similarity between products should use)."""
    check_layout(layout)
    vectors = np.asarray(vectors)
    return vectors[..., :-1] if layout == DOT_BIAS else vectors


def mean_pairwise_cosine(vectors, max_rows: int = 2000, seed: int = 0) -> float:
    """Mean cosine similarity over distinct pairs of rows (zero rows left out; a seeded sample
    of `max_rows` rows when there are more). Near 1: every row points the same way (the
    customers of a collapsed model); NaN with fewer than 2 rows."""
    x = np.asarray(vectors, np.float64)
    norms = np.linalg.norm(x, axis=1)
    x = x[norms > 0] / norms[norms > 0, None]
    if len(x) > max_rows:
        x = x[np.random.default_rng(seed).choice(len(x), max_rows, replace=False)]
    n = len(x)
    if n < 2:
        return float("nan")
    total = x.sum(axis=0)
    # sum over i != j of x_i . x_j = |sum x|^2 - sum |x_i|^2 (= n for unit rows)
    return float((total @ total - n) / (n * (n - 1)))


# --- scores and top-k -----------------------------------------------------------------------
def score(customers, items) -> np.ndarray:
    """Dot products (c, n) of customer vectors (c, d) and item vectors (n, d), float32.

    An item whose vector is exactly zero has no representation (in `cf`: a product never bought
    in training, index 0) and scores -inf for everyone, so it never ranks (see `top_k`).
    """
    customers = np.asarray(customers, np.float32)
    items = np.asarray(items, np.float32)
    if customers.ndim != 2 or items.ndim != 2 or customers.shape[1] != items.shape[1]:
        raise ValueError(
            f"score needs (c, k) and (n, k) arrays, got {customers.shape!r} and {items.shape!r}"
        )
    scores = customers @ items.T
    scores[:, ~np.any(items != 0, axis=1)] = -np.inf
    return scores


def top_k(scores, k: int = 10, allowed=None) -> np.ndarray:
    """Indices of the up to `k` highest finite scores among the `allowed` ones, best first.

    One rule for evaluation, the scoring jobs and serving: a non-finite score (-inf: an item the
    model cannot represent, or one excluded) or a disallowed item never ranks; ties go to the
    lower index, both in order and at the cut-off. Exact: a partition finds the k-th best.
    scores (n,) → up to k indices; scores (c, n) → (c, min(k, n)) indices, a row with fewer
    eligible items padded with -1 at its end. allowed: bool, the shape of `scores` or (n,).
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    scores = np.asarray(scores)
    if scores.ndim not in (1, 2):
        raise ValueError(f"scores must be (n,) or (customers, n), got shape {scores.shape!r}")
    if scores.ndim == 1:
        return _top_k_row(scores, int(k), allowed)
    rows = scores
    eligible = np.isfinite(rows)
    if allowed is not None:
        eligible &= np.broadcast_to(np.asarray(allowed, bool), rows.shape)
    n = rows.shape[1]
    width = min(int(k), n)
    if width == 0:
        return np.zeros((rows.shape[0], 0), np.int64)
    masked = np.where(eligible, rows, -np.inf)
    if width < n:
        # The k-th largest score; all above it are in, ties with it are taken lowest index first.
        threshold = np.partition(masked, n - width, axis=1)[:, n - width, None]
        above = masked > threshold
        tied = masked == threshold
        need = width - above.sum(axis=1, keepdims=True)
        chosen = above | (tied & (np.cumsum(tied, axis=1) <= need))
        candidates = np.nonzero(chosen)[1].reshape(rows.shape[0], width)
    else:
        candidates = np.broadcast_to(np.arange(n), rows.shape)
    picked = np.take_along_axis(masked, candidates, axis=1)
    order = np.lexsort((candidates, -picked), axis=1)
    best = np.take_along_axis(candidates, order, axis=1)
    # Ineligible entries were masked to -inf, so a non-finite pick is one to leave out.
    return np.where(np.isfinite(np.take_along_axis(picked, order, axis=1)), best, -1)


def _top_k_row(scores: np.ndarray, k: int, allowed) -> np.ndarray:
    """`top_k` of one row, on the eligible entries only: the serving path, where a request
    ranks one customer against every candidate (half the time of the matrix form)."""
    ok = np.isfinite(scores)
    if allowed is not None:
        ok &= np.asarray(allowed, bool)
    rows = np.flatnonzero(ok)
    values = scores[rows]
    if k < rows.size:
        kth = values[np.argpartition(-values, k - 1)[k - 1]]
        above = values > kth
        # Rows are ascending, so the first tied rows are the lowest ones.
        tied = np.flatnonzero(values == kth)[: k - int(above.sum())]
        keep = np.concatenate([np.flatnonzero(above), tied])
        rows, values = rows[keep], values[keep]
    return rows[np.lexsort((rows, -values))]


def recommend(customers, items, k: int = 10, batch_size: int = 1024) -> np.ndarray:
    """`top_k(score(customers, items), k)` in customer batches (memory O(batch_size × n))."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    customers = np.asarray(customers, np.float32)
    parts = [
        top_k(score(customers[s : s + batch_size], items), k)
        for s in range(0, len(customers), batch_size)
    ]
    if not parts:
        return np.zeros((0, min(k, len(items))), np.int64)
    return np.concatenate(parts)
