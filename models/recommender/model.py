"""The hybrid recommender as an asymmetric factorisation model (paper Section 3).

There is no customer table: a customer's vector is the mean of the match parts of the item
vectors of their most recent products (`models.ranking`, one rule for training, evaluation and
serving), and score(customer, product) = match · match + the product's bias (item vectors are
k + 1 floats, layout "dot+bias"). The item tower is `cf`, `content` or `hybrid` (see
`layers.ItemTower`). Training minimises WMRB (Liu & Natarajan 2017) with one plain TensorFlow
`GradientTape` step per batch.

The paper fixes neither the optimiser nor the hidden sizes. Measured on H&M (issue 11): with
the loss averaged over a batch, Adagrad from a 0.1 accumulator moved a CF row ~2e-6 per step
and CF never trained; Adam's per-coordinate normalised steps move every row that takes part,
so `"adam"` is the default (`"adagrad"` stays available).
Keras is imported inside the functions that need it, so the config is cheap to import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from atelier.checks import check_int, positive_number
from models.ranking import score, top_k

ITEM_IDX = "item_idx"  # same value as layers.ITEM_IDX; duplicated to keep Keras out of imports
VARIANTS = ("cf", "content", "hybrid")
OPTIMIZERS = ("adagrad", "adam")
NEGATIVES = ("uniform", "mixed")
# Time-dependent blocks (read as of each example's cut-off): they feed only the item bias.
DYNAMIC_BLOCKS = ("popularity", "recency")
# Item vectors are k match coordinates and the item bias (see models.ranking).
VECTOR_LAYOUT = "dot+bias"
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
    `dynamic_blocks`: the time-dependent dense blocks that feed only the item bias (None: those
    of `DYNAMIC_BLOCKS` present); `bias_units`: the hidden width of that bias network.
    `l2`: weight of the squared norm of the batch's CF rows and biases (a product bought
    rarely is pulled towards the shared prior: zero in `cf`, its content vector in `hybrid`).
    `normalize`: unit-length match vectors times one learned scale (a product cannot reach
    every customer by growing its norm). `negatives`: "uniform" (|Z| drawn from the
    candidates) or "mixed" (those plus the other positives of the batch, which are drawn as
    often as products sell: they push down the products everyone buys unless the customer's
    taste supports them).
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
    optimizer: str = "adam"
    learning_rate: float = 0.002
    dynamic_blocks: tuple[str, ...] | None = None
    bias_units: int = 16
    l2: float = 1e-4
    negatives: str = "mixed"
    normalize: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS!r}, got {self.variant!r}")
        check_int("k", self.k, 1)
        check_int("n_negatives", self.n_negatives, 1)
        check_int("seed", self.seed, 0)
        check_int("n_items", self.n_items, 1 if self.variant != "content" else 0)
        for name in ("block_dims", "categorical_dims"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise ValueError(f"{name} must be a dict of block name -> width, got {value!r}")
            for block, width in value.items():
                if not isinstance(block, str) or not block.isidentifier() or block == ITEM_IDX:
                    raise ValueError(
                        f"{name} keys must be identifiers other than {ITEM_IDX!r}, got {block!r}"
                    )
                check_int(f"{name}[{block!r}]", width, 1)
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
        dynamic = self.dynamic_blocks
        if dynamic is None:
            dynamic = [b for b in DYNAMIC_BLOCKS if b in self.block_dims]
        if isinstance(dynamic, str) or not isinstance(dynamic, list | tuple):
            raise ValueError(f"dynamic_blocks must be a sequence of block names, got {dynamic!r}")
        unknown = [b for b in dynamic if b not in self.block_dims]
        if unknown:
            raise ValueError(
                f"dynamic_blocks must name dense blocks {sorted(self.block_dims)!r}, "
                f"got {unknown!r}"
            )
        object.__setattr__(self, "dynamic_blocks", tuple(sorted(set(dynamic))))
        check_int("bias_units", self.bias_units, 1)
        if (
            isinstance(self.l2, bool)
            or not isinstance(self.l2, int | float)
            or not (math.isfinite(self.l2) and self.l2 >= 0)
        ):
            raise ValueError(f"l2 must be a finite number >= 0, got {self.l2!r}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES!r}, got {self.negatives!r}")
        hidden = self.hidden_units
        if isinstance(hidden, int | str) or not isinstance(hidden, list | tuple):
            raise ValueError(
                f"hidden_units must be a sequence of positive integers, got {hidden!r}"
            )
        for units in hidden:
            check_int("hidden_units", units, 1)
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
        if not positive_number(self.learning_rate):
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
        out["dynamic_blocks"] = list(self.dynamic_blocks)
        out["hidden_units"] = list(self.hidden_units)
        return out

    @classmethod
    def from_dict(cls, values: Mapping) -> RecommenderConfig:
        """Inverse of `to_dict`; unknown keys raise so a stale config is noticed."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown RecommenderConfig keys: {unknown!r}")
        values = dict(values)
        for key in ("lifted_blocks", "dynamic_blocks", "hidden_units"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


# --- model ----------------------------------------------------------------------------------


def build_item_tower(config: RecommenderConfig):
    """The item tower as a functional `keras.Model`: dict of inputs → (batch, k + 1) item
    vectors (k match coordinates, then the item bias; see `layers.ItemTower`).

    Inputs (`config.input_names`): `item_idx` (batch,) int32; dense blocks (batch, width)
    float32; categorical blocks (batch,) int32. The layer inside is named `item_tower`.
    """
    import keras

    from models.recommender.layers import ItemTower

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
        dynamic_blocks=c.dynamic_blocks if c.variant != "cf" else (),
        bias_units=c.bias_units,
        normalize=c.normalize,
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


def item_inputs(
    item_tower, inputs: Mapping, names=None
) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """The tower's inputs as numpy arrays of its dtypes, and their common leading shape.

    A block of model shape (batch, d) may come as (*lead, d), an index as (*lead,): (n,) for
    products, (b, h) for histories. Keys the tower does not read are ignored; `names` limits
    the inputs to those (default: every input of the tower).
    """
    wanted = list(item_tower.input) if names is None else list(names)
    missing = [name for name in wanted if name not in inputs]
    if missing:
        raise ValueError(f"item inputs lack {missing!r}; got keys {sorted(inputs)!r}")
    arrays, leads = {}, {}
    for name in wanted:
        spec = item_tower.input[name]
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
    check_int("batch_size", batch_size, 1)
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
    """Customer vectors in the "dot+bias" layout (`models.ranking.customer_vectors` in Keras
    ops, so it runs inside the training graph): (b, h, k + 1) item vectors, mask (b, h) 1/0 →
    (b, k + 1): the masked mean of the match coordinates, then 1. A customer with no unmasked
    item gets the zero vector (scores 0 against every product). Masked items are excluded with
    `where` (a NaN there stays out)."""
    from keras import ops

    history_vectors = ops.convert_to_tensor(history_vectors)
    keep = ops.cast(mask, history_vectors.dtype) > 0
    kept = ops.where(keep[..., None], history_vectors, ops.zeros_like(history_vectors))
    count = ops.sum(ops.cast(keep, history_vectors.dtype), axis=1, keepdims=True)
    mean = ops.sum(kept, axis=1) / ops.maximum(count, 1.0)
    has = ops.cast(count > 0, history_vectors.dtype)
    return ops.concatenate([mean[:, :-1], has], axis=-1)


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

    import models.recommender.layers  # noqa: F401  (registers the layers)

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no saved item tower at {str(path)!r}")
    return keras.saving.load_model(path, compile=False)
