"""Small Keras layers of the attribute network (backend-agnostic: `keras.ops` only).

Each layer checks its arguments when constructed, has `get_config` and is registered under the
`atelier` package so a saved `.keras` model loads without `custom_objects` once this module is
imported (serving imports it for exactly that).
"""

from __future__ import annotations

import keras
from keras import ops

# Scores of masked shots: finite (unlike -inf) so `score - max` never becomes inf - inf = NaN.
_MASKED_SCORE = -1e9


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _embeddings_initializer(value):
    # Unit-variance rows (PyTorch's nn.Embedding default) rather than Keras's uniform(±0.05),
    # whose std of ~0.03 starts the text and metadata paths ~30x below the unit-scale image
    # inputs: with it, plain SGD at lr 0.01 learned nothing from the text of the synthetic test
    # in 600 steps, where unit rows learn it in ~1,000.
    if value is None:
        return keras.initializers.RandomNormal(mean=0.0, stddev=1.0)
    return keras.initializers.get(value)


def _check_activation(name: str, value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be an activation name or None, got {value!r}")
    keras.activations.get(value)  # raises on unknown names before any weight is built
    return value


@keras.saving.register_keras_serializable(package="atelier")
class CategoricalEmbedding(keras.layers.Layer):
    """Embedding of a categorical index (batch,) → (batch, output_dim); 0 is the unknown index.

    Indices outside [0, input_dim) are embedded as unknown (0): the category index grows when new
    brands or types arrive after training, and such products must still be scored.
    """

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = _check_positive_int("input_dim", input_dim)
        self.output_dim = _check_positive_int("output_dim", output_dim)
        self.embeddings_initializer = _embeddings_initializer(embeddings_initializer)
        self.embedding = keras.layers.Embedding(
            input_dim,
            output_dim,
            embeddings_initializer=self.embeddings_initializer,
            name="embedding",
        )

    def build(self, input_shape):
        self.embedding.build(input_shape)
        self.built = True

    def call(self, indices):
        indices = ops.cast(indices, "int32")
        known = ops.logical_and(indices >= 0, indices < self.input_dim)
        return self.embedding(ops.where(known, indices, 0))

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }


@keras.saving.register_keras_serializable(package="atelier")
class ShotMerge(keras.layers.Layer):
    """Merge per-shot image embeddings into one visual vector, conditioned on product type.

    Inputs `[shots, shot_mask]` or `[shots, shot_mask, condition]`: shots (batch, n_shots, d),
    shot_mask (batch, n_shots) with 1 for a present image and 0 for a missing one, condition
    (batch, c) — the product-type embedding. Output (batch, units).

    Each shot is scored by a small MLP on [shot; condition] and the scores are softmax-normalised
    over the present shots only. Conditioning on type matters because a full-body shot shows
    several products: for a "belt" the relevant shot is not the one a "dress" would pick. Masked
    shots get exactly zero weight, and a product with no shot at all gets a zero vector.
    With `normalize` each shot is first divided by its root mean square: VGG max-pooled
    activations are unbounded (tens to hundreds with ImageNet weights, another scale with random
    weights) and plain SGD with a constant rate needs inputs of a known scale.
    """

    def __init__(
        self,
        units: int,
        attention_units: int = 64,
        activation: str | None = "relu",
        normalize: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got {normalize!r}")
        self.normalize = normalize
        self.units = _check_positive_int("units", units)
        self.attention_units = _check_positive_int("attention_units", attention_units)
        self.activation = _check_activation("activation", activation)
        self.score_hidden = keras.layers.Dense(attention_units, activation="tanh", name="score")
        self.score_out = keras.layers.Dense(1, name="score_out")
        self.project = keras.layers.Dense(units, activation=activation, name="project")

    def build(self, input_shape):
        if not isinstance(input_shape, list | tuple) or len(input_shape) not in (2, 3):
            raise ValueError(
                f"ShotMerge expects [shots, shot_mask] or [shots, shot_mask, condition], "
                f"got input shape {input_shape!r}"
            )
        shots_shape = tuple(input_shape[0])
        if len(shots_shape) != 3 or shots_shape[-1] is None:
            raise ValueError(f"shots must be (batch, n_shots, d), got shape {shots_shape!r}")
        width = shots_shape[-1]
        if len(input_shape) == 3:
            width += input_shape[2][-1]
        self.score_hidden.build((None, None, width))
        self.score_out.build((None, None, self.attention_units))
        self.project.build((None, shots_shape[-1]))
        self.built = True

    def call(self, inputs):
        shots, shot_mask = inputs[0], inputs[1]
        present = ops.greater(ops.cast(shot_mask, shots.dtype), 0)
        # `where`, not a product: a missing image may arrive as NaN and NaN * 0 is still NaN.
        shots = ops.where(present[..., None], shots, 0.0)
        if self.normalize:
            rms = ops.sqrt(ops.mean(ops.square(shots), axis=-1, keepdims=True))
            shots = shots / ops.maximum(rms, 1e-6)  # zero (missing) shots stay zero
        features = shots
        if len(inputs) == 3:
            condition = ops.cast(inputs[2], shots.dtype)
            per_shot = ops.zeros_like(shots[..., :1]) + condition[:, None, :]
            features = ops.concatenate([shots, per_shot], axis=-1)
        scores = self.score_out(self.score_hidden(features))[..., 0]
        scores = ops.where(present, scores, _MASKED_SCORE)
        weights = ops.exp(scores - ops.max(scores, axis=1, keepdims=True))
        weights = weights * ops.cast(present, weights.dtype)
        # A product with no shot has all weights 0; the floor keeps 0 / 0 from making NaN.
        weights = weights / ops.maximum(ops.sum(weights, axis=1, keepdims=True), 1e-12)
        pooled = ops.sum(weights[..., None] * shots, axis=1)
        has_shot = ops.cast(ops.any(present, axis=1), pooled.dtype)
        # Without the gate the projection's bias would give shot-less products a visual vector.
        return self.project(pooled) * has_shot[:, None]

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "attention_units": self.attention_units,
            "activation": self.activation,
            "normalize": self.normalize,
        }


@keras.saving.register_keras_serializable(package="atelier")
class TextCNN(keras.layers.Layer):
    """Token ids (batch, length) → text vector (batch, units), as in the paper.

    Trainable randomly initialised embeddings, Conv1D (kernel 3: word 3-grams) with ReLU,
    max-over-time pooling and a dense layer. Id 0 is padding: padded positions are embedded as
    zeros (so a window overlapping the padding sees what the conv's own zero padding shows, and
    more padding changes nothing) and set to -inf before the max, so they never win it; a text
    of padding only pools to zeros. Ids >= vocab_size become `oov_id`. Embeddings start as unit
    normals unless `embeddings_initializer` says otherwise.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        filters: int,
        units: int,
        kernel_size: int = 3,
        oov_id: int = 1,
        embeddings_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = _check_positive_int("vocab_size", vocab_size)
        self.embedding_dim = _check_positive_int("embedding_dim", embedding_dim)
        self.filters = _check_positive_int("filters", filters)
        self.units = _check_positive_int("units", units)
        self.kernel_size = _check_positive_int("kernel_size", kernel_size)
        if isinstance(oov_id, bool) or not isinstance(oov_id, int) or not 0 < oov_id < vocab_size:
            raise ValueError(f"oov_id must be in [1, vocab_size={vocab_size}), got {oov_id!r}")
        self.oov_id = oov_id
        self.embeddings_initializer = _embeddings_initializer(embeddings_initializer)
        self.embedding = keras.layers.Embedding(
            vocab_size,
            embedding_dim,
            embeddings_initializer=self.embeddings_initializer,
            name="embedding",
        )
        self.conv = keras.layers.Conv1D(
            filters, kernel_size, padding="same", activation="relu", name="conv"
        )
        self.dense = keras.layers.Dense(units, activation="relu", name="dense")

    def build(self, input_shape):
        self.embedding.build(input_shape)
        self.conv.build((*input_shape, self.embedding_dim))
        self.dense.build((input_shape[0], self.filters))
        self.built = True

    def call(self, token_ids):
        ids = ops.cast(token_ids, "int32")
        valid = ids > 0
        ids = ops.where(valid, ids, 0)
        ids = ops.where(ids >= self.vocab_size, self.oov_id, ids)
        embedded = self.embedding(ids) * ops.cast(valid, self.compute_dtype)[..., None]
        grams = self.conv(embedded)
        grams = ops.where(valid[..., None], grams, float("-inf"))
        pooled = ops.max(grams, axis=1)
        pooled = ops.where(ops.any(valid, axis=1)[:, None], pooled, 0.0)
        return self.dense(pooled)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "filters": self.filters,
            "units": self.units,
            "kernel_size": self.kernel_size,
            "oov_id": self.oov_id,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }


@keras.saving.register_keras_serializable(package="atelier")
class WideText(keras.layers.Layer):
    """Token ids (batch, length) → logits (batch, units): a linear model over the bag of words.

    The "wide" text path beside the text CNN: one trainable row per token id, summed over the
    text's tokens and divided by the square root of their count (the L2 norm of a count vector
    of distinct tokens), the form TF-IDF + logistic regression has. Where the text names the
    answer ("Navy Blue", "Casual") a linear model over words is what wins; the CNN's max-pooled
    3-grams learn it slowly with plain SGD. Rows start at zero so the path adds nothing until a
    head learns from it. `scale` multiplies the output: with SGD it raises this path's effective
    learning rate by scale² without touching the rest of the network (sparse rows each see few
    updates).
    """

    def __init__(self, vocab_size: int, units: int, oov_id: int = 1, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = _check_positive_int("vocab_size", vocab_size)
        self.units = _check_positive_int("units", units)
        if isinstance(oov_id, bool) or not isinstance(oov_id, int) or not 0 < oov_id < vocab_size:
            raise ValueError(f"oov_id must be in [1, vocab_size={vocab_size}), got {oov_id!r}")
        self.oov_id = oov_id
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.scale = float(scale)
        self.weights_table = keras.layers.Embedding(
            vocab_size, units, embeddings_initializer="zeros", name="rows"
        )

    def build(self, input_shape):
        self.weights_table.build(input_shape)
        self.built = True

    def call(self, token_ids):
        ids = ops.cast(token_ids, "int32")
        valid = ops.cast(ids > 0, self.compute_dtype)
        ids = ops.where(ids > 0, ids, 0)
        ids = ops.where(ids >= self.vocab_size, self.oov_id, ids)
        rows = self.weights_table(ids) * valid[..., None]
        count = ops.sum(valid, axis=1, keepdims=True)
        return self.scale * ops.sum(rows, axis=1) / ops.sqrt(ops.maximum(count, 1.0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "units": self.units,
            "oov_id": self.oov_id,
            "scale": self.scale,
        }


@keras.saving.register_keras_serializable(package="atelier")
class ShotMean(keras.layers.Layer):
    """Per-shot descriptors (batch, shots, d) → their mean over present shots (batch, d).

    A shot is present when its descriptor is not all zeros (a colour histogram sums to 1; a
    missing one is stored as zeros), so the colour input needs no mask of its own. A product
    without any descriptor gets zeros. NaN (a missing value that slipped through) counts as
    absent.
    """

    def call(self, shots):
        finite = ops.all(ops.isfinite(shots), axis=-1, keepdims=True)
        shots = ops.where(finite, shots, 0.0)
        present = ops.cast(ops.any(ops.not_equal(shots, 0.0), axis=-1, keepdims=True), shots.dtype)
        total = ops.sum(shots * present, axis=1)
        return total / ops.maximum(ops.sum(present, axis=1), 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])
