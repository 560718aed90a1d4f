"""The embed job end to end on a tiny catalogue of generated JPEGs, with the real ImageNet
weights where ../shared has them (else seeded random weights; tests/conftest.py).

Values are checked against VGG16 built with bare Keras in this process, across workdirs and
worker counts; incrementality (nothing to do, a changed image), quarantine and the weights
error are checked on the lake tables themselves. A weights file saved from seeded random weights
and the random/refused paths are tested with random weights whatever is available.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from tests.conftest import embed_settings, embed_weights_id, vgg16_weights_path

pytestmark = [pytest.mark.spark, pytest.mark.integration]

NOW = datetime(2026, 11, 25, tzinfo=UTC)
LATER = datetime(2026, 11, 26, tzinfo=UTC)
FIRST_SEEN = {
    "p1": datetime(2024, 1, 5, tzinfo=UTC),
    "p2": None,
    "p3": datetime(2025, 3, 1, tzinfo=UTC),
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SEED = 20181
# (product_id, shot) -> (width, height): the demo's 112x160 packshots and smaller 60x80 ones.
SHOTS = {("p1", 0): (60, 80), ("p1", 1): (112, 160), ("p2", 0): (112, 160), ("p3", 0): (60, 80)}
SIZES = {(60, 80): "96x64", (112, 160): "160x128"}


def _settings(workdir: Path, **embed):
    """The real weights when present (tests/conftest.py); `embed` overrides."""
    from atelier.settings import Settings

    return Settings(
        workdir=workdir,
        spark={"master": "local[2]", "shuffle_partitions": 4},
        gate={"build_data_docs": False},
        embed=embed_settings(SEED, **embed),
    )


def _jpeg(path: Path, size: tuple[int, int], seed: int) -> Path:
    """Smooth random colours (JPEG keeps them): a coarse noise grid upscaled to `size`."""
    w, h = size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR).save(path, quality=90)
    return path


def _image_row(pid: str, shot: int, path: Path, size: tuple[int, int]) -> dict:
    data = path.read_bytes() if path.exists() else b""
    return {
        "product_id": pid,
        "shot": shot,
        "path": str(path),
        "content_hash": hashlib.sha256(data).hexdigest(),
        "width": size[0],
        "height": size[1],
    }


def _write_catalogue(settings, rows: list[dict]) -> None:
    """products (p1..p3) and `rows` as product_images, merged like ingest does."""
    from atelier.contracts import contract
    from atelier.lake import Lake

    products = [
        {
            "product_id": p,
            "type": "Dress",
            "brand": "B",
            "price": 9.5,
            "first_seen": t,
            "source": "test",
        }
        for p, t in FIRST_SEEN.items()
    ]
    lake = Lake(settings)
    lake.merge("products", pa.Table.from_pylist(products, schema=contract("products").schema()))
    schema = contract("product_images").schema()
    lake.merge("product_images", pa.Table.from_pylist(rows, schema=schema))


def _make_images(folder: Path) -> list[dict]:
    rows = []
    for i, ((pid, shot), size) in enumerate(sorted(SHOTS.items())):
        rows.append(_image_row(pid, shot, _jpeg(folder / f"{pid}_{shot}.jpg", size, i), size))
    return rows


def _embeddings(settings) -> dict[tuple[str, int], dict]:
    from atelier.lake import Lake

    return {
        (r["product_id"], r["shot"]): r
        for r in Lake(settings).read_arrow("image_embeddings").to_pylist()
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, spark):
    """The catalogue embedded once in its own workdir, over 2 workers."""
    from spark_jobs.embed import run_embed

    root = tmp_path_factory.mktemp("embed")
    rows = _make_images(root / "images")
    settings = _settings(root / "work", partitions=2)
    _write_catalogue(settings, rows)
    report = run_embed(settings, spark=spark, now=NOW)
    return settings, rows, report


@pytest.fixture(scope="module")
def random_vgg16():
    """VGG16 built with bare Keras in the test process, from the job's seed."""
    import keras

    keras.utils.set_random_seed(SEED)
    return keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))


@pytest.fixture(scope="module")
def bare_vgg16(request):
    """VGG16 built with bare Keras in the test process, with the job's weights."""
    import keras

    path = vgg16_weights_path()
    if path is None:
        return request.getfixturevalue("random_vgg16")
    return keras.applications.VGG16(
        include_top=False, weights=str(path), input_shape=(None, None, 3)
    )


def _bare_embedding(model, path: str) -> np.ndarray:
    from keras.applications.vgg16 import preprocess_input

    from spark_jobs.embed import fit_image

    x = fit_image(np.asarray(Image.open(path).convert("RGB")), "native")
    fmap = model.predict(preprocess_input(x[None]), verbose=0)[0]  # last conv block output
    return fmap.max(axis=(0, 1))  # global max-pool


def test_embeddings_are_512_finite_float32_and_stamped(first_run):
    from atelier.contracts import contract
    from atelier.lake import Lake

    settings, rows, report = first_run
    assert (report["images"], report["embedded"], report["skipped"]) == (4, 4, 0)
    assert report["quarantined"] == {} and report["published"]
    assert (report["inserted"], report["updated"], report["version"]) == (4, 0, 0)
    assert report["weights"] == embed_weights_id(SEED) and report["input_size"] == "native"
    table = Lake(settings).read_arrow("image_embeddings")
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.schema == contract("image_embeddings").schema()
    got = _embeddings(settings)
    assert sorted(got) == sorted(SHOTS)
    hashes = {(r["product_id"], r["shot"]): r["content_hash"] for r in rows}
    vectors = []
    for key, r in got.items():
        v = np.asarray(r["embedding"], dtype=np.float32)
        assert v.shape == (512,) and np.isfinite(v).all()
        assert v.min() >= 0 and v.max() > 0  # ReLU then max-pool: non-negative, not all 0
        vectors.append(v)
        assert r["content_hash"] == hashes[key]
        assert r["weights"] == embed_weights_id(SEED)
        assert r["input_size"] == SIZES[SHOTS[key]]
        assert r["event_timestamp"] == (FIRST_SEEN[key[0]] or EPOCH)
        assert r["created_timestamp"] == NOW
    # Different images, different vectors.
    assert min(np.abs(a - b).max() for i, a in enumerate(vectors) for b in vectors[i + 1 :]) > 1e-3


def test_workers_match_bare_keras_in_this_process(first_run, bare_vgg16):
    settings, rows, _ = first_run
    got = _embeddings(settings)
    for r in rows:
        expected = _bare_embedding(bare_vgg16, r["path"])
        actual = np.asarray(got[(r["product_id"], r["shot"])]["embedding"])
        # Thread counts and batch sizes change float summation order only.
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_padding_is_zero_after_imagenet_preprocessing():
    from keras.applications.vgg16 import preprocess_input

    from spark_jobs.embed import fit_image

    x = preprocess_input(fit_image(np.full((80, 60, 3), 200, dtype=np.uint8), "native")[None])[0]
    assert x.shape == (96, 64, 3)
    inside = np.zeros((96, 64), dtype=bool)
    inside[8:88, 2:62] = True
    assert (x[~inside] == 0).all() and (x[inside] != 0).all()


def test_rerun_embeds_nothing_and_commits_nothing(first_run, spark):
    from atelier.lake import Lake
    from spark_jobs.embed import run_embed

    settings, _, _ = first_run
    lake = Lake(settings)
    before = (lake.version("image_embeddings"), _embeddings(settings))
    again = run_embed(settings, spark=spark, now=LATER)
    counts = ("embedded", "skipped", "inserted", "updated", "version")
    assert tuple(again[k] for k in counts) == (0, 4, 0, 0, before[0])
    assert (lake.version("image_embeddings"), _embeddings(settings)) == before
    assert not lake.exists("quarantine")


def test_same_vectors_in_fresh_workdirs_and_across_worker_counts(first_run, spark, tmp_path):
    from atelier.lake import Lake
    from spark_jobs.embed import partition_for_embedding, pending_images, run_embed

    settings, rows, _ = first_run
    reference = _embeddings(settings)
    # The first run really spread the shots over both workers.
    lake = Lake(settings, spark)
    pending = pending_images(
        lake.read_spark("product_images"),
        lake.read_spark("products", ["product_id", "first_seen"]),
        spark.createDataFrame(
            [],
            "product_id STRING, shot INT, content_hash STRING, weights STRING, input_size STRING",
        ),
        embed_weights_id(SEED),
        "native",
    )
    parts = partition_for_embedding(pending, 2).selectExpr("spark_partition_id() AS p")
    assert {r.p for r in parts.distinct().collect()} == {0, 1}

    for partitions, exact in ((2, True), (1, False)):
        other = _settings(tmp_path / f"w{partitions}", partitions=partitions)
        _write_catalogue(other, rows)
        report = run_embed(other, spark=spark, now=NOW)
        assert report["embedded"] == 4
        got = _embeddings(other)
        for key, r in reference.items():
            a, b = np.asarray(got[key]["embedding"]), np.asarray(r["embedding"])
            if exact:  # same partitioning, same batches: bit for bit
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_max_images_embeds_slices_in_key_order_until_done(first_run, spark, tmp_path):
    from spark_jobs.embed import format_report, run_embed

    settings, rows, _ = first_run
    reference = _embeddings(settings)
    sliced = _settings(tmp_path / "w", partitions=2, max_images=3)
    _write_catalogue(sliced, rows)
    first = run_embed(sliced, spark=spark, now=NOW)
    assert (first["embedded"], first["skipped"], first["remaining"]) == (3, 0, 1)
    assert "left for the next run 1" in format_report(first)
    # The slice is the first three keys in (product_id, shot) order.
    assert sorted(_embeddings(sliced)) == sorted(SHOTS)[:3]
    second = run_embed(sliced, spark=spark, now=LATER)
    assert (second["embedded"], second["skipped"], second["remaining"]) == (1, 3, 0)
    third = run_embed(sliced, spark=spark, now=LATER)
    assert (third["embedded"], third["remaining"], third["version"]) == (0, 0, second["version"])
    got = _embeddings(sliced)
    assert sorted(got) == sorted(reference)
    for key, r in reference.items():  # slices embed what one run does
        np.testing.assert_allclose(got[key]["embedding"], r["embedding"], rtol=1e-4, atol=1e-5)


def test_each_chunk_is_committed_on_its_own(first_run, spark, tmp_path):
    from atelier.lake import Lake
    from spark_jobs.embed import format_report, run_embed

    settings, rows, _ = first_run
    chunked = _settings(tmp_path / "w", partitions=2, chunk_images=3)
    _write_catalogue(chunked, rows)
    report = run_embed(chunked, spark=spark, now=NOW)
    assert (report["embedded"], report["chunks"], report["inserted"]) == (4, 2, 4)
    assert "committed in 2 chunk(s)" in format_report(report)
    assert Lake(chunked).version("image_embeddings") == 1  # versions 0 and 1: one per chunk
    got, reference = _embeddings(chunked), _embeddings(settings)
    assert sorted(got) == sorted(reference)
    for key, r in reference.items():
        np.testing.assert_allclose(got[key]["embedding"], r["embedding"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_killed_backfill_loses_at_most_one_chunk_and_the_rerun_resumes(
    first_run, spark, tmp_path
):
    """`kill -9` right after the second chunk's commit (chunks of one shot): the first chunk
    is kept, the second is invisible (not published) and redone, the rest follow."""
    import os
    import signal
    import subprocess
    import sys

    from atelier.lake import FAILPOINT
    from spark_jobs.embed import format_report, run_embed
    from tests.conftest import embed_env

    settings, rows, _ = first_run
    work = tmp_path / "w"
    killed = _settings(work, partitions=1, chunk_images=1)
    _write_catalogue(killed, rows)
    env = {
        **os.environ,
        **embed_env(),
        FAILPOINT: "after_commit:image_embeddings:2",
        "PYSPARK_PYTHON": sys.executable,
        "ATELIER_SPARK__MASTER": "local[2]",
        "ATELIER_GATE__BUILD_DATA_DOCS": "false",
        "ATELIER_EMBED__CHUNK_IMAGES": "1",
        "ATELIER_EMBED__PARTITIONS": "1",
    }
    cmd = [sys.executable, "-m", "cli.main", "--workdir", str(work), "embed"]
    out = subprocess.run([*cmd, "--allow-random-weights"], env=env, capture_output=True, text=True)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert sorted(_embeddings(killed)) == sorted(SHOTS)[:1]  # what readers see

    report = run_embed(killed, spark=spark, now=LATER)
    assert (report["skipped"], report["embedded"], report["chunks"]) == (1, 3, 3)
    assert "committed in 3 chunk(s); resumed after 1 shots already embedded" in (
        format_report(report)
    )
    got, reference = _embeddings(killed), _embeddings(settings)
    assert sorted(got) == sorted(reference)
    for key, r in reference.items():
        np.testing.assert_allclose(got[key]["embedding"], r["embedding"], rtol=1e-4, atol=1e-5)


def test_weights_file_is_loaded_by_every_worker(first_run, random_vgg16, spark, tmp_path):
    from spark_jobs.embed import run_embed

    _, rows, _ = first_run
    path = tmp_path / "vgg16_notop.weights.h5"
    random_vgg16.save_weights(path)  # the seeded weights: vectors must match them, not ImageNet
    other = _settings(tmp_path / "w", weights=str(path), allow_random_weights=False)
    _write_catalogue(other, rows[:2])
    report = run_embed(other, spark=spark, now=NOW)
    weights_id = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert report["weights"] == weights_id and report["embedded"] == 2
    got = _embeddings(other)
    assert sorted(got) == sorted((r["product_id"], r["shot"]) for r in rows[:2])
    for r in rows[:2]:
        row = got[(r["product_id"], r["shot"])]
        assert row["weights"] == weights_id
        expected = _bare_embedding(random_vgg16, r["path"])
        np.testing.assert_allclose(row["embedding"], expected, rtol=1e-4, atol=1e-5)


def test_changed_image_is_reembedded(spark, tmp_path):
    from atelier.lake import Lake
    from spark_jobs.embed import run_embed

    settings = _settings(tmp_path / "work", partitions=2)
    small = {k: v for k, v in SHOTS.items() if v == (60, 80)}
    rows = [
        _image_row(p, s, _jpeg(tmp_path / f"{p}_{s}.jpg", size, i), size)
        for i, ((p, s), size) in enumerate(sorted(small.items()))
    ]
    _write_catalogue(settings, rows)
    run_embed(settings, spark=spark, now=NOW)
    before = _embeddings(settings)

    _jpeg(Path(rows[0]["path"]), (60, 80), seed=99)  # new content, as a re-ingest would record
    changed = _image_row("p1", 0, Path(rows[0]["path"]), (60, 80))
    assert changed["content_hash"] != rows[0]["content_hash"]
    Lake(settings).merge(
        "product_images",
        pa.Table.from_pylist([changed], schema=Lake(settings).read_arrow("product_images").schema),
    )
    report = run_embed(settings, spark=spark, now=LATER)
    counts = ("embedded", "skipped", "inserted", "updated")
    assert tuple(report[k] for k in counts) == (1, 1, 0, 1)
    after = _embeddings(settings)
    new, old = after[("p1", 0)], before[("p1", 0)]
    assert new["content_hash"] == changed["content_hash"] and new["created_timestamp"] == LATER
    assert np.abs(np.asarray(new["embedding"]) - np.asarray(old["embedding"])).max() > 1e-3
    assert after[("p3", 0)] == before[("p3", 0)]  # untouched, created_timestamp included

    # Another input size is other content for the network: the paper's 224x224 re-embeds all.
    paper = settings.model_copy(
        update={"embed": settings.embed.model_copy(update={"input_size": "224"})}
    )
    report = run_embed(paper, spark=spark, now=LATER)
    assert tuple(report[k] for k in counts) == (2, 0, 0, 2)
    assert {r["input_size"] for r in _embeddings(settings).values()} == {"224x224"}


def test_missing_corrupt_and_changed_images_are_quarantined(spark, tmp_path):
    from atelier.lake import Lake
    from spark_jobs.embed import run_embed

    settings = _settings(tmp_path / "work", partitions=2)
    good = [
        _image_row("p1", 0, _jpeg(tmp_path / "good1.jpg", (60, 80), 1), (60, 80)),
        _image_row("p3", 0, _jpeg(tmp_path / "good3.jpg", (60, 80), 3), (60, 80)),
    ]
    cut = _jpeg(tmp_path / "cut.jpg", (60, 80), 4)
    cut.write_bytes(cut.read_bytes()[:300])  # truncated mid-scan
    gone = _jpeg(tmp_path / "gone.jpg", (60, 80), 5)
    moved = _jpeg(tmp_path / "moved.jpg", (60, 80), 6)
    bad = [
        _image_row("p2", 0, cut, (60, 80)),
        _image_row("p2", 1, gone, (60, 80)),
        _image_row("p2", 2, moved, (60, 80)),
    ]
    gone.unlink()
    _jpeg(moved, (60, 80), 7)  # rewritten after ingest recorded its hash
    _write_catalogue(settings, good + bad)

    report = run_embed(settings, spark=spark, now=NOW)
    expected = {"image_changed": 1, "image_corrupt": 1, "image_missing": 1}
    assert report["embedded"] == 2 and report["quarantined"] == expected
    assert sorted(_embeddings(settings)) == [("p1", 0), ("p3", 0)]
    lake = Lake(settings)
    q = sorted(lake.read_arrow("quarantine").to_pylist(), key=lambda r: r["line"])
    assert [(r["table"], r["source_file"], r["line"], r["reason"]) for r in q] == [
        ("image_embeddings", str(cut), 0, "image_corrupt"),
        ("image_embeddings", str(gone), 1, "image_missing"),
        ("image_embeddings", str(moved), 2, "image_changed"),
    ]
    assert all(str(r["source_file"]) in r["detail"] for r in q)
    assert '"product_id":"p2"' in q[0]["record"] and q[0]["quarantined_at"] == NOW

    # The bad shots are retried (they may have been fixed) but nothing new is committed.
    versions = (lake.version("image_embeddings"), lake.version("quarantine"))
    again = run_embed(settings, spark=spark, now=LATER)
    assert again["embedded"] == 0 and again["skipped"] == 2 and again["quarantined"] == expected
    assert (lake.version("image_embeddings"), lake.version("quarantine")) == versions


def test_without_weights_a_clear_error_and_nothing_written(spark, tmp_path, monkeypatch):
    from atelier.lake import Lake
    from spark_jobs.embed import KERAS_NOTOP_FILE, WeightsUnavailable, run_embed

    empty = tmp_path / "keras" / "models" / KERAS_NOTOP_FILE
    monkeypatch.setattr("spark_jobs.embed.keras_cache_candidates", lambda: [empty])
    settings = _settings(tmp_path / "work", weights="imagenet", allow_random_weights=False)
    rows = [_image_row("p1", 0, _jpeg(tmp_path / "a.jpg", (60, 80), 1), (60, 80))]
    _write_catalogue(settings, rows)
    with pytest.raises(WeightsUnavailable, match="--allow-random-weights"):
        run_embed(settings, spark=spark, now=NOW)
    assert not Lake(settings).exists("image_embeddings")


def test_spark_submit_entry_point_and_flag(spark, tmp_path, monkeypatch, capsys):
    from atelier.lake import Lake
    from spark_jobs.embed import KERAS_NOTOP_FILE, main

    monkeypatch.setattr(
        "spark_jobs.embed.keras_cache_candidates",
        lambda: [tmp_path / "keras" / "models" / KERAS_NOTOP_FILE],
    )
    monkeypatch.delenv("ATELIER_EMBED__ALLOW_RANDOM_WEIGHTS", raising=False)
    monkeypatch.delenv("ATELIER_EMBED__WEIGHTS", raising=False)  # CI points it at real weights
    monkeypatch.setenv("ATELIER_GATE__BUILD_DATA_DOCS", "false")
    settings = _settings(tmp_path / "work")
    _write_catalogue(
        settings, [_image_row("p1", 0, _jpeg(tmp_path / "a.jpg", (60, 80), 1), (60, 80))]
    )
    work = str(settings.workdir)
    assert main(["--workdir", work]) == 1
    assert "no VGG16 weights" in capsys.readouterr().err
    assert main(["--workdir", work, "--allow-random-weights"]) == 0
    out = capsys.readouterr().out
    assert "embedded 1, skipped 0, quarantined 0" in out and f"random:{SEED}" in out
    assert Lake(settings).read_arrow("image_embeddings").num_rows == 1
