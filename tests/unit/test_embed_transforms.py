"""Pure parts of the embed job: input sizes, padding, batching, weights resolution, image checks.

No Spark and no TensorFlow here: the job's network runs in tests/integration/test_embed.py.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from spark_jobs.embed import (
    IMAGENET_MEAN_RGB,
    KERAS_NOTOP_FILE,
    KERAS_NOTOP_MD5,
    WeightsUnavailable,
    allow_random_weights,
    batch_plan,
    fit_image,
    input_size,
    load_image,
    notop_file_problem,
    resolve_weights,
)
from tests.conftest import vgg16_weights_path

pytestmark = pytest.mark.unit


def test_native_pads_up_to_multiples_of_32_and_paper_mode_is_224():
    # A 60x80 (width x height) packshot is fed at 64x96; (H, W) order as in input_size "HxW".
    assert input_size(80, 60, "native") == (96, 64)
    assert input_size(160, 112, "native") == (160, 128)
    assert input_size(64, 32, "native") == (64, 32)  # already multiples: unchanged
    assert input_size(1, 33, "native") == (32, 64)
    assert input_size(80, 60, "224") == (224, 224)
    with pytest.raises(ValueError, match="'native', '224'.*'256'"):
        input_size(80, 60, "256")


def test_native_fit_centres_the_image_on_the_mean_colour_without_scaling():
    rgb = np.full((80, 60, 3), 7, dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    out = fit_image(rgb, "native")
    assert out.shape == (96, 64, 3) and out.dtype == np.float32
    # 16 spare rows -> 8 above and below; 4 spare columns -> 2 left and right.
    np.testing.assert_array_equal(out[8:88, 2:62], rgb.astype(np.float32))
    assert tuple(out[8, 2]) == (1.0, 2.0, 3.0)
    mean = np.array(IMAGENET_MEAN_RGB, dtype=np.float32)
    for pad in (out[:8], out[88:], out[:, :2], out[:, 62:]):
        np.testing.assert_array_equal(pad, np.broadcast_to(mean, pad.shape))


def test_paper_fit_resizes_to_224():
    rgb = np.zeros((80, 60, 3), dtype=np.uint8)
    rgb[:, 30:] = 200  # right half bright: stays the right half after resizing
    out = fit_image(rgb, "224")
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    assert out[:, :100].max() == 0 and out[:, 125:].min() == 200


def test_batch_plan_groups_equal_sizes_and_caps_pixels():
    sizes = [(96, 64)] * 5 + [(160, 128)] * 2 + [(96, 64)]
    assert batch_plan(sizes, 2) == [[0, 1], [2, 3], [4], [5, 6], [7]]
    assert batch_plan(sizes, 16) == [[0, 1, 2, 3, 4], [5, 6], [7]]
    # 448x448 holds four 224x224 images' pixels: batches of 16 shrink to 4; 1 is the floor.
    assert batch_plan([(448, 448)] * 6, 16) == [[0, 1, 2, 3], [4, 5]]
    assert batch_plan([(2048, 2048)] * 2, 16) == [[0], [1]]
    assert batch_plan([], 16) == []


def _embed_settings(**kw):
    from atelier.settings import EmbedSettings

    return EmbedSettings(**kw)


@pytest.fixture
def no_keras_cache(tmp_path, monkeypatch):
    """An empty Keras cache, whatever this machine's ~/.keras holds."""
    cache = tmp_path / "keras" / "models" / KERAS_NOTOP_FILE
    monkeypatch.setattr("spark_jobs.embed.keras_cache_candidates", lambda: [cache])
    return cache


def test_no_weights_is_a_clear_error_naming_the_ways_out(no_keras_cache):
    with pytest.raises(WeightsUnavailable) as e:
        resolve_weights(_embed_settings())
    msg = str(e.value)
    assert KERAS_NOTOP_FILE in msg and str(no_keras_cache.parent) in msg
    assert "ATELIER_EMBED__WEIGHTS" in msg
    assert "--allow-random-weights" in msg and "random:<seed>" in msg


def test_random_weights_only_when_allowed(no_keras_cache):
    spec = resolve_weights(_embed_settings(allow_random_weights=True, random_seed=7))
    assert (spec.id, spec.path, spec.seed) == ("random:7", None, 7)


def test_cached_imagenet_file_is_used_only_when_complete(no_keras_cache):
    no_keras_cache.parent.mkdir(parents=True)
    no_keras_cache.write_bytes(b"half a download")
    with pytest.raises(WeightsUnavailable, match="incomplete or corrupt"):
        resolve_weights(_embed_settings())
    # Keras' md5 of the real file is checked; fake a match by patching the expected digest.
    import spark_jobs.embed as embed

    md5 = hashlib.md5(b"half a download").hexdigest()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(embed, "KERAS_NOTOP_MD5", md5)
        spec = resolve_weights(_embed_settings())
    assert (spec.id, spec.path, spec.seed) == ("imagenet", str(no_keras_cache), None)


def test_real_imagenet_file_in_a_keras_cache_is_the_imagenet_spec(tmp_path, monkeypatch):
    """A user with network has Keras' download; an offline one may copy the same weights into
    Keras' cache by hand: a complete no-top file is "imagenet" even when its bytes differ."""
    real = vgg16_weights_path()
    if real is None:
        pytest.skip("real VGG16 weights not found (../shared/models)")
    cached = tmp_path / "keras-home" / "models" / KERAS_NOTOP_FILE
    cached.parent.mkdir(parents=True)
    cached.symlink_to(real)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    spec = resolve_weights(_embed_settings())
    assert (spec.id, spec.path, spec.seed) == ("imagenet", str(cached), None)
    # Keras' own download is recognised by its md5 without opening it.
    import spark_jobs.embed as embed

    monkeypatch.setattr(embed, "KERAS_NOTOP_MD5", hashlib.md5(real.read_bytes()).hexdigest())
    monkeypatch.setattr(embed, "notop_file_problem", lambda path: "must not be called")
    assert resolve_weights(_embed_settings()).id == "imagenet"
    assert KERAS_NOTOP_MD5 != embed.KERAS_NOTOP_MD5  # this copy is not byte-identical


def test_a_file_without_the_vgg16_layers_is_not_a_notop_file(tmp_path):
    import h5py

    path = tmp_path / KERAS_NOTOP_FILE
    with h5py.File(path, "w") as f:
        g = f.create_group("block1_conv1")
        g.create_dataset("kernel", data=np.zeros((3, 3, 3, 32), np.float32))
        g.create_dataset("bias", data=np.zeros(32, np.float32))
        g.attrs["weight_names"] = [b"kernel", b"bias"]
    assert "block1_conv1 holds [(32,), (3, 3, 3, 32)]" in notop_file_problem(path)
    with h5py.File(path, "a") as f:
        del f["block1_conv1"]
    assert notop_file_problem(path) == "no layer block1_conv1"
    (tmp_path / "cut.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"0" * 100)
    assert notop_file_problem(tmp_path / "cut.h5").startswith("OSError")


def test_random_by_name_needs_no_permission(no_keras_cache):
    spec = resolve_weights(_embed_settings(weights="random", random_seed=5))
    assert (spec.id, spec.path, spec.seed) == ("random:5", None, 5)


def test_weights_file_is_identified_by_its_hash(tmp_path, no_keras_cache):
    f = tmp_path / "vgg16_notop.weights.h5"
    f.write_bytes(b"weights")
    spec = resolve_weights(_embed_settings(weights=str(f)))
    assert spec.id == "file:" + hashlib.sha256(b"weights").hexdigest()[:12]
    assert spec.path == str(f) and spec.seed is None
    with pytest.raises(WeightsUnavailable, match="is not a file"):
        resolve_weights(_embed_settings(weights=str(tmp_path / "nope.h5")))
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"x")
    with pytest.raises(WeightsUnavailable, match=r"weights\.bin.*\.h5, \.hdf5, \.keras"):
        resolve_weights(_embed_settings(weights=str(bad)))
    # A missing file falls back to random weights only when allowed, recorded as such.
    spec = resolve_weights(
        _embed_settings(weights=str(tmp_path / "nope.h5"), allow_random_weights=True)
    )
    assert spec.id == "random:20181"


def test_allow_random_weights_copies_settings(tmp_path):
    from atelier.settings import Settings

    s = Settings(workdir=tmp_path, embed={"batch_size": 4})
    t = allow_random_weights(s)
    assert t.embed.allow_random_weights and t.embed.batch_size == 4 and t.workdir == s.workdir
    assert not s.embed.allow_random_weights


def test_load_image_reasons(tmp_path):
    good = tmp_path / "a.jpg"
    Image.new("RGB", (60, 80), (10, 20, 30)).save(good, quality=95)
    data = good.read_bytes()
    h = hashlib.sha256(data).hexdigest()
    x, reason, detail = load_image(str(good), h, "native")
    assert x.shape == (96, 64, 3) and (reason, detail) == (None, None)

    x, reason, detail = load_image(str(tmp_path / "gone.jpg"), h, "native")
    assert x is None and reason == "image_missing" and "gone.jpg" in detail

    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    cut_hash = hashlib.sha256(cut.read_bytes()).hexdigest()
    x, reason, detail = load_image(str(cut), cut_hash, "native")
    assert x is None and reason == "image_corrupt" and "cut.jpg" in detail

    x, reason, detail = load_image(str(good), "0" * 64, "native")
    assert x is None and reason == "image_changed" and "re-run ingest" in detail
