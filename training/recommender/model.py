"""The hybrid recommender as an asymmetric factorisation model (paper Section 3).

There is no customer table: a customer's vector is the masked mean of the item-tower vectors of
their sampled earlier interactions, and score(customer, product) is the dot product of the two
k-dim vectors. The item tower is `cf`, `content` or `hybrid` (see `layers.ItemTower`). Training
minimises WMRB (Liu & Natarajan 2017) with one plain TensorFlow `GradientTape` step per batch.

The paper fixes neither the optimiser nor the hidden sizes: `optimizer` is `"adagrad"` (the
default, as LightFM's WARP uses: per-coordinate rates suit sparse embedding rows) or `"adam"`.
Keras is imported inside the functions that need it, so the config is cheap to import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ITEM_IDX = "item_idx"  # same value as layers.ITEM_IDX; duplicated to keep Keras out of imports
VARIANTS = ("cf", "content", "hybrid")
OPTIMIZERS = ("adagrad", "adam")
# Dense blocks at most this wide are lifted by default (see `layers.lift`).
LIFT_MAX_WIDTH = 3


@dataclass(frozen=True)
class RecommenderConfig:
    """Sizes and settings of the recommender; checked on construction.

    `n_items`: number of products with a learned `cf` row (indices 1..n_items, 0 = unknown);
    needed by `cf` and `hybrid`. `block_dims` (dense content block → width) and
    `categorical_dims` (categorical block → index size, 0 = unknown included) feed the content
    network of `content` and `hybrid`; a `cf` config may keep them (they are ignored), so one
    config differs between variants only in `variant`. `lifted_blocks`: dense blocks given a
    constant 1 before their unit-norm step, so a lone scalar keeps its value rather than its sign;
    None means every dense block of width <= 3 (price, recency, popularity in recommender_v1),
    () none (the paper taken literally). `k` = 200, `n_negatives` (|Z|) = 100 as in the paper;
    `optimizer` "adagrad" or "adam" with `learning_rate`; `seed` seeds every initialiser.
    """

    variant: str = "hybrid"
    n_items: int = 0
    block_dims: dict[str, int] = field(default_factory=dict)
    categorical_dims: dict[str, int] = field(default_factory=dict)
    lifted_blocks: tuple[str, ...] | None = None
    k: int = 200
    hidden_units: tuple[int, ...] = (256,)
    activation: str = "relu"
    dropout: float = 0.0
    n_negatives: int = 100
    optimizer: str = "adagrad"
    learning_rate: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS!r}, got {self.variant!r}")
        _check_int("k", self.k, 1)
        _check_int("n_negatives", self.n_negatives, 1)
        _check_int("seed", self.seed, 0)
        _check_int("n_items", self.n_items, 1 if self.variant != "content" else 0)
        for name in ("block_dims", "categorical_dims"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise ValueError(f"{name} must be a dict of block name -> width, got {value!r}")
            for block, width in value.items():
                if not isinstance(block, str) or not block.isidentifier() or block == ITEM_IDX:
                    raise ValueError(
                        f"{name} keys must be identifiers other than {ITEM_IDX!r}, got {block!r}"
                    )
                _check_int(f"{name}[{block!r}]", width, 1)
            object.__setattr__(self, name, {b: value[b] for b in sorted(value)})
        clash = sorted(set(self.block_dims) & set(self.categorical_dims))
        if clash:
            raise ValueError(f"blocks cannot be both dense and categorical, got {clash!r}")
        if self.variant != "cf" and not (self.block_dims or self.categorical_dims):
            raise ValueError(
                f"variant {self.variant!r} needs content blocks, got block_dims="
                f"{self.block_dims!r} and categorical_dims={self.categorical_dims!r}"
            )
        lifted = self.lifted_blocks
        if lifted is None:
            lifted = [b for b, w in self.block_dims.items() if w <= LIFT_MAX_WIDTH]
        if isinstance(lifted, str) or not isinstance(lifted, list | tuple):
            raise ValueError(f"lifted_blocks must be a sequence of block names, got {lifted!r}")
        unknown = [b for b in lifted if b not in self.block_dims]
        if unknown:
            raise ValueError(
                f"lifted_blocks must name dense blocks {sorted(self.block_dims)!r}, got {unknown!r}"
            )
        object.__setattr__(self, "lifted_blocks", tuple(sorted(set(lifted))))
        hidden = self.hidden_units
        if isinstance(hidden, int | str) or not isinstance(hidden, list | tuple):
            raise ValueError(
                f"hidden_units must be a sequence of positive integers, got {hidden!r}"
            )
        for units in hidden:
            _check_int("hidden_units", units, 1)
        object.__setattr__(self, "hidden_units", tuple(hidden))
        if self.activation is not None and not isinstance(self.activation, str):
            raise ValueError(f"activation must be an activation name, got {self.activation!r}")
        dropout = self.dropout
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, int | float)
            or not 0 <= dropout < 1
        ):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS!r}, got {self.optimizer!r}")
        if not _positive_number(self.learning_rate):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}")

    @property
    def input_names(self) -> tuple[str, ...]:
        """The item-tower input keys of this variant, in model order."""
        names = (ITEM_IDX,) if self.variant != "content" else ()
        if self.variant != "cf":
            names += tuple(sorted([*self.block_dims, *self.categorical_dims]))
        return names

    def to_dict(self) -> dict:
        """JSON-ready dict; `from_dict` reads it back."""
        out = asdict(self)
        out["lifted_blocks"] = list(self.lifted_blocks)
        out["hidden_units"] = list(self.hidden_units)
        return out

    @classmethod
    def from_dict(cls, values: Mapping) -> RecommenderConfig:
        """Inverse of `to_dict`; unknown keys raise so a stale config is noticed."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown RecommenderConfig keys: {unknown!r}")
        return cls(**values)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _positive_number(value) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value > 0
    )


# --- model ----------------------------------------------------------------------------------


def build_item_tower(config: RecommenderConfig):
    """The item tower as a functional `keras.Model`: dict of inputs → (batch, k) item vectors.

    Inputs (`config.input_names`): `item_idx` (batch,) int32; dense blocks (batch, width)
    float32; categorical blocks (batch,) int32. The layer inside is named `item_tower`.
    """
    import keras

    from training.recommender.layers import ItemTower

    if not isinstance(config, RecommenderConfig):
        raise ValueError(f"config must be a RecommenderConfig, got {type(config).__name__}")
    c = config
    inputs = {}
    for name in c.input_names:
        if name in c.block_dims:
            inputs[name] = keras.Input((c.block_dims[name],), name=name, dtype="float32")
        else:
            inputs[name] = keras.Input((), name=name, dtype="int32")
    tower = ItemTower(
        c.variant,
        c.k,
        n_items=c.n_items,
        block_dims=c.block_dims if c.variant != "cf" else None,
        categorical_dims=c.categorical_dims if c.variant != "cf" else None,
        hidden_units=c.hidden_units,
        activation=c.activation,
        dropout=c.dropout,
        lifted_blocks=c.lifted_blocks if c.variant != "cf" else (),
        seed=c.seed,
        name="item_tower",
    )
    return keras.Model(inputs=inputs, outputs=tower(inputs), name=f"item_tower_{c.variant}")


class Scorer:
    """Scoring helpers bound to one item tower (see `build_recommender`)."""

    def __init__(self, item_tower):
        self.item_tower = item_tower

    def item_vectors(self, item_inputs: Mapping, batch_size: int = 4096) -> np.ndarray:
        """Item vectors (*lead, k) of inputs with any leading shape; see `item_vectors`."""
        return item_vectors(self.item_tower, item_inputs, batch_size)

    def customer_vectors(self, history_inputs: Mapping, mask) -> np.ndarray:
        """(c, k): masked mean of the vectors of each customer's history items (c, h)."""
        vectors = item_vectors(self.item_tower, history_inputs)
        return np.asarray(customer_vectors(vectors, np.asarray(mask, np.float32)))

    @staticmethod
    def score(customers: np.ndarray, items: np.ndarray) -> np.ndarray:
        return score(customers, items)

    @staticmethod
    def top_k(scores: np.ndarray, k: int = 10) -> np.ndarray:
        return top_k(scores, k)


def build_recommender(config: RecommenderConfig):
    """`(item_tower, scorer)`: the tower `keras.Model` and a `Scorer` bound to it."""
    tower = build_item_tower(config)
    return tower, Scorer(tower)


def item_inputs(item_tower, inputs: Mapping) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """The tower's inputs as numpy arrays of its dtypes, and their common leading shape.

    A block of model shape (batch, d) may come as (*lead, d), an index as (*lead,): (n,) for
    products, (b, h) for histories. Keys the tower does not read are ignored.
    """
    missing = [name for name in item_tower.input if name not in inputs]
    if missing:
        raise ValueError(f"item inputs lack {missing!r}; got keys {sorted(inputs)!r}")
    arrays, leads = {}, {}
    for name, spec in item_tower.input.items():
        feature_shape = tuple(spec.shape[1:])
        array = np.asarray(inputs[name], dtype=spec.dtype)
        cut = array.ndim - len(feature_shape)
        if cut < 1 or tuple(array.shape[cut:]) != feature_shape:
            raise ValueError(
                f"item input {name!r} must have shape (..., {', '.join(map(str, feature_shape))})"
                f" with at least one leading axis, got {array.shape!r}"
            )
        arrays[name] = array
        leads[name] = tuple(array.shape[:cut])
    if len(set(leads.values())) != 1:
        raise ValueError(f"item inputs must share one leading shape, got {leads!r}")
    return arrays, next(iter(leads.values()))


def item_vectors(item_tower, inputs: Mapping, batch_size: int = 4096) -> np.ndarray:
    """Item vectors (*lead, k) float32 of item inputs with leading shape `lead`, in batches."""
    _check_int("batch_size", batch_size, 1)
    arrays, lead = item_inputs(item_tower, inputs)
    n = math.prod(lead)
    flat = {name: a.reshape((n, *a.shape[len(lead) :])) for name, a in arrays.items()}
    k = int(item_tower.output.shape[-1])
    chunks = [
        np.asarray(item_tower({m: a[s : s + batch_size] for m, a in flat.items()}, training=False))
        for s in range(0, n, batch_size)
    ]
    out = np.concatenate(chunks) if chunks else np.zeros((0, k), np.float32)
    return out.reshape((*lead, k))


# --- customers, loss, scores ----------------------------------------------------------------


def customer_vectors(history_vectors, mask):
    """Masked mean over the history axis: (b, h, k), mask (b, h) 1/0 → (b, k).

    Masked items are excluded with `where` (a NaN there stays out); a customer with no unmasked
    item gets the zero vector, which scores 0 against every product.
    """
    from keras import ops

    history_vectors = ops.convert_to_tensor(history_vectors)
    keep = ops.cast(mask, history_vectors.dtype) > 0
    kept = ops.where(keep[..., None], history_vectors, ops.zeros_like(history_vectors))
    count = ops.sum(ops.cast(keep, history_vectors.dtype), axis=1, keepdims=True)
    return ops.sum(kept, axis=1) / ops.maximum(count, 1.0)


def wmrb_loss(pos_scores, neg_scores, n_items_total, negative_mask=None, reduction: str = "mean"):
    """WMRB (Liu & Natarajan 2017): log(1 + rank estimate), averaged over the batch.

    pos_scores (b,), neg_scores (b, z): s(u, i) and s(u, j) for z sampled negatives j. The rank
    of the positive among all `n_items_total` products is estimated as
    (n_items_total / z) * sum_j max(0, 1 - s(u, i) + s(u, j)). With `negative_mask` (b, z) 1/0,
    masked negatives (e.g. the positive itself drawn as a negative) are dropped and z is the
    number kept per row. The paper's L = log sum_j max(0, ...) is the same up to the constant
    log(N / z) except for the 1 +, which keeps the loss finite (0) when no negative violates the
    margin. `reduction` "mean" gives a scalar, "none" the (b,) losses.
    """
    from keras import ops

    if not _positive_number(n_items_total):
        raise ValueError(f"n_items_total must be a positive number, got {n_items_total!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    pos_scores = ops.convert_to_tensor(pos_scores)
    neg_scores = ops.cast(neg_scores, pos_scores.dtype)
    margins = ops.relu(1.0 - pos_scores[:, None] + neg_scores)
    if negative_mask is None:
        z = ops.cast(ops.shape(neg_scores)[1], margins.dtype)
    else:
        keep = ops.cast(negative_mask, margins.dtype) > 0
        margins = ops.where(keep, margins, ops.zeros_like(margins))
        z = ops.maximum(ops.sum(ops.cast(keep, margins.dtype), axis=1), 1.0)
    rank = float(n_items_total) / z * ops.sum(margins, axis=1)
    losses = ops.log1p(rank)
    return ops.mean(losses) if reduction == "mean" else losses


def score(customers, items) -> np.ndarray:
    """Dot products (c, n) of customer vectors (c, k) and item vectors (n, k), float32.

    An item whose vector is exactly zero has no representation (in `cf`: a product never bought
    in training, index 0) and scores -inf for everyone, so it never ranks above a product the
    model can score, even one with a negative dot product.
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


def top_k(scores, k: int = 10) -> np.ndarray:
    """Column indices (c, min(k, n)) of each row's k highest scores, best first.

    Ties go to the lower index, both in order and at the cut-off. -inf items (see `score`)
    come only after every finite one. Scores must not be NaN.
    """
    _check_int("k", k, 1)
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (customers, items), got shape {scores.shape!r}")
    n = scores.shape[1]
    k = min(k, n)
    if k == 0:
        return np.zeros((scores.shape[0], 0), np.int64)
    if k < n:
        # The k-th largest score; all above it are in, ties with it are taken lowest index first.
        threshold = np.partition(scores, n - k, axis=1)[:, n - k, None]
        above = scores > threshold
        tied = scores == threshold
        need = k - above.sum(axis=1, keepdims=True)
        chosen = above | (tied & (np.cumsum(tied, axis=1) <= need))
        candidates = np.nonzero(chosen)[1].reshape(scores.shape[0], k)
    else:
        candidates = np.broadcast_to(np.arange(n), scores.shape)
    picked = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -picked), axis=1)
    return np.take_along_axis(candidates, order, axis=1)


def recommend(customers, items, k: int = 10, batch_size: int = 1024) -> np.ndarray:
    """`top_k(score(customers, items), k)` in customer batches (memory O(batch_size × n))."""
    _check_int("batch_size", batch_size, 1)
    customers = np.asarray(customers, np.float32)
    parts = [
        top_k(score(customers[s : s + batch_size], items), k)
        for s in range(0, len(customers), batch_size)
    ]
    if not parts:
        return np.zeros((0, min(k, len(items))), np.int64)
    return np.concatenate(parts)


# --- training -------------------------------------------------------------------------------


def make_optimizer(config: RecommenderConfig):
    """The Keras optimiser `config.optimizer` ("adagrad" or "adam") at `config.learning_rate`."""
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=config.learning_rate)
    return keras.optimizers.Adagrad(learning_rate=config.learning_rate)


class TrainStep:
    """`step(history, mask, positive, negative, negative_mask=None) -> loss`: one WMRB step.

    history: item inputs with leading shape (b, h) and mask (b, h) 1/0 (the customer's sampled
    earlier interactions); positive: item inputs (b,); negative: item inputs (z,) shared by the
    whole batch, as in WMRB (one tower pass over z products instead of b × z);
    negative_mask (b, z) optional. All b·h + b + z products go through the tower in one pass;
    the gradient flows through histories, positives and negatives alike. A plain TensorFlow
    `GradientTape` inside one `tf.function`; no randomness of its own, so with the same seed,
    data and order two runs end with identical weights.
    """

    def __init__(self, item_tower, optimizer, n_items_total):
        import keras
        import tensorflow as tf

        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(
                f"the recommender train step needs the tensorflow backend, got "
                f"{keras.backend.backend()!r}"
            )
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise ValueError(f"optimizer must be a keras Optimizer, got {optimizer!r}")
        if not _positive_number(n_items_total):
            raise ValueError(f"n_items_total must be a positive number, got {n_items_total!r}")
        self.item_tower = item_tower
        self.optimizer = optimizer
        self.n_items_total = float(n_items_total)
        variables = item_tower.trainable_variables
        optimizer.build(variables)
        n_total = self.n_items_total

        @tf.function(reduce_retracing=True)
        def step(history, mask, positive, negative, negative_mask):
            b, h = tf.shape(mask)[0], tf.shape(mask)[1]
            z = tf.shape(next(iter(negative.values())))[0]
            batch = {
                name: tf.concat(
                    [
                        tf.reshape(history[name], tf.concat([[b * h], tf.shape(x)[1:]], 0)),
                        positive[name],
                        x,
                    ],
                    axis=0,
                )
                for name, x in negative.items()
            }
            with tf.GradientTape() as tape:
                vectors = item_tower(batch, training=True)
                k = tf.shape(vectors)[1]
                customers = customer_vectors(tf.reshape(vectors[: b * h], [b, h, k]), mask)
                positives = vectors[b * h : b * h + b]
                negatives = vectors[b * h + b : b * h + b + z]
                pos_scores = tf.reduce_sum(customers * positives, axis=1)
                neg_scores = tf.matmul(customers, negatives, transpose_b=True)
                loss = wmrb_loss(pos_scores, neg_scores, n_total, negative_mask)
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return loss

        self._step = step

    def __call__(self, history, mask, positive, negative, negative_mask=None) -> float:
        history, lead_h = item_inputs(self.item_tower, history)
        positive, lead_p = item_inputs(self.item_tower, positive)
        negative, lead_n = item_inputs(self.item_tower, negative)
        mask = np.asarray(mask, np.float32)
        if len(lead_h) != 2 or mask.shape != lead_h:
            raise ValueError(
                f"history must lead with (b, h) equal to mask's shape, got {lead_h!r} and "
                f"{mask.shape!r}"
            )
        if lead_p != lead_h[:1]:
            raise ValueError(f"positive must lead with ({lead_h[0]},), got {lead_p!r}")
        if len(lead_n) != 1 or lead_n[0] < 1:
            raise ValueError(f"negative must lead with (z,), z >= 1, got {lead_n!r}")
        if negative_mask is None:
            negative_mask = np.ones((lead_h[0], lead_n[0]), np.float32)
        negative_mask = np.asarray(negative_mask, np.float32)
        if negative_mask.shape != (lead_h[0], lead_n[0]):
            raise ValueError(
                f"negative_mask must have shape {(lead_h[0], lead_n[0])!r}, "
                f"got {negative_mask.shape!r}"
            )
        return float(self._step(history, mask, positive, negative, negative_mask))


def make_train_step(item_tower, optimizer, n_items_total) -> TrainStep:
    """A callable taking one WMRB step on `item_tower` with `optimizer` (see `TrainStep`).

    `n_items_total`: the number of products negatives are drawn from (available in the
    training window), the N of the rank estimate.
    """
    return TrainStep(item_tower, optimizer, n_items_total)


# --- save / load ----------------------------------------------------------------------------


def save_item_tower(item_tower, path) -> Path:
    """Write the tower to `path` (a `.keras` file, e.g. `model.keras`)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"item tower path must end in .keras, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    item_tower.save(path)
    return path


def load_item_tower(path):
    """Read a tower written by `save_item_tower` (uncompiled; no custom_objects needed)."""
    import keras

    import training.recommender.layers  # noqa: F401  (registers the layers)

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no saved item tower at {str(path)!r}")
    return keras.saving.load_model(path, compile=False)
