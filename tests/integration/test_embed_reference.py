"""The embed job's VGG16 against a stored reference: the real ImageNet weights, the preprocessing
they were trained with, and the weights id the table records.

VGG16's ImageNet weights come from Caffe: they expect BGR pixels in 0..255 minus the ImageNet
mean (`keras.applications.vgg16.preprocess_input`, "caffe" mode), not RGB, [0, 1] or [-1, 1].
A drawn striped T-shirt (numpy only, so no image library can change it) is embedded by the job
and compared with the 512 floats stored in tests/fixtures/vgg16_reference.json; fed in RGB
order or without the mean it lands far from them, so a preprocessing change fails here.
Skipped without the real weights (../shared/models, see tests/conftest.py).

Regenerate the reference only when the weights or the drawing change on purpose:
    .venv/bin/python -m tests.integration.test_embed_reference
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import REPO, vgg16_weights_path

pytestmark = [pytest.mark.spark, pytest.mark.integration]

REFERENCE = REPO / "tests" / "fixtures" / "vgg16_reference.json"
NOW = datetime(2026, 11, 25, tzinfo=UTC)
# CPU float differences are ~1e-5 of the norm; a wrong preprocessing moves it by ~40%.
SAME, DIFFERENT = 2e-3, 0.2


def garment_image(height: int = 160, width: int = 112) -> np.ndarray:
    """(160, 112, 3) uint8 RGB: a navy T-shirt with red stripes and a pocket on a grey
    backdrop, the demo's packshot size."""
    r, c = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[:] = 236.0 - 10.0 * r[..., None] / height  # backdrop, lighter at the top
    body = (r >= 40) & (r < 150) & (c >= 30) & (c < 82)
    left = (r >= 40) & (r < 74) & (c >= 12 + 0.55 * (r - 40)) & (c < 30)
    right = (r >= 40) & (r < 74) & (c < 100 - 0.55 * (r - 40)) & (c >= 82)
    neck = ((r - 38) / 10) ** 2 + ((c - 56) / 13) ** 2 < 1
    shirt = (body | left | right) & ~neck
    navy, red = np.array([28, 42, 96], np.float32), np.array([186, 32, 44], np.float32)
    colour = np.where((((r - 46) % 14) < 4)[..., None], red, navy)
    shade = 0.8 + 0.2 * np.cos((c - 56) / 40 * np.pi)[..., None]  # rounder in the middle
    img = np.where(shirt[..., None], colour * shade, img)
    img[(r >= 62) & (r < 76) & (c >= 62) & (c < 74)] = (240, 240, 232)  # the pocket
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bare_model(weights: Path):
    import keras

    return keras.applications.VGG16(
        include_top=False, weights=str(weights), input_shape=(None, None, 3), pooling="max"
    )


def _vector(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x[None], training=False), np.float32)[0]


@pytest.fixture(scope="module")
def weights() -> Path:
    path = vgg16_weights_path()
    if path is None:
        pytest.skip("real VGG16 weights not found (../shared/models)")
    return path


@pytest.fixture(scope="module")
def reference() -> dict:
    ref = json.loads(REFERENCE.read_text())
    image = hashlib.sha256(garment_image().tobytes()).hexdigest()
    assert ref["image_sha256"] == image, "the drawing changed: regenerate the reference"
    return ref


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("reference") / "garment.png"  # lossless: exact pixels
    Image.fromarray(garment_image()).save(path)
    return path


@pytest.fixture(scope="module")
def job_run(tmp_path_factory, spark, weights, image_file):
    """The image as the only product of a lake, embedded by the job with the real weights."""
    from atelier.contracts import contract
    from atelier.lake import Lake
    from atelier.settings import Settings
    from spark_jobs.embed import run_embed

    settings = Settings(
        workdir=tmp_path_factory.mktemp("reference-work"),
        spark={"master": "local[2]", "shuffle_partitions": 4},
        gate={"build_data_docs": False},
        embed={"weights": str(weights), "allow_random_weights": False, "partitions": 1},
    )
    lake = Lake(settings)
    product = {"product_id": "tee", "type": "T-shirt", "brand": "B", "source": "test"}
    lake.merge("products", pa.Table.from_pylist([product], contract("products").schema()))
    image = {
        "product_id": "tee",
        "shot": 0,
        "path": str(image_file),
        "content_hash": _sha256(image_file),
        "width": 112,
        "height": 160,
    }
    lake.merge("product_images", pa.Table.from_pylist([image], contract("product_images").schema()))
    report = run_embed(settings, spark=spark, now=NOW)
    return report, lake.read_arrow("image_embeddings").to_pylist()


def test_the_job_embeds_the_reference_vector_and_records_the_weights_file(
    job_run, weights, reference
):
    report, rows = job_run
    weights_id = "file:" + _sha256(weights)[:12]
    assert report["weights"] == weights_id and report["embedded"] == 1 and report["published"]
    assert len(rows) == 1
    row = rows[0]
    assert (row["product_id"], row["weights"], row["input_size"]) == ("tee", weights_id, "160x128")
    got = np.asarray(row["embedding"], np.float32)
    assert got.shape == (512,) and got.min() >= 0
    assert _relative(got, reference["native"]) < SAME
    np.testing.assert_allclose(got, reference["native"], rtol=5e-3, atol=0.05)


def test_bare_keras_on_caffe_preprocessing_is_the_reference_and_nothing_else_is(weights, reference):
    from keras.applications.vgg16 import preprocess_input

    from spark_jobs.embed import IMAGENET_MEAN_RGB, fit_image

    x = fit_image(garment_image(), "native")
    assert x.shape == (160, 128, 3)  # padded 8 columns each side with the mean colour
    # "caffe": RGB -> BGR, minus the ImageNet mean, no scaling; the padding becomes 0.
    caffe = preprocess_input(x.copy())
    np.testing.assert_allclose(
        caffe, x[..., ::-1] - np.array(IMAGENET_MEAN_RGB[::-1], np.float32), atol=1e-4
    )
    assert np.abs(caffe[:, :8]).max() < 1e-4 and np.abs(caffe[:, 120:]).max() < 1e-4

    model = _bare_model(weights)
    assert _relative(_vector(model, caffe), reference["native"]) < SAME
    wrong = {
        "RGB order": x - np.array(IMAGENET_MEAN_RGB, np.float32),
        "no mean subtracted": x[..., ::-1].copy(),
        "scaled to [-1, 1]": x / 127.5 - 1.0,
    }
    for name, bad in wrong.items():
        distance = _relative(_vector(model, bad), reference["native"])
        assert distance > DIFFERENT, f"{name}: only {distance:.3f} away from the reference"


def test_the_workers_code_resizes_to_224_and_embeds_the_reference(
    weights, reference, image_file, monkeypatch
):
    import pandas as pd
    from PIL import Image

    from spark_jobs import embed
    from spark_jobs.embed import WeightsSpec, embed_partition, fit_image

    rgb = garment_image()
    resized = Image.fromarray(rgb).resize((224, 224), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(fit_image(rgb, "224"), np.asarray(resized, np.float32))

    # What a Spark worker runs, in this process: keep its TensorFlow threads and model cache.
    monkeypatch.setattr(embed, "configure_tensorflow", lambda threads: None)
    monkeypatch.setattr(embed, "_MODELS", {})
    spec = WeightsSpec("file:" + _sha256(weights)[:12], str(weights))
    rows = pd.DataFrame(
        [
            {
                "product_id": "tee",
                "shot": 0,
                "path": str(image_file),
                "content_hash": _sha256(image_file),
                "width": 112,
                "height": 160,
                "input_size": "224x224",
                "_event_us": 0,
            }
        ]
    )
    (out,) = list(embed_partition(iter([rows]), spec, "224", batch_size=4, threads=1))
    assert out["_reason"].isna().all() and out["input_size"].tolist() == ["224x224"]
    assert _relative(out["embedding"].iloc[0], reference["224"]) < SAME


def main() -> None:
    """Write tests/fixtures/vgg16_reference.json from bare Keras and the real weights."""
    from keras.applications.vgg16 import preprocess_input

    from spark_jobs.embed import fit_image

    path = vgg16_weights_path()
    if path is None:
        raise SystemExit("real VGG16 weights not found (../shared/models)")
    model = _bare_model(path)
    rgb = garment_image()
    out = {
        "about": "VGG16 no-top, global max-pool, of garment_image() in "
        "tests/integration/test_embed_reference.py, caffe preprocessing, per input mode",
        "weights_sha256": _sha256(path),
        "image_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
    }
    for mode in ("native", "224"):
        vector = _vector(model, preprocess_input(fit_image(rgb, mode)))
        out[mode] = [round(float(v), 3) for v in vector]
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps(out, indent=0) + "\n")
    print(f"wrote {REFERENCE}")


if __name__ == "__main__":
    main()
