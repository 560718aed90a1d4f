"""Training the recommender and recommending with the frozen item tower (pure in-memory work).

`train_recommender_model` trains a fresh item tower on `data.TrainingExamples` with WMRB. Each
example is scored as of its own cut-off: the match part of every product is static content
(and its CF row), while the bias reads popularity and recency from a `timeline.SalesTimeline`
at the example's cut-off, for its positive and for each of its negatives — so no count includes
the positive or anything after it, and a product that had not sold yet is seen with the zeros it
really had. Per batch: |Z| = `config.n_negatives` negatives drawn uniformly from `candidates`
(the products that may be recommended: never-sold ones included) and, with
`config.negatives == "mixed"`, the batch's other positives too (drawn as often as products
sell); a row's own positive is masked out. With `validation` examples (the time window before
the training end) the validation WMRB loss is measured every epoch; training stops after
`patience` epochs without a lower one and keeps the best epoch's weights. Without, it runs
`epochs` epochs (a refit with the epoch count validation chose). Everything random (shuffling,
negatives, initial weights) is seeded: two runs end with identical weights.

`recommend_for` freezes the tower: item vectors of every product as of the features' time
(never-bought ones from content alone) and each customer's vector by `models.ranking` (the
most recent `n_recent` distinct products, the rule training used).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from atelier.checks import check_int
from models.ranking import DOT_BIAS, customer_vectors, recent_items, score, top_k
from models.recommender.features import ContentFeatures, content_inputs
from models.recommender.items import item_index
from models.recommender.model import ITEM_IDX, RecommenderConfig, build_item_tower, item_vectors
from training.recommender.data import TrainingExamples
from training.recommender.train_step import Batch, make_optimizer, make_train_step
from training.seeding import deterministic_ops

log = logging.getLogger("atelier.recommender")

N_RECENT = 5
LAYOUT = DOT_BIAS


@dataclass
class TrainedRecommender:
    """A trained item tower and how training went.

    `config`: the config the tower was built with (`n_items` = len(`item_index`)).
    `item_index`: product → CF index 1..n_items (the products of the training examples).
    `candidates`: the products negatives were drawn from (N of WMRB = their number).
    `history`: {"train_loss": [...], "val_loss": [...]} per epoch (val NaN without validation).
    `best_epoch`: 1-based epoch whose weights the tower holds. `epoch_seconds`: training time
    of each epoch (validation excluded). `n_recent`: history items in a customer vector.
    """

    item_tower: object
    config: RecommenderConfig
    item_index: dict
    candidates: np.ndarray
    history: dict[str, list[float]]
    best_epoch: int
    epoch_seconds: list[float]
    n_train: int = 0
    n_validation: int = 0
    stopped_early: bool = False
    seed: int = 0
    n_recent: int = N_RECENT
    layout: str = LAYOUT

    @property
    def epochs(self) -> int:
        """Epochs run (the best one plus those without improvement after it)."""
        return len(self.epoch_seconds)

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.mean(self.epoch_seconds)) if self.epoch_seconds else float("nan")

    @property
    def best_validation_loss(self) -> float:
        """The lowest finite validation loss (inf without validation)."""
        finite = [v for v in self.history.get("val_loss", []) if math.isfinite(v)]
        return min(finite) if finite else math.inf


def _check_config(config: RecommenderConfig, features: ContentFeatures) -> None:
    if not isinstance(config, RecommenderConfig):
        raise ValueError(f"config must be a RecommenderConfig, got {type(config).__name__}")
    if config.variant == "cf":
        return
    for name, width in config.block_dims.items():
        if features.block_dims.get(name) != width:
            raise ValueError(
                f"config block {name!r} has width {width} but the features have "
                f"{features.block_dims.get(name)!r} (features: {features.block_dims!r})"
            )
    for name, size in config.categorical_dims.items():
        if name not in features.categorical_dims:
            raise ValueError(
                f"config categorical block {name!r} is not in the features "
                f"{sorted(features.categorical_dims)!r}"
            )
        if features.categorical_dims[name] > size:
            raise ValueError(
                f"config categorical block {name!r} has size {size} but the features need "
                f"{features.categorical_dims[name]}"
            )


class BatchMaker:
    """Builds `model.Batch`es of examples: feature rows, negatives, dynamic blocks per cut-off."""

    def __init__(self, examples, features, timeline, cf, candidate_rows, config, static, dynamic):
        self.features, self.timeline, self.cf = features, timeline, cf
        self.candidate_rows = candidate_rows
        self.z, self.mixed = config.n_negatives, config.negatives == "mixed"
        self.static, self.dynamic = static, dynamic
        self.masks = examples.masks
        hist = examples.histories
        known = self.masks > 0
        self.history_rows = np.zeros(hist.shape, np.int64)
        if known.any():
            self.history_rows[known] = features.rows(hist[known])
        self.positive_rows = features.rows(examples.positives)
        self.cutoffs = examples.cutoffs

    def __call__(self, rows: np.ndarray, rng: np.random.Generator) -> Batch:
        pos = self.positive_rows[rows]
        hist, mask = self.history_rows[rows], self.masks[rows]
        z = self.z
        neg = self.candidate_rows[
            rng.choice(self.candidate_rows.size, size=z, replace=z > self.candidate_rows.size)
        ]
        if self.mixed:
            neg = np.concatenate([neg, np.unique(pos)])
        used = np.concatenate([hist[mask > 0], pos, neg])
        unique, inverse = np.unique(used, return_inverse=True)
        hist_idx = np.where(mask > 0, np.searchsorted(unique, hist), 0)
        n_hist = int((mask > 0).sum())
        pos_idx = inverse[n_hist : n_hist + pos.size]
        neg_idx = inverse[n_hist + pos.size :]
        cut = self.cutoffs[rows]
        pos_dyn, neg_dyn = {}, {}
        if self.dynamic:
            pos_blocks = self.timeline.blocks(pos, cut)
            neg_blocks = self.timeline.blocks(neg[None, :], cut[:, None])
            pos_dyn = {n: pos_blocks[n] for n in self.dynamic}
            neg_dyn = {n: neg_blocks[n] for n in self.dynamic}
        return Batch(
            static=content_inputs(self.features, unique, self.cf, self.static),
            hist_idx=hist_idx,
            hist_mask=mask,
            pos_idx=pos_idx,
            neg_idx=neg_idx,
            neg_mask=(neg[None, :] != pos[:, None]).astype(np.float32),
            pos_dyn=pos_dyn,
            neg_dyn=neg_dyn,
        )


def train_recommender_model(
    examples: TrainingExamples,
    features: ContentFeatures,
    config: RecommenderConfig,
    timeline,
    *,
    candidates: Iterable | None = None,
    validation: TrainingExamples | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    patience: int = 3,
    seed: int | None = None,
    n_recent: int = N_RECENT,
    progress: Callable[[str], None] | None = None,
) -> TrainedRecommender:
    """Train a fresh item tower on `examples` with WMRB; see the module docstring.

    `timeline`: a `timeline.SalesTimeline` whose rows are `features`' rows (the dynamic blocks
    at each cut-off). `candidates`: the products negatives are drawn from (default every
    product of `features`; for `cf` only those with a CF row are kept: a product without one
    has no vector to push down). The CF index covers the products of `examples`. Every product
    must have a row in `features`. `seed` (default `config.seed`) seeds the shuffling and the
    negatives; `config.seed` the initial weights. `progress` gets one line per epoch.
    """
    epochs = check_int("epochs", epochs, 1, numpy_ints=True)
    batch_size = check_int("batch_size", batch_size, 1, numpy_ints=True)
    patience = check_int("patience", patience, 1, numpy_ints=True)
    _check_inputs(examples, features, timeline, config)
    seed = config.seed if seed is None else check_int("seed", seed, 0, numpy_ints=True)
    say = progress or log.info

    bought = np.concatenate([examples.histories[examples.masks > 0], examples.positives])
    index = item_index(bought)
    config = dataclasses.replace(config, n_items=len(index))
    cf = features.cf_indices(index)
    candidates = _negative_candidates(features, index, candidates, config.variant)
    candidate_rows = features.rows(candidates)

    deterministic_ops()  # the weights are seeded; this keeps the steps' sums in one order too
    tower = build_item_tower(config)
    layer = tower.get_layer("item_tower")
    static, dynamic = layer.static_names, layer.dynamic_names
    step = make_train_step(tower, make_optimizer(config), candidate_rows.size, config.l2)
    make = BatchMaker(examples, features, timeline, cf, candidate_rows, config, static, dynamic)
    check = None
    if validation is not None and len(validation):
        check = BatchMaker(
            validation, features, timeline, cf, candidate_rows, config, static, dynamic
        )
    fit = _fit_epochs(
        tower,
        step,
        make,
        check,
        len(examples),
        len(validation or ()),
        epochs,
        batch_size,
        patience,
        seed,
        say,
    )
    return TrainedRecommender(
        item_tower=tower,
        config=config,
        item_index=index,
        candidates=candidates,
        n_train=len(examples),
        n_validation=len(validation or ()),
        seed=seed,
        n_recent=n_recent,
        **fit,
    )


def _check_inputs(examples, features, timeline, config) -> None:
    if not isinstance(examples, TrainingExamples) or len(examples) == 0:
        raise ValueError(f"examples must be non-empty TrainingExamples, got {examples!r:.80}")
    if len(timeline) != len(features) or not np.array_equal(
        timeline.product_ids, features.product_ids
    ):
        raise ValueError("the sales timeline's rows must be the features' products, in order")
    _check_config(config, features)


def _negative_candidates(features, index, candidates, variant: str) -> np.ndarray:
    """The sorted products negatives are drawn from; for `cf`, only those with a CF row."""
    if candidates is None:
        candidates = features.product_ids
    candidates = np.asarray(sorted(set(candidates)), dtype=object)
    if variant == "cf":
        candidates = np.asarray([p for p in candidates if p in index], dtype=object)
    if candidates.size == 0:
        raise ValueError("candidates (products to draw negatives from) must not be empty")
    return candidates


def _fit_epochs(
    tower, step, make, check, n_train, n_validation, epochs, batch_size, patience, seed, say
) -> dict:
    """Seeded epochs of WMRB steps, early stopping on the validation loss (`check`, or None);
    the tower ends with the best epoch's weights. The TrainedRecommender fields it decides."""
    rng = np.random.default_rng(seed)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    epoch_seconds: list[float] = []
    best_loss, best_epoch, best_weights, waited = math.inf, 0, None, 0
    stopped_early = False
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(n_train)
        total = 0.0
        for start in range(0, order.size, batch_size):
            rows = order[start : start + batch_size]
            total += step(make(rows, rng)) * rows.size
        epoch_seconds.append(time.perf_counter() - t0)
        train_loss = total / order.size
        val_loss = _validation_loss(step, check, n_validation, batch_size, seed + 1)
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        improved = check is None or (math.isfinite(val_loss) and val_loss < best_loss)
        if improved:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            if check is not None:
                best_weights = [np.array(w) for w in tower.get_weights()]
        else:
            waited += 1
        say(
            f"epoch {epoch}/{epochs}: train loss {train_loss:.4f}, validation loss "
            f"{val_loss:.4f}{' (best)' if improved and check is not None else ''}, "
            f"{epoch_seconds[-1]:.1f}s"
        )
        if check is not None and waited >= patience:
            stopped_early = True
            say(
                f"early stop after epoch {epoch}: no lower validation loss for {patience} "
                f"epochs; keeping epoch {best_epoch} ({best_loss:.4f})"
            )
            break
    if best_weights is not None:
        tower.set_weights(best_weights)
    else:  # no finite validation loss at all: the tower holds the last epoch
        best_epoch = len(epoch_seconds)
    return {
        "history": history,
        "best_epoch": best_epoch,
        "epoch_seconds": epoch_seconds,
        "stopped_early": stopped_early,
    }


def _validation_loss(step, make, n: int, batch_size: int, seed: int) -> float:
    """Mean WMRB loss of the validation examples; the negatives come from a generator seeded
    with `seed`, so every epoch sees the same ones and the losses are comparable."""
    if make is None or n == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    total = 0.0
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        total += step.loss(make(rows, rng)) * rows.size
    return total / n


def product_vectors(trained, features: ContentFeatures) -> np.ndarray:
    """(n, k + 1) item vectors of every product of `features` (in row order) as of the
    features' time. A product outside the CF index gets its content vector (`hybrid`,
    `content`) or the zero vector (`cf`)."""
    names = trained.item_tower.input.keys()
    rows = np.arange(len(features))
    return item_vectors(
        trained.item_tower, content_inputs(features, rows, trained.item_index, names)
    )


def customer_matrix(
    vectors: np.ndarray, features: ContentFeatures, histories: Mapping, n_recent: int
) -> tuple[list, np.ndarray]:
    """(customers with a usable history, their (c, k + 1) vectors) by `models.ranking`:
    the mean of the item vectors of the `n_recent` most recent distinct products with
    features. `histories`: customer → product ids, most recent first."""
    n_recent = check_int("n_recent", n_recent, 1, numpy_ints=True)
    customers, rows = [], []
    for customer, products in histories.items():
        chosen = recent_items(products, n_recent, features.index)
        if chosen:
            customers.append(customer)
            rows.append([features.index[p] for p in chosen])
    if not customers:
        return [], np.zeros((0, vectors.shape[1]), np.float32)
    mask = np.zeros((len(rows), n_recent), np.float32)
    idx = np.zeros((len(rows), n_recent), np.int64)
    for i, r in enumerate(rows):
        idx[i, : len(r)] = r
        mask[i, : len(r)] = 1.0
    return customers, customer_vectors(vectors[idx], mask, LAYOUT)


def recommend_for(
    trained,
    features: ContentFeatures,
    histories: Mapping[object, list],
    k: int = 10,
    exclude_seen: bool = False,
    n_recent: int | None = None,
    candidates: Iterable | None = None,
    batch_size: int = 1024,
    vectors: np.ndarray | None = None,
) -> dict:
    """customer → up to k product ids, best first, from the frozen tower.

    `histories`: customer → product ids, most recent first (`data.customer_histories`); the
    customer vector is `customer_matrix`'s (a customer left with no usable product gets []).
    `n_recent`: default the trained model's. `candidates`: products that may be recommended
    (default every product of `features`). A product the variant cannot score — outside the CF
    index for `cf` — is never recommended, so a list may be shorter than k. `exclude_seen`
    drops every product of the customer's history (new-to-customer recommendations).
    `vectors`: `product_vectors(trained, features)` when already computed.
    """
    k = check_int("k", k, 1, numpy_ints=True)
    n_recent = getattr(trained, "n_recent", N_RECENT) if n_recent is None else n_recent
    if vectors is None:
        vectors = product_vectors(trained, features)
    if candidates is None:
        candidate_rows = np.arange(len(features))
    else:
        candidate_rows = np.unique(features.rows(np.asarray(list(candidates), dtype=object)))
    items = vectors[candidate_rows]
    position = np.full(len(features), -1, np.int64)
    position[candidate_rows] = np.arange(candidate_rows.size)

    customers, matrix = customer_matrix(vectors, features, histories, n_recent)
    out: dict = {c: [] for c in histories}
    for start in range(0, len(customers), batch_size):
        chunk = customers[start : start + batch_size]
        scores = score(matrix[start : start + batch_size], items)
        if exclude_seen:
            for i, customer in enumerate(chunk):
                seen = [features.index[p] for p in histories[customer] if p in features.index]
                cols = position[np.asarray(seen, np.int64)] if seen else np.zeros(0, np.int64)
                scores[i, cols[cols >= 0]] = -np.inf
        best = top_k(scores, k)
        for i, customer in enumerate(chunk):
            picked = best[i][best[i] >= 0]  # -1: fewer than k products can be scored
            out[customer] = [features.product_ids[candidate_rows[j]] for j in picked]
    return out


__all__ = [
    "ITEM_IDX",
    "N_RECENT",
    "TrainedRecommender",
    "customer_matrix",
    "product_vectors",
    "recommend_for",
    "train_recommender_model",
]
