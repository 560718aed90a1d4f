"""Everything that turns one product's features into attribute probabilities, saved as one folder.

`AttributeBundle` holds the Keras network with what it was trained against: the vocabulary (and
its version), the label encoder of each attribute with its rare-value grouping, the product types
each attribute applies to, and the category indices of type, brand and division. Training builds
it, the MLflow pyfunc (`models.attributes.pyfunc`) wraps it, batch prediction and serving load
it. Saved as `model.keras` beside `bundle.json` (everything else, plain JSON).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from atelier.text import FIRST_ID, normalise, token_ids
from models.attributes.model import (
    BRAND_IDX,
    COLOUR,
    DIVISION_IDX,
    IMAGE,
    IMAGE_MASK,
    TOKEN_IDS,
    TYPE_IDX,
    AttributeModelConfig,
    as_model_inputs,
)
from models.attributes.model import predict_proba as model_predict_proba
from models.bundle import MODEL_FILE, load_state, save_state

if TYPE_CHECKING:
    import keras

# 2: optional colour input, wide text path, heads as logits + softmax (format 1: retrain).
FORMAT_VERSION = 2
CATEGORY_KEYS = ("type", "brand", "division")
# category key -> (name column, index column, model input, config size field)
_CATEGORY_COLUMNS = {
    "type": ("type", "type_idx", TYPE_IDX, "n_types"),
    "brand": ("brand", "brand_idx", BRAND_IDX, "n_brands"),
    "division": ("division", "division_idx", DIVISION_IDX, "n_divisions"),
}
PREDICTION_COLUMNS = (
    "product_id",
    "attribute",
    "value",
    "confidence",
    "probabilities",
    "applicable",
)


@dataclass
class AttributeSpec:
    """One attribute: `classes` (class id -> value), `grouping` (raw training value -> class value,
    e.g. a rare value -> "other", or None when it was dropped) and `applies_to` (the product type
    names the attribute is predicted for)."""

    classes: list[str]
    grouping: dict[str, str | None]
    applies_to: list[str]

    def __post_init__(self):
        classes = list(self.classes)
        if len(classes) < 2 or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"classes must be a list of >= 2 strings, got {self.classes!r}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must be unique, got {self.classes!r}")
        grouping = dict(self.grouping)
        for raw, value in grouping.items():
            if value is not None and value not in classes:
                raise ValueError(
                    f"grouping maps {raw!r} to {value!r}, which is not one of classes {classes!r}"
                )
        applies_to = list(self.applies_to)
        if not all(isinstance(t, str) for t in applies_to):
            raise ValueError(f"applies_to must be a list of type names, got {self.applies_to!r}")
        self.classes, self.grouping, self.applies_to = classes, grouping, applies_to


@dataclass
class AttributeBundle:
    """The attribute network and every lookup it needs; see the module docstring.

    `attributes` follows the order of `config.heads`; `vocabulary` maps token -> id (ids >= 2: 0 is
    padding, 1 out of vocabulary); `categories` is {"type"|"brand"|"division": {name: index}} with
    0 the unknown index; `metadata` is free JSON (feature service, embedding weights, metrics).
    """

    KIND = "attribute"  # in messages: "not an attribute bundle"

    model: keras.Model  # from build_attribute_model(config)
    config: AttributeModelConfig
    attributes: dict[str, AttributeSpec]
    vocabulary: dict[str, int]
    vocab_version: str
    sequence_length: int
    categories: dict[str, dict[str, int]]
    max_shots: int
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        c = self.config
        if not isinstance(c, AttributeModelConfig):
            raise ValueError(f"config must be an AttributeModelConfig, got {type(c).__name__}")
        if list(self.attributes) != list(c.heads):
            raise ValueError(
                f"attributes must follow config.heads {list(c.heads)!r}, "
                f"got {list(self.attributes)!r}"
            )
        for attribute, spec in self.attributes.items():
            if not isinstance(spec, AttributeSpec):
                raise ValueError(
                    f"attributes[{attribute!r}] must be an AttributeSpec, got {spec!r}"
                )
            if len(spec.classes) != c.heads[attribute]:
                raise ValueError(
                    f"attribute {attribute!r} has {len(spec.classes)} classes but its head has "
                    f"{c.heads[attribute]}"
                )
        outputs = getattr(self.model, "output", None)
        if not isinstance(outputs, dict) or set(outputs) != set(c.heads):
            heads = sorted(outputs) if isinstance(outputs, dict) else outputs
            raise ValueError(f"model outputs must be the heads {sorted(c.heads)!r}, got {heads!r}")
        self.sequence_length = _check_id("sequence_length", self.sequence_length, 1, None)
        if self.sequence_length != c.sequence_length:
            raise ValueError(
                f"sequence_length {self.sequence_length!r} differs from the model's "
                f"{c.sequence_length!r}"
            )
        if not isinstance(self.vocab_version, str) or not self.vocab_version:
            raise ValueError(
                f"vocab_version must be a non-empty string, got {self.vocab_version!r}"
            )
        # numpy integers (from pandas) are accepted and stored as ints so the bundle is JSON.
        self.vocabulary = {
            token: _check_id(f"vocabulary id of {token!r}", i, FIRST_ID, c.vocab_size)
            for token, i in self.vocabulary.items()
        }
        if sorted(self.categories) != sorted(CATEGORY_KEYS):
            raise ValueError(
                f"categories must have keys {list(CATEGORY_KEYS)!r}, "
                f"got {sorted(self.categories)!r}"
            )
        self.categories = {
            key: {
                name: _check_id(
                    f"categories[{key!r}][{name!r}]", i, 1, getattr(c, _CATEGORY_COLUMNS[key][3])
                )
                for name, i in self.categories[key].items()
            }
            for key in CATEGORY_KEYS
        }
        self.max_shots = _check_id("max_shots", self.max_shots, 1, None)
        self.metadata = dict(self.metadata or {})
        self._type_names = {i: name for name, i in self.categories["type"].items()}

    @property
    def attribute_order(self) -> list[str]:
        """Attribute names in head order (the order of `predict_proba` and of the vector)."""
        return list(self.attributes)

    @property
    def vector_size(self) -> int:
        """Length of all heads' probability vectors laid end to end (sum of class counts)."""
        return sum(len(spec.classes) for spec in self.attributes.values())

    # -- features -> model inputs ------------------------------------------------------------

    def encode(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The model inputs of `frame` (one row per product; columns in the module spec).

        `image` (n, shots, image_dim) float32 with shots = max(1, min(max_shots, most shots of
        any row)), `image_mask` (n, shots) 1 for a present shot, `token_ids` (n, sequence_length),
        `type_idx`, `brand_idx`, `division_idx` (n,) int32 with 0 for an unknown name; with a
        colour input, `colour` (n, shots, colour_dim) from a `colours` or `colour` column.
        """
        inputs, _ = self._encode(frame)
        return inputs

    def _encode(self, frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], list[str | None]]:
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"expected a pandas DataFrame, got {type(frame).__name__}")
        image, mask = self._encode_images(frame)
        inputs = {IMAGE: image, IMAGE_MASK: mask, TOKEN_IDS: self._encode_text(frame)}
        if self.config.colour_dim > 0:
            inputs[COLOUR] = self._encode_colours(frame, image.shape[1])
        type_names = None
        for key, (name_col, idx_col, input_name, _) in _CATEGORY_COLUMNS.items():
            # The type is needed for applicability even by a model that does not use metadata.
            required = key == "type" or self.config.use_metadata
            lookup = self.categories[key]
            if name_col in frame.columns:
                names = [_name(v, name_col) for v in frame[name_col]]
                idx = [lookup.get(name, 0) if name is not None else 0 for name in names]
                if key == "type":
                    type_names = names
            elif idx_col in frame.columns:
                idx = [_index(v, idx_col) for v in frame[idx_col]]
                if key == "type":
                    type_names = [self._type_names.get(i) for i in idx]
            elif required:
                raise ValueError(
                    f"frame needs a {name_col!r} or {idx_col!r} column; "
                    f"got columns {list(frame.columns)!r}"
                )
            else:
                idx = [0] * len(frame)
            inputs[input_name] = np.asarray(idx, dtype=np.int32).reshape(len(frame))
        return as_model_inputs(inputs, self.config.input_names), type_names

    def _encode_images(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        n, dim = len(frame), self.config.image_dim
        if "embeddings" in frame.columns:
            rows = [_shots(v) for v in frame["embeddings"]]
        elif "embedding" in frame.columns:
            rows = [[] if _missing(v) else [v] for v in frame["embedding"]]
        elif self.config.use_image:
            raise ValueError(
                f"frame needs an 'embeddings' or 'embedding' column; "
                f"got columns {list(frame.columns)!r}"
            )
        else:
            rows = [[] for _ in range(n)]
        longest = max((len(r) for r in rows), default=0)
        shots = max(1, min(self.max_shots, longest))
        image = np.zeros((n, shots, dim), np.float32)
        mask = np.zeros((n, shots), np.float32)
        for i, row in enumerate(rows):
            for j, shot in enumerate(row[:shots]):
                if _missing(shot):
                    continue  # a missing shot inside the list: zeros, masked out
                vector = np.asarray(shot, dtype=np.float32).reshape(-1)
                if vector.shape[0] != dim:
                    raise ValueError(
                        f"image embedding of row {i} shot {j} has length {vector.shape[0]}, "
                        f"expected image_dim={dim}"
                    )
                image[i, j] = vector
                mask[i, j] = 1.0
        return image, mask

    def _encode_colours(self, frame: pd.DataFrame, shots: int) -> np.ndarray:
        """(n, shots, colour_dim) from `colours` (per-shot descriptors, shot order) or `colour`
        (one descriptor); a missing descriptor stays zeros, which the model reads as absent."""
        n, dim = len(frame), self.config.colour_dim
        if "colours" in frame.columns:
            rows = [_shots(v) for v in frame["colours"]]
        elif "colour" in frame.columns:
            rows = [[] if _missing(v) else [v] for v in frame["colour"]]
        elif self.config.use_colour:
            raise ValueError(
                f"frame needs a 'colours' or 'colour' column; got columns {list(frame.columns)!r}"
            )
        else:
            rows = [[] for _ in range(n)]
        out = np.zeros((n, shots, dim), np.float32)
        for i, row in enumerate(rows):
            for j, shot in enumerate(row[:shots]):
                if _missing(shot):
                    continue
                vector = np.asarray(shot, dtype=np.float32).reshape(-1)
                if vector.shape[0] != dim:
                    raise ValueError(
                        f"colour descriptor of row {i} shot {j} has length {vector.shape[0]}, "
                        f"expected colour_dim={dim}"
                    )
                out[i, j] = vector
        return out

    def _encode_text(self, frame: pd.DataFrame) -> np.ndarray:
        n, length = len(frame), self.sequence_length
        if "text" in frame.columns:
            rows = []
            for v in frame["text"]:
                if _missing(v):
                    v = None
                elif not isinstance(v, str):
                    raise ValueError(f"text must be a string or None, got {v!r}")
                rows.append(token_ids(normalise(v), self.vocabulary, length))
            return np.asarray(rows, dtype=np.int32).reshape(n, length)
        if "token_ids" in frame.columns:
            if "vocab_version" in frame.columns:
                versions = sorted({str(v) for v in frame["vocab_version"] if not _missing(v)})
                bad = [v for v in versions if v != self.vocab_version]
                if bad:
                    raise ValueError(
                        f"token_ids were made with vocabulary {bad[0]!r} but the model was "
                        f"trained with {self.vocab_version!r}; re-tokenise or pass 'text'"
                    )
            out = np.zeros((n, length), np.int32)
            for i, v in enumerate(frame["token_ids"]):
                if _missing(v):
                    continue  # no text features: all padding
                ids = np.asarray(v).reshape(-1)
                if ids.shape[0] != length:
                    raise ValueError(
                        f"token_ids of row {i} have length {ids.shape[0]}, expected "
                        f"sequence_length={length}"
                    )
                out[i] = ids
            return out
        if self.config.use_text:
            raise ValueError(
                f"frame needs a 'text' or 'token_ids' column; got columns {list(frame.columns)!r}"
            )
        return np.zeros((n, length), np.int32)

    # -- prediction --------------------------------------------------------------------------

    def predict_proba(self, frame: pd.DataFrame, batch_size: int = 1024) -> dict[str, np.ndarray]:
        """attribute -> (n, classes) float32 probabilities, in head order. Rows whose product
        type the attribute does not apply to (including unknown types) are NaN."""
        probabilities, _ = self._predict_proba(frame, batch_size)
        return probabilities

    def _predict_proba(self, frame, batch_size):
        inputs, type_names = self._encode(frame)
        probabilities = model_predict_proba(self.model, inputs, batch_size=batch_size)
        out, applicable = {}, {}
        for attribute, spec in self.attributes.items():
            applies = set(spec.applies_to)
            rows = np.array([name in applies for name in type_names], dtype=bool)
            probs = np.array(probabilities[attribute], dtype=np.float32, copy=True)
            probs[~rows] = np.nan
            out[attribute], applicable[attribute] = probs, rows
        return out, applicable

    def predict(self, frame: pd.DataFrame, batch_size: int = 1024) -> pd.DataFrame:
        """One row per (product, attribute), products in frame order, attributes in head order.

        Columns: product_id (the `product_id` column, else the frame index), attribute, value
        (the most probable class), confidence (its probability), probabilities (the head's
        vector as a list), applicable. Non-applicable rows: value None, confidence NaN,
        probabilities [], applicable False.
        """
        probabilities, applicable = self._predict_proba(frame, batch_size)
        ids = frame["product_id"].tolist() if "product_id" in frame.columns else list(frame.index)
        records = []
        for i, product_id in enumerate(ids):
            for attribute, spec in self.attributes.items():
                probs = probabilities[attribute][i]
                if not applicable[attribute][i]:
                    records.append((product_id, attribute, None, math.nan, [], False))
                    continue
                best = int(np.argmax(probs))
                records.append(
                    (
                        product_id,
                        attribute,
                        spec.classes[best],
                        float(probs[best]),
                        [float(p) for p in probs],
                        True,
                    )
                )
        out = pd.DataFrame.from_records(records, columns=list(PREDICTION_COLUMNS))
        out["confidence"] = out["confidence"].astype(float)
        out["applicable"] = out["applicable"].astype(bool)
        return out

    # -- persistence -------------------------------------------------------------------------

    def save(self, directory) -> Path:
        """Write `model.keras` and `bundle.json` into `directory` (created); returns its path."""
        state = {
            "format": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "attributes": {a: asdict(spec) for a, spec in self.attributes.items()},
            "vocabulary": self.vocabulary,
            "vocab_version": self.vocab_version,
            "sequence_length": self.sequence_length,
            "categories": self.categories,
            "max_shots": self.max_shots,
            "metadata": self.metadata,
        }
        return save_state(directory, state, self.model.save)

    @classmethod
    def load(cls, directory) -> AttributeBundle:
        """Read a bundle written by `save`."""
        import keras

        import models.attributes.layers  # noqa: F401  (registers the custom layers)

        state = load_state(directory, cls.KIND, FORMAT_VERSION)
        model = keras.saving.load_model(Path(directory) / MODEL_FILE, compile=False)
        return cls(
            model=model,
            config=AttributeModelConfig.from_dict(state["config"]),
            attributes={a: AttributeSpec(**spec) for a, spec in state["attributes"].items()},
            vocabulary=state["vocabulary"],
            vocab_version=state["vocab_version"],
            sequence_length=state["sequence_length"],
            categories=state["categories"],
            max_shots=state["max_shots"],
            metadata=state["metadata"],
        )


def _check_id(name: str, value, minimum: int, end: int | None) -> int:
    """`value` as an int in [minimum, end) (no upper bound when end is None)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (end is not None and value >= end):
        bound = f"[{minimum}, {end})" if end is not None else f">= {minimum}"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")
    return int(value)


def _missing(value) -> bool:
    """None, pandas' NA or a scalar NaN; arrays and lists are never missing."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def _shots(value) -> list:
    if _missing(value):
        return []
    return list(value)


def _name(value, column: str) -> str | None:
    if _missing(value):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{column} must be a name (string) or None, got {value!r}")
    return value


def _index(value, column: str) -> int:
    if _missing(value):
        return 0
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return int(value)  # an int column with gaps becomes float in pandas
        raise ValueError(f"{column} must be an integer index, got {value!r}")
    return int(value)
