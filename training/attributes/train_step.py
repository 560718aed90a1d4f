"""One training step of the paper: plain SGD on one attribute head plus the shared layers.

The loss is computed from that head's output only, through a sub-model that shares the full
model's layers but holds only the path from the inputs to that head. Other heads are not in the
sub-model, so they get no gradient and their weights stay bit-for-bit unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from models.attributes.model import IMAGE, INPUT_DTYPES, as_model_inputs, model_input_names


def head_loss(labels, probabilities, sample_weight=None):
    """Sparse categorical cross-entropy of one head, averaged over the batch.

    labels (batch,) int, probabilities (batch, classes), sample_weight (batch,) or None. Weighted
    terms are divided by the batch size, not the weight sum, so class weights with mean 1 keep
    the loss on the unweighted scale.
    """
    import keras
    from keras import ops

    losses = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    if sample_weight is not None:
        losses = losses * ops.cast(sample_weight, losses.dtype)
    return ops.mean(losses)


def _input_signature(model) -> dict:
    import tensorflow as tf

    # Every dimension but the last free: batch sizes (an epoch's last batch) and shot counts
    # vary, and one trace per head must serve them all.
    return {
        name: tf.TensorSpec((None, *tensor.shape[1:]), tf.as_dtype(INPUT_DTYPES[name]), name=name)
        for name, tensor in model.input.items()
    }


class TrainStep:
    """`step(attribute, inputs, labels, sample_weight=None) -> loss`: one SGD step on one head.

    Built by `make_train_step`. Uses TensorFlow's GradientTape, one `tf.function` per head with a
    fixed input signature, so each head is traced exactly once (`traces` counts them) whatever
    the batch size: a step costs what a single-task step of the same network costs, however many
    heads there are. Under JAX the same step would be a `jax.value_and_grad` over the head
    sub-model's `stateless_call` with its trainable variables passed explicitly.
    `weight_decay` is decoupled decay of the variables a step updates (SGD's `weight_decay`).
    """

    def __init__(self, model, learning_rate: float = 0.01, weight_decay: float = 0.0):
        import keras

        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(
                f"the attribute train step needs the tensorflow backend, got "
                f"{keras.backend.backend()!r}"
            )
        lr = learning_rate
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr):
            raise ValueError(f"learning_rate must be a positive number, got {lr!r}")
        if lr <= 0:
            raise ValueError(f"learning_rate must be a positive number, got {lr!r}")
        if not isinstance(model.output, dict):
            raise ValueError(
                f"model must output a dict attribute -> probabilities, got "
                f"{type(model.output).__name__}"
            )
        wd = weight_decay
        if isinstance(wd, bool) or not isinstance(wd, int | float) or not 0 <= wd < 1:
            raise ValueError(f"weight_decay must be a number in [0, 1), got {wd!r}")
        self.model = model
        self.learning_rate = float(lr)
        self.heads = {a: int(t.shape[-1]) for a, t in model.output.items()}
        self.input_names = model_input_names(model)
        self.traces: dict[str, int] = {}
        # Plain SGD, constant rate, no momentum: the paper found adaptive optimisers and even
        # momentum unstable when heads take turns on the shared layers.
        self.optimizer = keras.optimizers.SGD(
            learning_rate=self.learning_rate, momentum=0.0, weight_decay=float(wd) or None
        )
        # Built on every variable once, so each head's step can update its own subset.
        self.optimizer.build(model.trainable_variables)
        self._steps: dict[str, object] = {}

    def _step_for(self, attribute: str):
        if attribute not in self._steps:
            import keras
            import tensorflow as tf

            head = keras.Model(self.model.input, self.model.output[attribute])
            variables = head.trainable_variables
            optimizer = self.optimizer
            traces = self.traces
            signature = [
                _input_signature(self.model),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None,), tf.float32),
            ]

            @tf.function(input_signature=signature)
            def step(inputs, labels, sample_weight):
                traces[attribute] = traces.get(attribute, 0) + 1  # Python: runs only when tracing
                with tf.GradientTape() as tape:
                    probabilities = head(inputs, training=True)
                    loss = head_loss(labels, probabilities, sample_weight)
                grads = tape.gradient(loss, variables)
                optimizer.apply_gradients(zip(grads, variables))
                return loss

            self._steps[attribute] = step
        return self._steps[attribute]

    def __call__(self, attribute: str, inputs, labels, sample_weight=None) -> float:
        if attribute not in self.heads:
            raise ValueError(f"unknown attribute {attribute!r}; heads are {sorted(self.heads)!r}")
        arrays = as_model_inputs(inputs, self.input_names)
        labels = np.asarray(labels)
        batch = arrays[IMAGE].shape[0]
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {labels.shape!r}")
        classes = self.heads[attribute]
        # An unlabelled product (-1) must never reach a head: it would train it on a wrong class.
        bad = labels[(labels < 0) | (labels >= classes)]
        if bad.size:
            raise ValueError(
                f"labels of {attribute!r} must be in [0, {classes}), got {bad[0].item()!r}"
            )
        if sample_weight is None:
            weights = np.ones(batch, np.float32)
        else:
            weights = np.asarray(sample_weight, np.float32)
            if weights.shape != (batch,):
                raise ValueError(f"sample_weight must have shape ({batch},), got {weights.shape!r}")
        loss = self._step_for(attribute)(arrays, labels.astype(np.int32), weights)
        return float(loss)


def make_train_step(model, learning_rate: float = 0.01, weight_decay: float = 0.0) -> TrainStep:
    """A callable taking one plain-SGD step on one head of `model` (see `TrainStep`)."""
    return TrainStep(model, learning_rate, weight_decay)
