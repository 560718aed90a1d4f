"""The issue's acceptance commands on the full real data sets, through the real entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


def _atelier(workdir: Path, *args: str) -> str:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, ATELIER_LOG_LEVEL="WARNING")
    out = subprocess.run(
        [str(BIN / "atelier"), "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _counts(workdir: Path) -> dict[str, tuple[int, int]]:
    """table -> (version, rows) from `atelier tables`."""
    rows = {}
    for line in _atelier(workdir, "tables").splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1].startswith("v"):
            rows[parts[0]] = (int(parts[1][1:]), int(parts[2]))
    return rows


def test_ingest_full_hm_twice(tmp_path, hm_dir):
    from atelier.lake import Lake
    from atelier.settings import Settings

    w = tmp_path / "w"
    out = _atelier(w, "ingest", "hm", str(hm_dir))
    assert "quarantine by reason: none" in out and "published" in out
    counts = _counts(w)
    assert {
        t: counts[t][1]
        for t in ("products", "interactions", "customers", "product_images", "quarantine")
    } == {
        "products": 17_033,
        "interactions": 28_006,
        "customers": 1_364,
        "product_images": 17_033,
        "quarantine": 0,
    }
    lake = Lake(Settings(workdir=w))
    snap = {
        t: lake.read_arrow(t).sort_by([(c, "ascending") for c in contract_key(t)])
        for t in ("products", "interactions", "product_labels")
    }
    _atelier(w, "ingest", "hm", str(hm_dir))
    assert _counts(w) == counts  # same versions: nothing committed
    for t, before in snap.items():
        assert (
            lake.read_arrow(t).sort_by([(c, "ascending") for c in contract_key(t)]).equals(before)
        ), t


def test_ingest_full_fashion_small(tmp_path, fashion_dir):
    import csv

    from atelier.lake import Lake
    from atelier.settings import Settings

    w = tmp_path / "w"
    out = _atelier(w, "ingest", "fashion-images", str(fashion_dir))
    assert "quarantine by reason: none" in out
    lake = Lake(Settings(workdir=w))
    assert lake.read_arrow("products").num_rows == 18_000
    assert lake.read_arrow("product_images").num_rows == 18_000
    with (fashion_dir / "styles.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = lake.read_pandas("product_labels")
    for attr in ("baseColour", "season", "usage"):
        filled = sum(1 for r in rows if r[attr].strip() not in ("", "NA", "None"))
        assert (labels.attribute == attr).sum() == filled, attr
    assert set(labels.attribute) == {"baseColour", "season", "usage"}
    before = _counts(w)
    _atelier(w, "ingest", "fashion-images", str(fashion_dir))
    assert _counts(w) == before


def contract_key(table: str) -> list[str]:
    from atelier.contracts import contract

    return list(contract(table).key)
