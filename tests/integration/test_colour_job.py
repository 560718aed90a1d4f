"""The colour job end to end on a tiny catalogue of generated packshots (real Spark, real lake).

Values are checked against `atelier.colour` run in this process; incrementality (nothing to do,
a changed image, a new descriptor version), slices, quarantine, the gate and the Feast view and
feature service are checked on the lake and the feature store themselves.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from spark_jobs.materialize import materialize

pytestmark = [pytest.mark.spark, pytest.mark.integration]

NOW = datetime(2026, 11, 25, tzinfo=UTC)
LATER = datetime(2026, 11, 26, tzinfo=UTC)
FIRST_SEEN = {
    "p1": datetime(2024, 1, 5, tzinfo=UTC),
    "p2": None,
    "p3": datetime(2025, 3, 1, tzinfo=UTC),
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
STUDIO = (238, 236, 232)  # the demo's packshot background
# (product_id, shot) -> (garment colour, its palette name, image size)
SHOTS = {
    ("p1", 0): ((196, 32, 40), "red", (112, 160)),
    ("p1", 1): ((26, 40, 90), "navy", (60, 80)),
    ("p2", 0): ((250, 250, 248), "white", (112, 160)),
    ("p3", 0): ((240, 206, 50), "yellow", (60, 80)),
}
GREEN = (50, 130, 70)


def _settings(workdir: Path):
    from atelier.settings import Settings

    return Settings(
        workdir=workdir,
        image_check_partitions=2,
        spark={"master": "local[2]", "shuffle_partitions": 4},
        gate={"build_data_docs": False},
    )


def _packshot(path: Path, rgb: tuple[int, int, int], size: tuple[int, int]) -> Path:
    """A garment-shaped polygon of colour `rgb` on the studio background, with a darker outline
    (as packshots have) and a little shading, saved as a JPEG."""
    w, h = size
    img = Image.new("RGB", size, STUDIO)
    shape = [(0.3, 0.15), (0.7, 0.15), (0.8, 0.85), (0.2, 0.85)]
    outline = tuple(int(c * 0.6) for c in rgb)
    ImageDraw.Draw(img).polygon(
        [(x * w, y * h) for x, y in shape], fill=rgb, outline=outline, width=2
    )
    pixels = np.asarray(img, dtype=np.float32)
    shade = 1.0 - 0.06 * np.linspace(0, 1, h)[:, None, None]  # light from above
    inside = (pixels != STUDIO).any(axis=-1, keepdims=True)
    pixels = np.where(inside, pixels * shade, pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
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
        {"product_id": p, "type": "Dress", "brand": "B", "price": 9.5, "first_seen": t,
         "source": "test"}
        for p, t in FIRST_SEEN.items()
    ]  # fmt: skip
    lake = Lake(settings)
    lake.merge("products", pa.Table.from_pylist(products, schema=contract("products").schema()))
    schema = contract("product_images").schema()
    lake.merge("product_images", pa.Table.from_pylist(rows, schema=schema))


def _make_images(folder: Path, shots=SHOTS) -> list[dict]:
    return [
        _image_row(pid, shot, _packshot(folder / f"{pid}_{shot}.jpg", rgb, size), size)
        for (pid, shot), (rgb, _, size) in sorted(shots.items())
    ]


def _colours(settings) -> dict[tuple[str, int], dict]:
    from atelier.lake import Lake

    return {
        (r["product_id"], r["shot"]): r
        for r in Lake(settings).read_arrow("colour_features").to_pylist()
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, spark):
    """The catalogue described once in its own workdir, over 2 partitions."""
    from spark_jobs.colour import run_colour

    root = tmp_path_factory.mktemp("colour")
    rows = _make_images(root / "images")
    settings = _settings(root / "work")
    _write_catalogue(settings, rows)
    report = run_colour(settings, spark=spark, now=NOW)
    return settings, rows, report


def test_one_row_per_shot_with_the_descriptor_and_its_stamps(first_run):
    from atelier.colour import COLOUR_DIM, DESCRIPTOR_VERSION, PALETTE
    from atelier.contracts import contract
    from atelier.lake import Lake

    settings, rows, report = first_run
    assert (report["images"], report["described"], report["skipped"]) == (4, 4, 0)
    assert report["quarantined"] == {} and report["published"]
    assert report["masks"] == {"background": 4}
    assert (report["inserted"], report["updated"], report["version"]) == (4, 0, 0)
    assert report["descriptor_version"] == DESCRIPTOR_VERSION
    latest = settings.reports_dir / "colour" / "latest.json"
    assert f'"run_id": "{report["run_id"]}"' in latest.read_text()
    table = Lake(settings).read_arrow("colour_features")
    assert table.schema == contract("colour_features").schema()
    assert table.schema.field("colour").type == pa.list_(pa.float32())
    got = _colours(settings)
    assert sorted(got) == sorted(SHOTS)
    hashes = {(r["product_id"], r["shot"]): r["content_hash"] for r in rows}
    for key, r in got.items():
        v = np.asarray(r["colour"], dtype=np.float32)
        assert v.shape == (COLOUR_DIM,) and np.isfinite(v).all()
        assert v[: len(PALETTE)].sum() == pytest.approx(1.0, abs=1e-5)
        assert v.min() >= 0 and v.max() <= 1
        assert r["foreground_fraction"] == pytest.approx(v[len(PALETTE)], abs=1e-6)
        assert 0.1 < r["foreground_fraction"] < 0.6  # the garment, not the frame
        assert r["mask"] == "background"
        assert r["content_hash"] == hashes[key]
        assert r["descriptor_version"] == DESCRIPTOR_VERSION
        assert r["event_timestamp"] == (FIRST_SEEN[key[0]] or EPOCH)
        assert r["created_timestamp"] == NOW


def test_each_garment_reads_as_its_colour_and_the_workers_match_this_process(first_run):
    from atelier.colour import PALETTE, analyse, decode, describe

    settings, rows, _ = first_run
    got = _colours(settings)
    for r in rows:
        key = (r["product_id"], r["shot"])
        top, share = describe(got[key]["colour"], top=1)[0]
        assert top == SHOTS[key][1], describe(got[key]["colour"])
        assert share > 0.6
        expected = analyse(decode(Path(r["path"]).read_bytes()))
        np.testing.assert_allclose(got[key]["colour"], expected.vector, rtol=0, atol=1e-6)
        assert got[key]["mask"] == expected.mask
    red, navy = (np.asarray(got[k]["colour"]) for k in (("p1", 0), ("p1", 1)))
    assert np.abs(red - navy)[: len(PALETTE)].sum() > 1.5  # two shots of one product, told apart


def test_rerun_describes_nothing_and_commits_nothing(first_run, spark):
    from atelier.lake import Lake
    from spark_jobs.colour import format_report, run_colour

    settings, _, _ = first_run
    lake = Lake(settings)
    before = (lake.version("colour_features"), _colours(settings))
    again = run_colour(settings, spark=spark, now=LATER)
    counts = ("described", "skipped", "inserted", "updated", "version")
    assert tuple(again[k] for k in counts) == (0, 4, 0, 0, before[0])
    assert (lake.version("colour_features"), _colours(settings)) == before
    assert not lake.exists("quarantine")
    assert "described 0, skipped 4, quarantined 0" in format_report(again)


def test_changed_image_and_new_descriptor_version_are_recomputed(spark, tmp_path, monkeypatch):
    import atelier.colour
    from atelier.lake import Lake
    from spark_jobs.colour import run_colour

    settings = _settings(tmp_path / "work")
    small = {k: v for k, v in SHOTS.items() if k in (("p1", 0), ("p3", 0))}
    rows = _make_images(tmp_path / "images", small)
    _write_catalogue(settings, rows)
    run_colour(settings, spark=spark, now=NOW)
    before = _colours(settings)

    # New content, as a re-ingest would record it: the red dress is now green.
    _packshot(Path(rows[0]["path"]), GREEN, (112, 160))
    changed = _image_row("p1", 0, Path(rows[0]["path"]), (112, 160))
    assert changed["content_hash"] != rows[0]["content_hash"]
    lake = Lake(settings)
    lake.merge(
        "product_images",
        pa.Table.from_pylist([changed], schema=lake.read_arrow("product_images").schema),
    )
    report = run_colour(settings, spark=spark, now=LATER)
    counts = ("described", "skipped", "inserted", "updated")
    assert tuple(report[k] for k in counts) == (1, 1, 0, 1)
    after = _colours(settings)
    new = after[("p1", 0)]
    assert new["content_hash"] == changed["content_hash"] and new["created_timestamp"] == LATER
    assert atelier.colour.describe(new["colour"], 1)[0][0] == "green"
    assert after[("p3", 0)] == before[("p3", 0)]  # untouched, created_timestamp included

    # Another palette or parameters: every shot is described again and relabelled.
    monkeypatch.setattr(atelier.colour, "DESCRIPTOR_VERSION", "lab-test-2")
    report = run_colour(settings, spark=spark, now=LATER + timedelta(days=1))
    assert tuple(report[k] for k in counts) == (2, 0, 0, 2)
    final = _colours(settings)
    assert {r["descriptor_version"] for r in final.values()} == {"lab-test-2"}
    for key, r in final.items():  # the workers' descriptor did not change: same vectors
        np.testing.assert_array_equal(r["colour"], after[key]["colour"])


def test_max_images_describes_slices_in_key_order_until_done(first_run, spark, tmp_path):
    from spark_jobs.colour import format_report, run_colour

    _, rows, _ = first_run
    settings = _settings(tmp_path / "work")
    _write_catalogue(settings, rows)
    first = run_colour(settings, spark=spark, now=NOW, max_images=3)
    assert (first["described"], first["skipped"], first["remaining"]) == (3, 0, 1)
    assert "left for the next run 1" in format_report(first)
    assert sorted(_colours(settings)) == sorted(SHOTS)[:3]
    second = run_colour(settings, spark=spark, now=LATER, max_images=3)
    assert (second["described"], second["skipped"], second["remaining"]) == (1, 3, 0)
    assert sorted(_colours(settings)) == sorted(SHOTS)
    with pytest.raises(ValueError, match="max_images must be at least 1, got 0"):
        run_colour(settings, spark=spark, max_images=0)


def test_each_chunk_is_committed_on_its_own_with_the_same_descriptors(first_run, spark, tmp_path):
    from atelier.lake import Lake
    from spark_jobs.colour import run_colour

    reference, rows, _ = first_run
    settings = _settings(tmp_path / "work")
    _write_catalogue(settings, rows)
    report = run_colour(settings, spark=spark, now=NOW, chunk_images=3)
    assert (report["described"], report["chunks"], report["inserted"]) == (4, 2, 4)
    assert Lake(settings).version("colour_features") == 1  # one commit per chunk
    assert sum(report["masks"].values()) == 4
    got, want = _colours(settings), _colours(reference)
    assert sorted(got) == sorted(want)
    for key, row in want.items():
        np.testing.assert_allclose(got[key]["colour"], row["colour"], rtol=1e-6)


def test_missing_corrupt_and_changed_images_are_quarantined(spark, tmp_path):
    from atelier.lake import Lake
    from spark_jobs.colour import run_colour

    settings = _settings(tmp_path / "work")
    good = _make_images(tmp_path, {("p1", 0): SHOTS[("p1", 0)]})
    cut = _packshot(tmp_path / "cut.jpg", GREEN, (60, 80))
    cut.write_bytes(cut.read_bytes()[:300])  # truncated mid-scan
    gone = _packshot(tmp_path / "gone.jpg", GREEN, (60, 80))
    moved = _packshot(tmp_path / "moved.jpg", GREEN, (60, 80))
    bad = [
        _image_row("p2", 0, cut, (60, 80)),
        _image_row("p2", 1, gone, (60, 80)),
        _image_row("p2", 2, moved, (60, 80)),
    ]
    gone.unlink()
    _packshot(moved, (26, 40, 90), (60, 80))  # rewritten after ingest recorded its hash
    _write_catalogue(settings, good + bad)

    report = run_colour(settings, spark=spark, now=NOW)
    expected = {"image_changed": 1, "image_corrupt": 1, "image_missing": 1}
    assert report["described"] == 1 and report["quarantined"] == expected
    assert sorted(_colours(settings)) == [("p1", 0)]
    lake = Lake(settings)
    q = sorted(lake.read_arrow("quarantine").to_pylist(), key=lambda r: r["line"])
    assert [(r["table"], r["source_file"], r["line"], r["reason"]) for r in q] == [
        ("colour_features", str(cut), 0, "image_corrupt"),
        ("colour_features", str(gone), 1, "image_missing"),
        ("colour_features", str(moved), 2, "image_changed"),
    ]
    assert all(str(r["source_file"]) in r["detail"] for r in q)
    assert "differs from product_images'" in q[2]["detail"]
    assert '"product_id":"p2"' in q[0]["record"] and q[0]["quarantined_at"] == NOW

    # The bad shots are retried (they may have been fixed) but nothing new is committed.
    versions = (lake.version("colour_features"), lake.version("quarantine"))
    again = run_colour(settings, spark=spark, now=LATER)
    assert again["described"] == 0 and again["skipped"] == 1 and again["quarantined"] == expected
    assert (lake.version("colour_features"), lake.version("quarantine")) == versions


def test_gate_failure_publishes_nothing(spark, tmp_path):
    from atelier.lake import Lake
    from spark_jobs.colour import GateFailure, format_report, run_colour

    settings = _settings(tmp_path / "work")
    # A shot of a product the catalogue does not hold: the reference check fails the batch.
    rows = _make_images(tmp_path, {("p1", 0): SHOTS[("p1", 0)], ("p9", 0): SHOTS[("p3", 0)]})
    _write_catalogue(settings, rows)
    with pytest.raises(GateFailure) as failed:
        run_colour(settings, spark=spark, now=NOW)
    assert any("product_id" in f and "'p9'" in f for f in failed.value.failures), failed.value
    report = failed.value.report
    assert report["described"] == 2 and not report["published"] and report["version"] is None
    assert "NOT published" in format_report(report)
    assert not Lake(settings).exists("colour_features")


def test_spark_submit_entry_point(first_run, spark, tmp_path, monkeypatch, capsys):
    from spark_jobs.colour import main

    monkeypatch.setenv("ATELIER_GATE__BUILD_DATA_DOCS", "false")
    monkeypatch.setenv("ATELIER_IMAGE_CHECK_PARTITIONS", "2")
    _, rows, _ = first_run
    work = tmp_path / "work"
    assert main(["--workdir", str(work)]) == 1
    assert "run ingest first" in capsys.readouterr().err
    _write_catalogue(_settings(work), rows[:2])
    assert main(["--workdir", str(work), "--max-images", "1"]) == 0
    out = capsys.readouterr().out
    assert "described 1, skipped 0, quarantined 0, left for the next run 1" in out
    assert "masks: background=1" in out and "published" in out
    with pytest.raises(SystemExit):
        main(["--workdir", str(work), "--max-images", "0"])


def test_cli_colour_command(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    r = CliRunner().invoke(app, ["--workdir", str(tmp_path), "colour"])
    assert r.exit_code == 1 and "run ingest first" in r.output
    r = CliRunner().invoke(app, ["--workdir", str(tmp_path), "colour", "--max-images", "0"])
    assert r.exit_code == 2  # refused by the option's bound before anything runs


# -- Feast ----------------------------------------------------------------------------------
def _other_features(settings, ids: list[str]) -> None:
    """The rest of attributes_v2's inputs, small and hand-made (contract schemas)."""
    from atelier.contracts import contract
    from atelier.lake import Lake

    n, t0 = len(ids), EPOCH
    stamps = {"event_timestamp": [t0] * n, "created_timestamp": [t0] * n}
    lake = Lake(settings)
    lake.merge(
        "image_embeddings",
        pa.table(
            {"product_id": ids, "shot": [0] * n, "content_hash": ["h"] * n,
             "weights": ["random:1"] * n, "input_size": ["64x64"] * n,
             "embedding": [[float(i)] * 512 for i in range(n)], **stamps}
        ).cast(contract("image_embeddings").schema()),
    )  # fmt: skip
    lake.merge(
        "text_features",
        pa.table(
            {"product_id": ids, "vocab_version": ["v"] * n,
             "token_ids": [[i + 2] + [0] * (settings.text.sequence_length - 1) for i in range(n)],
             "n_tokens": [1] * n, "tfidf": [[1.0]] * n, **stamps}
        ).cast(contract("text_features").schema()),
    )  # fmt: skip
    lake.merge(
        "product_features",
        pa.table(
            {"product_id": ids, "type_idx": list(range(1, n + 1)), "brand_idx": [1] * n,
             "division_idx": [1] * n, "log_price": [0.0] * n, "first_seen": [t0] * n,
             "recency_days": [0.0] * n, "popularity_7d": [0] * n, "popularity_30d": [0] * n,
             "popularity_90d": [0] * n, **stamps}
        ).cast(contract("product_features").schema()),
    )  # fmt: skip


def test_feast_serves_the_colour_offline_and_online(first_run):
    from atelier import feast_store

    settings, _, _ = first_run
    colours = _colours(settings)
    definitions = feast_store.definitions(settings)
    view = definitions["colour_features"]
    assert [e for e in view.entities] == ["product", "shot"]
    assert {f.name for f in view.features} >= {"colour", "mask", "descriptor_version"}
    assert definitions["colour_features_source"].path == str(settings.lake_dir / "colour_features")
    v1 = {(p.name, tuple(f.name for f in p.features))
          for p in definitions["attributes_v1"].feature_view_projections}  # fmt: skip
    v2 = {(p.name, tuple(f.name for f in p.features))
          for p in definitions["attributes_v2"].feature_view_projections}  # fmt: skip
    assert v2 - v1 == {("colour_features", ("colour",))} and v1 < v2

    _other_features(settings, ["p1", "p2", "p3"])
    applied = feast_store.apply(settings)
    assert {"colour_features", "attributes_v2"} <= set(applied["changed"])
    entity = pd.DataFrame(
        {
            "product_id": ["p1", "p1", "p2", "p3"],
            "event_timestamp": [
                FIRST_SEEN["p1"] - timedelta(days=1),  # before the product existed
                FIRST_SEEN["p1"] + timedelta(days=1),
                NOW,
                NOW,
            ],
        }
    )
    df = feast_store.historical_features(settings, entity, "attributes_v2")
    df = df.sort_values(["product_id", "event_timestamp"]).reset_index(drop=True)
    assert (df["shot"] == 0).all()  # the main image, added for the shot-keyed views
    assert df.loc[0, "colour"] is None  # content holds from first_seen, not before
    for i, pid in ((1, "p1"), (2, "p2"), (3, "p3")):
        np.testing.assert_array_equal(
            np.asarray(df.loc[i, "colour"], dtype=np.float32),
            np.asarray(colours[(pid, 0)]["colour"], dtype=np.float32),
        )
    assert df["type_idx"].tolist() == [1, 1, 2, 3]  # the other views joined alongside

    result = materialize(settings, end=NOW, tables=["colour_features"])
    assert result["colour_features"]["status"] == "materialized", result
    row = feast_store.online_features(settings, ["p3", "nope"], ["colour_features:colour"])
    np.testing.assert_array_equal(
        np.asarray(row["colour"][0], dtype=np.float32),
        np.asarray(colours[("p3", 0)]["colour"], dtype=np.float32),
    )
    assert row["colour"][1] is None
