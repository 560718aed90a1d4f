"""Table contracts: the name, key and Arrow schema of every lake table.

This is the one place that says what a canonical table looks like. The lake module writes
through these schemas, the ingest job builds rows to them and the quality gates derive their
expectations from them. Importing it is cheap (pyarrow is imported lazily by `schema()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Column:
    """One column: Arrow type name (see `_ARROW`), nullability and a one-line meaning."""

    name: str
    type: str
    nullable: bool = True
    doc: str = ""


@dataclass(frozen=True)
class TableContract:
    """A canonical table: its columns, its merge key and the bounds the gate enforces."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    doc: str = ""
    # Non-negative numeric columns (prices, counts): finite and >= 0.
    non_negative: tuple[str, ...] = ()
    # Timestamp columns that must not lie in the future.
    past_timestamps: tuple[str, ...] = ()
    # Probability columns (confidences): finite and within [0, 1].
    unit_interval: tuple[str, ...] = ()
    # Foreign keys: column -> (table, column).
    references: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if not c.nullable]

    def schema(self):
        """The table's `pyarrow.Schema`."""
        import pyarrow as pa

        return pa.schema(
            [pa.field(c.name, _arrow_type(c.type), nullable=c.nullable) for c in self.columns]
        )

    def spark_ddl(self) -> str:
        """The table's schema as a Spark DDL string."""
        return ", ".join(f"`{c.name}` {_SPARK[c.type]}" for c in self.columns)


_SPARK = {
    "string": "STRING",
    "int32": "INT",
    "int64": "BIGINT",
    "float64": "DOUBLE",
    "timestamp": "TIMESTAMP",
    "date": "DATE",
    "list<float32>": "ARRAY<FLOAT>",
    "list<int32>": "ARRAY<INT>",
    "list<string>": "ARRAY<STRING>",
}


def _arrow_type(name: str):
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        # Delta stores microseconds in UTC; Spark's TIMESTAMP maps to this.
        "timestamp": pa.timestamp("us", tz="UTC"),
        "date": pa.date32(),
        "list<float32>": pa.list_(pa.float32()),
        "list<int32>": pa.list_(pa.int32()),
        "list<string>": pa.list_(pa.string()),
    }
    return types[name]


def _c(name: str, type_: str, nullable: bool = True, doc: str = "") -> Column:
    return Column(name, type_, nullable, doc)


PRODUCTS = TableContract(
    name="products",
    doc="One row per product of the catalogue.",
    columns=(
        _c("product_id", "string", False, "source id, kept as a string (leading zeros)"),
        _c("type", "string", False, "product type, e.g. Dress"),
        _c("brand", "string", False, "brand name"),
        _c("division", "string", True, "division, e.g. Ladieswear / Men"),
        _c("title", "string", True, "short product name"),
        _c("description", "string", True, "free text description"),
        _c("price", "float64", True, "list price, or median paid price when the source has none"),
        _c("first_seen", "timestamp", True, "first time the product was seen (first sale)"),
        _c("source", "string", False, "layout the row came from"),
    ),
    key=("product_id",),
    non_negative=("price",),
    past_timestamps=("first_seen",),
)

PRODUCT_IMAGES = TableContract(
    name="product_images",
    doc="One row per product shot whose file exists and decodes.",
    columns=(
        _c("product_id", "string", False),
        _c("shot", "int32", False, "shot number, 0 for the main image"),
        _c(
            "path",
            "string",
            False,
            "the image file: stored relative to the lake (its copy in `_images/`, by content "
            "hash), read absolute; absolute as stored by older versions",
        ),
        _c("content_hash", "string", False, "sha256 of the file bytes"),
        _c("width", "int32", False),
        _c("height", "int32", False),
    ),
    key=("product_id", "shot"),
    references={"product_id": ("products", "product_id")},
)

PRODUCT_LABELS = TableContract(
    name="product_labels",
    doc="Known attribute labels in long form; a missing label is no row.",
    columns=(
        _c("product_id", "string", False),
        _c("attribute", "string", False),
        _c("value", "string", False),
    ),
    key=("product_id", "attribute"),
    references={"product_id": ("products", "product_id")},
)

CUSTOMERS = TableContract(
    name="customers",
    doc="One row per customer.",
    columns=(
        _c("customer_id", "string", False),
        _c("age", "int32", True),
        _c("club_member_status", "string", True),
        _c("fashion_news_frequency", "string", True),
        _c("postal_code", "string", True),
    ),
    key=("customer_id",),
    non_negative=("age",),
)

INTERACTIONS = TableContract(
    name="interactions",
    doc="Customer-product events. Repeat purchases are separate rows (occurrence in the key).",
    columns=(
        _c("interaction_id", "string", False, "hash of (customer, product, timestamp, occurrence)"),
        _c("customer_id", "string", False),
        _c("product_id", "string", False),
        _c("kind", "string", False, "purchase"),
        _c("timestamp", "timestamp", False),
        _c("price", "float64", True),
        _c("channel", "string", True),
    ),
    key=("interaction_id",),
    non_negative=("price",),
    past_timestamps=("timestamp",),
    references={
        "product_id": ("products", "product_id"),
        "customer_id": ("customers", "customer_id"),
    },
)

PRODUCT_TOMBSTONES = TableContract(
    name="product_tombstones",
    doc="Products removed from their source (ingest --deletes): kept in `products` so their "
    "purchases stay valid, never recommended; a product listed again loses its tombstone.",
    columns=(
        _c("product_id", "string", False),
        _c("deleted_at", "timestamp", False, "the ingest run that found it gone"),
        _c("run_id", "string", False),
    ),
    key=("product_id",),
    references={"product_id": ("products", "product_id")},
)

QUARANTINE = TableContract(
    name="quarantine",
    doc="Rows that failed a row-level check, with the reason and where they came from.",
    columns=(
        _c("table", "string", False, "canonical table the row was meant for"),
        _c("source_file", "string", False),
        _c("line", "int64", False, "1-based line number in the source file"),
        _c("reason", "string", False, "machine-readable reason, e.g. negative_price"),
        _c("detail", "string", True, "human-readable detail"),
        _c("record", "string", True, "the raw source line"),
        _c("run_id", "string", False),
        _c("quarantined_at", "timestamp", False),
    ),
    key=("table", "source_file", "line", "reason"),
)

CANONICAL = (PRODUCTS, PRODUCT_IMAGES, PRODUCT_LABELS, CUSTOMERS, INTERACTIONS)

# -- feature tables (written by the feature jobs, served by Feast) --------------------------
# Every feature row carries `event_timestamp` (when the value became true: what Feast's
# point-in-time joins use) and `created_timestamp` (when it was written: breaks ties).
# Content features (image, text) of a product hold from the product's first_seen (or the epoch
# when unknown): the content existed before it was embedded, so training events may see it.
_STAMPS = (
    _c("event_timestamp", "timestamp", False, "when the value became true"),
    _c("created_timestamp", "timestamp", False, "when the row was written"),
)

IMAGE_EMBEDDINGS = TableContract(
    name="image_embeddings",
    doc="VGG16 last-conv-block global-max-pooled features, one row per product shot.",
    columns=(
        _c("product_id", "string", False),
        _c("shot", "int32", False),
        _c("content_hash", "string", False, "sha256 of the image embedded (incremental key)"),
        _c("weights", "string", False, "'imagenet', 'file:<sha256>' or 'random:<seed>'"),
        _c("input_size", "string", False, "HxW fed to the network"),
        _c("embedding", "list<float32>", False, "512 floats"),
        *_STAMPS,
    ),
    key=("product_id", "shot"),
    references={"product_id": ("products", "product_id")},
)

COLOUR_FEATURES = TableContract(
    name="colour_features",
    doc="Colour descriptor of the garment (atelier.colour), one row per product shot.",
    columns=(
        _c("product_id", "string", False),
        _c("shot", "int32", False),
        _c("content_hash", "string", False, "sha256 of the image described (incremental key)"),
        _c(
            "descriptor_version",
            "string",
            False,
            "atelier.colour.DESCRIPTOR_VERSION: palette and parameters (incremental key)",
        ),
        _c(
            "colour",
            "list<float32>",
            False,
            "atelier.colour.COLOUR_DIM floats: palette shares of the garment's pixels (sum 1), "
            "then foreground fraction, mean lightness, mean chroma, lightness spread in [0, 1]",
        ),
        _c("foreground_fraction", "float64", False, "share of the image described"),
        _c(
            "mask",
            "string",
            False,
            "'background' (garment found), or the central crop: 'centre_empty', "
            "'centre_full', 'centre_busy'",
        ),
        *_STAMPS,
    ),
    key=("product_id", "shot"),
    unit_interval=("foreground_fraction",),
    references={"product_id": ("products", "product_id")},
)

VOCABULARY = TableContract(
    name="vocabulary",
    doc="Versioned text vocabulary: ids 0 (padding) and 1 (out of vocabulary) are reserved.",
    columns=(
        _c("version", "string", False, "hash of the build parameters and corpus"),
        _c("token", "string", False),
        _c("token_id", "int32", False),
        _c("count", "int64", False, "occurrences in the corpus"),
        _c("document_frequency", "int64", False, "products whose text holds the token"),
    ),
    key=("version", "token"),
)

TEXT_FEATURES = TableContract(
    name="text_features",
    doc="Normalised tokens of title + description as fixed-length ids and TF-IDF.",
    columns=(
        _c("product_id", "string", False),
        _c("vocab_version", "string", False),
        _c("token_ids", "list<int32>", False, "fixed length, 0-padded, 1 = out of vocabulary"),
        _c("n_tokens", "int32", False, "tokens before padding/truncation"),
        _c("tfidf", "list<float32>", False, "L2-normalised TF-IDF over the vocabulary's top terms"),
        *_STAMPS,
    ),
    key=("product_id",),
    references={"product_id": ("products", "product_id")},
)

CATEGORY_INDEX = TableContract(
    name="category_index",
    doc="Index of each categorical value (type, brand, division); 0 is the unknown index.",
    columns=(
        _c("column", "string", False),
        _c("value", "string", False),
        _c("idx", "int32", False),
    ),
    key=("column", "value"),
)

PRODUCT_FEATURES = TableContract(
    name="product_features",
    doc="Metadata features, one row per product per time its values changed (point in time).",
    columns=(
        _c("product_id", "string", False),
        _c("type_idx", "int32", False),
        _c("brand_idx", "int32", False),
        _c("division_idx", "int32", False),
        _c("log_price", "float64", True, "standardised log(1 + price)"),
        _c("first_seen", "timestamp", True),
        _c("recency_days", "float64", True, "days since first_seen at event_timestamp"),
        _c("popularity_7d", "int64", False, "interactions in the 7 days up to event_timestamp"),
        _c("popularity_30d", "int64", False),
        _c("popularity_90d", "int64", False),
        *_STAMPS,
    ),
    key=("product_id", "event_timestamp"),
    non_negative=("popularity_7d", "popularity_30d", "popularity_90d"),
    references={"product_id": ("products", "product_id")},
)

CUSTOMER_HISTORY = TableContract(
    name="customer_history",
    doc="The customer's last N products (most recent first) as of each day they interacted.",
    columns=(
        _c("customer_id", "string", False),
        _c("history", "list<string>", False, "product ids, most recent first"),
        _c("history_length", "int32", False),
        *_STAMPS,
    ),
    key=("customer_id", "event_timestamp"),
    references={"customer_id": ("customers", "customer_id")},
)

# -- predicted attributes (written by spark_jobs/predict_attributes.py) ---------------------
# Known labels are kept verbatim; the champion model fills the gaps. Both tables hold from the
# product's first_seen (or the epoch), like the content features they are computed from.
PREDICTED_ATTRIBUTES = TableContract(
    name="predicted_attributes",
    doc="Every attribute of every product: the known label, else the model's prediction.",
    columns=(
        _c("product_id", "string", False),
        _c("attribute", "string", False),
        _c("value", "string", False, "the label as ingested, or the most probable class"),
        _c("confidence", "float64", False, "probability of `value`; 1.0 for a known label"),
        _c(
            "probabilities",
            "list<float32>",
            False,
            "the head's class probabilities (one-hot for a label that maps to a class, "
            "empty when it maps to none)",
        ),
        _c(
            "source",
            "string",
            False,
            "'label' (known), 'predicted' (fills the gap) or 'below_confidence' (under the "
            "attribute's minimum confidence: the gap stays empty)",
        ),
        _c("model_version", "string", False, "'<registered model>/<version>' that encoded it"),
        *_STAMPS,
    ),
    key=("product_id", "attribute"),
    unit_interval=("confidence",),
    references={"product_id": ("products", "product_id")},
)

ATTRIBUTE_VECTORS = TableContract(
    name="attribute_vectors",
    doc="Every attribute of a product as one vector, in the model's attribute order (for Feast).",
    columns=(
        _c("product_id", "string", False),
        _c(
            "attribute_vector",
            "list<float32>",
            False,
            "each attribute's probabilities end to end: one-hot for a known label, zeros for "
            "an attribute that does not apply",
        ),
        _c("attribute_values", "list<string>", False, "value per attribute, '' when none"),
        _c("model_version", "string", False, "'<registered model>/<version>' that encoded it"),
        *_STAMPS,
    ),
    key=("product_id",),
    references={"product_id": ("products", "product_id")},
)

# -- item vectors (written by spark_jobs/item_vectors.py) -----------------------------------
# The champion recommender's item-tower output for every product, never-bought ones included.
# Unlike the attribute vectors these depend on popularity and recency as of the run, so a row
# holds from the run that computed it (event_timestamp = the run's as-of time, not
# first_seen): a point-in-time join for an earlier time must not see it. One row per product:
# a run rewrites only products whose vector changed (new champion, changed features).
ITEM_VECTORS = TableContract(
    name="item_vectors",
    doc="The champion recommender's item vector of every product (for Feast serving).",
    columns=(
        _c("product_id", "string", False),
        _c(
            "vector",
            "list<float32>",
            False,
            "k + 1 floats: k match coordinates, then the product's bias (layout 'dot+bias', "
            "models.ranking): score(customer, product) = [mean of the history's match "
            "coordinates, 1] . vector; zeros when the model cannot represent the product (cf "
            "variant, never bought in training)",
        ),
        _c("variant", "string", False, "item tower variant: 'cf', 'content' or 'hybrid'"),
        _c("model_version", "string", False, "'<registered model>/<version>' that computed it"),
        *_STAMPS,
    ),
    key=("product_id",),
    references={"product_id": ("products", "product_id")},
)

FEATURES = (
    IMAGE_EMBEDDINGS,
    COLOUR_FEATURES,
    TEXT_FEATURES,
    PRODUCT_FEATURES,
    CUSTOMER_HISTORY,
    PREDICTED_ATTRIBUTES,
    ATTRIBUTE_VECTORS,
    ITEM_VECTORS,
)
ALL = {
    t.name: t
    for t in (*CANONICAL, PRODUCT_TOMBSTONES, QUARANTINE, *FEATURES, VOCABULARY, CATEGORY_INDEX)
}


def contract(name: str) -> TableContract:
    """The contract of table `name`; raises KeyError naming the known tables."""
    try:
        return ALL[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {sorted(ALL)}") from None
