"""Everything that turns a product's content features into its item vector, saved as one folder.

`RecommenderBundle` holds the trained item tower with what it was trained against: its config,
the CF index (product → embedding row; 0 = never bought in training), the content layout
(`blocks`: dense block → width, `categorical`: categorical block → index size) and metadata
(train_end, precision_at_10, feature service, attribute model versions, git commit). Training
builds it, the MLflow pyfunc (`models.recommender.pyfunc`) wraps it, `spark_jobs/item_vectors.py`
and serving load it. Saved as `model.keras` beside `bundle.json` (everything else, plain JSON).

A product outside the CF index (never bought in the training window) gets its vector from
content alone (`content`, `hybrid`); `cf` gives it the zero vector, which `model.score` never
ranks. The bundle has `item_tower` and `item_index` like `trainer.TrainedRecommender`, so
`trainer.product_vectors` and `trainer.recommend_for` take it as well (after `conform`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from models.bundle import MODEL_FILE, json_default, load_state, save_state
from models.recommender.features import (
    ATTRIBUTES,
    DAYS_PER_YEAR,
    RECENCY,
    TFIDF,
    ContentFeatures,
    content_blocks,
    content_inputs,
)
from models.recommender.items import utc_timestamp
from models.recommender.model import (
    ITEM_IDX,
    VECTOR_LAYOUT,
    RecommenderConfig,
    item_vectors,
    load_item_tower,
    save_item_tower,
)

if TYPE_CHECKING:  # pragma: no cover
    import keras

N_RECENT = 5  # trainer.N_RECENT; a bundle without the value predates the setting
# 2: item vectors are k match coordinates + the item bias (layout "dot+bias"), and the bundle
# records `n_recent`; a format-1 bundle (k-dim, no bias) must be retrained.
FORMAT_VERSION = 2
VECTOR_COLUMNS = ("product_id", "vector")


@dataclass
class RecommenderBundle:
    """The item tower and its lookups; see the module docstring.

    `variant` defaults to `config.variant` (and must equal it); `blocks` / `categorical` default
    to the config's content layout and must equal it for `content` and `hybrid` (a `cf` tower
    reads no content). `item_index` values lie in 1..`config.n_items`.
    """

    KIND = "recommender"  # in messages: "not a recommender bundle"

    item_tower: keras.Model
    config: RecommenderConfig
    variant: str | None = None
    item_index: dict[str, int] = field(default_factory=dict)
    blocks: dict[str, int] | None = None
    categorical: dict[str, int] | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        c = self.config
        if not isinstance(c, RecommenderConfig):
            raise ValueError(f"config must be a RecommenderConfig, got {type(c).__name__}")
        if self.variant is None:
            self.variant = c.variant
        if self.variant != c.variant:
            raise ValueError(f"variant {self.variant!r} differs from the config's {c.variant!r}")
        self.blocks = _dims("blocks", c.block_dims if self.blocks is None else self.blocks)
        self.categorical = _dims(
            "categorical", c.categorical_dims if self.categorical is None else self.categorical
        )
        if c.variant != "cf" and (
            self.blocks != c.block_dims or self.categorical != c.categorical_dims
        ):
            raise ValueError(
                f"content layout blocks={self.blocks!r} categorical={self.categorical!r} differs "
                f"from the config's {c.block_dims!r} / {c.categorical_dims!r}"
            )
        index = {}
        for product, row in dict(self.item_index).items():
            if isinstance(row, bool | np.bool_) or not isinstance(row, int | np.integer):
                raise ValueError(f"item_index[{product!r}] must be an integer, got {row!r}")
            if not 1 <= row <= c.n_items:
                raise ValueError(
                    f"item_index[{product!r}] must be in [1, {c.n_items}] (n_items), got {row!r}"
                )
            index[str(product)] = int(row)
        self.item_index = index
        names = tuple(getattr(self.item_tower, "input", {}) or ())
        if sorted(names) != sorted(c.input_names):
            raise ValueError(
                f"item tower inputs {sorted(names)!r} differ from the config's "
                f"{sorted(c.input_names)!r}"
            )
        width = int(self.item_tower.output.shape[-1])
        if width != c.k + 1:
            raise ValueError(
                f"item tower output width {width} differs from config k={c.k} + 1 (the bias)"
            )
        self.metadata = dict(self.metadata or {})
        self.metadata.setdefault("layout", VECTOR_LAYOUT)
        n_recent = self.metadata.setdefault("n_recent", N_RECENT)
        if isinstance(n_recent, bool) or not isinstance(n_recent, int) or n_recent < 1:
            raise ValueError(f"metadata n_recent must be an integer >= 1, got {n_recent!r}")

    @property
    def n_recent(self) -> int:
        """History items averaged into a customer vector (the value the model trained with)."""
        return int(self.metadata["n_recent"])

    @property
    def layout(self) -> str:
        """The item vectors' layout (`models.ranking`)."""
        return str(self.metadata["layout"])

    @classmethod
    def from_trained(cls, trained, features: ContentFeatures, metadata: dict | None = None):
        """The bundle of a `trainer.TrainedRecommender` trained on `features`' layout."""
        return cls(
            item_tower=trained.item_tower,
            config=trained.config,
            item_index=dict(trained.item_index),
            blocks=dict(features.block_dims),
            categorical=dict(features.categorical_dims),
            metadata={"n_recent": int(trained.n_recent), **dict(metadata or {})},
        )

    @property
    def k(self) -> int:
        return self.config.k

    # -- content features -> vectors ---------------------------------------------------------

    def conform(self, features: ContentFeatures) -> ContentFeatures:
        """`features` in the layout the tower was trained on.

        A dense block of another width is an error (e.g. TF-IDF rebuilt with another
        `tfidf_dim`); a block the features lack (no product has predicted attributes yet)
        becomes zeros, which the encoder treats as missing; blocks the tower does not read are
        dropped; a categorical index outside the trained size (a product type added later)
        becomes 0, unknown. A `cf` tower reads no content: `features` is returned as is.
        """
        if not isinstance(features, ContentFeatures):
            raise ValueError(f"features must be ContentFeatures, got {type(features).__name__}")
        if self.variant == "cf":
            return features
        n = len(features)
        blocks = {}
        for name, width in self.blocks.items():
            have = features.block_dims.get(name)
            if have is None:
                if name in features.categorical_dims:
                    raise ValueError(f"block {name!r} is categorical in the features, not dense")
                blocks[name] = np.zeros((n, width), np.float32)
            elif have != width:
                raise ValueError(
                    f"content block {name!r} has width {have} but the model was trained with "
                    f"{width} (model layout {self.blocks!r})"
                )
            else:
                blocks[name] = features.blocks[name]
        for name, size in self.categorical.items():
            if name not in features.categorical_dims:
                raise ValueError(
                    f"categorical block {name!r} of the model is not in the features "
                    f"{sorted(features.categorical_dims)!r}"
                )
            idx = np.asarray(features.blocks[name], np.int32)
            blocks[name] = np.where((idx > 0) & (idx < size), idx, 0).astype(np.int32)
        if (
            features.block_dims == self.blocks
            and features.categorical_dims == self.categorical
            and all(np.array_equal(blocks[c], features.blocks[c]) for c in self.categorical)
        ):
            return features
        return replace(
            features,
            blocks=blocks,
            block_dims=dict(self.blocks),
            categorical_dims=dict(self.categorical),
        )

    def item_vectors(self, features: ContentFeatures, batch_size: int = 4096) -> np.ndarray:
        """(n, k + 1) float32 item vectors (match, then bias) of `features.product_ids`, in
        row order: a product in the CF index gets its embedding (+ content for `hybrid`), any
        other one its content vector (`content`, `hybrid`) or zeros (`cf`)."""
        features = self.conform(features)
        inputs = content_inputs(
            features, np.arange(len(features)), self.item_index, self.item_tower.input.keys()
        )
        return item_vectors(self.item_tower, inputs, batch_size)

    def features_from_frame(self, frame: pd.DataFrame, as_of=None) -> ContentFeatures:
        """Content features of the products of `frame` (one row per product) in the model's
        layout, standardised by `features.content_blocks` exactly as in training.

        Columns: `product_id` and the Feast columns of `recommender_v1`'s product refs
        (type_idx, log_price, recency_days, popularity_7d/30d/90d, tfidf, embedding), with
        `first_seen` and `attribute_vector` when available. `as_of` (default: the frame's
        `as_of` or `event_timestamp` column when it holds one value, else now) is the time
        recency is measured at. Without `first_seen`, recency is `recency_days` / 365.25 (the
        age at the feature row's own time: Feast online rows do not carry first_seen).
        """
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"expected a pandas DataFrame, got {type(frame).__name__}")
        if "product_id" not in frame.columns:
            raise ValueError(f"frame needs a 'product_id' column; got {list(frame.columns)!r}")
        ids = np.asarray([str(p) for p in frame["product_id"]], dtype=object)
        dups = pd.Index(ids)[pd.Index(ids).duplicated()].unique()
        if len(dups):
            raise ValueError(
                f"frame has {len(dups)} duplicate product ids, e.g. {list(dups[:5])!r}"
            )
        as_of = _as_of(frame, as_of)
        frame = frame.reset_index(drop=True)
        if "type_idx" in frame.columns:
            # A type added after training would grow the index: it is unknown (0) to the model.
            size = self.categorical.get("type", 2)
            types = pd.to_numeric(frame["type_idx"], errors="coerce")
            frame = frame.assign(type_idx=types.where((types > 0) & (types < size), 0))
        blocks, block_dims, categorical_dims = content_blocks(
            frame,
            as_of,
            type_size=self.categorical.get("type"),
            tfidf_dim=self.blocks.get(TFIDF, 1),
            with_attributes=ATTRIBUTES in self.blocks,
        )
        if "first_seen" not in frame.columns and "recency_days" in frame.columns:
            days = pd.to_numeric(frame["recency_days"], errors="coerce").to_numpy(
                np.float64, na_value=np.nan
            )
            days = np.where(np.isfinite(days), np.maximum(days, 0.0), 0.0)
            blocks[RECENCY] = (days / DAYS_PER_YEAR).astype(np.float32)[:, None]
        features = ContentFeatures(
            product_ids=ids,
            index={p: i for i, p in enumerate(ids)},
            blocks=blocks,
            block_dims=block_dims,
            categorical_dims=categorical_dims,
            as_of=as_of,
        )
        return self.conform(features)

    def predict(self, frame: pd.DataFrame, as_of=None, batch_size: int = 4096) -> pd.DataFrame:
        """`frame` (see `features_from_frame`) → DataFrame(product_id, vector: list of k + 1
        floats), one row per product in frame order."""
        features = self.features_from_frame(frame, as_of)
        vectors = self.item_vectors(features, batch_size)
        return pd.DataFrame(
            {
                "product_id": list(features.product_ids),
                "vector": [row.tolist() for row in vectors],
            },
            columns=list(VECTOR_COLUMNS),
        )

    def knows(self, product_ids) -> np.ndarray:
        """Bool per product: True when it has a CF row (was bought in the training window)."""
        return np.asarray([str(p) in self.item_index for p in product_ids], dtype=bool)

    # -- persistence -------------------------------------------------------------------------

    def save(self, directory) -> Path:
        """Write `model.keras` and `bundle.json` into `directory` (created); returns its path."""
        state = {
            "format": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "variant": self.variant,
            "item_index": self.item_index,
            "blocks": self.blocks,
            "categorical": self.categorical,
            "metadata": self.metadata,
        }
        return save_state(
            directory, state, lambda path: save_item_tower(self.item_tower, path), _json_default
        )

    @classmethod
    def load(cls, directory) -> RecommenderBundle:
        """Read a bundle written by `save`."""
        state = load_state(
            directory,
            cls.KIND,
            FORMAT_VERSION,
            ": retrain the recommender with this version (atelier train recommender)",
        )
        return cls(
            item_tower=load_item_tower(Path(directory) / MODEL_FILE),
            config=RecommenderConfig.from_dict(state["config"]),
            variant=state["variant"],
            item_index=state["item_index"],
            blocks=state["blocks"],
            categorical=state["categorical"],
            metadata=state["metadata"],
        )


def _dims(name: str, value) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict of block name -> size, got {value!r}")
    out = {}
    for block, size in value.items():
        if block == ITEM_IDX or isinstance(size, bool) or not isinstance(size, int | np.integer):
            raise ValueError(f"{name}[{block!r}] must be an integer size, got {size!r}")
        out[str(block)] = int(size)
    return {b: out[b] for b in sorted(out)}


def _as_of(frame: pd.DataFrame, as_of) -> pd.Timestamp:
    if as_of is not None:
        return utc_timestamp(as_of, "as_of")
    for column in ("as_of", "event_timestamp"):
        if column in frame.columns and len(frame):
            values = pd.to_datetime(frame[column], utc=True).dropna().unique()
            if len(values) > 1:
                raise ValueError(
                    f"frame column {column!r} holds {len(values)} different times; score one "
                    f"as_of at a time, e.g. {values[0]!s}"
                )
            if len(values) == 1:
                return pd.Timestamp(values[0])
    return pd.Timestamp(datetime.now(UTC))


def _json_default(value):
    # Metadata may hold times (train_end); the attribute bundle's does not.
    if isinstance(value, datetime):
        return value.isoformat()
    return json_default(value)
