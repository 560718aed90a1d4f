"""One typed settings object for every stage.

Sources, lowest to highest priority: defaults, an optional `atelier.yaml` (in the current
directory, or named by `ATELIER_CONFIG`), `ATELIER_*` environment variables (nested fields with
`__`, e.g. `ATELIER_SPARK__MASTER=local[2]`), then CLI flags. Built once at the entry point and
passed down; nothing here runs at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class SparkSettings(BaseModel):
    """How jobs get their SparkSession."""

    master: str = "local[*]"
    app_name: str = "atelier"
    driver_memory: str = "4g"
    shuffle_partitions: int = Field(8, ge=1)
    # Delta jars for the cluster path. With network:
    #   packages=["io.delta:delta-spark_4.2_2.13:4.4.1"]
    # offline, local files:
    #   jars=["/opt/jars/delta-spark_4.2_2.13-4.4.1.jar", "/opt/jars/delta-storage-4.4.1.jar"]
    packages: list[str] = Field(default_factory=list)
    jars: list[str] = Field(default_factory=list)
    # Extra `spark.*` options passed through verbatim.
    conf: dict[str, str] = Field(default_factory=dict)
    # GPU executors (embed, predict, item vectors on GPU workers): GPUs per executor (0: none)
    # and per task. task_gpus 1 runs one task, hence one model, per GPU at a time. The workers
    # must offer GPUs (standalone: spark.worker.resource.gpu.amount and a discovery script);
    # `gpu_discovery_script` is the executors' (default: none, the cluster's own setting).
    executor_gpus: int = Field(0, ge=0)
    task_gpus: float = Field(1.0, gt=0.0)
    gpu_discovery_script: str = ""


class LakeSettings(BaseModel):
    """How Spark DataFrames reach the lake when delta-spark's jars are not configured."""

    # "executors": executors write a merge's Parquet files in parallel and the driver commits
    # them to the Delta log with delta-rs (atelier/lake_spark.py); reads scan the published
    # snapshot's files on the executors. "driver": every row is collected to the driver as
    # Arrow and written by delta-rs there. "auto": executors on a cluster master, the driver
    # under local[*] (one machine: the driver path is 1.6-4x faster there, and the driver's
    # memory is the machine's; benchmarks/results/lake-writes.md).
    spark_io: Literal["auto", "executors", "driver"] = "auto"


class GateSettings(BaseModel):
    """Bounds of the table-level quality gates."""

    # A table whose share of quarantined rows exceeds this is not published.
    max_quarantine_fraction: float = Field(0.2, ge=0.0, le=1.0)
    # Row-count band of each table's incoming batch (GX expect_table_row_count_to_be_between).
    min_rows: dict[str, int] = Field(
        default_factory=lambda: {"products": 1, "product_images": 1, "product_labels": 0}
    )
    max_rows: int = Field(2_000_000_000, ge=1)
    build_data_docs: bool = True


class EmbedSettings(BaseModel):
    """Image embeddings (VGG16 without its top, last conv block, global max-pool)."""

    # "imagenet" (Keras' download cache), a path to a local VGG16 no-top weights file, or
    # "random" (seeded random weights by name, e.g. to reproduce a model trained on them).
    weights: str = "imagenet"
    # Seeded random weights when no real weights exist: only when explicitly allowed.
    allow_random_weights: bool = False
    random_seed: int = 20181
    # "native": each image's own size, padded up to a multiple of 32; "224": the paper's 224x224.
    input_size: Literal["native", "224"] = "native"
    batch_size: int = Field(16, ge=1)
    # TensorFlow threads per Spark worker: workers x threads should not exceed the cores.
    tf_threads: int = Field(1, ge=1)
    partitions: int = Field(2, ge=1)
    # At most this many pending shots per run (None: all), in (product_id, shot) order: a long
    # backfill in slices, each published on its own; the next run takes the following slice.
    max_images: int | None = Field(None, ge=1)
    # Pending shots are embedded and committed in chunks of this many, in (product_id, shot)
    # order: a killed backfill loses at most one chunk and the rerun continues after the last
    # committed one (~5 minutes of VGG16 on 2 cores).
    chunk_images: int = Field(2000, ge=1)


class IngestSettings(BaseModel):
    """What an ingest run may change beyond upserts."""

    # True: the source is the whole catalogue of its layout, so a product missing from it is
    # tombstoned (never recommended, purchases kept), and a listed product's labels and images
    # missing from the source are deleted. Off by default: a folder holding only new or
    # changed products (an increment) would otherwise delete the rest of the catalogue.
    deletes: bool = False


class TextSettings(BaseModel):
    """Text features: vocabulary, token-id sequences and TF-IDF."""

    min_count: int = Field(2, ge=1)
    max_vocab: int = Field(20_000, ge=10)
    sequence_length: int = Field(48, ge=4)
    tfidf_dim: int = Field(1024, ge=8)


class ProductFeatureSettings(BaseModel):
    """Metadata and customer-history features."""

    popularity_windows_days: list[int] = Field(default_factory=lambda: [7, 30, 90])
    history_length: int = Field(20, ge=1)


class FeastSettings(BaseModel):
    """Feast profile: `embedded` (duckdb, sqlite, file registry) or `scale` (Spark, Redis, SQL)."""

    profile: Literal["embedded", "scale"] = "embedded"
    project: str = "atelier"
    redis: str = "localhost:6379"
    registry_url: str = "postgresql+psycopg://feast@localhost:5432/feast"
    online_sqlite: str = ""  # default: <workdir>/feast/online.db


class AttributeModelSettings(BaseModel):
    """Layer sizes of the attribute network (models.attributes.model.AttributeModelConfig)."""

    token_embedding_dim: int = Field(64, ge=1)
    text_filters: int = Field(128, ge=1)
    text_units: int = Field(128, ge=1)
    type_embedding_dim: int = Field(16, ge=1)
    brand_embedding_dim: int = Field(16, ge=1)
    division_embedding_dim: int = Field(8, ge=1)
    image_units: int = Field(128, ge=1)
    attention_units: int = Field(64, ge=1)
    fusion_units: int = Field(256, ge=1)
    trunk_units: list[int] = Field(default_factory=lambda: [256])
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    # The colour descriptor's path (used when the feature service has colour).
    colour_units: int = Field(32, ge=1)
    # A linear bag-of-words path to every head beside the text CNN; `wide_scale` raises its
    # effective SGD rate (scale²) since each word's row sees few updates.
    wide_text: bool = True
    wide_scale: float = Field(4.0, gt=0.0)


class AttributeSettings(BaseModel):
    """Training the multi-task attribute model the paper's way (plain SGD, round robin)."""

    feature_service: str = "attributes_v2"
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.01, gt=0.0)
    # Inverse-frequency class weights per head (mean 1), as the paper's optional loss weights.
    loss_weights: bool = False
    # Values with fewer training samples are grouped into "other" (or dropped); paper: 500.
    min_value_count: int = Field(20, ge=1)
    # An attribute applies to a product type when at least this share of the type is labelled.
    applicability_min_fraction: float = Field(0.05, gt=0.0, le=1.0)
    # Share of products held out for evaluation (by product, seeded).
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # Share of the other products kept out of training to pick the checkpoint (by product,
    # seeded, independent of the test split): choices are made here, never on the test.
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    # Validation weighted F1 is measured every `eval_every` steps; a head whose F1 has not
    # improved for `patience` measurements stops training (0: never), and the weights of the
    # best mean validation F1 are kept.
    patience: int = Field(4, ge=0)
    # Decoupled weight decay of the variables each SGD step updates (0: none).
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0)
    # Training labels hidden per attribute when the catalogue's labels are complete, so the
    # missing-label path is exercised (the paper's dresses miss ~70%). "auto": only then.
    hide_label_fraction: float = Field(0.7, ge=0.0, lt=1.0)
    hide_labels: Literal["auto", "always", "never"] = "auto"
    # Image shots per product fed to the shot merge (shot 0 is the main image).
    max_shots: int = Field(4, ge=1)
    # Train/test weighted F1 is measured this often for the learning curves (Figure 3).
    eval_every: int = Field(250, ge=1)
    # Figure 5 ablations (no image / no text / no metadata) and the TF-IDF + LR baseline.
    ablations: bool = True
    baseline: bool = True
    model: AttributeModelSettings = Field(default_factory=AttributeModelSettings)


class RecommenderSettings(BaseModel):
    """The hybrid recommender (paper Section 3) and its temporal evaluation."""

    feature_service: str = "recommender_v1"
    # Item tower: k match coordinates (+ the item bias); the content network's hidden layers.
    k: int = Field(200, ge=1)
    hidden_units: list[int] = Field(default_factory=lambda: [256])
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Adam: per-coordinate normalised steps train the CF rows (Adagrad with a batch-mean loss
    # moved them ~2e-6 per step on H&M: CF never trained).
    optimizer: Literal["adagrad", "adam"] = "adam"
    learning_rate: float = Field(0.004, gt=0.0)
    # Weight of the squared norm of the batch's CF rows and biases (the shared prior).
    l2: float = Field(1e-4, ge=0.0)
    # WMRB: |Z| uniform negatives, plus the batch's other positives with "mixed".
    n_negatives: int = Field(100, ge=1)
    negatives: Literal["uniform", "mixed"] = "mixed"
    batch_size: int = Field(512, ge=1)
    # Up to `epochs`, early stopping on the validation window's loss (`patience` epochs). On
    # H&M the validation loss bottoms out after 2-3 epochs while the training loss keeps
    # falling (benchmarks/results/recommender.md).
    epochs: int = Field(30, ge=1)
    patience: int = Field(2, ge=1)
    # Time-based validation: the last `validation_days` before train_end validate a model
    # trained on what comes before; it picks the epoch, calibrates the blend; with `refit` the
    # model is then retrained on everything up to train_end for that many epochs.
    validation_days: int = Field(30, ge=1)
    refit: bool = True
    # Training examples: "rolling" (every purchase with `min_history` earlier distinct products)
    # or "last_month" (the paper: the positives of the last `positive_days` only). A customer is
    # represented by their `n_recent` most recent distinct products, everywhere.
    scheme: Literal["rolling", "last_month"] = "rolling"
    positive_days: int = Field(30, ge=1)
    n_recent: int = Field(5, ge=1)
    min_history: int = Field(1, ge=1)
    # Training window: the last `train_days` up to train_end (None: all history).
    train_days: int | None = Field(None, ge=1)
    # Test period: (train_end, train_end + test_days]; N seeded runs per learned variant.
    test_days: int = Field(30, ge=1)
    runs: int = Field(1, ge=1)
    # Popularity baseline: most bought in the last `popularity_days` of the window.
    popularity_days: int = Field(30, ge=1)
    # Default mode of serving and `atelier evaluate recommender` lists: False = all products
    # (the paper's protocol), True = new to the customer (their purchases excluded).
    exclude_seen: bool = False
    # Calibrate the blend of rebuys and new products on the validation window.
    blend: bool = True


class PredictSettings(BaseModel):
    """Batch attribute prediction (spark_jobs/predict_attributes.py)."""

    # Minimum confidence per attribute for a predicted value to fill a gap; "*" sets every
    # attribute without its own. Below it the gap stays empty (the row is kept as
    # "below_confidence"). Pick values from the training report's confidence thresholds.
    min_confidence: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=dict)


class ServingSettings(BaseModel):
    """The HTTP API's operations side."""

    # Bearer token for /admin/* (ATELIER_SERVING__ADMIN_TOKEN). Without one, admin endpoints
    # answer loopback clients only (behind a proxy on the same host, set a token).
    admin_token: SecretStr | None = None
    # Admin reloads rebuild the whole state: at most one per this many seconds (429 else).
    reload_min_interval_s: float = Field(5.0, ge=0.0)
    # Deadline of one online-store read: past it the request falls back to popularity and the
    # store is left alone for a few seconds (a Redis outage costs one deadline, not minutes).
    online_timeout_s: float = Field(1.0, gt=0.0)


class MlflowSettings(BaseModel):
    """Tracking and registry; empty URIs mean the embedded sqlite store under the workdir."""

    tracking_uri: str = ""
    registry_uri: str = ""
    experiment: str = "atelier"
    attributes_model: str = "atelier-attributes"
    recommender_model: str = "atelier-recommender"


class Settings(BaseSettings):
    """Everything a run needs; every artefact lives under `workdir`."""

    model_config = SettingsConfigDict(
        env_prefix="ATELIER_", env_nested_delimiter="__", extra="forbid"
    )

    workdir: Path = Path("workspace")
    seed: int = 20181
    spark: SparkSettings = Field(default_factory=SparkSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    # Layout configs (inputs vs target attributes); defaults ship inside the package.
    layouts_dir: Path | None = None
    # Image checks decode every file; bound the parallelism of that step.
    image_check_partitions: int = Field(8, ge=1)
    # Larger images are quarantined at ingest: VGG16 on a native-size 144-megapixel image needs
    # ~37 GB for its first conv layer. 40 MP is well above any product photo.
    max_image_pixels: int = Field(40_000_000, ge=1)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    text: TextSettings = Field(default_factory=TextSettings)
    product_features: ProductFeatureSettings = Field(default_factory=ProductFeatureSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)
    attributes: AttributeSettings = Field(default_factory=AttributeSettings)
    recommender: RecommenderSettings = Field(default_factory=RecommenderSettings)
    predict: PredictSettings = Field(default_factory=PredictSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        # Absolute paths: duckdb and Spark workers resolve relative paths elsewhere.
        return Path(v).expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        from pydantic_settings import YamlConfigSettingsSource

        yaml_file = os.environ.get("ATELIER_CONFIG", "atelier.yaml")
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file),
        )

    # Paths: the only places that know the workdir layout.
    @property
    def lake_dir(self) -> Path:
        return self.workdir / "lake"

    @property
    def reports_dir(self) -> Path:
        return self.workdir / "reports"

    @property
    def gx_dir(self) -> Path:
        return self.workdir / "gx"

    @property
    def feast_dir(self) -> Path:
        return self.workdir / "feast"

    @property
    def mlflow_dir(self) -> Path:
        return self.workdir / "mlflow"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI: the setting, else sqlite under `mlflow_dir`."""
        return self.mlflow.tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        """MLflow registry URI: the setting, else the tracking URI."""
        return self.mlflow.registry_uri or self.tracking_uri

    @property
    def artifacts_dir(self) -> Path:
        """Where the embedded MLflow store keeps run artifacts."""
        return self.mlflow_dir / "artifacts"


def load_settings(**overrides: Any) -> Settings:
    """Build settings; `overrides` (CLI flags) win over env and yaml. None values are ignored."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
