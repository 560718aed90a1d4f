"""Content features of the recommender's item tower, point in time, from Feast.

`load_content_features` asks Feast's offline store for every product's content as of `as_of`
(the end of the training window): the `recommender_v1` service's product refs (type, price,
recency, popularity from `product_features`; TF-IDF from `text_features`; the main image's
embedding from `image_embedding`) plus `predicted_attributes:attribute_vector` when the
`attribute_vectors` table exists in the lake. `content_blocks` turns the joined frame into the
blocks `layers.ContentEncoder` reads; it is pure (pandas/numpy) and does the standardisation
the encoder's `lift` needs (scalars of order 1, not raw days or counts):

- `type` (n,) int32: `type_idx`, 0 = unknown or missing (a categorical block);
- `price` (n, 1): `log_price` as stored, already the z-score of log1p(price) (features job);
- `recency` (n, 1): YEARS since the product's `first_seen`, as of `as_of` (0 for a product
  not yet launched then). `first_seen` is read besides the service's refs because
  `recency_days` is measured at the matched row's own event time, which can be months before
  `as_of` (a row is written only when a popularity count changes);
- `popularity` (n, 3): log1p of the 7, 30 and 90-day interaction counts as of `as_of`;
- `tfidf` (n, T), `image` (n, 512), `attributes` (n, A): as stored (the encoder normalises).

A missing value (no row at `as_of`, a null, a non-finite entry) becomes 0 (for popularity
0 = no sales; for price the mean price); a missing vector becomes zeros, which the encoder's
unit-norm step keeps at zero (the block contributes nothing).

`content_inputs` then builds the item tower's input dict for any rows (any leading shape).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from models.recommender.items import UNKNOWN_ITEM, encode_items, utc_timestamp
from models.recommender.model import ITEM_IDX, RecommenderConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from atelier.settings import Settings

log = logging.getLogger("atelier.recommender")

FEATURE_SERVICE = "recommender_v1"
# The service's product refs the recommender reads (brand/division are not content blocks of
# the paper) and the extra ones: first_seen (exact recency) and the predicted attributes.
PRODUCT_REFS = (
    "product_features:type_idx",
    "product_features:log_price",
    "product_features:recency_days",
    "product_features:popularity_7d",
    "product_features:popularity_30d",
    "product_features:popularity_90d",
    "text_features:tfidf",
    "image_embedding:embedding",
)
FIRST_SEEN_REF = "product_features:first_seen"
ATTRIBUTE_REFS = (
    "predicted_attributes:attribute_vector",
    "predicted_attributes:model_version",
)
ATTRIBUTE_TABLE = "attribute_vectors"
POPULARITY_COLUMNS = ("popularity_7d", "popularity_30d", "popularity_90d")
IMAGE_DIM = 512
DAYS_PER_YEAR = 365.25

TYPE, PRICE, RECENCY, POPULARITY = "type", "price", "recency", "popularity"
TFIDF, IMAGE, ATTRIBUTES = "tfidf", "image", "attributes"


@dataclass
class ContentFeatures:
    """Content blocks of `n` products: row i of every block is product `product_ids[i]`.

    `blocks`: name → (n, width) float32 for dense blocks (`block_dims`: name → width) and (n,)
    int32 for categorical ones (`categorical_dims`: name → index size, 0 = unknown included).
    `as_of`: the time popularity and recency are measured at; `feature_refs`: the Feast refs
    read; `attribute_model_versions`: the attribute models that encoded the `attributes` block.
    """

    product_ids: np.ndarray
    index: dict
    blocks: dict[str, np.ndarray]
    block_dims: dict[str, int]
    categorical_dims: dict[str, int]
    as_of: object = None
    feature_refs: tuple[str, ...] = ()
    attribute_model_versions: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        n = len(self.product_ids)
        if len(self.index) != n or any(self.index.get(p) != i for i, p in enumerate(self)):
            raise ValueError(
                f"index must map each of the {n} product ids to its row, got {len(self.index)} "
                "entries"
            )
        names = {**self.block_dims, **self.categorical_dims}
        if set(names) != set(self.blocks):
            raise ValueError(
                f"blocks {sorted(self.blocks)!r} must match block_dims and categorical_dims "
                f"{sorted(names)!r}"
            )
        for name, block in self.blocks.items():
            want = (n, self.block_dims[name]) if name in self.block_dims else (n,)
            if block.shape != want:
                raise ValueError(f"block {name!r} must have shape {want!r}, got {block.shape!r}")

    def __len__(self) -> int:
        return len(self.product_ids)

    def __iter__(self):
        return iter(self.product_ids)

    @property
    def names(self) -> tuple[str, ...]:
        """Block names in the encoder's order (sorted)."""
        return tuple(sorted(self.blocks))

    def rows(self, product_ids) -> np.ndarray:
        """Row numbers (same shape, int64) of `product_ids`; raises naming unknown products."""
        ids = np.asarray(product_ids, dtype=object)
        flat = [self.index.get(p, -1) for p in ids.ravel()]
        out = np.asarray(flat, dtype=np.int64).reshape(ids.shape)
        if (out < 0).any():
            missing = sorted({str(p) for p, r in zip(ids.ravel(), flat) if r < 0})
            raise ValueError(
                f"{len(missing)} products have no content features, e.g. {missing[:5]!r}"
            )
        return out

    def cf_indices(self, item_index: Mapping | None) -> np.ndarray:
        """(n,) int32: each row's CF item index under `item_index` (product → 1..n_items),
        0 (`UNKNOWN_ITEM`) for products it does not hold or when it is None."""
        if item_index is None:
            return np.full(len(self), UNKNOWN_ITEM, np.int32)
        return encode_items(self.product_ids, item_index)

    def recommender_config(self, variant: str = "hybrid", n_items: int = 1, **overrides):
        """A `RecommenderConfig` whose content blocks are these features' blocks."""
        return RecommenderConfig(
            variant=variant,
            n_items=n_items,
            block_dims=dict(self.block_dims),
            categorical_dims=dict(self.categorical_dims),
            **overrides,
        )


def content_inputs(
    features: ContentFeatures,
    rows,
    item_index: Mapping | np.ndarray | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """The item tower's input dict for feature rows `rows` (int array of any shape `lead`).

    Dense blocks come as (*lead, width) float32, categorical blocks and `item_idx` (the CF
    index, see `ItemTower`) as (*lead,) int32. `item_index`: product → CF index (1..n_items),
    or the (n,) array of `features.cf_indices(...)` (faster in a loop), or None (every product
    unknown: index 0). `names`: the inputs wanted (e.g. `RecommenderConfig.input_names`);
    default every block plus `item_idx`.
    """
    rows = np.asarray(rows)
    if rows.dtype.kind not in "iu":
        raise ValueError(f"rows must be integer row numbers, got dtype {rows.dtype}")
    n = len(features)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows must lie in [0, {n}), got values in [{rows.min()}, {rows.max()}]")
    wanted = (*features.names, ITEM_IDX) if names is None else tuple(names)
    unknown = [w for w in wanted if w != ITEM_IDX and w not in features.blocks]
    if unknown:
        raise ValueError(
            f"content features have no blocks {unknown!r}; they have {list(features.names)!r}"
        )
    out = {}
    for name in wanted:
        if name == ITEM_IDX:
            if isinstance(item_index, np.ndarray):
                if item_index.shape != (n,):
                    raise ValueError(
                        f"a CF index array must have shape ({n},), got {item_index.shape!r}"
                    )
                cf = item_index.astype(np.int32, copy=False)
            else:
                cf = features.cf_indices(item_index)
            out[name] = cf[rows]
        else:
            dtype = np.int32 if name in features.categorical_dims else np.float32
            out[name] = features.blocks[name][rows].astype(dtype, copy=False)
    return out


# --- from a Feast frame to blocks (pure) ----------------------------------------------------


def _vector_block(values: Sequence, name: str, width: int | None) -> np.ndarray | None:
    """Lists/arrays (or None) → (n, width) float32, zeros where missing; the width is the
    stored vectors' length (they must agree) or `width` when none is stored (None: no block)."""
    present = [i for i, v in enumerate(values) if v is not None and not _is_nan(v)]
    lengths = sorted({len(values[i]) for i in present})
    if len(lengths) > 1:
        raise ValueError(f"{name} vectors must all have one length, got lengths {lengths!r}")
    if lengths:
        if width is not None and lengths[0] != width:
            raise ValueError(f"{name} vectors must have {width} values, got {lengths[0]}")
        width = lengths[0]
    if width is None:
        return None
    out = np.zeros((len(values), width), np.float32)
    for i in present:
        out[i] = np.asarray(values[i], np.float32)
    out[~np.isfinite(out)] = 0.0
    return out


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A numeric column as float64, 0 where missing or non-finite (0 too when absent)."""
    import pandas as pd

    if column not in frame.columns:
        return np.zeros(len(frame))
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    return np.where(np.isfinite(values), values, 0.0)


def content_blocks(
    frame: pd.DataFrame,
    as_of,
    type_size: int | None = None,
    tfidf_dim: int | None = None,
    with_attributes: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, int]]:
    """Feast columns of n products (one row each, in row order) → (blocks, block_dims,
    categorical_dims), standardised as the module docstring says.

    `frame` columns: type_idx, log_price, first_seen, popularity_7d/30d/90d, tfidf, embedding
    and, with `with_attributes`, attribute_vector (missing columns read as missing values).
    `type_size`: the type index size (default: the largest type_idx + 1, at least 2).
    `tfidf_dim`: the TF-IDF width when no product has one stored (else the stored length).
    The attributes block is left out when no product has an attribute vector.
    """
    import pandas as pd

    as_of = utc_timestamp(as_of, "as_of")
    n = len(frame)
    type_idx = _numbers(frame, "type_idx").astype(np.int64)
    type_idx = np.where(type_idx > 0, type_idx, 0)
    size = max(2, int(type_idx.max(initial=0)) + 1)
    if type_size is not None:
        if type_size < size:
            raise ValueError(
                f"type_size must be at least {size} (largest type_idx + 1), got {type_size!r}"
            )
        size = type_size

    if "first_seen" in frame.columns:
        first_seen = pd.to_datetime(frame["first_seen"], utc=True)
        days = ((as_of - first_seen).dt.total_seconds() / 86_400.0).to_numpy(
            np.float64, na_value=np.nan
        )
    else:
        days = np.full(n, np.nan)
    recency = np.where(np.isfinite(days), np.maximum(days, 0.0), 0.0) / DAYS_PER_YEAR
    popularity = np.log1p(
        np.maximum(np.stack([_numbers(frame, c) for c in POPULARITY_COLUMNS], axis=1), 0.0)
    )

    def column(name):
        return list(frame[name]) if name in frame.columns else [None] * n

    blocks = {
        TYPE: type_idx.astype(np.int32),
        PRICE: _numbers(frame, "log_price").astype(np.float32)[:, None],
        RECENCY: recency.astype(np.float32)[:, None],
        POPULARITY: popularity.astype(np.float32).reshape(n, len(POPULARITY_COLUMNS)),
        TFIDF: _vector_block(column("tfidf"), TFIDF, None),
        IMAGE: _vector_block(column("embedding"), IMAGE, IMAGE_DIM),
    }
    if blocks[TFIDF] is None:
        if tfidf_dim is None:
            raise ValueError("no product has a TF-IDF vector and tfidf_dim is not given")
        blocks[TFIDF] = np.zeros((n, tfidf_dim), np.float32)
    if with_attributes:
        attributes = _vector_block(column("attribute_vector"), ATTRIBUTES, None)
        if attributes is not None:
            blocks[ATTRIBUTES] = attributes
    block_dims = {b: int(v.shape[1]) for b, v in sorted(blocks.items()) if b != TYPE}
    return blocks, block_dims, {TYPE: size}


# --- from Feast -----------------------------------------------------------------------------


def _catalogue(lake) -> np.ndarray:
    """Every product id: the `products` table, else those with product features."""
    table = "products" if lake.exists("products") else "product_features"
    ids = lake.read_pandas(table, ["product_id"])["product_id"]
    return np.asarray(sorted(set(ids.astype(str))), dtype=object)


def _type_size(lake) -> int | None:
    """1 + the largest `type` index of the lake's category index (None without one)."""
    if not lake.exists("category_index"):
        return None
    index = lake.read_pandas("category_index")
    types = index.loc[index["column"] == "type", "idx"]
    return int(types.max()) + 1 if len(types) else None


def load_content_features(
    settings: Settings,
    as_of: datetime,
    product_ids: Iterable[str] | None = None,
    store=None,
    content_as_of: datetime | None = None,
) -> ContentFeatures:
    """Point-in-time content features of products as of `as_of` (the training window's end).

    `product_ids`: default every product of the catalogue (`products`); rows are in sorted id
    order. Popularity and recency are always as of `as_of`. `content_as_of` (>= `as_of`,
    default `as_of`) is when the static content — type, price, TF-IDF, image, attributes — is
    read: a product launched after the training window has no content at `as_of`, so to score
    it as a cold-start product in the test period read its content as of the test period's
    end; its sales in that period never leak in (popularity 0, recency 0 at `as_of`).
    The predicted attributes are used when the lake has an `attribute_vectors` table.
    """
    import pandas as pd

    from atelier.feast_store import feature_store, historical_features
    from atelier.lake import Lake

    as_of_ts = utc_timestamp(as_of, "as_of")
    content_ts = as_of_ts if content_as_of is None else utc_timestamp(content_as_of, "content")
    if content_ts < as_of_ts:
        raise ValueError(f"content_as_of {content_ts} must not be before as_of {as_of_ts}")
    lake = Lake(settings)
    if product_ids is None:
        ids = _catalogue(lake)
    else:
        ids = np.asarray(sorted({str(p) for p in product_ids}), dtype=object)
    with_attributes = lake.exists(ATTRIBUTE_TABLE)
    refs = [*PRODUCT_REFS, FIRST_SEEN_REF, *(ATTRIBUTE_REFS if with_attributes else ())]
    times = [as_of_ts] if content_ts == as_of_ts else [as_of_ts, content_ts]
    entity = pd.DataFrame(
        {
            "product_id": np.tile(ids, len(times)),
            "event_timestamp": pd.Series([t for t in times for _ in ids], dtype=object).astype(
                "datetime64[us, UTC]"
            ),
        }
    )
    store = store or feature_store(settings)
    log.info("historical features of %d products as of %s (%d refs)", len(ids), as_of_ts, len(refs))
    if len(ids):
        frame = historical_features(settings, entity, refs, store=store)
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    else:
        frame = pd.DataFrame(columns=["product_id", "event_timestamp"])

    def at(ts) -> pd.DataFrame:
        rows = frame[frame["event_timestamp"] == ts].drop_duplicates("product_id")
        return rows.set_index("product_id").reindex(ids)

    dynamic = at(as_of_ts)
    static = at(content_ts)
    # Popularity as of as_of; the rest (first_seen included: a product launched after as_of
    # has it only in the later rows) as of content_as_of.
    timing = [c for c in POPULARITY_COLUMNS if c in dynamic.columns]
    joined = static.drop(columns=[c for c in timing if c in static.columns]).join(dynamic[timing])
    blocks, block_dims, categorical_dims = content_blocks(
        joined.reset_index(drop=True),
        as_of_ts,
        type_size=_at_least(_type_size(lake), joined),
        tfidf_dim=settings.text.tfidf_dim,
        with_attributes=with_attributes,
    )
    versions = ()
    if with_attributes and "model_version" in joined.columns:
        versions = tuple(sorted({str(v) for v in joined["model_version"].dropna()}))
    return ContentFeatures(
        product_ids=ids,
        index={p: i for i, p in enumerate(ids)},
        blocks=blocks,
        block_dims=block_dims,
        categorical_dims=categorical_dims,
        as_of=as_of_ts,
        feature_refs=tuple(refs),
        attribute_model_versions=versions,
    )


def _at_least(size: int | None, frame: pd.DataFrame) -> int | None:
    """The category index's type size, grown to cover every type_idx in `frame`."""
    if size is None:
        return None
    observed = _numbers(frame, "type_idx")
    return max(size, int(observed.max(initial=0)) + 1, 2)


def with_dynamic(features: ContentFeatures, timeline, as_of) -> ContentFeatures:
    """`features` with its time-dependent blocks (popularity, recency) read from `timeline`
    (a `timeline.SalesTimeline` over the same products, in the same order) as of `as_of`; the
    static content is kept. For scoring as of another time than the features were loaded at
    (the validation window's start), with the semantics Feast's rows would give there."""
    from dataclasses import replace

    from models.recommender.items import to_micros

    if not np.array_equal(timeline.product_ids, features.product_ids):
        raise ValueError("the sales timeline's rows must be the features' products, in order")
    cut = int(to_micros([utc_timestamp(as_of, "as_of")])[0])
    dynamic = timeline.blocks(np.arange(len(features)), np.full(len(features), cut, np.int64))
    blocks = dict(features.blocks)
    for name in (POPULARITY, RECENCY):
        if name in blocks:
            blocks[name] = dynamic[name]
    return replace(features, blocks=blocks, as_of=utc_timestamp(as_of, "as_of"))
