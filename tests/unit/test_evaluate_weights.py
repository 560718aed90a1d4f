"""`atelier evaluate attributes` embeds a new catalogue with the weights the model was trained
on: which embed settings a bundle's record leads to, and the refusals (no Spark, no TensorFlow:
weights files here are a few bytes, identified by their hash)."""

from __future__ import annotations

import hashlib

import pytest

from cli.evaluate import WeightsMismatch, bundle_embed_settings
from spark_jobs.embed import KERAS_NOTOP_FILE, resolve_weights
from training.attributes.pipeline import weights_source

pytestmark = pytest.mark.unit


def _embed(**kw):
    from atelier.settings import EmbedSettings

    return EmbedSettings(**kw)


def _file(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path, "file:" + hashlib.sha256(data).hexdigest()[:12]


@pytest.fixture(autouse=True)
def no_keras_cache(tmp_path, monkeypatch):
    cache = tmp_path / "keras" / "models" / KERAS_NOTOP_FILE
    monkeypatch.setattr("spark_jobs.embed.keras_cache_candidates", lambda: [cache])
    return cache


def test_random_weights_are_rebuilt_from_the_recorded_seed_whatever_the_settings(tmp_path):
    path, _ = _file(tmp_path, "real.h5", b"real weights")
    meta = {"embedding_weights": ["random:7"], "embedding_weights_source": "imagenet"}
    embed = bundle_embed_settings(meta, _embed(weights=str(path), batch_size=3))
    assert (embed.weights, embed.random_seed, embed.allow_random_weights) == ("random", 7, False)
    assert embed.batch_size == 3  # everything else as configured
    assert resolve_weights(embed).id == "random:7"


def test_a_weights_file_is_found_by_its_recorded_path_then_the_settings(tmp_path):
    recorded, wanted = _file(tmp_path, "recorded.h5", b"weights A")
    meta = {"embedding_weights": [wanted], "embedding_weights_source": str(recorded)}
    embed = bundle_embed_settings(meta, _embed(allow_random_weights=True))
    assert (embed.weights, embed.allow_random_weights) == (str(recorded), False)

    # Recorded elsewhere (another machine): the configured copy is used when its hash matches.
    copy, same = _file(tmp_path, "copy.h5", b"weights A")
    assert same == wanted
    meta["embedding_weights_source"] = str(tmp_path / "elsewhere" / "a.h5")
    assert bundle_embed_settings(meta, _embed(weights=str(copy))).weights == str(copy)


def test_missing_or_other_weights_are_refused_naming_the_id_and_the_way_out(tmp_path):
    _, wanted = _file(tmp_path, "gone.h5", b"weights A")
    other, other_id = _file(tmp_path, "other.h5", b"weights B")
    meta = {"embedding_weights": [wanted], "embedding_weights_source": "/nowhere/a.h5"}
    with pytest.raises(WeightsMismatch) as e:
        bundle_embed_settings(meta, _embed(weights=str(other), allow_random_weights=True))
    msg = str(e.value)
    assert f"weights {wanted} (recorded source: /nowhere/a.h5)" in msg
    assert "'/nowhere/a.h5' is not a file" in msg and f"{other} is {other_id}" in msg
    assert "--weights PATH" in msg and "nothing was embedded" in msg
    # The user's --weights must be the model's weights too.
    with pytest.raises(WeightsMismatch, match=f"{other} is {other_id}"):
        bundle_embed_settings(meta, _embed(), override=str(other))


def test_the_users_weights_file_is_used_when_its_hash_is_the_models(tmp_path):
    given, wanted = _file(tmp_path, "mine.h5", b"weights A")
    meta = {"embedding_weights": [wanted], "embedding_weights_source": "/nowhere/a.h5"}
    assert bundle_embed_settings(meta, _embed(), override=str(given)).weights == str(given)
    # Random or ImageNet models take no file.
    for trained_on in ("random:1", "imagenet"):
        with pytest.raises(WeightsMismatch, match="leave out --weights"):
            bundle_embed_settings({"embedding_weights": [trained_on]}, _embed(), str(given))


def test_imagenet_needs_keras_cached_file(tmp_path, no_keras_cache, monkeypatch):
    meta = {"embedding_weights": ["imagenet"], "embedding_weights_source": "imagenet"}
    with pytest.raises(WeightsMismatch, match="Keras' cache holds no") as e:
        bundle_embed_settings(meta, _embed(allow_random_weights=True))
    assert "~/.keras/models/" in str(e.value)
    no_keras_cache.parent.mkdir(parents=True)
    no_keras_cache.write_bytes(b"keras download")
    monkeypatch.setattr(
        "spark_jobs.embed.KERAS_NOTOP_MD5", hashlib.md5(b"keras download").hexdigest()
    )
    embed = bundle_embed_settings(meta, _embed(weights=str(tmp_path / "x.h5")))
    assert (embed.weights, embed.allow_random_weights) == ("imagenet", False)


def test_bundles_without_a_record_keep_the_settings_and_mixed_ones_are_refused(tmp_path):
    configured = _embed(allow_random_weights=True, random_seed=3)
    assert bundle_embed_settings({}, configured) is configured
    with pytest.raises(WeightsMismatch, match="several weights"):
        bundle_embed_settings({"embedding_weights": ["random:1", "imagenet"]}, configured)


def test_the_source_recorded_at_training_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert weights_source(_embed(weights="models/v.h5")) == str(tmp_path / "models" / "v.h5")
    assert weights_source(_embed()) == "imagenet"
    assert weights_source(_embed(weights="random")) == "random"
