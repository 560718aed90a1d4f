"""Feast definitions: entities, Delta sources, feature views and versioned feature services.

Pure: nothing happens at import, and nothing is read from the environment. `build(lake_dir,
profile)` returns the objects for one workdir's lake and one profile: `embedded` (`FileSource` in
the Delta format, read by the duckdb offline store) or `scale` (`SparkSource` with the Delta table
format, read by the Spark offline store; with `lake_views`, where delta-spark's jars are absent,
`SparkSource` over the temp view `atelier_<table>` of the table's published snapshot, which
`atelier.feast_store.register_lake_views` registers in the Spark session first).
`atelier.feast_store` calls it for a Settings object, and writes each workdir's own feature
repository (`<workdir>/feast/repo`: its yaml and a two-line definitions file calling `build` with
that workdir's lake), where the `feast` CLI works.

Source paths are absolute: the duckdb store resolves relative paths against the current
directory, and Spark workers against theirs.

Time semantics (see `atelier.contracts`): every row carries `event_timestamp` (when the value
became true: the point-in-time joins use it) and `created_timestamp` (when it was written: among
rows with the same event time, the latest write wins).

TTLs (how far back a point-in-time join looks for a view's latest row; also where the first
materialisation window starts): effectively unlimited for every view (`NO_EXPIRY`, 100 years),
each for its own reason:
- content (image embedding, colour, text) holds from the product's first_seen, or the epoch
  when that is unknown, however old; so do the predicted attributes (`predicted_attributes`),
  which are computed from that content and keep its event time: the latest model's values
  replace them in place (a later created_timestamp);
- product_features is a complete timeline: a row at the product's anchor (first_seen, else the
  epoch) and at every time a popularity window count changes, including when a sale leaves a
  window. The latest row is exact until the next one, so a TTL would only turn true zeros and
  the category indices (inputs of `attributes_v1`) into nulls — for every product that never
  sold, at once (its only row is the anchor). recency_days is as of the row's event time;
- customer_history: a customer's last N products remain their history until they buy again.
  A cut-off (e.g. 365 days: "silent for a year = cold start") is a modelling choice; it would
  also empty the online store here, where the catalogues are historical (H&M ends in 2020, the
  demo starts in 2019) and materialisation windows end now;
- item_vectors: the champion recommender's vector of a product holds from the run that
  computed it (event time = that run's as-of time: it depends on popularity then) until a
  later run replaces it (new champion, changed features); it does not go stale by age.
Not 0: Feast's `materialize_incremental` reads a TTL of 0 as "start one year ago" and would
never load anything older.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import DeltaFormat
from feast.types import Array, Float32, Float64, Int32, Int64, String, UnixTimestamp

NO_EXPIRY = timedelta(days=36_500)
CONTENT_TTL = NO_EXPIRY
PRODUCT_FEATURES_TTL = NO_EXPIRY
CUSTOMER_HISTORY_TTL = NO_EXPIRY
PREDICTED_ATTRIBUTES_TTL = CONTENT_TTL
ITEM_VECTORS_TTL = NO_EXPIRY

# The main image of a product. image_embeddings (and colour_features) hold one row per
# (product, shot); their views are keyed by both, and callers ask for shot 0
# (`atelier.feast_store` adds it to entity rows and entity frames that lack it). Other shots
# are served by the same view with shot=k; a multi-shot model would request several shots per
# product (or pool them in a Spark job into a per-product table with its own view) rather than
# a second view over the same table.
MAIN_SHOT = 0

FEATURE_TABLES = (
    "image_embeddings",
    "colour_features",
    "text_features",
    "product_features",
    "customer_history",
    "attribute_vectors",
    "item_vectors",
)

product = Entity(
    name="product",
    join_keys=["product_id"],
    value_type=ValueType.STRING,
    description="A catalogue product (source id kept as a string: leading zeros matter).",
)
shot = Entity(
    name="shot",
    join_keys=["shot"],
    value_type=ValueType.INT32,
    description="Image number of a product; 0 is the main packshot.",
)
customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A customer.",
)


def view_name(table: str) -> str:
    """The Spark temp view holding `table`'s published snapshot (scale profile, lake views)."""
    return f"atelier_{table}"


def _source(name: str, lake_dir: Path, profile: str, lake_views: bool = False):
    """The Delta table `lake_dir/name` as a batch source of the profile's offline store."""
    path = str(Path(lake_dir) / name)
    common = dict(
        name=f"{name}_source",
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
        description=f"Delta table {name} (atelier.contracts.{name.upper()})",
    )
    if profile == "scale":
        import warnings

        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
            SparkSource,
        )
        from feast.table_format import DeltaFormat as DeltaTableFormat

        with warnings.catch_warnings():
            # "The spark data source API is an experimental feature in alpha development."
            warnings.simplefilter("ignore", RuntimeWarning)
            if lake_views:  # executors read the snapshot's files (atelier.lake_spark)
                return SparkSource(table=view_name(name), **common)
            return SparkSource(path=path, table_format=DeltaTableFormat(), **common)
    if profile != "embedded":
        raise ValueError(f"unknown Feast profile {profile!r}; expected 'embedded' or 'scale'")
    # DeltaFormat, never plain Parquet: a Parquet reader would see every file version of the
    # table (rows replaced by later Delta commits included) instead of the current snapshot.
    return FileSource(path=path, file_format=DeltaFormat(), **common)


def build(lake_dir: Path, profile: str = "embedded", lake_views: bool = False) -> dict[str, object]:
    """Every Feast object of the repository, by name, with sources under `lake_dir`.

    Long by design: a declarative list (sources, views with their fields, services) read top to
    bottom like a Feast repo file; splitting it would scatter one schema over helpers."""
    images = _source("image_embeddings", lake_dir, profile, lake_views)
    colours = _source("colour_features", lake_dir, profile, lake_views)
    texts = _source("text_features", lake_dir, profile, lake_views)
    products = _source("product_features", lake_dir, profile, lake_views)
    histories = _source("customer_history", lake_dir, profile, lake_views)
    attribute_vectors = _source("attribute_vectors", lake_dir, profile, lake_views)
    item_vector_rows = _source("item_vectors", lake_dir, profile, lake_views)

    image_embedding = FeatureView(
        name="image_embedding",
        entities=[product, shot],
        ttl=CONTENT_TTL,
        schema=[
            Field(name="product_id", dtype=String),
            Field(name="shot", dtype=Int32),
            Field(name="embedding", dtype=Array(Float32), description="VGG16 features, 512"),
            Field(name="weights", dtype=String, description="weights that produced it"),
        ],
        source=images,
        online=True,
        description="Image embedding per product shot; request shot 0 for the main image.",
        tags={"kind": "content"},
    )
    colour_features = FeatureView(
        name="colour_features",
        entities=[product, shot],
        ttl=CONTENT_TTL,
        schema=[
            Field(name="product_id", dtype=String),
            Field(name="shot", dtype=Int32),
            Field(
                name="colour",
                dtype=Array(Float32),
                description="atelier.colour descriptor: palette shares of the garment (sum 1), "
                "then foreground fraction, mean lightness, mean chroma, lightness spread",
            ),
            Field(name="mask", dtype=String, description="background, or the centre_* fallback"),
            Field(name="descriptor_version", dtype=String, description="palette and parameters"),
        ],
        source=colours,
        online=True,
        description="Colour descriptor per product shot; request shot 0 for the main image.",
        tags={"kind": "content"},
    )
    text_features = FeatureView(
        name="text_features",
        entities=[product],
        ttl=CONTENT_TTL,
        schema=[
            Field(name="product_id", dtype=String),
            Field(name="token_ids", dtype=Array(Int32), description="0-padded token ids"),
            Field(name="n_tokens", dtype=Int32),
            Field(name="tfidf", dtype=Array(Float32), description="L2-normalised TF-IDF"),
            Field(name="vocab_version", dtype=String),
        ],
        source=texts,
        online=True,
        description="Title + description as token ids and TF-IDF.",
        tags={"kind": "content"},
    )
    product_features = FeatureView(
        name="product_features",
        entities=[product],
        ttl=PRODUCT_FEATURES_TTL,
        schema=[
            Field(name="product_id", dtype=String),
            Field(name="type_idx", dtype=Int32),
            Field(name="brand_idx", dtype=Int32),
            Field(name="division_idx", dtype=Int32),
            Field(name="log_price", dtype=Float64),
            Field(name="first_seen", dtype=UnixTimestamp),
            Field(name="recency_days", dtype=Float64),
            Field(name="popularity_7d", dtype=Int64),
            Field(name="popularity_30d", dtype=Int64),
            Field(name="popularity_90d", dtype=Int64),
        ],
        source=products,
        online=True,
        description="Metadata, price, recency and popularity as of each change.",
        tags={"kind": "timeseries"},
    )
    customer_history = FeatureView(
        name="customer_history",
        entities=[customer],
        ttl=CUSTOMER_HISTORY_TTL,
        schema=[
            Field(name="customer_id", dtype=String),
            Field(name="history", dtype=Array(String), description="most recent first"),
            Field(name="history_length", dtype=Int32),
        ],
        source=histories,
        online=True,
        description="The customer's last products as of each day they interacted.",
        tags={"kind": "timeseries"},
    )
    predicted_attributes = FeatureView(
        name="predicted_attributes",
        entities=[product],
        ttl=PREDICTED_ATTRIBUTES_TTL,
        schema=[
            Field(name="product_id", dtype=String),
            Field(
                name="attribute_vector",
                dtype=Array(Float32),
                description="every attribute's class probabilities end to end, in the model's "
                "attribute order; known labels one-hot, non-applicable attributes zeros",
            ),
            Field(
                name="attribute_values",
                dtype=Array(String),
                description="value per attribute ('' when none)",
            ),
            Field(name="model_version", dtype=String, description="model that encoded it"),
        ],
        source=attribute_vectors,
        online=True,
        description="Known and predicted attributes of a product as one vector.",
        tags={"kind": "prediction"},
    )
    item_vectors = FeatureView(
        name="item_vectors",
        entities=[product],
        ttl=ITEM_VECTORS_TTL,
        schema=[
            Field(name="product_id", dtype=String),
            Field(
                name="vector",
                dtype=Array(Float32),
                description="k floats, dot-product space (not unit norm); zeros when the "
                "model cannot represent the product",
            ),
            Field(name="variant", dtype=String, description="cf, content or hybrid"),
            Field(name="model_version", dtype=String, description="model that computed it"),
        ],
        source=item_vector_rows,
        online=True,
        description="The champion recommender's item vector of every product.",
        tags={"kind": "prediction"},
    )

    attributes_v1 = FeatureService(
        name="attributes_v1",
        features=[
            image_embedding[["embedding"]],
            text_features[["token_ids"]],
            product_features[["type_idx", "brand_idx", "division_idx"]],
        ],
        description="Inputs of the multi-task attribute model (version 1).",
        tags={"model": "attributes", "version": "1"},
    )
    # Version 2 adds the garment's colour (attributes_v1 stays as it was: model bundles trained
    # on it record its name and are served with it).
    attributes_v2 = FeatureService(
        name="attributes_v2",
        features=[
            image_embedding[["embedding"]],
            colour_features[["colour"]],
            text_features[["token_ids"]],
            product_features[["type_idx", "brand_idx", "division_idx"]],
        ],
        description="Inputs of the multi-task attribute model (version 2: v1 plus colour).",
        tags={"model": "attributes", "version": "2"},
    )
    recommender_v1 = FeatureService(
        name="recommender_v1",
        features=[
            product_features[
                [
                    "type_idx",
                    "brand_idx",
                    "division_idx",
                    "log_price",
                    "recency_days",
                    "popularity_7d",
                    "popularity_30d",
                    "popularity_90d",
                ]
            ],
            text_features[["tfidf"]],
            image_embedding[["embedding"]],
            customer_history[["history", "history_length"]],
        ],
        description="Item and user features of the hybrid recommender (version 1).",
        tags={"model": "recommender", "version": "1"},
    )
    predicted_attributes_v1 = FeatureService(
        name="predicted_attributes_v1",
        features=[predicted_attributes[["attribute_vector", "attribute_values", "model_version"]]],
        description="The champion attribute model's output per product (version 1).",
        tags={"model": "attributes", "version": "1"},
    )
    serving_v1 = FeatureService(
        name="serving_v1",
        features=[
            item_vectors[["vector"]],
            customer_history[["history"]],
        ],
        description="Online recommendation (version 1): a customer's vector is the mean of the "
        "item vectors of their history; scores are dot products with every item vector.",
        tags={"model": "recommender", "version": "1"},
    )
    return {
        "product": product,
        "shot": shot,
        "customer": customer,
        "image_embeddings_source": images,
        "colour_features_source": colours,
        "text_features_source": texts,
        "product_features_source": products,
        "customer_history_source": histories,
        "attribute_vectors_source": attribute_vectors,
        "item_vectors_source": item_vector_rows,
        "image_embedding": image_embedding,
        "colour_features": colour_features,
        "text_features": text_features,
        "product_features": product_features,
        "customer_history": customer_history,
        "predicted_attributes": predicted_attributes,
        "item_vectors": item_vectors,
        "attributes_v1": attributes_v1,
        "attributes_v2": attributes_v2,
        "recommender_v1": recommender_v1,
        "predicted_attributes_v1": predicted_attributes_v1,
        "serving_v1": serving_v1,
    }
