"""One WMRB training step of the hybrid recommender (paper Section 3): loss, batch, optimiser.

WMRB (Liu & Natarajan 2017) with one plain TensorFlow `GradientTape` step per batch; the model
it trains (`models.recommender.model`) is shared with scoring and serving, this is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atelier.checks import positive_number
from models.recommender.model import ITEM_IDX, RecommenderConfig, item_inputs


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

    if not positive_number(n_items_total):
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


def make_optimizer(config: RecommenderConfig):
    """The Keras optimiser `config.optimizer` ("adagrad" or "adam") at `config.learning_rate`."""
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=config.learning_rate)
    return keras.optimizers.Adagrad(learning_rate=config.learning_rate)


@dataclass
class Batch:
    """One WMRB batch in the form the train step reads (numpy; see `TrainStep`).

    `static`: the static tower inputs of the U distinct products of the batch (U, …);
    `hist_idx` (b, h) int32 rows of U, `hist_mask` (b, h) 1/0; `pos_idx` (b,) and `neg_idx`
    (m,) int32 rows of U; `neg_mask` (b, m) 1/0 (0: not a negative of that row, e.g. its own
    positive); `pos_dyn` name → (b, w) and `neg_dyn` name → (b, m, w): the dynamic blocks of
    each row's positive and of every negative as of THAT row's cut-off (empty for `cf`).
    """

    static: dict
    hist_idx: np.ndarray
    hist_mask: np.ndarray
    pos_idx: np.ndarray
    neg_idx: np.ndarray
    neg_mask: np.ndarray
    pos_dyn: dict
    neg_dyn: dict

    def arrays(self) -> tuple:
        return (
            self.static,
            self.hist_idx.astype(np.int32),
            self.hist_mask.astype(np.float32),
            self.pos_idx.astype(np.int32),
            self.neg_idx.astype(np.int32),
            self.neg_mask.astype(np.float32),
            {k: v.astype(np.float32) for k, v in self.pos_dyn.items()},
            {k: v.astype(np.float32) for k, v in self.neg_dyn.items()},
        )


def batch_scores(layer, static, hist_idx, hist_mask, pos_idx, neg_idx, pos_dyn, neg_dyn, training):
    """(positive scores (b,), negative scores (b, m)) of a `Batch` under the `ItemTower` layer
    (Keras ops): match part once per distinct product, biases per (row, product) pair."""
    from keras import ops

    match, bias = layer.match_and_bias(static, training=training)
    hist = ops.take(match, hist_idx, axis=0)  # (b, h, k)
    keep = ops.cast(hist_mask, match.dtype)[..., None]
    customers = ops.sum(hist * keep, axis=1) / ops.maximum(ops.sum(keep, axis=1), 1.0)
    positives = ops.take(match, pos_idx, axis=0)
    negatives = ops.take(match, neg_idx, axis=0)
    pos = ops.sum(customers * positives, axis=1) + ops.take(bias, pos_idx, axis=0)
    neg = ops.matmul(customers, ops.transpose(negatives)) + ops.take(bias, neg_idx, axis=0)[None]
    if layer.dynamic_names:
        pos = pos + layer.dynamic_bias(pos_dyn)
        neg = neg + layer.dynamic_bias(neg_dyn)
    return pos, neg


def cf_penalty(layer, static):
    """Mean squared norm of the CF rows and biases of the batch's distinct products (0 without
    CF): the L2 term that shrinks rarely bought products towards the shared prior."""
    from keras import ops

    if not layer.uses_cf:
        return 0.0
    idx = static[ITEM_IDX]
    rows = layer.collaborative(idx)
    bias = layer.collaborative_bias(idx)
    return ops.mean(ops.sum(ops.square(rows), axis=-1) + ops.square(bias))


class TrainStep:
    """`step(batch) -> loss`: one WMRB step on a `Batch`; `step.loss(batch)` the same loss
    without a gradient (validation).

    The match part runs once per distinct product of the batch (histories, positives and
    negatives share it), the bias per (row, product) pair, so every row's positive and
    negatives are scored with their popularity and recency as of that row's own cut-off. Loss:
    WMRB averaged over the batch + `l2` × `cf_penalty`. A plain TensorFlow `GradientTape` in one
    `tf.function`; no randomness of its own, so with the same seed, data and order two runs end
    with identical weights.
    """

    def __init__(self, item_tower, optimizer, n_items_total, l2: float = 0.0):
        import keras
        import tensorflow as tf

        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(
                f"the recommender train step needs the tensorflow backend, got "
                f"{keras.backend.backend()!r}"
            )
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise ValueError(f"optimizer must be a keras Optimizer, got {optimizer!r}")
        if not positive_number(n_items_total):
            raise ValueError(f"n_items_total must be a positive number, got {n_items_total!r}")
        if isinstance(l2, bool) or not isinstance(l2, int | float) or not l2 >= 0:
            raise ValueError(f"l2 must be a number >= 0, got {l2!r}")
        self.item_tower = item_tower
        self.layer = item_tower.get_layer("item_tower")
        self.optimizer = optimizer
        self.n_items_total = float(n_items_total)
        variables = item_tower.trainable_variables
        optimizer.build(variables)
        n_total, layer, weight = self.n_items_total, self.layer, float(l2)

        def objective(
            static, hist_idx, hist_mask, pos_idx, neg_idx, neg_mask, pos_dyn, neg_dyn, training
        ):
            pos, neg = batch_scores(
                layer, static, hist_idx, hist_mask, pos_idx, neg_idx, pos_dyn, neg_dyn, training
            )
            ranking = wmrb_loss(pos, neg, n_total, neg_mask)
            return ranking, ranking + weight * cf_penalty(layer, static)

        @tf.function(reduce_retracing=True)
        def step(*args):
            with tf.GradientTape() as tape:
                ranking, total = objective(*args, training=True)
            grads = tape.gradient(total, variables)
            optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
            return ranking

        @tf.function(reduce_retracing=True)
        def loss(*args):
            return objective(*args, training=False)[0]

        self._step, self._loss = step, loss

    def __call__(self, batch: Batch) -> float:
        """One step; returns the batch's WMRB loss before the update (without the L2 term)."""
        return float(self._step(*_checked(self.item_tower, batch)))

    def loss(self, batch: Batch) -> float:
        """The batch's mean WMRB loss, no update (dropout off)."""
        return float(self._loss(*_checked(self.item_tower, batch)))


def _checked(item_tower, batch: Batch) -> tuple:
    layer = item_tower.get_layer("item_tower")
    static, lead = item_inputs(item_tower, batch.static, names=layer.static_names)
    if len(lead) != 1:
        raise ValueError(f"batch static inputs must lead with (U,), got {lead!r}")
    b, h = np.shape(batch.hist_idx)
    m = np.size(batch.neg_idx)
    if np.shape(batch.hist_mask) != (b, h) or np.shape(batch.pos_idx) != (b,):
        raise ValueError(
            f"hist_mask must be {(b, h)!r} and pos_idx {(b,)!r}, got "
            f"{np.shape(batch.hist_mask)!r} and {np.shape(batch.pos_idx)!r}"
        )
    if m < 1 or np.shape(batch.neg_mask) != (b, m):
        raise ValueError(
            f"neg_mask must be {(b, m)!r} with m >= 1, got {np.shape(batch.neg_mask)!r}"
        )
    for name in layer.dynamic_names:
        width = layer.dynamic_dims[name]
        if np.shape(batch.pos_dyn.get(name)) != (b, width) or np.shape(batch.neg_dyn.get(name)) != (
            b,
            m,
            width,
        ):
            raise ValueError(
                f"dynamic block {name!r} must be ({b}, {width}) for positives and "
                f"({b}, {m}, {width}) for negatives"
            )
    arrays = list(batch.arrays())
    arrays[0] = static
    arrays[6] = {n: arrays[6][n] for n in layer.dynamic_names}
    arrays[7] = {n: arrays[7][n] for n in layer.dynamic_names}
    return tuple(arrays)


def make_train_step(item_tower, optimizer, n_items_total, l2: float = 0.0) -> TrainStep:
    """A callable taking one WMRB step on `item_tower` with `optimizer` (see `TrainStep`).

    `n_items_total`: the number of products negatives are drawn from, the N of the rank
    estimate; `l2`: the weight of `cf_penalty`.
    """
    return TrainStep(item_tower, optimizer, n_items_total, l2)
