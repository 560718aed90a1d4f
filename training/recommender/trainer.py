"""Training the recommender (paper Section 3) and recommending with the frozen item tower.

`train_recommender_model` is pure in-memory work on `data.TrainingExamples` and
`features.ContentFeatures` (no Feast, no MLflow): per batch one WMRB step with |Z| =
`config.n_negatives` negatives drawn uniformly from the products available in the training
window and shared by the whole batch; the row's own positive is masked out of its negatives.
Early stopping watches the WMRB loss of the validation customers (a `validation_fraction` of
the customers, all their examples) and restores the best epoch's weights. Everything random
(split, shuffling, negatives, initial weights) is seeded, so two runs end with identical
weights.

`recommend_for` freezes the tower: item vectors of every product (never-bought ones from
content alone), a customer's vector = the mean of the item vectors of their `n_recent` most
recent history items. The paper's customer vector averages the sampled earlier interactions
of a training example; at recommendation time there is no sample to draw, and the most recent
`n_recent` = 5 (the paper's number of inputs) is the closest deterministic equivalent.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from training.recommender.data import TrainingExamples, item_index, validation_split
from training.recommender.features import ContentFeatures, content_inputs
from training.recommender.model import (
    RecommenderConfig,
    build_item_tower,
    item_vectors,
    make_optimizer,
    make_train_step,
    score,
    top_k,
    wmrb_loss,
)

log = logging.getLogger("atelier.recommender")

N_RECENT = 5


@dataclass
class TrainedRecommender:
    """A trained item tower and how training went.

    `config`: the config the tower was built with (`n_items` = len(`item_index`)).
    `item_index`: product → CF index 1..n_items (the products of the training window).
    `candidates`: the products negatives were drawn from (N of WMRB = their number).
    `history`: {"train_loss": [...], "val_loss": [...]} per epoch (val NaN without validation).
    `best_epoch`: 1-based epoch whose weights the tower holds. `epoch_seconds`: training time
    of each epoch (validation excluded).
    """

    item_tower: object
    config: RecommenderConfig
    item_index: dict
    candidates: np.ndarray
    history: dict[str, list[float]]
    best_epoch: int
    epoch_seconds: list[float]
    train_customers: np.ndarray
    validation_customers: np.ndarray
    stopped_early: bool = False
    seed: int = 0

    @property
    def epochs(self) -> int:
        """Epochs run (the best one plus those without improvement after it)."""
        return len(self.epoch_seconds)

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.mean(self.epoch_seconds)) if self.epoch_seconds else float("nan")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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


def _draw_negatives(rng: np.random.Generator, n_candidates: int, z: int) -> np.ndarray:
    """z candidate positions, distinct when there are enough candidates."""
    return rng.choice(n_candidates, size=z, replace=z > n_candidates)


def validation_loss(
    item_tower,
    features: ContentFeatures,
    cf: np.ndarray,
    history_rows: np.ndarray,
    positive_rows: np.ndarray,
    candidate_rows: np.ndarray,
    n_negatives: int,
    seed: int,
    batch_size: int = 1024,
) -> float:
    """Mean WMRB loss (no gradient) of examples given as feature rows: history (m, h),
    positive (m,). Each batch draws its negatives from a generator seeded with `seed`, so the
    same call gives the same negatives every epoch and the losses are comparable."""
    m = len(positive_rows)
    if m == 0:
        return float("nan")
    names = item_tower.input.keys()
    rng = np.random.default_rng(seed)
    total = 0.0
    for start in range(0, m, batch_size):
        hist = history_rows[start : start + batch_size]
        pos = positive_rows[start : start + batch_size]
        neg = candidate_rows[_draw_negatives(rng, candidate_rows.size, n_negatives)]
        rows = np.concatenate([hist.ravel(), pos, neg])
        unique, inverse = np.unique(rows, return_inverse=True)
        vectors = item_vectors(item_tower, content_inputs(features, unique, cf, names))[inverse]
        b, h = hist.shape
        customers = vectors[: b * h].reshape(b, h, -1).mean(axis=1)
        positives = vectors[b * h : b * h + b]
        negatives = vectors[b * h + b :]
        pos_scores = np.sum(customers * positives, axis=1)
        neg_scores = customers @ negatives.T
        keep = (neg[None, :] != pos[:, None]).astype(np.float32)
        losses = wmrb_loss(pos_scores, neg_scores, candidate_rows.size, keep, reduction="none")
        total += float(np.sum(np.asarray(losses, np.float64)))
    return total / m


def train_recommender_model(
    examples: TrainingExamples,
    features: ContentFeatures,
    config: RecommenderConfig,
    *,
    candidates: Iterable | None = None,
    epochs: int = 100,
    batch_size: int = 1024,
    patience: int = 5,
    validation_fraction: float = 0.1,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainedRecommender:
    """Train a fresh item tower on `examples` with WMRB; see the module docstring.

    `candidates`: the products available in the training window (`data.window_products`),
    which negatives are drawn from; default the products of `examples`. The CF index covers
    them and every product of `examples`; `config.n_items` is set to its size. Every product
    must have a row in `features`. `patience`: epochs without a lower validation loss before
    stopping; `validation_fraction` 0 trains on every customer without early stopping (the
    last epoch is kept). `seed` (default `config.seed`) seeds the split, the shuffling and the
    negatives; `config.seed` the initial weights. `progress` gets one line per epoch.
    """
    epochs = _check_int("epochs", epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    patience = _check_int("patience", patience, 1)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    if not isinstance(examples, TrainingExamples) or len(examples) == 0:
        raise ValueError(f"examples must be non-empty TrainingExamples, got {examples!r:.80}")
    _check_config(config, features)
    seed = config.seed if seed is None else _check_int("seed", seed, 0)
    say = progress or log.info

    example_products = np.concatenate([examples.histories.ravel(), examples.positives])
    if candidates is None:
        candidates = example_products
    candidates = np.asarray(sorted(set(candidates)), dtype=object)
    if candidates.size == 0:
        raise ValueError("candidates (products to draw negatives from) must not be empty")
    index = item_index([*candidates, *example_products])
    config = dataclasses.replace(config, n_items=len(index))
    cf = features.cf_indices(index)
    history_rows = features.rows(examples.histories)
    positive_rows = features.rows(examples.positives)
    candidate_rows = features.rows(candidates)

    if validation_fraction > 0:
        is_validation = validation_split(examples.customer_ids, validation_fraction, seed)
    else:
        is_validation = np.zeros(len(examples), dtype=bool)
    train = np.flatnonzero(~is_validation)
    valid = np.flatnonzero(is_validation)

    tower = build_item_tower(config)
    step = make_train_step(tower, make_optimizer(config), candidate_rows.size)
    names = tuple(config.input_names)
    rng = np.random.default_rng(seed)
    z = config.n_negatives

    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    epoch_seconds: list[float] = []
    best_loss, best_epoch, best_weights, waited = math.inf, 0, None, 0
    stopped_early = False
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = train[rng.permutation(train.size)]
        total = 0.0
        for start in range(0, order.size, batch_size):
            batch = order[start : start + batch_size]
            neg = candidate_rows[_draw_negatives(rng, candidate_rows.size, z)]
            pos = positive_rows[batch]
            hist = history_rows[batch]
            loss = step(
                content_inputs(features, hist, cf, names),
                np.ones(hist.shape, np.float32),
                content_inputs(features, pos, cf, names),
                content_inputs(features, neg, cf, names),
                (neg[None, :] != pos[:, None]).astype(np.float32),
            )
            total += loss * batch.size
        epoch_seconds.append(time.perf_counter() - t0)
        train_loss = total / order.size
        val_loss = validation_loss(
            tower,
            features,
            cf,
            history_rows[valid],
            positive_rows[valid],
            candidate_rows,
            z,
            seed + 1,
            batch_size,
        )
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        improved = not valid.size or (math.isfinite(val_loss) and val_loss < best_loss)
        if improved:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            if valid.size:
                best_weights = [np.array(w) for w in tower.get_weights()]
        else:
            waited += 1
        say(
            f"epoch {epoch}/{epochs}: train loss {train_loss:.4f}, validation loss "
            f"{val_loss:.4f}{' (best)' if improved and valid.size else ''}, "
            f"{epoch_seconds[-1]:.1f}s"
        )
        if waited >= patience:
            stopped_early = True
            say(
                f"early stop after epoch {epoch}: no lower validation loss for {patience} "
                f"epochs; keeping epoch {best_epoch} ({best_loss:.4f})"
            )
            break
    if best_weights is not None:
        tower.set_weights(best_weights)
    return TrainedRecommender(
        item_tower=tower,
        config=config,
        item_index=index,
        candidates=candidates,
        history=history,
        best_epoch=best_epoch,
        epoch_seconds=epoch_seconds,
        train_customers=np.unique(examples.customer_ids[train]),
        validation_customers=np.unique(examples.customer_ids[valid]),
        stopped_early=stopped_early,
        seed=seed,
    )


def product_vectors(trained: TrainedRecommender, features: ContentFeatures) -> np.ndarray:
    """(n, k) item vectors of every product of `features`, in row order. A product outside the
    CF index gets its content vector (`hybrid`, `content`) or the zero vector (`cf`)."""
    names = trained.item_tower.input.keys()
    rows = np.arange(len(features))
    return item_vectors(
        trained.item_tower, content_inputs(features, rows, trained.item_index, names)
    )


def recommend_for(
    trained: TrainedRecommender,
    features: ContentFeatures,
    histories: Mapping[object, list],
    k: int = 10,
    exclude_seen: bool = False,
    n_recent: int = N_RECENT,
    candidates: Iterable | None = None,
    batch_size: int = 1024,
) -> dict:
    """customer → up to k product ids, best first, from the frozen tower.

    `histories`: customer → product ids, most recent first (`data.customer_histories`); the
    customer vector is the mean item vector of the first `n_recent` of them that have content
    features (others are skipped; a customer left with none gets []). `candidates`: products
    that may be recommended (default every product of `features`). A product the variant
    cannot score — outside the CF index for `cf` — is never recommended, so a list may be
    shorter than k. `exclude_seen` drops every product of the customer's history.
    """
    k = _check_int("k", k, 1)
    n_recent = _check_int("n_recent", n_recent, 1)
    vectors = product_vectors(trained, features)
    if candidates is None:
        candidate_rows = np.arange(len(features))
    else:
        candidate_rows = np.unique(features.rows(np.asarray(list(candidates), dtype=object)))
    items = vectors[candidate_rows]
    position = np.full(len(features), -1, np.int64)
    position[candidate_rows] = np.arange(candidate_rows.size)

    out: dict = {}
    customers, customer_vectors, seen = [], [], []
    for customer, products in histories.items():
        rows = [features.index[p] for p in products if p in features.index]
        if not rows[:n_recent]:
            out[customer] = []
            continue
        customers.append(customer)
        customer_vectors.append(vectors[rows[:n_recent]].mean(axis=0))
        seen.append(position[rows] if exclude_seen else ())
    for start in range(0, len(customers), batch_size):
        chunk = slice(start, start + batch_size)
        scores = score(np.asarray(customer_vectors[chunk]), items)
        for i, cols in enumerate(seen[chunk]):
            cols = np.asarray(cols, np.int64)
            scores[i, cols[cols >= 0]] = -np.inf
        best = top_k(scores, k)
        for i, customer in enumerate(customers[chunk]):
            picked = best[i][np.isfinite(scores[i, best[i]])]
            out[customer] = [features.product_ids[candidate_rows[j]] for j in picked]
    return out
