"""Small Keras layers of the recommender's item tower (backend-agnostic: `keras.ops` only).

Each layer checks its arguments when constructed, has `get_config` and is registered under the
`atelier` package, so a saved `.keras` item tower loads without `custom_objects` once this module
is imported. Sub-layers are seeded from the layer's `seed` (seed, seed + 1, ...), so two towers
built with the same seed start from identical weights without touching the global RNG.
"""

from __future__ import annotations

import re

import keras
from keras import ops

ITEM_IDX = "item_idx"
VARIANTS = ("cf", "content", "hybrid")
# The per-product biases (CF row, content) are parameterised at this scale: one bias weight
# moves the score as much as the whole match vector does, so at the same Adam step size it
# learns far faster and ends up encoding one segment's taste for everyone (measured on a
# two-segment catalogue: the second segment's lists went to the first's products).
BIAS_RATE = 0.1

# Block names become Keras input names and dict keys in saved configs.
_BLOCK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Floor of the squared norm: a zero (missing) block stays zero and its gradient finite.
_EPSILON = 1e-12


def l2_normalize(x, axis: int = -1):
    """`x` divided by its L2 norm along `axis`; non-finite entries count as 0.

    An all-zero (or all-missing) vector stays exactly zero instead of becoming NaN: a product
    without an image contributes nothing rather than poisoning the concatenation.
    """
    x = ops.convert_to_tensor(x)
    x = ops.where(ops.isfinite(x), x, ops.zeros_like(x))
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, _EPSILON))


def lift(x):
    """Append a constant 1 to the last axis: (..., d) → (..., d + 1).

    Unit-normalising a width-1 block leaves only its sign and a width-3 block only its direction,
    so price, recency or popularity *levels* would be lost. After the lift, [x, 1] / ||[x, 1]|| is
    unit-norm and still a one-to-one function of x (monotone for a scalar). It saturates for
    |x| >> 1: give standardised values (z-scores, log counts), not raw days or prices.
    """
    x = ops.convert_to_tensor(x)
    x = ops.where(ops.isfinite(x), x, ops.zeros_like(x))
    return ops.concatenate([x, ops.ones_like(x[..., :1])], axis=-1)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_seed(value) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {value!r}")
    return value


def _check_dims(name: str, value) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict of block name -> width, got {value!r}")
    for block, width in value.items():
        if not isinstance(block, str) or not _BLOCK_NAME.match(block) or block == ITEM_IDX:
            raise ValueError(
                f"{name} keys must match {_BLOCK_NAME.pattern} and not be {ITEM_IDX!r}, "
                f"got {block!r}"
            )
        _check_positive_int(f"{name}[{block!r}]", width)
    return {block: value[block] for block in sorted(value)}


def _check_units(value) -> tuple[int, ...]:
    if isinstance(value, int | str) or not isinstance(value, list | tuple):
        raise ValueError(f"hidden_units must be a sequence of positive integers, got {value!r}")
    for units in value:
        _check_positive_int("hidden_units", units)
    return tuple(value)


def _check_dropout(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_activation(value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"activation must be an activation name or None, got {value!r}")
    try:
        keras.activations.get(value)  # unknown names fail here, before any weight is built
    except ValueError:
        raise ValueError(f"activation must be a Keras activation name, got {value!r}") from None
    return value


def _check_lifted(value) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"lifted_blocks must be a sequence of block names, got {value!r}")
    return tuple(sorted(set(value)))


def _offset(seed: int | None, i: int) -> int | None:
    return None if seed is None else seed + i


def _check_n_items(value, *, positive: bool) -> int:
    """n_items: positive when the tower has CF rows, else any non-negative integer (unused)."""
    if positive:
        return _check_positive_int("n_items", value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"n_items must be a non-negative integer, got {value!r}")
    return value


def _dynamic_dims(block_dims: dict[str, int], dynamic_blocks, *, strict: bool) -> dict[str, int]:
    """The dense blocks named by `dynamic_blocks`, name → width in name order.

    `strict` (a tower with content): a name that is not a dense block raises; otherwise such
    names are dropped, since a `cf` tower reads no blocks at all.
    """
    dynamic = _check_lifted(dynamic_blocks)
    unknown = [b for b in dynamic if b not in block_dims]
    if unknown and strict:
        raise ValueError(
            f"dynamic_blocks must name dense blocks {sorted(block_dims)!r}, got {unknown!r}"
        )
    return {b: block_dims[b] for b in dynamic if b in block_dims}


def _content_args(
    block_dims: dict[str, int],
    dynamic_dims: dict[str, int],
    categorical_dims,
    hidden_units,
    activation,
    dropout,
    lifted_blocks,
) -> dict:
    """The checked `ContentEncoder` arguments of an item tower: its blocks less the dynamic ones.

    Checked in this order, so a call with several bad arguments always reports the same one.
    """
    return {
        "block_dims": {b: w for b, w in block_dims.items() if b not in dynamic_dims},
        "categorical_dims": _check_dims("categorical_dims", categorical_dims),
        "hidden_units": _check_units(hidden_units),
        "activation": _check_activation(activation),
        "dropout": _check_dropout(dropout),
        "lifted_blocks": tuple(b for b in _check_lifted(lifted_blocks) if b not in dynamic_dims),
    }


@keras.saving.register_keras_serializable(package="atelier")
class ContentEncoder(keras.layers.Layer):
    """Content features of a product → a `units`-dim vector, as in the paper.

    Input: a dict with one entry per block. Dense blocks (`block_dims`, name → width) are float
    (batch, width): e.g. `price` (1), `recency` (1), `popularity` (3), `tfidf` (T), `image`
    (512), `attributes` (A); NaN counts as missing (0). Categorical blocks (`categorical_dims`,
    name → index size with 0 = unknown included) are int (batch,), e.g. `type`: they become a
    one-hot row, all zeros for index 0 or an index outside [1, size).

    Each block is normalised to unit L2 norm on its own (blocks in `lifted_blocks` after `lift`),
    the blocks are concatenated in name order and the concatenation is normalised to unit norm
    again; a missing block stays zero. A feed-forward network (`hidden_units` with `activation`,
    optional dropout, then a linear layer of `units`) maps that to the output.
    """

    def __init__(
        self,
        units: int,
        block_dims: dict[str, int] | None = None,
        categorical_dims: dict[str, int] | None = None,
        hidden_units=(256,),
        activation: str | None = "relu",
        dropout: float = 0.0,
        lifted_blocks=(),
        seed: int | None = None,
        output_bias: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _check_positive_int("units", units)
        self.output_bias = bool(output_bias)
        self.block_dims = _check_dims("block_dims", block_dims)
        self.categorical_dims = _check_dims("categorical_dims", categorical_dims)
        clash = sorted(set(self.block_dims) & set(self.categorical_dims))
        if clash:
            raise ValueError(f"blocks cannot be both dense and categorical, got {clash!r}")
        if not self.block_dims and not self.categorical_dims:
            raise ValueError(
                f"ContentEncoder needs at least one block, got block_dims={block_dims!r} and "
                f"categorical_dims={categorical_dims!r}"
            )
        lifted_blocks = _check_lifted(lifted_blocks)
        unknown = [b for b in lifted_blocks if b not in self.block_dims]
        if unknown:
            raise ValueError(
                f"lifted_blocks must name dense blocks {sorted(self.block_dims)!r}, got {unknown!r}"
            )
        self.lifted_blocks = lifted_blocks
        self.hidden_units = _check_units(hidden_units)
        self.activation = _check_activation(activation)
        self.dropout = _check_dropout(dropout)
        self.seed = _check_seed(seed)
        self.hidden = []
        self.dropouts = []
        for i, width in enumerate(self.hidden_units):
            self.hidden.append(
                keras.layers.Dense(
                    width,
                    activation=activation,
                    kernel_initializer=keras.initializers.GlorotUniform(seed=_offset(seed, i)),
                    name=f"hidden_{i}",
                )
            )
            if self.dropout > 0:
                self.dropouts.append(
                    keras.layers.Dropout(
                        self.dropout, seed=_offset(seed, 100 + i), name=f"drop_{i}"
                    )
                )
        self.output_layer = keras.layers.Dense(
            units,
            kernel_initializer=keras.initializers.GlorotUniform(
                seed=_offset(seed, len(self.hidden_units))
            ),
            use_bias=self.output_bias,
            name="output",
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        """The block names the encoder reads, in concatenation order."""
        return tuple(sorted([*self.block_dims, *self.categorical_dims]))

    @property
    def feature_width(self) -> int:
        """Width of the normalised concatenation fed to the network."""
        dense = sum(w + (b in self.lifted_blocks) for b, w in self.block_dims.items())
        return dense + sum(self.categorical_dims.values())

    def build(self, input_shape):
        width = self.feature_width
        for i, layer in enumerate(self.hidden):
            layer.build((None, width))
            width = self.hidden_units[i]
        self.output_layer.build((None, width))
        self.built = True

    def normalized_blocks(self, inputs) -> dict:
        """Each block after its own unit-norm step: name → (batch, width[+1])."""
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"content inputs lack {missing!r}; got keys {sorted(inputs)!r}")
        out = {}
        for name in self.input_names:
            if name in self.categorical_dims:
                size = self.categorical_dims[name]
                idx = ops.cast(inputs[name], "int32")
                known = ops.logical_and(idx > 0, idx < size)
                hot = ops.one_hot(ops.where(known, idx, 0), size, dtype=self.compute_dtype)
                out[name] = hot * ops.cast(known, self.compute_dtype)[..., None]
            else:
                block = ops.cast(inputs[name], self.compute_dtype)
                if name in self.lifted_blocks:
                    block = lift(block)
                out[name] = l2_normalize(block)
        return out

    def features(self, inputs):
        """The unit-norm concatenation of the unit-norm blocks: (batch, feature_width)."""
        blocks = self.normalized_blocks(inputs)
        return l2_normalize(ops.concatenate([blocks[n] for n in self.input_names], axis=-1))

    def encode(self, inputs, training=None):
        """(last hidden representation (batch, width), output (batch, units))."""
        x = self.features(inputs)
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.dropouts:
                x = self.dropouts[i](x, training=training)
        return x, self.output_layer(x)

    def call(self, inputs, training=None):
        return self.encode(inputs, training=training)[1]

    def compute_output_shape(self, input_shape):
        first = input_shape[self.input_names[0]]
        return (first[0], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "block_dims": dict(self.block_dims),
            "categorical_dims": dict(self.categorical_dims),
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "dropout": self.dropout,
            "lifted_blocks": list(self.lifted_blocks),
            "seed": self.seed,
            "output_bias": self.output_bias,
        }


@keras.saving.register_keras_serializable(package="atelier")
class ItemTower(keras.layers.Layer):
    """A product's item vector: `units` match coordinates and, last, its bias (k + 1 floats).

    The match part is the paper's: `cf` a learned embedding per product over `item_idx`
    (batch,) int with indices 1..n_items, `content` a `ContentEncoder` over the static content
    blocks, `hybrid` their sum. The bias is kept apart from the match (`models.ranking` layout
    `"dot+bias"`: score = mean of a customer's items' match · item match + item bias), so that
    popularity does not have to become a direction every vector shares (which makes every
    customer's list the same). It is the sum of
    - a learned CF bias per product (`cf`, `hybrid`; starts at 0),
    - a linear function of the content encoder's last hidden layer (`content`, `hybrid`),
    - a small network over the `dynamic_blocks` (`content`, `hybrid`): the time-dependent
      blocks (popularity, recency) feed ONLY the bias, so they can be read as of each training
      example's own cut-off for every candidate cheaply, and the match part is static.
    Index 0 (never bought in training) or any index outside 1..n_items has no CF row and no CF
    bias: in `cf` such a product's whole vector is zero and `model.score` ranks it last; in
    `hybrid` its vector comes from content alone.
    Input: a dict with `item_idx` (cf, hybrid) and the content blocks (content, hybrid).
    """

    def __init__(
        self,
        variant: str,
        units: int,
        n_items: int = 0,
        block_dims: dict[str, int] | None = None,
        categorical_dims: dict[str, int] | None = None,
        hidden_units=(256,),
        activation: str | None = "relu",
        dropout: float = 0.0,
        lifted_blocks=(),
        dynamic_blocks=(),
        bias_units: int = 16,
        normalize: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.normalize = bool(normalize)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS!r}, got {variant!r}")
        self.variant = variant
        self.units = _check_positive_int("units", units)
        self.bias_units = _check_positive_int("bias_units", bias_units)
        self.seed = _check_seed(seed)
        self.uses_cf = variant in ("cf", "hybrid")
        self.uses_content = variant in ("content", "hybrid")
        self.n_items = _check_n_items(n_items, positive=self.uses_cf)
        block_dims = _check_dims("block_dims", block_dims)
        self.dynamic_dims = _dynamic_dims(block_dims, dynamic_blocks, strict=self.uses_content)
        self.content_args = _content_args(
            block_dims,
            self.dynamic_dims,
            categorical_dims,
            hidden_units,
            activation,
            dropout,
            lifted_blocks,
        )
        # Sub-layers are created in this order (cf, content, dynamic): it fixes the order of
        # `weights` (what get_weights/set_weights see) and, unseeded, each layer's initial draws.
        self.cf_embedding = self.cf_bias = None
        self.content_encoder = self.content_bias = None
        self.dynamic_hidden = self.dynamic_out = None
        if self.uses_cf:
            self._make_cf_layers()
        if self.uses_content:
            self._make_content_layers()
            if self.dynamic_dims:
                self._make_dynamic_layers()

    def _make_cf_layers(self) -> None:
        self.cf_embedding = keras.layers.Embedding(
            self.n_items + 1,
            self.units,
            embeddings_initializer=keras.initializers.RandomUniform(
                -0.05, 0.05, seed=_offset(self.seed, 0)
            ),
            name="cf_embedding",
        )
        self.cf_bias = keras.layers.Embedding(
            self.n_items + 1, 1, embeddings_initializer="zeros", name="cf_bias"
        )

    def _make_content_layers(self) -> None:
        self.content_encoder = ContentEncoder(
            self.units,
            seed=_offset(self.seed, 1),
            output_bias=False,  # a shared offset would be a direction every item shares
            name="content_encoder",
            **self.content_args,
        )
        self.content_bias = keras.layers.Dense(
            1,
            kernel_initializer=keras.initializers.GlorotUniform(seed=_offset(self.seed, 2)),
            name="content_bias",
        )

    def _make_dynamic_layers(self) -> None:
        self.dynamic_hidden = keras.layers.Dense(
            self.bias_units,
            activation="relu",
            kernel_initializer=keras.initializers.GlorotUniform(seed=_offset(self.seed, 3)),
            name="dynamic_hidden",
        )
        self.dynamic_out = keras.layers.Dense(
            1,
            kernel_initializer=keras.initializers.GlorotUniform(seed=_offset(self.seed, 4)),
            name="dynamic_bias",
        )

    @property
    def static_names(self) -> tuple[str, ...]:
        """The input keys the match part and the static bias read."""
        names = (ITEM_IDX,) if self.uses_cf else ()
        if self.uses_content:
            names += self.content_encoder.input_names
        return names

    @property
    def dynamic_names(self) -> tuple[str, ...]:
        """The time-dependent input keys, read by the bias only."""
        return tuple(sorted(self.dynamic_dims))

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every input key the tower reads (sorted; `item_idx` first)."""
        names = (ITEM_IDX,) if self.uses_cf else ()
        if self.uses_content:
            names += tuple(sorted([*self.content_encoder.input_names, *self.dynamic_names]))
        return names

    def build(self, input_shape):
        if self.normalize:
            # Unit match vectors times one learned length: a product cannot win everyone by
            # growing its norm (popularity lives in the bias), and WMRB's margin of 1 stays
            # reachable (scores up to scale², the scale starts at 2).
            self.match_scale = self.add_weight(
                name="match_scale", shape=(), initializer=keras.initializers.Constant(2.0)
            )
        if self.cf_embedding is not None:
            self.cf_embedding.build((None,))
            self.cf_bias.build((None,))
        if self.content_encoder is not None:
            self.content_encoder.build(input_shape)
            width = (self.content_encoder.hidden_units or (self.content_encoder.feature_width,))[-1]
            self.content_bias.build((None, width))
        if self.dynamic_hidden is not None:
            self.dynamic_hidden.build((None, sum(self.dynamic_dims.values())))
            self.dynamic_out.build((None, self.bias_units))
        self.built = True

    def _known(self, item_idx):
        idx = ops.cast(item_idx, "int32")
        return idx, ops.logical_and(idx > 0, idx <= self.n_items)

    def collaborative(self, item_idx):
        """The `cf` match part: (batch,) indices → (batch, units); zero for index 0 / out of
        range."""
        idx, known = self._known(item_idx)
        vectors = self.cf_embedding(ops.where(known, idx, 0))
        return ops.where(known[..., None], vectors, ops.zeros_like(vectors))

    def collaborative_bias(self, item_idx):
        """The CF bias (batch,): zero for index 0 / out of range."""
        idx, known = self._known(item_idx)
        bias = self.cf_bias(ops.where(known, idx, 0))[..., 0] * BIAS_RATE
        return ops.where(known, bias, ops.zeros_like(bias))

    def match_and_bias(self, inputs, training=None):
        """(match (batch, units), static bias (batch,)) from the static inputs."""
        match, bias = None, None
        if self.uses_cf:
            idx = inputs[ITEM_IDX]
            match, bias = self.collaborative(idx), self.collaborative_bias(idx)
        if self.uses_content:
            hidden, content = self.content_encoder.encode(inputs, training=training)
            content_bias = self.content_bias(hidden)[..., 0] * BIAS_RATE
            match = content if match is None else match + content
            bias = content_bias if bias is None else bias + content_bias
        if self.normalize:
            match = l2_normalize(match) * self.match_scale
        return match, bias

    def dynamic_bias(self, inputs):
        """(…,) bias of the dynamic blocks (each (…, width), any leading shape); None when the
        tower has none."""
        if self.dynamic_hidden is None:
            return None
        x = ops.concatenate(
            [ops.cast(inputs[name], self.compute_dtype) for name in self.dynamic_names], axis=-1
        )
        x = ops.where(ops.isfinite(x), x, ops.zeros_like(x))
        return self.dynamic_out(self.dynamic_hidden(x))[..., 0]

    def call(self, inputs, training=None):
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"item inputs lack {missing!r}; got keys {sorted(inputs)!r}")
        match, bias = self.match_and_bias(inputs, training=training)
        dynamic = self.dynamic_bias(inputs)
        if dynamic is not None:
            bias = bias + dynamic
        if self.uses_cf and not self.uses_content:
            # cf: a product without a CF row stays the zero vector (unscorable), bias included
            _, known = self._known(inputs[ITEM_IDX])
            bias = ops.where(known, bias, ops.zeros_like(bias))
        return ops.concatenate([match, bias[..., None]], axis=-1)

    def compute_output_shape(self, input_shape):
        first = input_shape[self.input_names[0]]
        return (first[0], self.units + 1)

    def get_config(self):
        args = self.content_args
        return {
            **super().get_config(),
            "variant": self.variant,
            "units": self.units,
            "n_items": self.n_items,
            "block_dims": {**args["block_dims"], **self.dynamic_dims},
            "categorical_dims": dict(args["categorical_dims"]),
            "hidden_units": list(args["hidden_units"]),
            "activation": args["activation"],
            "dropout": args["dropout"],
            "lifted_blocks": list(args["lifted_blocks"]),
            "dynamic_blocks": list(self.dynamic_names),
            "bias_units": self.bias_units,
            "normalize": self.normalize,
            "seed": self.seed,
        }
