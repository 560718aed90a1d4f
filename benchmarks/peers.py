"""Peers of the recommender benchmark (issue 5): LightFM with WARP loss over the same item
features, and `implicit`'s alternating least squares (ALS).

Both take the inputs the evaluation of `training.recommender` uses — an interactions DataFrame
(`customer_id`, `product_id`, `timestamp`), `train_end`, and the catalogue's `product_ids` (plus,
for LightFM, an item feature matrix aligned with them) — and train on the interactions of the
window `(train_start, train_end]` (inclusive of `train_end`, exactly as `data.events`). Each
returns a `PeerRun(model_info, recommend, seconds_per_epoch)`: `recommend(customers, k)` is
customer → the k best product ids, best first, for the customers seen in training; previously
bought products are NOT filtered out, as in the hybrid model's evaluation. Ranking goes through
`models.recommender.model.recommend` (ties to the lower catalogue position).

Install with the `bench` extra: `pip install -c constraints.txt -e '.[bench]'`. The original
`lightfm` (1.17, sdist only) does not build on Python 3.11 with current setuptools: its
`setup.py` runs `__builtins__.__LIGHTFM_SETUP__ = True`, and under the PEP 517 backend
`__builtins__` is a dict (AttributeError). The extra uses `lightfm-next`, a fork of the same code
that builds and imports as `lightfm`. Neither library is a runtime dependency: both are imported
inside the functions.

Determinism: LightFM with `num_threads=1` is fully reproducible from `seed` (more threads train
Hogwild-style: updates race, results vary run to run). implicit's CPU ALS is reproducible from
`seed` (random initial factors; each least-squares solve is independent of thread order).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from atelier.checks import check_int
from models.ranking import recommend as top_k_recommend
from models.recommender.items import utc_timestamp
from training.recommender.data import events

log = logging.getLogger("atelier.recommender.peers")


class PeerRun(NamedTuple):
    """A trained peer: `model_info` (JSON-safe dict), `recommend(customers, k)`, mean seconds per
    training epoch (LightFM) or iteration (ALS)."""

    model_info: dict
    recommend: PeerRecommender
    seconds_per_epoch: float


@dataclass(frozen=True, eq=False)
class PeerRecommender:
    """`self(customers, k)` → {customer: [k product ids, best first]} by dot product of
    `customer_vectors` and `item_vectors` (rows aligned with `customers` and `product_ids`). A
    product whose vector is all zeros (ALS: never bought in training) is never recommended
    before a scorable one (see `model.score`)."""

    customers: np.ndarray
    product_ids: np.ndarray
    customer_vectors: np.ndarray = field(repr=False)
    item_vectors: np.ndarray = field(repr=False)

    def __call__(self, customers: Iterable, k: int = 10) -> dict:
        wanted = list(customers)
        rows = pd.Index(self.customers).get_indexer(wanted)
        unknown = [c for c, r in zip(wanted, rows) if r < 0]
        if unknown:
            raise ValueError(
                f"{len(unknown)} customers have no interaction in the training window, "
                f"e.g. {unknown[:5]!r}"
            )
        top = top_k_recommend(self.customer_vectors[rows], self.item_vectors, k)
        # -1 pads a list where fewer than k products can be scored (`models.ranking.top_k`).
        return {c: list(self.product_ids[t[t >= 0]]) for c, t in zip(wanted, top)}


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def interaction_matrix(
    interactions: pd.DataFrame, train_end, product_ids, train_start=None
) -> tuple[np.ndarray, sp.csr_matrix]:
    """(customers, counts): the customers with an interaction in `(train_start, train_end]`
    (sorted) and a float32 CSR (customers × products, columns in `product_ids` order) of their
    interaction counts in that window. A product id missing from `product_ids`, or a duplicate
    in it, is an error."""
    end = utc_timestamp(train_end, "train_end")
    start = None if train_start is None else utc_timestamp(train_start, "train_start")
    if start is not None and start >= end:
        raise ValueError(f"train_start {start} must be before train_end {end}")
    products = pd.Index(np.asarray(list(product_ids), dtype=object))
    if len(products) == 0:
        raise ValueError("product_ids is empty")
    if not products.is_unique:
        dupes = products[products.duplicated()].unique()
        raise ValueError(f"product_ids has duplicates, e.g. {list(dupes[:5])!r}")
    frame = events(interactions, end, start)
    if frame.empty:
        raise ValueError(f"no interactions up to train_end {end} (after train_start {start})")
    cols = products.get_indexer(frame["product_id"])
    if (cols < 0).any():
        missing = frame["product_id"][cols < 0].unique()
        raise ValueError(
            f"{len(missing)} interacted products are not in product_ids, e.g. {list(missing[:5])!r}"
        )
    customers = np.asarray(sorted(frame["customer_id"].unique()), dtype=object)
    rows = pd.Index(customers).get_indexer(frame["customer_id"])
    counts = sp.csr_matrix(
        (np.ones(len(frame), np.float32), (rows, cols)),
        shape=(len(customers), len(products)),
        dtype=np.float32,
    )
    counts.sum_duplicates()
    return customers, counts


def lightfm_item_features(item_features, n_products: int) -> sp.csr_matrix:
    """LightFM's hybrid item features: an identity block (one feature per product, its CF
    embedding) next to the content block, CSR float32 (n_products × (n_products + d)).

    Each product's content row is scaled to unit L2 norm (an all-zero row stays zero), as the
    hybrid model's content input is; the identity feature has weight 1, so the CF and content
    parts enter with the same weight. `item_features` None gives the identity alone (pure CF).
    """
    identity = sp.identity(n_products, dtype=np.float32, format="csr")
    if item_features is None:
        return identity
    if sp.issparse(item_features):
        content = sp.csr_matrix(item_features, dtype=np.float32)
        values = content.data
    else:
        content = np.asarray(item_features, dtype=np.float32)
        if content.ndim != 2:
            raise ValueError(f"item_features must be 2-d, got shape {content.shape!r}")
        values = content
    if content.shape[0] != n_products:
        raise ValueError(
            f"item_features has {content.shape[0]} rows for {n_products} product_ids "
            f"(shape {content.shape!r}); rows must be aligned with product_ids"
        )
    if not np.isfinite(values).all():
        raise ValueError("item_features has NaN or infinite values")
    if sp.issparse(content):
        norms = np.sqrt(np.asarray(content.multiply(content).sum(axis=1)).ravel())
    else:
        norms = np.linalg.norm(content, axis=1)
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    content = sp.csr_matrix(sp.diags(scale) @ sp.csr_matrix(content), dtype=np.float32)
    content.eliminate_zeros()
    return sp.hstack([identity, content], format="csr", dtype=np.float32)


def lightfm_warp(
    interactions: pd.DataFrame,
    train_end,
    item_features,
    product_ids,
    epochs: int,
    no_components: int = 200,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    *,
    train_start=None,
    learning_rate: float = 0.05,
    max_sampled: int = 10,
    item_alpha: float = 0.0,
    user_alpha: float = 0.0,
    num_threads: int = 1,
) -> PeerRun:
    """LightFM with WARP loss (adagrad) on binary customer × product interactions of the training
    window, item features = identity + `item_features` (see `lightfm_item_features`), no
    customer features (LightFM then learns one embedding per customer). Trained `epochs` single
    epochs (`fit_partial`), each timed. A customer's score for a product is
    user · item + item bias (the user bias does not change a ranking).

    `item_features`: (n_products, d) dense array or scipy sparse matrix with rows aligned to
    `product_ids`, or None for pure CF. Products never bought in training are still scored
    through their content features, as in LightFM's cold start. Deterministic from `seed` with
    `num_threads=1` only.
    """
    from lightfm import LightFM
    from lightfm import __version__ as lightfm_version

    epochs = check_int("epochs", epochs, 1, numpy_ints=True)
    no_components = check_int("no_components", no_components, 1, numpy_ints=True)
    num_threads = check_int("num_threads", num_threads, 1, numpy_ints=True)
    seed = _check_seed(seed)
    say = progress or log.info
    customers, counts = interaction_matrix(interactions, train_end, product_ids, train_start)
    positives = counts.copy()
    positives.data[:] = 1.0
    positives = positives.tocoo()
    features = lightfm_item_features(item_features, counts.shape[1])
    model = LightFM(
        no_components=no_components,
        loss="warp",
        learning_schedule="adagrad",
        learning_rate=learning_rate,
        max_sampled=max_sampled,
        item_alpha=item_alpha,
        user_alpha=user_alpha,
        random_state=np.random.RandomState(seed),
    )
    seconds = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.fit_partial(positives, item_features=features, epochs=1, num_threads=num_threads)
        seconds.append(time.perf_counter() - t0)
        say(f"lightfm epoch {epoch + 1}/{epochs}: {seconds[-1]:.2f}s")
    item_bias, item_emb = model.get_item_representations(features)
    _, user_emb = model.get_user_representations()
    items = np.hstack([item_emb, item_bias[:, None]]).astype(np.float32)
    users = np.hstack([user_emb, np.ones((len(user_emb), 1))]).astype(np.float32)
    recommend = PeerRecommender(
        customers, np.asarray(list(product_ids), dtype=object), users, items
    )
    per_epoch = float(np.mean(seconds))
    info = {
        "peer": "lightfm",
        "library": "lightfm-next",
        "version": lightfm_version,
        "loss": "warp",
        "learning_schedule": "adagrad",
        "no_components": no_components,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "max_sampled": max_sampled,
        "item_alpha": item_alpha,
        "user_alpha": user_alpha,
        "seed": seed,
        "num_threads": num_threads,
        "item_features": "identity" if item_features is None else "identity+content",
        "n_item_features": int(features.shape[1]),
        "n_customers": int(counts.shape[0]),
        "n_products": int(counts.shape[1]),
        "n_interactions": int(positives.nnz),
        "train_end": str(utc_timestamp(train_end, "train_end")),
        "epoch_seconds": seconds,
        "seconds_per_epoch": per_epoch,
    }
    return PeerRun(info, recommend, per_epoch)


def implicit_als(
    interactions: pd.DataFrame,
    train_end,
    product_ids,
    factors: int = 200,
    iterations: int = 15,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    *,
    train_start=None,
    regularization: float = 0.01,
    alpha: float = 1.0,
    num_threads: int = 1,
) -> PeerRun:
    """implicit's ALS (CPU, conjugate gradient) on customer × product interaction counts of the
    training window (confidence 1 + alpha × count). No item features: a product never bought in
    training has no factors (zeroed here) and is never recommended before a bought one, like
    the `cf` variant. BLAS is held to one thread during the fit, as implicit advises. Seconds
    per epoch = mean ALS iteration time (implicit's own per-iteration timing).
    """
    import implicit
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    factors = check_int("factors", factors, 1, numpy_ints=True)
    iterations = check_int("iterations", iterations, 1, numpy_ints=True)
    num_threads = check_int("num_threads", num_threads, 1, numpy_ints=True)
    seed = _check_seed(seed)
    say = progress or log.info
    customers, counts = interaction_matrix(interactions, train_end, product_ids, train_start)
    seconds = []

    def on_iteration(iteration, elapsed, _loss):
        seconds.append(float(elapsed))
        say(f"als iteration {iteration + 1}/{iterations}: {elapsed:.2f}s")

    with threadpool_limits(1, "blas"):  # implicit checks (and warns) when the model is built
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            num_threads=num_threads,
            random_state=seed,
        )
        model.fit(counts, show_progress=False, callback=on_iteration)
    items = np.array(model.item_factors, dtype=np.float32)
    items[np.diff(counts.tocsc().indptr) == 0] = 0.0  # never bought: no trained factors
    users = np.asarray(model.user_factors, dtype=np.float32)
    recommend = PeerRecommender(
        customers, np.asarray(list(product_ids), dtype=object), users, items
    )
    per_epoch = float(np.mean(seconds))
    info = {
        "peer": "implicit_als",
        "library": "implicit",
        "version": implicit.__version__,
        "factors": factors,
        "iterations": iterations,
        "regularization": regularization,
        "alpha": alpha,
        "seed": seed,
        "num_threads": num_threads,
        "n_customers": int(counts.shape[0]),
        "n_products": int(counts.shape[1]),
        "n_interactions": int(counts.nnz),
        "train_end": str(utc_timestamp(train_end, "train_end")),
        "epoch_seconds": seconds,
        "seconds_per_epoch": per_epoch,
    }
    return PeerRun(info, recommend, per_epoch)
