"""A consistent lake: readers see the versions of the last complete run, never half of one.

The crash is real: a child process merges two tables under `Lake.publishing` and is killed
(SIGKILL, through the ATELIER_FAILPOINT hook) right after the first table's commit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from atelier.lake import FAILPOINT, Lake

pytestmark = pytest.mark.data


def _labels(*rows):
    return pa.table(
        {k: [r[i] for r in rows] for i, k in enumerate(("product_id", "attribute", "value"))}
    )


def _customers(*ids):
    n = len(ids)
    return pa.table(
        {
            "customer_id": list(ids),
            "age": pa.array([30] * n, pa.int32()),
            "club_member_status": ["ACTIVE"] * n,
            "fashion_news_frequency": ["NONE"] * n,
            "postal_code": ["x"] * n,
        }
    )


def _values(lake, table, col):
    return sorted(lake.read_arrow(table, [col])[col].to_pylist())


def _run_two_table_job(settings, failpoint=None):
    """A child process: labels then customers merged in one publication, as ingest does."""
    script = textwrap.dedent(
        f"""
        import pyarrow as pa
        from atelier.lake import Lake
        from atelier.settings import Settings
        from tests.data.test_lake_publication import _customers, _labels

        lake = Lake(Settings(workdir={str(settings.workdir)!r}))
        with lake.publishing("job", "run-2"):
            lake.merge("product_labels", _labels(("1", "colour", "Navy"), ("2", "colour", "Red")))
            lake.merge("customers", _customers("c1", "c2"))
        """
    )
    env = {FAILPOINT: failpoint} if failpoint else {}
    return subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True
    )


def test_a_run_killed_between_commits_is_invisible_and_a_rerun_completes_it(settings):
    lake = Lake(settings)
    with lake.publishing("job", "run-1"):
        lake.merge("product_labels", _labels(("1", "colour", "Blue")))
        lake.merge("customers", _customers("c1"))
    before = {t: lake.version(t) for t in ("product_labels", "customers")}
    assert before == {"product_labels": 0, "customers": 0}

    out = _run_two_table_job(settings, failpoint="after_commit:product_labels")
    assert out.returncode == -signal.SIGKILL, out.stderr
    # The labels commit landed on disk, the customers one never happened ...
    assert lake.latest_version("product_labels") == 1 and lake.latest_version("customers") == 0
    # ... and readers see run 1 whole: no Navy label beside the old customers.
    assert {t: lake.version(t) for t in before} == before
    assert _values(lake, "product_labels", "value") == ["Blue"]
    assert _values(lake, "customers", "customer_id") == ["c1"]
    assert lake.unpublished() == {"product_labels": (0, 1)}

    out = _run_two_table_job(settings)  # the rerun: labels merge nothing new, customers land
    assert out.returncode == 0, out.stderr
    assert lake.unpublished() == {}
    assert {t: lake.version(t) for t in before} == {"product_labels": 1, "customers": 1}
    assert _values(lake, "product_labels", "value") == ["Navy", "Red"]
    assert _values(lake, "customers", "customer_id") == ["c1", "c2"]
    record = json.loads((settings.lake_dir / "_runs" / "job-run-2.json").read_text())
    assert record["tables"] == {"product_labels": 1, "customers": 1}


def test_a_failed_block_publishes_nothing_and_the_writer_reads_its_own_writes(settings):
    lake, reader = Lake(settings), Lake(settings)
    lake.merge("product_labels", _labels(("1", "colour", "Blue")))  # a one-table run
    assert reader.version("product_labels") == 0
    with pytest.raises(RuntimeError, match="boom"), lake.publishing("job", "r"):
        lake.merge("product_labels", _labels(("1", "colour", "Navy")))
        assert _values(lake, "product_labels", "value") == ["Navy"]  # its own write
        assert _values(reader, "product_labels", "value") == ["Blue"]  # not yet anyone's
        raise RuntimeError("boom")
    assert _values(reader, "product_labels", "value") == ["Blue"]
    assert lake.unpublished() == {"product_labels": (0, 1)}
    with pytest.raises(RuntimeError, match="does not nest"), lake.publishing("a", "1"):
        with lake.publishing("b", "2"):
            pass


def test_a_first_run_killed_between_commits_leaves_nothing_visible(settings):
    lake = Lake(settings)
    out = _run_two_table_job(settings, failpoint="after_commit:product_labels")
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert lake.on_disk("product_labels") and not lake.exists("product_labels")
    assert lake.read_arrow("product_labels").num_rows == 0
    assert lake.unpublished() == {"product_labels": (None, 0)}
    assert _run_two_table_job(settings).returncode == 0
    assert _values(lake, "customers", "customer_id") == ["c1", "c2"]
    assert lake.unpublished() == {}


def test_a_lake_from_before_publications_is_adopted_whole_at_its_first_write(settings):
    from deltalake import write_deltalake

    lake = Lake(settings)
    write_deltalake(str(lake.path("product_labels")), _labels(("1", "colour", "Blue")))
    assert lake.version("product_labels") == 0  # no manifest: read as it is
    lake.merge("customers", _customers("c1"))  # the first write adopts what is there
    assert set(lake.published()) == {"product_labels", "customers"}
    assert _values(lake, "product_labels", "value") == ["Blue"]
