"""Embed product images: VGG16 without its top, last conv block, global max-pool, 512 floats.

    spark-submit spark_jobs/embed.py [--workdir W] [--allow-random-weights]
    atelier --workdir W embed                                  # the same job

Every shot of `product_images` not yet embedded with the same content hash, weights and input
size is run through the network inside Spark (`mapInPandas`, one model per Python worker) and
merged into `image_embeddings` by (product_id, shot). A rerun on an unchanged catalogue embeds
nothing and commits no new Delta version. Images that are missing, do not decode or no longer
match their recorded hash are quarantined with the reason; the others are published.

Weights: `embed.weights` is "imagenet" (used only when Keras' cache already holds the no-top
file: nothing is downloaded), a path to a local weights file, or "random" (seeded random
weights, e.g. to reproduce a dry run). Without real weights the job stops, unless seeded random
weights are explicitly allowed; those are recorded as `random:<seed>`.

Input: each image as RGB floats in 0..255, fed to `keras.applications.vgg16.preprocess_input`
("caffe" mode: RGB -> BGR, ImageNet mean subtracted, no scaling), the preprocessing the
original VGG16 weights were trained with; tests/integration/test_embed_reference.py checks it
against a stored reference vector.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atelier.locks import locked
from expectations.gate import GateFailure
from spark_jobs.common import (
    ShotRunCounts,
    add_counts,
    finish_shot_run,
    job_parser,
    new_run_id,
    partition_id,
    process_pending,
    quarantine_shots,
    read_checked_image,
    run_job,
    with_event_us,
    worker_log,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

    from atelier.lake import Lake
    from atelier.settings import EmbedSettings, Settings

log = logging.getLogger("atelier.embed")

EMBEDDING_DIM = 512
# Keras' own cache name and md5 for VGG16 no-top ImageNet weights (keras.applications.vgg16).
KERAS_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"
# RGB mean that `vgg16.preprocess_input` ("caffe" mode) subtracts: padding with it becomes 0.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
PAPER_SIZE = 224
# VGG16 halves the resolution five times: multiples of 32 keep every pooling window whole.
STRIDE = 32
INPUT_MODES = ("native", "224")
WEIGHT_SUFFIXES = (".h5", ".hdf5", ".keras")


class EmbedError(RuntimeError):
    """The job cannot run at all (no weights, no catalogue); nothing was written."""


class WeightsUnavailable(EmbedError):
    """No usable VGG16 weights and random weights were not allowed."""


@dataclass(frozen=True)
class WeightsSpec:
    """Which weights the workers load: `id` is what the table records."""

    id: str  # 'imagenet', 'file:<sha256[:12]>' or 'random:<seed>'
    path: str | None = None  # file to load; None for random weights
    seed: int | None = None  # for random weights only


@dataclass
class EmbedReport(ShotRunCounts):
    run_id: str
    weights: str
    input_size: str
    started_at: str
    embedded: int = 0
    embed_seconds: float = 0.0  # the Spark stage that decodes and embeds


# ---------------------------------------------------------------------------------------------
# Weights (driver side: files only, no TensorFlow)
# ---------------------------------------------------------------------------------------------
def keras_cache_candidates() -> list[Path]:
    """Where `keras.utils.get_file` keeps the VGG16 no-top file, in Keras' order of preference."""
    home = os.environ.get("KERAS_HOME")
    bases = [Path(home)] if home else []
    bases += [Path.home() / ".keras", Path("/tmp/.keras")]
    out: list[Path] = []
    for b in bases:
        p = b.expanduser() / "models" / KERAS_NOTOP_FILE
        if p not in out:
            out.append(p)
    return out


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# (input channels, filters) of VGG16's 13 convolutions, block by block (3x3 kernels).
VGG16_CONVS = {
    "block1_conv1": (3, 64),
    "block1_conv2": (64, 64),
    "block2_conv1": (64, 128),
    "block2_conv2": (128, 128),
    "block3_conv1": (128, 256),
    "block3_conv2": (256, 256),
    "block3_conv3": (256, 256),
    "block4_conv1": (256, 512),
    "block4_conv2": (512, 512),
    "block4_conv3": (512, 512),
    "block5_conv1": (512, 512),
    "block5_conv2": (512, 512),
    "block5_conv3": (512, 512),
}


def notop_file_problem(path: Path) -> str | None:
    """Why `path` is not a complete legacy-HDF5 VGG16 no-top weights file, or None when it is.

    Reads every kernel and bias (a truncated download fails here), with h5py: no TensorFlow.
    """
    import h5py
    import numpy as np

    try:
        with h5py.File(path, "r") as f:
            for layer, (cin, cout) in VGG16_CONVS.items():
                if layer not in f:
                    return f"no layer {layer}"
                group = f[layer]
                names = [
                    n.decode() if isinstance(n, bytes) else str(n)
                    for n in group.attrs.get("weight_names", [])
                ]
                shapes = sorted((group[n].shape for n in names), key=len)
                if shapes != [(cout,), (3, 3, cin, cout)]:
                    return f"{layer} holds {shapes}, not [({cout},), (3, 3, {cin}, {cout})]"
                if not all(np.isfinite(group[n][()]).all() for n in names):
                    return f"{layer} holds non-finite values"
    except Exception as e:  # h5py raises OSError, KeyError, ValueError... for broken files
        return f"{type(e).__name__}: {e}"
    return None


def resolve_weights(embed: EmbedSettings) -> WeightsSpec:
    """The weights this run uses, checked on the driver before Spark starts.

    Raises WeightsUnavailable, naming the ways out, when neither Keras' cached ImageNet file
    nor the configured file exists and `embed.allow_random_weights` is off.
    """
    problem: str
    if embed.weights == "random":  # asked for by name: no fallback, nothing to allow
        return WeightsSpec(f"random:{embed.random_seed}", seed=embed.random_seed)
    if embed.weights == "imagenet":
        candidates = keras_cache_candidates()
        found = next((p for p in candidates if p.is_file()), None)
        if found is not None and _digest(found, "md5") == KERAS_NOTOP_MD5:
            return WeightsSpec("imagenet", str(found))
        # The same weights saved by another tool differ in bytes, not in values: a complete
        # VGG16 no-top file placed in the cache by hand is used, a partial download is not.
        broken = notop_file_problem(found) if found is not None else None
        if found is not None and broken is None:
            log.info(
                "%s: md5 differs from Keras' download, but it holds complete VGG16 "
                "no-top weights; using it as 'imagenet'",
                found,
            )
            return WeightsSpec("imagenet", str(found))
        if found is not None:
            problem = (
                f"{found} is incomplete or corrupt ({broken}; md5 differs from Keras' "
                f"{KERAS_NOTOP_MD5}); delete it and fetch it again"
            )
        else:
            problem = (
                f"embed.weights='imagenet' but Keras' cache holds no {KERAS_NOTOP_FILE} "
                f"(looked in {', '.join(str(p.parent) for p in candidates)}) and it is never "
                "downloaded by this job"
            )
    else:
        path = Path(embed.weights).expanduser()
        if not path.is_file():
            problem = f"embed.weights={embed.weights!r} is not a file"
        elif not path.name.endswith(WEIGHT_SUFFIXES):
            problem = (
                f"embed.weights={embed.weights!r}: Keras loads VGG16 weights from "
                f"{', '.join(WEIGHT_SUFFIXES)} files only"
            )
        else:
            return WeightsSpec(f"file:{_digest(path, 'sha256')[:12]}", str(path.resolve()))
    if embed.allow_random_weights:
        log.warning(
            "%s; using seeded random weights (seed %d): embeddings carry no visual meaning",
            problem,
            embed.random_seed,
        )
        return WeightsSpec(f"random:{embed.random_seed}", seed=embed.random_seed)
    raise WeightsUnavailable(
        f"no VGG16 weights: {problem}.\nEither:\n"
        f"  1. where there is network, run `keras.applications.VGG16(include_top=False, "
        f"weights='imagenet')` once and copy ~/.keras/models/{KERAS_NOTOP_FILE} into "
        f"{keras_cache_candidates()[0].parent}/ here;\n"
        "  2. point embed.weights at a local VGG16 no-top weights file (.h5/.keras), e.g. "
        "ATELIER_EMBED__WEIGHTS=/data/vgg16_notop.h5;\n"
        "  3. for a dry run, allow seeded random weights: --allow-random-weights or "
        "ATELIER_EMBED__ALLOW_RANDOM_WEIGHTS=true (recorded as weights='random:<seed>')."
    )


def allow_random_weights(settings: Settings) -> Settings:
    """A copy of `settings` with seeded random weights allowed (`--allow-random-weights`)."""
    embed = settings.embed.model_copy(update={"allow_random_weights": True})
    return settings.model_copy(update={"embed": embed})


# ---------------------------------------------------------------------------------------------
# Pure image functions (numpy / PIL)
# ---------------------------------------------------------------------------------------------
def input_size(height: int, width: int, mode: str) -> tuple[int, int]:
    """(H, W) fed to the network: "native" pads each side up to a multiple of 32, "224" is
    the paper's 224x224."""
    if mode == "native":
        return -(-int(height) // STRIDE) * STRIDE, -(-int(width) // STRIDE) * STRIDE
    if mode == "224":
        return PAPER_SIZE, PAPER_SIZE
    raise ValueError(f"input size mode must be one of {INPUT_MODES}, got {mode!r}")


def fit_image(rgb: np.ndarray, mode: str) -> np.ndarray:
    """(h, w, 3) uint8 RGB -> (H, W, 3) float32 RGB, ready for `vgg16.preprocess_input`.

    "native": centred on a canvas of the ImageNet mean colour (0 after preprocessing), never
    scaled. "224": resized (bilinear) to 224x224.
    """
    import numpy as np

    h, w = rgb.shape[:2]
    H, W = input_size(h, w, mode)
    if mode == "224":
        from PIL import Image

        resized = Image.fromarray(rgb).resize((W, H), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.float32)
    out = np.empty((H, W, 3), dtype=np.float32)
    out[:] = IMAGENET_MEAN_RGB
    top, left = (H - h) // 2, (W - w) // 2
    out[top : top + h, left : left + w] = rgb
    return out


def batch_plan(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Row indices in batches: consecutive rows of equal (H, W), at most `batch_size` each.

    Inputs larger than 224x224 get proportionally fewer rows, so a batch never holds more
    pixels than `batch_size` paper-sized images (full-resolution packshots would not fit).
    """
    out: list[list[int]] = []
    start = 0
    for i in range(1, len(sizes) + 1):
        if i < len(sizes) and sizes[i] == sizes[start]:
            continue
        h, w = sizes[start]
        limit = max(1, min(batch_size, batch_size * PAPER_SIZE * PAPER_SIZE // (h * w)))
        out.extend(list(range(s, min(s + limit, i))) for s in range(start, i, limit))
        start = i
    return out


def load_image(
    path: str, content_hash: str, mode: str
) -> tuple[np.ndarray | None, str | None, str | None]:
    """(network input, None, None), or (None, reason, detail) when the file cannot be used
    (`common.read_checked_image`'s reasons)."""
    rgb, reason, detail = read_checked_image(path, content_hash, decode_rgb)
    return (None, reason, detail) if rgb is None else (fit_image(rgb, mode), None, None)


def decode_rgb(data: bytes) -> np.ndarray:
    """Image file bytes -> (h, w, 3) uint8 RGB, decoded fully (a truncated file raises)."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()  # full decode: a truncated file fails here, not at open
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Worker side: one model per Python worker
# ---------------------------------------------------------------------------------------------
# Lives in this (installed) module, so a reused Spark Python worker builds each model once.
_MODELS: dict[tuple[str, int | None], Any] = {}


def configure_tensorflow(threads: int) -> None:
    """Bound TensorFlow's threads and quieten its logs; before TensorFlow's first use. On a
    GPU executor, pin this worker's TensorFlow to the GPU Spark gave the task: one model per
    GPU (a reused worker keeps the GPU of its first task)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pyspark import TaskContext

    from atelier.spark import task_gpu

    context = TaskContext.get()
    gpu = task_gpu(context.resources() if context is not None else None)
    if gpu is not None and "tensorflow" not in sys.modules:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        worker_log("embed", f"TensorFlow on GPU {gpu}")
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    # VGG16 is a chain of ops: inter-op parallelism buys nothing, so one thread.
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        # Several workers may share a GPU: each takes memory as it needs it, not all of it.
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # another job already ran TensorFlow in this worker
        worker_log(
            "embed",
            f"TensorFlow already initialised here; keeping its threads "
            f"({tf.config.threading.get_intra_op_parallelism_threads()} intra-op)",
        )


def build_model(spec: WeightsSpec):
    """VGG16 without its top, global max-pooled (any input size -> 512 floats).

    Global max of block5_pool equals that of block5_conv3 when sizes are multiples of 32.
    Random weights reseed Keras first, so every process builds identical weights.
    """
    import keras

    weights: str | None = None
    if spec.seed is not None:
        keras.utils.set_random_seed(spec.seed)
    else:
        weights = spec.path
        if spec.id == "imagenet" and not (weights and os.path.isfile(weights)):
            # A worker on another machine: its own Keras cache, never a download.
            weights = next((str(p) for p in keras_cache_candidates() if p.is_file()), None)
        if not (weights and os.path.isfile(weights)):
            raise WeightsUnavailable(f"weights {spec.id} not found on this worker: {weights}")
    return keras.applications.VGG16(
        include_top=False, weights=weights, input_shape=(None, None, 3), pooling="max"
    )


def worker_model(spec: WeightsSpec, threads: int):
    """The worker's cached model for `spec`, built on first use."""
    key = (spec.id, spec.seed)
    if key not in _MODELS:
        t0 = time.time()
        configure_tensorflow(threads)
        _MODELS[key] = build_model(spec)
        worker_log(
            "embed", f"model {spec.id} built in {time.time() - t0:.1f}s ({threads} TF threads)"
        )
    return _MODELS[key]


EMBEDDED_SCHEMA = (
    "product_id STRING, shot INT, path STRING, content_hash STRING, input_size STRING, "
    "embedding ARRAY<FLOAT>, _event_us BIGINT, _reason STRING, _detail STRING"
)
_OUT_COLUMNS = [c.split()[0] for c in EMBEDDED_SCHEMA.split(", ")]


def embed_partition(
    batches: Iterator[pd.DataFrame], spec: WeightsSpec, mode: str, batch_size: int, threads: int
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: pending rows -> EMBEDDED_SCHEMA rows, one output frame per batch.

    Rows are sorted by input size then key, so the batches (and the float results) depend
    only on which rows the partition holds.
    """
    import numpy as np
    import pandas as pd

    frames = [b for b in batches if len(b)]
    if not frames:
        return
    rows = pd.concat(frames, ignore_index=True)
    sizes = [input_size(h, w, mode) for h, w in zip(rows["height"], rows["width"])]
    rows["_h"], rows["_w"] = [s[0] for s in sizes], [s[1] for s in sizes]
    rows = rows.sort_values(["_h", "_w", "product_id", "shot"], ignore_index=True)
    plan = batch_plan(list(zip(rows["_h"], rows["_w"])), batch_size)
    part = partition_id()
    worker_log("embed", f"partition {part}: {len(rows)} images in {len(plan)} batches")
    t0 = time.time()
    done = 0
    for i, idx in enumerate(plan, 1):
        chunk = rows.iloc[idx]
        out: list[dict] = []
        by_shape: dict[tuple, list[tuple[dict, np.ndarray]]] = {}
        for r in chunk.to_dict("records"):
            x, reason, detail = load_image(r["path"], r["content_hash"], mode)
            row = {c: r.get(c) for c in _OUT_COLUMNS}
            row.update(embedding=None, _reason=reason, _detail=detail)
            if x is not None:
                row["input_size"] = f"{x.shape[0]}x{x.shape[1]}"
                # One shape per batch unless product_images' width/height disagree with a file.
                by_shape.setdefault(x.shape, []).append((row, x))
            out.append(row)
        good = sum(len(m) for m in by_shape.values())
        if good:
            # The model first: it configures TensorFlow before anything imports it.
            model = worker_model(spec, threads)  # lazily: a batch of bad files builds nothing
            from keras.applications.vgg16 import preprocess_input

            for members in by_shape.values():
                batch = preprocess_input(np.stack([x for _, x in members]))
                feats = np.asarray(model(batch, training=False), dtype=np.float32)
                for (row, _), f in zip(members, feats):
                    row["embedding"] = f
        done += good
        worker_log(
            "embed",
            f"partition {part}: batch {i}/{len(plan)} ({len(chunk)} at "
            f"{chunk['_h'].iat[0]}x{chunk['_w'].iat[0]}, {len(chunk) - good} bad), "
            f"{done} embedded in {time.time() - t0:.1f}s",
        )
        yield pd.DataFrame(out, columns=_OUT_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Pure Spark transforms (DataFrame -> DataFrame)
# ---------------------------------------------------------------------------------------------
def input_size_column(mode: str) -> Column:
    """Spark twin of `input_size` over product_images' height/width, as "HxW"."""
    from pyspark.sql import functions as F

    if mode == "224":
        return F.lit(f"{PAPER_SIZE}x{PAPER_SIZE}")
    if mode != "native":
        raise ValueError(f"input size mode must be one of {INPUT_MODES}, got {mode!r}")
    h, w = (F.expr(f"(({c} + {STRIDE - 1}) div {STRIDE}) * {STRIDE}") for c in ("height", "width"))
    return F.concat_ws("x", h.cast("string"), w.cast("string"))


def pending_images(
    images: DataFrame, products: DataFrame, existing: DataFrame, weights_id: str, mode: str
) -> DataFrame:
    """Shots of `images` with no embedding of the same content hash, weights and input size.

    images: product_images; products: product_id, first_seen; existing: image_embeddings'
    (product_id, shot, content_hash, weights, input_size). Adds `_event_us`: the product's
    first_seen in epoch microseconds, 0 (the epoch) when unknown or the product is absent.
    """
    from pyspark.sql import functions as F

    keys = ["product_id", "shot", "content_hash", "input_size"]
    todo = images.select(
        "product_id",
        "shot",
        "path",
        "content_hash",
        "width",
        "height",
        input_size_column(mode).alias("input_size"),
    ).join(existing.where(F.col("weights") == F.lit(weights_id)).select(*keys), keys, "left_anti")
    return with_event_us(todo, products)


def partition_for_embedding(pending: DataFrame, partitions: int) -> DataFrame:
    """Spread shots over `partitions` by key hash: the same catalogue always lands the same
    way, so batches (and float results) repeat exactly run to run."""
    return pending.repartition(partitions, "product_id", "shot")


def embed_images(pending: DataFrame, spec: WeightsSpec, embed: EmbedSettings) -> DataFrame:
    """pending_images rows -> EMBEDDED_SCHEMA rows (embedding or _reason), in the workers."""
    import functools

    body = functools.partial(
        embed_partition,
        spec=spec,
        mode=embed.input_size,
        batch_size=embed.batch_size,
        threads=embed.tf_threads,
    )
    return partition_for_embedding(pending, embed.partitions).mapInPandas(body, EMBEDDED_SCHEMA)


def embedding_rows(embedded: DataFrame, weights_id: str, now: datetime) -> DataFrame:
    """Good rows of `embed_images` in the image_embeddings contract; created_timestamp = now."""
    from pyspark.sql import functions as F

    from spark_jobs.common import timestamp_lit

    return embedded.where("_reason IS NULL").select(
        "product_id",
        "shot",
        "content_hash",
        F.lit(weights_id).alias("weights"),
        "input_size",
        "embedding",
        F.timestamp_micros("_event_us").alias("event_timestamp"),
        timestamp_lit(now).alias("created_timestamp"),
    )


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
@locked("embed")
def run_embed(
    settings: Settings, spark: SparkSession | None = None, now: datetime | None = None
) -> dict:
    """Embed every pending product shot into `image_embeddings`; returns the report as a dict.

    now: created_timestamp of new rows (default: the current UTC time). event_timestamp is the
    product's first_seen, or 1970-01-01 UTC when unknown. Raises WeightsUnavailable (before
    Spark starts) and EmbedError when there is nothing to read, GateFailure when the batch
    fails its quality gate (quarantine is still recorded then).
    """
    from atelier.lake import Lake
    from atelier.spark import get_spark

    t0 = time.time()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    embed = settings.embed
    spec = resolve_weights(embed)
    run_id = new_run_id(now)
    report = EmbedReport(run_id, spec.id, embed.input_size, now.isoformat())
    if not Lake(settings).exists("product_images"):
        raise EmbedError(f"no product_images table in {settings.lake_dir}: run ingest first")
    spark = spark or get_spark(settings)
    lake = Lake(settings, spark)
    log.info("weights %s, input %s, batch %d", spec.id, embed.input_size, embed.batch_size)

    images = lake.read_spark("product_images")
    pending = pending_images(
        images,
        lake.read_spark("products", ["product_id", "first_seen"]),
        lake.read_spark(
            "image_embeddings", ["product_id", "shot", "content_hash", "weights", "input_size"]
        ),
        spec.id,
        embed.input_size,
    ).cache()
    report.images = images.count()
    n_pending = pending.count()
    report.skipped = report.images - n_pending
    log.info(
        "%d shots in the catalogue: %d already embedded, %d to embed in %d partitions",
        report.images,
        report.skipped,
        n_pending,
        embed.partitions,
    )
    process_pending(
        pending,
        n_pending,
        embed.max_images,
        embed.chunk_images,
        report,
        lambda chunk: _embed_and_publish(settings, lake, chunk, spec, run_id, now, report, t0),
        "embed",
    )
    report.version = lake.version("image_embeddings")
    return finish_shot_run(settings, "embed", report, t0, True, "embedded")


def _embed_and_publish(
    settings: Settings,
    lake: Lake,
    pending: DataFrame,
    spec: WeightsSpec,
    run_id: str,
    now: datetime,
    report: EmbedReport,
    t0: float,
) -> None:
    """Embed `pending` (one chunk) in the workers, record quarantine, gate and merge the
    embeddings; adds its counts to `report`."""
    from pyspark.sql import functions as F

    from atelier.contracts import contract

    t1 = time.time()
    embedded = embed_images(pending, spec, settings.embed).cache()
    try:
        by_reason = {
            r["_reason"]: r["n"]
            for r in embedded.groupBy("_reason").agg(F.count("*").alias("n")).collect()
        }
        seconds = time.time() - t1
        n_embedded = by_reason.pop(None, 0)
        report.embed_seconds = round(report.embed_seconds + seconds, 1)
        report.embedded += n_embedded
        report.quarantined = add_counts(report.quarantined, by_reason)
        report.images_per_second = round(report.embedded / max(report.embed_seconds, 1e-9), 2)
        log.info(
            "embedded %d, quarantined %d in %.1fs (%.2f images/s)",
            n_embedded,
            sum(by_reason.values()),
            seconds,
            n_embedded / max(seconds, 1e-9),
        )
        # Quarantine first, even when the gate fails: it is the evidence of what went wrong.
        if by_reason:
            quarantine_shots(lake, embedded, "image_embeddings", run_id, now, log)
        if not n_embedded:
            return
        c = contract("image_embeddings")
        rows = embedding_rows(embedded, spec.id, now)
        # Arrow for the gate (keeps NaN apart from null) and for delta-rs.
        arrow = rows.toArrow().select(c.column_names).cast(c.schema())
        report.failures = _gate(settings, lake, arrow, now)
        if report.failures:
            report.version = lake.version("image_embeddings")
            raise GateFailure(
                "image_embeddings gate",
                report.failures,
                finish_shot_run(settings, "embed", report, t0, False, "embedded"),
            )
        res = lake.merge("image_embeddings", rows if lake.uses_delta_spark else arrow)
        report.inserted += res.inserted
        report.updated += res.updated
    finally:
        embedded.unpersist()


def _gate(settings: Settings, lake: Lake, arrow: pa.Table, now: datetime) -> list[str]:
    """Failures of the image_embeddings suite on the batch (512 finite floats, known products)."""
    from expectations.gate import validate_table
    from expectations.suites import ListCheck

    products = lake.read_arrow("products", ["product_id"])["product_id"].to_pylist()
    result = validate_table(
        settings,
        "image_embeddings",
        arrow,
        row_count_band=(settings.gate.min_rows.get("image_embeddings", 0), settings.gate.max_rows),
        reference_values={"product_id": products},
        now=now,
        list_checks={"embedding": ListCheck(length=EMBEDDING_DIM, finite=True)},
    )
    return [] if result.success else list(result.failures)


def format_report(report: dict) -> str:
    """The run's counts as plain text (printed by the CLI and spark-submit)."""
    q = report["quarantined"]
    lines = [
        f"embed (run {report['run_id']}): weights {report['weights']}, "
        f"input size {report['input_size']}",
        f"images {report['images']}: embedded {report['embedded']}, skipped "
        f"{report['skipped']}, quarantined {sum(q.values())}"
        + (f", left for the next run {report['remaining']}" if report.get("remaining") else ""),
        f"committed in {report['chunks']} chunk(s)"
        + (
            f"; resumed after {report['skipped']} shots already embedded"
            if report["skipped"]
            else ""
        ),
        "quarantine by reason: "
        + (", ".join(f"{k}={v}" for k, v in sorted(q.items())) if q else "none"),
        f"image_embeddings: inserted {report['inserted']}, updated {report['updated']}, "
        f"version {'-' if report['version'] is None else report['version']}",
        f"{report['seconds']}s in all; embedding {report['embed_seconds']}s "
        f"({report['images_per_second']} images/s)",
        "published" if report["published"] else "NOT published: " + "; ".join(report["failures"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`spark-submit spark_jobs/embed.py [--workdir W] [--allow-random-weights]
    [--max-images N]`."""
    p = job_parser("embed.py", __doc__)
    p.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="use seeded random weights when no VGG16 weights are available (dry runs)",
    )
    p.add_argument(
        "--max-images",
        type=int,
        help="embed at most N pending shots (in product order); rerun to continue",
    )
    args = p.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        p.error("--max-images must be at least 1")

    def run(settings: Settings) -> dict:
        if args.allow_random_weights:
            settings = allow_random_weights(settings)
        if args.max_images is not None:
            settings.embed.max_images = args.max_images
        return run_embed(settings)

    return run_job(args.workdir, run, format_report, (EmbedError, ValueError))


if __name__ == "__main__":
    # Run the installed module rather than this file as __main__: Spark pickles __main__'s
    # functions by value, which would hand every task a fresh, empty model cache.
    from atelier.process import exit_now
    from spark_jobs.embed import main as _main

    exit_now(_main())
