"""`atelier demo`: every stage of the platform on a generated catalogue, one line per stage.

The terminal gets one progress line per stage with its time. Everything else — the stages'
reports and tables, and the chatter of Spark, TensorFlow, CUDA and Feast — goes to the run's log
`<workdir>/logs/demo-<time>.log` (named at the start and the end). File descriptors 1 and 2 are
redirected, not only Python's streams, because TensorFlow, the JVM and absl write from native
code. `--verbose` streams everything to the terminal instead.

The demo runs the real stages with a smaller catalogue and smaller models (`demo_settings`), so a
first run finishes in minutes on two cores; `atelier train ...` uses the full settings.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from atelier.settings import AttributeSettings, RecommenderSettings, Settings

PRODUCTS = 340
CUSTOMERS = 150
STAGES = 12


class DemoFailed(RuntimeError):
    """A stage failed; its message names the stage and the log holding the details."""


def demo_settings(settings: Settings) -> Settings:
    """`settings` with the demo's smaller models, where the user left the defaults: 400
    attribute steps, a k=32 recommender over at most 4 epochs, ablations off (they are the
    Figure 5 study of `atelier train attributes`), random weights allowed (offline)."""
    attributes, recommender = settings.attributes, settings.recommender
    defaults_a, defaults_r = AttributeSettings(), RecommenderSettings()
    a = {"ablations": False}
    if attributes.steps == defaults_a.steps:
        a["steps"] = 400
    r = {}
    if recommender.k == defaults_r.k:
        r["k"] = 32
    if recommender.epochs == defaults_r.epochs:
        r["epochs"] = 4
    return settings.model_copy(
        update={
            "attributes": attributes.model_copy(update=a),
            "recommender": recommender.model_copy(update=r),
            "embed": settings.embed.model_copy(update={"allow_random_weights": True}),
        },
        deep=True,
    )


@contextlib.contextmanager
def _into(log: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 (and so Python, the JVM and native libraries) at `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab", buffering=0) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@dataclass
class Progress:
    """Numbered stages: one terminal line each, details into the log (or everywhere)."""

    log: Path
    out: TextIO
    verbose: bool = False
    done: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, title: str, fn: Callable[[], Any]) -> Any:
        self.done += 1
        label = f"[{self.done}/{STAGES}] {title}"
        if self.verbose:
            print(label, file=self.out, flush=True)
        start = time.perf_counter()
        try:
            with contextlib.nullcontext() if self.verbose else _into(self.log):
                print(f"\n===== {label} =====", flush=True)
                result = fn()
        except Exception as e:
            took = time.perf_counter() - start
            print(f"{label} FAILED after {took:.0f}s: {e}", file=self.out, flush=True)
            raise DemoFailed(f"{title}: {e} (details: {self.log})") from e
        took = self.seconds[title] = time.perf_counter() - start
        print(f"{label} {took:.1f}s", file=self.out, flush=True)
        return result


def run_demo(
    settings: Settings,
    *,
    seed: int = 0,
    products: int = PRODUCTS,
    customers: int = CUSTOMERS,
    verbose: bool = False,
    out: TextIO | None = None,
) -> dict:
    """Generate the catalogue under the workdir and run every stage on it; a summary dict
    (stage seconds, log path, where to look next). Raises DemoFailed naming the stage."""
    settings = demo_settings(settings)
    log = settings.workdir / "logs" / f"demo-{datetime.now():%Y%m%d-%H%M%S}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    out = out or sys.stdout
    print(f"atelier demo in {settings.workdir} (full log: {log})", file=out, flush=True)
    p = Progress(log, out, verbose)
    source = settings.workdir / "demo-source"
    p.run("demo catalogue", lambda: _generate(source, seed, products, customers))
    spark = p.run("ingest into the lake", lambda: _ingest(settings, source))
    p.run("image embeddings (VGG16) and colour", lambda: _images(settings, spark))
    p.run("text and product features", lambda: _features(settings, spark))
    p.run("feast apply and gated materialisation", lambda: _feast(settings))
    trained = p.run("attribute model training", lambda: _train_attributes(settings))
    p.run("attribute model promotion", lambda: _promote(settings, settings.mlflow.attributes_model))
    p.run("predicted attributes for the catalogue", lambda: _predict(settings, spark))
    recommender = p.run("recommender training", lambda: _train_recommender(settings))
    p.run("recommender promotion", lambda: _promote(settings, settings.mlflow.recommender_model))
    p.run("item vectors", lambda: _item_vectors(settings, spark, recommender["report"]))
    p.run("online features and similar products", lambda: _lookups(settings))
    summary = {
        "log": str(log),
        "seconds": p.seconds,
        "lake": str(settings.lake_dir),
        "attribute report": trained["report_dir"],
        "recommender report": recommender["report_dir"],
        "MLflow UI": f"mlflow ui --backend-store-uri {settings.tracking_uri}",
        "feature repo": f"feast -c {settings.feast_dir / 'repo'} feature-views list",
    }
    print(f"done in {sum(p.seconds.values()):.0f}s", file=out)
    for name, value in summary.items():
        if name != "seconds":
            print(f"  {name}: {value}", file=out)
    return summary


# --- the stages -----------------------------------------------------------------------------
def _echo(title: str, values: dict) -> None:
    print(f"{title}:")
    for k, v in values.items():
        print(f"  {k}: {v}")


def _generate(source: Path, seed: int, products: int, customers: int) -> None:
    from cli.demo_catalogue import generate_demo

    if (source / "articles.csv").is_file():
        print(f"demo catalogue already in {source}")
        return
    generate_demo(source, seed, n_products=products, n_customers=customers, progress=print)


def _ingest(settings: Settings, source: Path):
    from atelier.spark import get_spark
    from spark_jobs.ingest import format_report, run_ingest

    spark = get_spark(settings)
    try:
        report = run_ingest(settings, "hm", source, spark=spark)
    except RuntimeError as e:
        if getattr(e, "report", None) is not None:  # a gate failure: say which checks failed
            print(format_report(e.report))
        raise
    print(format_report(report))
    return spark


def _images(settings: Settings, spark) -> None:
    from spark_jobs.colour import format_report as format_colour
    from spark_jobs.colour import run_colour
    from spark_jobs.embed import format_report as format_embed
    from spark_jobs.embed import run_embed

    print(format_embed(run_embed(settings, spark=spark)))
    print(format_colour(run_colour(settings, spark=spark)))


def _features(settings: Settings, spark) -> None:
    from spark_jobs.product_features import run_product_features
    from spark_jobs.text_features import run_text_features

    _echo("text features", run_text_features(settings, spark=spark))
    _echo("product features", run_product_features(settings, spark=spark))


def _feast(settings: Settings) -> None:
    from atelier.feast_store import apply
    from spark_jobs.materialize import materialize

    apply(settings)
    _echo("materialize", materialize(settings))


def _train_attributes(settings: Settings) -> dict:
    from atelier.lake import Lake
    from training.attributes.evaluation import markdown_table
    from training.attributes.pipeline import train_attributes

    # The paper's 500-sample floor is for ~100k products; scale it to the demo's catalogue so
    # the small runs still learn the attributes whose labels have gaps.
    n_products = Lake(settings).read_arrow("products", ["product_id"]).num_rows
    settings.attributes.min_value_count = min(
        settings.attributes.min_value_count, max(5, n_products // 100)
    )
    print(f"feature service {settings.attributes.feature_service}")
    trained = train_attributes(settings, progress=print)
    print(markdown_table(trained["report"]))
    return trained


def _promote(settings: Settings, name: str) -> None:
    from atelier.registry import format_decision, promote

    print(format_decision(promote(settings, name)))


def _predict(settings: Settings, spark) -> None:
    from spark_jobs.materialize import materialize
    from spark_jobs.predict_attributes import format_report, run_predict_attributes

    print(format_report(run_predict_attributes(settings, spark=spark)))
    _echo("materialize", materialize(settings))


def _train_recommender(settings: Settings) -> dict:
    from training.recommender.pipeline import summary_markdown, train_recommender

    print(
        "popularity, cf, content, hybrid "
        f"(feature service {settings.recommender.feature_service}, predicted attributes included)"
    )
    recommender = train_recommender(settings, progress=print)
    print(summary_markdown(recommender["report"]))
    return recommender


def _item_vectors(settings: Settings, spark, report: dict) -> None:
    from spark_jobs.item_vectors import format_report, run_item_vectors
    from spark_jobs.materialize import materialize

    # The catalogue is historical: take popularity and recency as of the day after its last
    # purchase, not today (when every popularity window would be empty).
    as_of = datetime.fromisoformat(report["period"]["lake_last_interaction"])
    as_of = as_of.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    print(f"champion, as of {as_of.date()}")
    print(format_report(run_item_vectors(settings, spark=spark, as_of=as_of)))
    _echo("materialize", materialize(settings))


def _lookups(settings: Settings) -> None:
    from atelier.colour import describe
    from atelier.feast_store import online_features
    from atelier.lake import Lake
    from spark_jobs.item_vectors import similar_lines

    pid = Lake(settings).read_arrow("products", ["product_id"])["product_id"][0].as_py()
    print(f"online features of product {pid}")
    row = online_features(settings, [pid])
    # One call per view: both name a feature model_version (Feast refuses the collision).
    for view, features in (
        ("predicted_attributes", ("attribute_values", "model_version")),
        ("item_vectors", ("vector", "model_version")),
    ):
        found = online_features(settings, [pid], [f"{view}:{f}" for f in features])
        row.update({f"{view}.{n}": v for n, v in found.items() if n != "product_id"})
    for name, values in row.items():
        print(f"  {name}: {short(values[0])}")
    colour = online_features(settings, [pid], ["colour_features:colour"])["colour"]
    if colour[0] is not None:
        shares = ", ".join(f"{share:.0%} {name}" for name, share in describe(colour[0]))
        print(f"  colour (main image): {shares}")
    print(f"similar products of {pid} (hybrid item vectors, cosine):")
    print("\n".join(similar_lines(settings, pid, "hybrid", 5, None)))


def short(v) -> str:
    """A value for the terminal: long vectors shortened to their first few numbers."""
    if isinstance(v, list) and len(v) > 8:
        head = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v[:6])
        return f"[{head}, ...] ({len(v)} values)"
    return str(v)
