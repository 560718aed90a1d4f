"""The multi-modal, multi-task attribute network (paper Section 2, Figure 2).

Image shots, text and metadata are encoded, merged with product-type conditioning, passed through
a shared trunk, and read out by one softmax head per attribute (hard parameter sharing: every layer
but the heads is shared). Losses and the training step live in `training.attributes.train_step`;
here are the input conversion and `predict_proba` that training, scoring and serving share.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from atelier.checks import check_int

IMAGE = "image"
IMAGE_MASK = "image_mask"
TOKEN_IDS = "token_ids"
TYPE_IDX = "type_idx"
BRAND_IDX = "brand_idx"
DIVISION_IDX = "division_idx"
COLOUR = "colour"
INPUT_NAMES = (IMAGE, IMAGE_MASK, TOKEN_IDS, TYPE_IDX, BRAND_IDX, DIVISION_IDX)
HEAD_PREFIX = "head_"

# Heads become layer names `head_<attribute>`; keep names that Keras and MLflow metric keys accept.
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def head_name(attribute: str) -> str:
    """Name of the output layer of `attribute`."""
    return f"{HEAD_PREFIX}{attribute}"


@dataclass(frozen=True)
class AttributeModelConfig:
    """Sizes and switches of the attribute network; checked on construction.

    `n_types`, `n_brands`, `n_divisions` are index sizes with the unknown index 0 included
    (max index + 1). `heads` maps attribute → number of classes (>= 2). `use_image`, `use_text`,
    `use_metadata` are the paper's ablations (Figure 5): a disabled modality is not connected to
    the outputs at all. Without metadata nothing conditions the shot merge or the fusion on type.
    `colour_dim` > 0 adds the `colour` input (per-shot colour descriptors, beyond the paper);
    `use_colour` is its ablation switch. `wide_text` adds a linear bag-of-words path straight to
    every head's logits (`WideText`), beside the text CNN.
    """

    vocab_size: int
    sequence_length: int
    n_types: int
    n_brands: int
    n_divisions: int
    heads: dict[str, int]
    image_dim: int = 512
    token_embedding_dim: int = 64
    text_filters: int = 128
    text_units: int = 128
    type_embedding_dim: int = 16
    brand_embedding_dim: int = 16
    division_embedding_dim: int = 8
    image_units: int = 128
    attention_units: int = 64
    fusion_units: int = 256
    trunk_units: tuple[int, ...] = (256,)
    dropout: float = 0.2
    colour_dim: int = 0
    colour_units: int = 32
    wide_text: bool = True
    wide_scale: float = 4.0
    use_image: bool = True
    use_colour: bool = True
    use_text: bool = True
    use_metadata: bool = True
    oov_id: int = 1

    def __post_init__(self):
        sizes = (
            "sequence_length",
            "n_types",
            "n_brands",
            "n_divisions",
            "image_dim",
            "token_embedding_dim",
            "text_filters",
            "text_units",
            "type_embedding_dim",
            "brand_embedding_dim",
            "division_embedding_dim",
            "image_units",
            "attention_units",
            "fusion_units",
            "colour_units",
        )
        check_int("colour_dim", self.colour_dim, minimum=0)
        for name in sizes:
            check_int(name, getattr(self, name), minimum=1)
        # 0 is padding and 1 out-of-vocabulary: a vocabulary needs both.
        check_int("vocab_size", self.vocab_size, minimum=2)
        check_int("oov_id", self.oov_id, minimum=1)
        if self.oov_id >= self.vocab_size:
            raise ValueError(f"oov_id must be < vocab_size={self.vocab_size}, got {self.oov_id!r}")
        trunk = self.trunk_units
        if isinstance(trunk, int) or not isinstance(trunk, list | tuple) or not trunk:
            raise ValueError(f"trunk_units must be a non-empty sequence of ints, got {trunk!r}")
        for units in trunk:
            check_int("trunk_units", units, minimum=1)
        object.__setattr__(self, "trunk_units", tuple(trunk))
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, int | float):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        scale = self.wide_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
            raise ValueError(f"wide_scale must be a positive number, got {scale!r}")
        for name in ("use_image", "use_text", "use_metadata", "use_colour", "wide_text"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not (self.use_image or self.use_text or self.use_metadata or self.has_colour):
            raise ValueError("at least one of use_image, use_text, use_metadata must be True")
        if not isinstance(self.heads, dict) or not self.heads:
            raise ValueError(
                f"heads must be a non-empty dict of attribute -> classes, got {self.heads!r}"
            )
        for attribute, classes in self.heads.items():
            if not isinstance(attribute, str) or not _ATTRIBUTE_NAME.match(attribute):
                raise ValueError(
                    f"attribute names must match {_ATTRIBUTE_NAME.pattern}, got {attribute!r}"
                )
            check_int(f"heads[{attribute!r}]", classes, minimum=2)
        object.__setattr__(self, "heads", dict(self.heads))

    @property
    def has_colour(self) -> bool:
        """The colour path is connected (a colour input exists and is not ablated)."""
        return self.colour_dim > 0 and self.use_colour

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's inputs: the six of the paper, plus `colour` when `colour_dim` > 0."""
        return INPUT_NAMES + ((COLOUR,) if self.colour_dim > 0 else ())

    def to_dict(self) -> dict:
        """JSON-ready dict; `from_dict` reads it back."""
        out = asdict(self)
        out["trunk_units"] = list(self.trunk_units)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> AttributeModelConfig:
        """Inverse of `to_dict`; unknown keys raise so a stale config is noticed."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown AttributeModelConfig keys: {unknown!r}")
        return cls(**values)


def build_attribute_model(config: AttributeModelConfig):
    """The attribute network as a functional `keras.Model`.

    Inputs (a dict): `image` (batch, shots, image_dim) float, `image_mask` (batch, shots) 1/0,
    `token_ids` (batch, sequence_length) int (0 = padding), `type_idx`, `brand_idx`,
    `division_idx` (batch,) int (0 = unknown), and with `colour_dim` > 0 `colour` (batch, shots,
    colour_dim) float (all zeros = no descriptor). The number of shots may vary between calls.
    Outputs: a dict attribute → class probabilities (batch, heads[attribute]), from the layer
    `head_<attribute>`.
    """
    import keras

    from models.attributes.layers import CategoricalEmbedding

    if not isinstance(config, AttributeModelConfig):
        raise ValueError(f"config must be an AttributeModelConfig, got {type(config).__name__}")
    c = config
    inputs = _model_inputs(c)
    type_vector = None
    if c.use_metadata:
        type_vector = CategoricalEmbedding(c.n_types, c.type_embedding_dim, name="type_embedding")(
            inputs[TYPE_IDX]
        )
    # Layers are created in graph order (type, modalities, fusion, trunk, heads): unseeded
    # initialisers draw from the global seed in that order.
    fused = _fusion(c, inputs, type_vector)
    x = _trunk(c, inputs, fused)
    outputs = {attribute: _head(c, inputs, x, attribute) for attribute in c.heads}
    return keras.Model(inputs=inputs, outputs=outputs, name="attribute_model")


def _model_inputs(c: AttributeModelConfig) -> dict:
    """The `keras.Input`s of the model, by input name (`colour` only with `colour_dim` > 0)."""
    import keras

    inputs = {
        IMAGE: keras.Input((None, c.image_dim), name=IMAGE, dtype="float32"),
        IMAGE_MASK: keras.Input((None,), name=IMAGE_MASK, dtype="float32"),
        TOKEN_IDS: keras.Input((c.sequence_length,), name=TOKEN_IDS, dtype="int32"),
        TYPE_IDX: keras.Input((), name=TYPE_IDX, dtype="int32"),
        BRAND_IDX: keras.Input((), name=BRAND_IDX, dtype="int32"),
        DIVISION_IDX: keras.Input((), name=DIVISION_IDX, dtype="int32"),
    }
    if c.colour_dim > 0:
        inputs[COLOUR] = keras.Input((None, c.colour_dim), name=COLOUR, dtype="float32")
    return inputs


def _fusion(c: AttributeModelConfig, inputs: dict, type_vector):
    """The enabled modalities (shot merge, text CNN, colour) and the type embedding, merged
    by the `fusion` dense layer (with dropout when configured)."""
    import keras

    from models.attributes.layers import ShotMean, ShotMerge, TextCNN

    # Visual and text features are fused with the type embedding (the paper uses type in both
    # merges); brand and division join later, in the trunk.
    fused_parts = []
    if c.use_image:
        merge_inputs = [inputs[IMAGE], inputs[IMAGE_MASK]]
        if type_vector is not None:
            merge_inputs.append(type_vector)
        merge = ShotMerge(c.image_units, c.attention_units, name="shot_merge")
        fused_parts.append(merge(merge_inputs))
    if c.use_text:
        text = TextCNN(
            c.vocab_size,
            c.token_embedding_dim,
            c.text_filters,
            c.text_units,
            oov_id=c.oov_id,
            name="text_cnn",
        )
        fused_parts.append(text(inputs[TOKEN_IDS]))
    if c.has_colour:
        # A histogram is already an explainable, unit-sum vector: one small dense layer lets the
        # trunk combine colour shares ("mostly navy, some white") with the other modalities.
        colour = ShotMean(name="colour_mean")(inputs[COLOUR])
        fused_parts.append(
            keras.layers.Dense(c.colour_units, activation="relu", name="colour_dense")(colour)
        )
    if type_vector is not None:
        fused_parts.append(type_vector)
    fused = _concat(fused_parts, "fusion_input")
    x = keras.layers.Dense(c.fusion_units, activation="relu", name="fusion")(fused)
    if c.dropout > 0:
        x = keras.layers.Dropout(c.dropout, name="fusion_dropout")(x)
    return x


def _trunk(c: AttributeModelConfig, inputs: dict, x):
    """The shared trunk over the fusion output, joined by brand and division with metadata."""
    import keras

    from models.attributes.layers import CategoricalEmbedding

    if c.use_metadata:
        brand = CategoricalEmbedding(c.n_brands, c.brand_embedding_dim, name="brand_embedding")
        division = CategoricalEmbedding(
            c.n_divisions, c.division_embedding_dim, name="division_embedding"
        )
        x = _concat([x, brand(inputs[BRAND_IDX]), division(inputs[DIVISION_IDX])], "trunk_input")
    for i, units in enumerate(c.trunk_units):
        x = keras.layers.Dense(units, activation="relu", name=f"trunk_{i}")(x)
        if c.dropout > 0:
            x = keras.layers.Dropout(c.dropout, name=f"trunk_dropout_{i}")(x)
    return x


def _head(c: AttributeModelConfig, inputs: dict, x, attribute: str):
    """Class probabilities of `attribute`: trunk logits, plus the wide text path when on."""
    import keras

    from models.attributes.layers import WideText

    logits = keras.layers.Dense(c.heads[attribute], name=f"logits_{attribute}")(x)
    if c.wide_text and c.use_text:
        wide = WideText(
            c.vocab_size,
            c.heads[attribute],
            oov_id=c.oov_id,
            scale=c.wide_scale,
            name=f"wide_{attribute}",
        )(inputs[TOKEN_IDS])
        logits = keras.layers.Add(name=f"logits_sum_{attribute}")([logits, wide])
    return keras.layers.Softmax(name=head_name(attribute))(logits)


def _concat(parts, name):
    import keras

    if len(parts) == 1:
        return parts[0]
    return keras.layers.Concatenate(name=name)(parts)


# --- inputs and inference -----------------------------------------------------------------
# The dtype of every model input, as the model is built and traced.
INPUT_DTYPES = {
    IMAGE: np.float32,
    IMAGE_MASK: np.float32,
    TOKEN_IDS: np.int32,
    TYPE_IDX: np.int32,
    BRAND_IDX: np.int32,
    DIVISION_IDX: np.int32,
    COLOUR: np.float32,
}


def as_model_inputs(
    inputs: Mapping[str, object], names: tuple[str, ...] = INPUT_NAMES
) -> dict[str, np.ndarray]:
    """The model inputs `names` (default: the paper's six) as numpy arrays of the dtypes the
    model was built with. Checks that every input is present and that all share one batch size.
    """
    missing = [name for name in names if name not in inputs]
    if missing:
        raise ValueError(f"inputs lack {missing!r}; got keys {sorted(inputs)!r}")
    arrays = {name: np.asarray(inputs[name], dtype=INPUT_DTYPES[name]) for name in names}
    sizes = {name: a.shape[0] if a.ndim else None for name, a in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"inputs must share one batch size, got {sizes!r}")
    return arrays


def model_input_names(model) -> tuple[str, ...]:
    """The names of a functional model's dict inputs, in INPUT_NAMES order then the rest."""
    names = list(model.input) if isinstance(model.input, dict) else list(INPUT_NAMES)
    return tuple(
        [n for n in INPUT_NAMES if n in names] + [n for n in names if n not in INPUT_NAMES]
    )


def predict_proba(model, inputs: Mapping[str, object], batch_size: int = 1024) -> dict:
    """Class probabilities per attribute: dict attribute → (n, classes) float32 numpy array."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    arrays = as_model_inputs(inputs, model_input_names(model))
    n = arrays[IMAGE].shape[0]
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in arrays.items()}
        for attribute, probs in model(batch, training=False).items():
            chunks.setdefault(attribute, []).append(np.asarray(probs))
    if not chunks:  # no rows: still one (0, classes) array per head
        return {a: np.zeros((0, int(t.shape[-1])), np.float32) for a, t in model.output.items()}
    return {a: np.concatenate(parts) for a, parts in chunks.items()}
