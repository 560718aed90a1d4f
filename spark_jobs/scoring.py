"""The template of the batch scoring jobs (`predict_attributes`, `item_vectors`).

A run pins a registered model (default: its `champion`, the alias read once), the driver
downloads its bundle once into `<workdir>/tmp/<job>/<run_id>`, each Python worker loads it from
there once (`models.bundle.worker_bundle`) and scores its products in fixed, sorted batches; the
batch passes its GX suites before it is merged, and the report is saved either way. Workers on
other machines need the workdir on shared storage, as they do for the lake.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expectations.gate import GateFailure
from spark_jobs.common import new_run_id, save_report, worker_log

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import DataFrame

    from atelier.lake import Lake
    from atelier.settings import Settings


# ---------------------------------------------------------------------------------------------
# Driver side: the model
# ---------------------------------------------------------------------------------------------
def resolve_model(model_uri: str) -> tuple[str, str]:
    """(model_version, pinned URI) of a model URI. `models:/<name>@<alias>` and
    `models:/<name>/<version>` give "<name>/<version>" and `models:/<name>/<version>` (the
    alias is read once, so a promotion during the run cannot mix two models); any other URI
    (`runs:/...`) is its own version label."""
    from mlflow import MlflowClient

    m = re.fullmatch(r"models:/([^/@]+)@([^/]+)", model_uri)
    if m:
        name, alias = m.groups()
        version = MlflowClient().get_model_version_by_alias(name, alias).version
        return f"{name}/{version}", f"models:/{name}/{version}"
    m = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri)
    if m:
        return f"{m.group(1)}/{m.group(2)}", model_uri
    return model_uri, model_uri


@contextmanager
def model_errors(error: type[Exception], what: str) -> Iterator[None]:
    """Raise `error` ("cannot load the <what>: ...") for an MLflow, registry or file error."""
    from mlflow.exceptions import MlflowException

    from atelier import registry

    try:
        yield
    except (MlflowException, registry.RegistryError, OSError) as e:
        raise error(f"cannot load the {what}: {e}") from e


def pin_model(
    settings: Settings, model_uri: str | None, registered_model: str
) -> tuple[str, str, str]:
    """(model URI, model_version, pinned URI) of `model_uri`, default the champion of
    `registered_model` (`resolve_model`)."""
    from atelier import registry

    registry.configure(settings)
    uri = model_uri or registry.champion_uri(registered_model)
    model_version, pinned = resolve_model(uri)
    return uri, model_version, pinned


def fetch_bundle(
    settings: Settings, job: str, load_bundle: Callable[[str], Any], model_uri: str, run_id: str
) -> tuple[Any, Path]:
    """Download the model once (driver) and save its bundle under the workdir for the workers;
    returns the bundle and that folder (`<workdir>/tmp/<job>/<run_id>`). Folders of earlier
    runs are removed."""
    root = settings.workdir / "tmp" / job
    if root.is_dir():
        for old in root.iterdir():
            shutil.rmtree(old, ignore_errors=True)
    bundle = load_bundle(model_uri)
    return bundle, bundle.save(root / run_id)


@dataclass
class ScoringRun:
    """A started run: its id, the model (as asked, and its pinned version) and its bundle."""

    job: str
    run_id: str
    model_uri: str
    model_version: str
    bundle: Any
    bundle_dir: Path


def start_run(
    settings: Settings,
    job: str,
    model_uri: str | None,
    registered_model: str,
    load_bundle: Callable[[str], Any],
    error: type[Exception],
    what: str,
    now: datetime,
) -> ScoringRun:
    """Pin the model and fetch its bundle for the workers. `error` when there is no catalogue
    or the model cannot be loaded (nothing written)."""
    from atelier.lake import Lake

    run_id = new_run_id(now)
    if not Lake(settings).exists("products"):
        raise error(f"no products table in {settings.lake_dir}: run ingest first")
    with model_errors(error, what):
        uri, model_version, pinned = pin_model(settings, model_uri, registered_model)
        logging.getLogger(f"atelier.{job}").info("model %s (%s): downloading", model_version, uri)
        bundle, bundle_dir = fetch_bundle(settings, job, load_bundle, pinned, run_id)
    return ScoringRun(job, run_id, uri, model_version, bundle, bundle_dir)


def finish_run(
    settings: Settings, run: ScoringRun, report: dict, t0: float, work: Callable[[], None]
) -> dict:
    """Do the run's `work`, then remove its bundle folder (whatever happened) and save and
    return its report."""
    try:
        work()
    finally:
        shutil.rmtree(run.bundle_dir, ignore_errors=True)
    report["seconds"] = round(time.time() - t0, 1)
    save_report(settings, run.job, report)
    logging.getLogger(f"atelier.{run.job}").info("done in %.1fs", report["seconds"])
    return report


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------
def worker_bundle(job: str, directory: str, bundle_class: type, threads: int) -> Any:
    """The worker's `bundle_class` bundle saved in `directory`, loaded on first use with
    `threads` TensorFlow threads."""
    from models.bundle import worker_bundle as cached

    def load(folder: str):
        from spark_jobs.embed import configure_tensorflow

        t0 = time.time()
        configure_tensorflow(threads)
        bundle = bundle_class.load(folder)
        worker_log(job, f"bundle {folder} loaded in {time.time() - t0:.1f}s ({threads} TF threads)")
        return bundle

    return cached(directory, load)


def sorted_products(batches: Iterator[pd.DataFrame]) -> pd.DataFrame | None:
    """A partition's rows sorted by product_id (None when it is empty): the batches cut from
    them then depend only on which products the partition holds."""
    import pandas as pd

    frames = [b for b in batches if len(b)]
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).sort_values("product_id", ignore_index=True)


def score_in_batches(
    job: str, rows: pd.DataFrame, batch_size: int, score: Callable[[pd.DataFrame], pd.DataFrame]
) -> Iterator[pd.DataFrame]:
    """`score` of each batch of `batch_size` rows (index reset), with the worker's progress."""
    t0 = time.time()
    for start in range(0, len(rows), batch_size):
        chunk = rows.iloc[start : start + batch_size].reset_index(drop=True)
        out = score(chunk)
        worker_log(
            job, f"{start + len(chunk)}/{len(rows)} products scored in {time.time() - t0:.1f}s"
        )
        yield out


# ---------------------------------------------------------------------------------------------
# Driver side: gate and publish
# ---------------------------------------------------------------------------------------------
def contract_arrow(table: str, df: DataFrame) -> pa.Table:
    """`df` in the table's contract as Arrow (the gate keeps NaN apart from null on it)."""
    from atelier.contracts import contract

    c = contract(table)
    return df.toArrow().select(c.column_names).cast(c.schema())


def gate_batch(
    settings: Settings, lake: Lake, table: str, arrow: pa.Table, now: datetime, vector_size: int
) -> list[str]:
    """Failures of `table`'s suite on the batch (nothing to check when it is empty)."""
    if arrow.num_rows == 0:
        return []
    from expectations.gate import validate_table
    from expectations.suites import gate_checks

    products = lake.read_arrow("products", ["product_id"])["product_id"].to_pylist()
    result = validate_table(
        settings,
        table,
        arrow,
        row_count_band=(0, settings.gate.max_rows),
        reference_values={"product_id": products},
        now=now,
        list_checks=gate_checks(settings, table, vector_size=vector_size),
    )
    return [] if result.success else list(result.failures)


def publish(
    settings: Settings,
    lake: Lake,
    run: ScoringRun,
    report: dict,
    arrows: dict[str, pa.Table],
    failures: list[str],
    gate: str,
) -> None:
    """Merge each table's batch into the lake and count it in `report`; with `failures`,
    nothing: the report is saved and GateFailure (naming `gate`) raised."""
    for t, arrow in arrows.items():
        report[t] = {"written": arrow.num_rows, "inserted": 0, "updated": 0}
    if failures:
        report["failures"] = failures
        report["published"] = False
        for t in arrows:
            report[t]["version"] = lake.version(t)
        save_report(settings, run.job, report)
        raise GateFailure(gate, failures, report)
    with lake.publishing(run.job, run.run_id):  # the tables become visible together
        for t, arrow in arrows.items():
            if arrow.num_rows:
                res = lake.merge(t, arrow)
                report[t].update(inserted=res.inserted, updated=res.updated)
            report[t]["version"] = lake.version(t)
            logging.getLogger(f"atelier.{run.job}").info("%s: %s", t, report[t])
    report["failures"] = []
    report["published"] = True


def publish_lines(report: dict, tables: tuple[str, ...]) -> list[str]:
    """The end of a scoring report as text: each table's counts and whether it was published."""
    lines = []
    for table in tables:
        t = report.get(table)
        if t:
            version = "-" if t.get("version") is None else t["version"]
            lines.append(
                f"{table:<21} written {t['written']} (ins. {t['inserted']}, upd. "
                f"{t['updated']})  version {version}"
            )
    if report.get("published"):
        lines.append(f"published ({report.get('seconds', 0)}s in all)")
    else:
        lines.append("NOT published: " + "; ".join(report.get("failures", [])))
    return lines
