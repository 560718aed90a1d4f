"""The `atelier` command line: thin commands over the stage functions.

Heavy libraries (Spark, TensorFlow, GX, pandas) are imported inside the command that needs them,
so `atelier --help` answers at once.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="atelier",
    help="Fashion product characterisation and personalisation platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings(ctx: typer.Context):
    """The invocation's settings: the root context's object, made once by `main` from the
    command line (--workdir, ATELIER_* variables) and passed down, never a global."""
    return ctx.find_root().obj


@app.callback()
def main(
    ctx: typer.Context,
    workdir: Optional[Path] = typer.Option(
        None,
        "--workdir",
        "-w",
        envvar="ATELIER_WORKDIR",
        help="Folder holding every artefact of a run (default ./workspace).",
    ),
    log_level: str = typer.Option("INFO", "--log-level", envvar="ATELIER_LOG_LEVEL"),
) -> None:
    """atelier [--workdir DIR] COMMAND"""
    from atelier.logs import setup_logging
    from atelier.settings import load_settings

    setup_logging(log_level)
    ctx.obj = load_settings(workdir=workdir)


@app.command("generate-demo")
def generate_demo_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write the H&M-layout catalogue into."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
    products: int = typer.Option(2400, "--products", min=50),
    customers: int = typer.Option(600, "--customers", min=10),
) -> None:
    """Write a synthetic catalogue in the H&M layout (images, articles, customers, purchases)."""
    from cli.demo_catalogue import generate_demo

    summary = generate_demo(
        out_dir,
        seed,
        n_products=products,
        n_customers=customers,
        progress=lambda m: typer.echo(m, err=True),
    )
    typer.echo(f"demo catalogue written to {out_dir}")
    for k, v in summary.items():
        typer.echo(f"  {k}: {v}")


@app.command("ingest")
def ingest_cmd(
    ctx: typer.Context,
    layout: str = typer.Argument(..., help="Source layout: hm or fashion-images."),
    source: Path = typer.Argument(..., help="Folder holding the source files."),
    deletes: bool = typer.Option(
        None,
        "--deletes/--no-deletes",
        help="The source is the whole catalogue: tombstone products missing from it, delete "
        "labels and images missing from it (default: the setting ingest.deletes, off).",
        show_default=False,
    ),
) -> None:
    """Land a source into the lake, gated (same job as `spark-submit spark_jobs/ingest.py`)."""
    from spark_jobs.ingest import IngestError, format_report, run_ingest

    settings = _settings(ctx)
    if deletes is not None:
        settings.ingest.deletes = deletes
    _job(lambda: run_ingest(settings, layout, source), format_report, (IngestError, ValueError))


@app.command("embed")
def embed_cmd(
    ctx: typer.Context,
    allow_random_weights: bool = typer.Option(
        False,
        "--allow-random-weights",
        help="Use seeded random VGG16 weights when no ImageNet weights are available "
        "(offline demo and tests); recorded as weights='random:<seed>'.",
    ),
    max_images: int | None = typer.Option(
        None,
        "--max-images",
        min=1,
        help="Embed at most N pending shots, in product order (a backfill in slices); "
        "rerun to continue.",
    ),
) -> None:
    """Embed product images not embedded yet (the job of `spark-submit spark_jobs/embed.py`)."""
    from spark_jobs.embed import format_report, run_embed

    settings = _settings(ctx)
    if allow_random_weights:
        settings.embed.allow_random_weights = True
    if max_images is not None:
        settings.embed.max_images = max_images
    # RuntimeError: e.g. no weights and random ones not allowed
    _job(lambda: run_embed(settings), format_report, (ValueError, RuntimeError))


@app.command("colour")
def colour_cmd(
    ctx: typer.Context,
    max_images: int | None = typer.Option(
        None,
        "--max-images",
        min=1,
        help="Describe at most N pending shots, in product order (a backfill in slices); "
        "rerun to continue.",
    ),
) -> None:
    """Describe the garment's colour in product images not described yet (the job of
    `spark-submit spark_jobs/colour.py`): palette shares and summary numbers per shot."""
    from spark_jobs.colour import format_report, run_colour

    settings = _settings(ctx)
    # RuntimeError: e.g. no product_images table yet
    _job(
        lambda: run_colour(settings, max_images=max_images),
        format_report,
        (ValueError, RuntimeError),
    )


@app.command("features")
def features_cmd(ctx: typer.Context) -> None:
    """Build text features (vocabulary, token ids, TF-IDF) and product/customer features."""
    from atelier.spark import get_spark
    from spark_jobs.product_features import run_product_features
    from spark_jobs.text_features import run_text_features

    settings = _settings(ctx)
    spark = get_spark(settings)
    _echo_dict("text features", _run(lambda: run_text_features(settings, spark=spark)))
    _echo_dict("product features", _run(lambda: run_product_features(settings, spark=spark)))


@app.command("materialize")
def materialize_cmd(ctx: typer.Context) -> None:
    """Gate every feature table, `feast apply`, then materialise the passing ones incrementally."""
    from atelier.feast_store import apply
    from spark_jobs.materialize import materialize

    settings = _settings(ctx)
    _run(lambda: apply(settings))
    result = _run(lambda: materialize(settings))
    _echo_dict("materialize", result)
    if any(isinstance(v, dict) and v.get("failures") for v in result.values()):
        raise typer.Exit(2)


@app.command("feast-repo")
def feast_repo_cmd(ctx: typer.Context) -> None:
    """Write this workdir's Feast feature repository and print its path, for the feast CLI:
    `feast -c $(atelier feast-repo) apply` (no environment variable to set)."""
    from atelier.feast_store import write_repo

    typer.echo(str(_run(lambda: write_repo(_settings(ctx)))))


@app.command("online")
def online_cmd(
    ctx: typer.Context,
    product_id: str = typer.Argument(..., help="Product whose online features to print."),
) -> None:
    """Print a product's online features from the Feast online store."""
    from atelier.feast_store import online_features
    from cli.demo import short

    settings = _settings(ctx)
    row = _run(lambda: online_features(settings, [product_id]))
    for name, values in row.items():
        typer.echo(f"  {name}: {short(values[0])}")


@app.command("similar")
def similar_cmd(
    ctx: typer.Context,
    product_id: str = typer.Argument(..., help="Product whose similar products to list."),
    variant: str = typer.Option("hybrid", "--variant", help="Item tower: cf, content or hybrid."),
    n: int = typer.Option(10, "--n", min=1, help="Number of neighbours."),
    model_uri: Optional[str] = typer.Option(
        None, "--model-uri", help="Compute the vectors with this model instead of the lake's."
    ),
) -> None:
    """List a product's nearest neighbours by cosine similarity of item vectors.

    Vectors come from the lake's item_vectors table (the champion's, written by
    spark_jobs/item_vectors.py); with --model-uri, or when the table has none of the variant
    but the champion is of it, they are computed here from Feast's content features.
    """
    from spark_jobs.item_vectors import ItemVectorError, similar_lines

    settings = _settings(ctx)
    try:
        lines = similar_lines(settings, product_id, variant, n, model_uri)
    except (ItemVectorError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo("\n".join(lines))


predict_app = typer.Typer(help="Batch predictions for the whole catalogue.", no_args_is_help=True)
app.add_typer(predict_app, name="predict")


@predict_app.command("attributes")
def predict_attributes_cmd(
    ctx: typer.Context,
    model_uri: Optional[str] = typer.Option(
        None,
        "--model-uri",
        help="MLflow model URI (default: the champion of the attribute model in the settings).",
    ),
    min_confidence: Optional[list[str]] = typer.Option(
        None,
        "--min-confidence",
        metavar="[ATTRIBUTE=]VALUE",
        help="Confidence in [0, 1] a prediction needs to fill a gap (else it stays empty): "
        "VALUE for every attribute, ATTRIBUTE=VALUE for one; repeatable. Replaces "
        "settings.predict.min_confidence. The training report lists thresholds per precision.",
    ),
) -> None:
    """Fill every product's missing attributes with the model; known labels are kept.

    The job of `spark-submit spark_jobs/predict_attributes.py`: writes predicted_attributes
    and attribute_vectors (materialise the latter for Feast with `atelier materialize`).
    """
    from spark_jobs.predict_attributes import (
        PredictError,
        format_report,
        parse_min_confidence,
        run_predict_attributes,
    )

    try:
        minimums = parse_min_confidence(min_confidence) if min_confidence else None
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    settings = _settings(ctx)
    _job(
        lambda: run_predict_attributes(settings, model_uri=model_uri, min_confidence=minimums),
        format_report,
        (PredictError, ValueError),
    )


@predict_app.command("item-vectors")
def predict_item_vectors_cmd(
    ctx: typer.Context,
    model_uri: Optional[str] = typer.Option(
        None,
        "--model-uri",
        help="MLflow model URI (default: the champion of the recommender model in the settings).",
    ),
    as_of: Optional[datetime] = typer.Option(
        None,
        "--as-of",
        formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
        help="Time the content features (popularity, recency) are taken at, UTC "
        "(default: today 00:00 UTC; give the catalogue's last day for historical data).",
    ),
) -> None:
    """Write the recommender's vector of every product, never-bought ones included.

    The job of `spark-submit spark_jobs/item_vectors.py`: merges the changed vectors into
    item_vectors (materialise them for serving with `atelier materialize`).
    """
    from datetime import UTC

    from spark_jobs.item_vectors import (
        ItemVectorError,
        format_report,
        run_item_vectors,
    )

    settings = _settings(ctx)
    when = None if as_of is None else as_of.replace(tzinfo=UTC)
    _job(
        lambda: run_item_vectors(settings, model_uri=model_uri, as_of=when),
        format_report,
        (ItemVectorError, ValueError),
    )


@app.command("promote")
def promote_cmd(
    ctx: typer.Context,
    model: str = typer.Argument(
        ...,
        help="Registered model name (e.g. atelier-attributes); 'attributes' and 'recommender' "
        "stand for the names in the settings.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Promote the challenger even when it does not beat the champion."
    ),
) -> None:
    """Move the `champion` alias to the `challenger` version when its metric is better."""
    from atelier.registry import RegistryError, format_decision, promote

    settings = _settings(ctx)
    shorthand = {
        "attributes": settings.mlflow.attributes_model,
        "recommender": settings.mlflow.recommender_model,
    }
    try:
        decision = promote(settings, shorthand.get(model, model), force=force)
    except RegistryError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_decision(decision))


def _job(run, format_report, errors: tuple[type[Exception], ...]) -> None:
    """Run a stage job and print its report: a failed gate prints the report and exits 2, one
    of `errors` is one line and exit 1 (a held lock or a lost commit: `run` at the bottom)."""
    from expectations.gate import GateFailure

    try:
        report = run()
    except GateFailure as e:
        typer.echo(format_report(e.report))
        raise typer.Exit(2) from None
    except errors as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(format_report(report))


def _run(fn):
    """Run a stage; a known error becomes a one-line message and exit code 1."""
    try:
        return fn()
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def _echo_dict(title: str, d: dict) -> None:
    typer.echo(f"{title}:")
    for k, v in d.items():
        typer.echo(f"  {k}: {v}")


@app.command("demo")
def demo_cmd(
    ctx: typer.Context,
    seed: int = typer.Option(0, "--seed"),
    products: int = typer.Option(340, "--products", min=50),
    customers: int = typer.Option(150, "--customers", min=10),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Stream every stage's output instead of the log file."
    ),
) -> None:
    """Generate the demo catalogue under the workdir and run every stage on it.

    One line per stage on the terminal; the full output in <workdir>/logs/demo-<time>.log.
    Offline by design: VGG16 uses seeded random weights unless ImageNet weights are available.
    """
    from cli.demo import DemoFailed, run_demo

    try:
        run_demo(_settings(ctx), seed=seed, products=products, customers=customers, verbose=verbose)
    except DemoFailed as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


@app.command("tables")
def tables_cmd(ctx: typer.Context) -> None:
    """List the lake's tables with their Delta version and row count."""
    from atelier.contracts import ALL
    from atelier.lake import Lake

    lake = Lake(_settings(ctx))
    for name in ALL:
        if lake.exists(name):
            typer.echo(
                f"{name:<16} v{lake.version(name):<4} {lake.read_arrow(name).num_rows:>9} rows"
            )
        else:
            typer.echo(f"{name:<16} (absent)")


cluster_app = typer.Typer(
    help="The scale profile on this machine: Spark standalone, PostgreSQL, MLflow, Redis.",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster")
CLUSTER_DIR = typer.Option(Path(".cluster"), "--dir", help="Where the services keep their data.")


@cluster_app.command("up")
def cluster_up_cmd(directory: Path = CLUSTER_DIR) -> None:
    """Start every service (on 127.0.0.1) not running yet; write <dir>/atelier.scale.yaml."""
    from atelier.cluster import ClusterError, up

    try:
        for name, url in up(directory, echo=typer.echo).items():
            typer.echo(f"  {name:<15} {url}")
    except ClusterError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


@cluster_app.command("down")
def cluster_down_cmd(directory: Path = CLUSTER_DIR) -> None:
    """Stop the services started from <dir> (their data stays for the next `up`)."""
    from atelier.cluster import down

    if not down(directory, echo=typer.echo):
        typer.echo("nothing running")


@cluster_app.command("status")
def cluster_status_cmd(directory: Path = CLUSTER_DIR) -> None:
    """Each service started from <dir> and whether it runs; exit 1 when one does not."""
    from atelier.cluster import status

    states = status(directory)
    for name, alive in states.items():
        typer.echo(f"{name:<15} {'running' if alive else 'STOPPED'}")
    if not states or not all(states.values()):
        raise typer.Exit(1)


train_app = typer.Typer(
    help="Train a model, evaluate it, log it to MLflow, register it.", no_args_is_help=True
)
evaluate_app = typer.Typer(help="Evaluate a registered model on other data.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")


@train_app.command("attributes")
def train_attributes_cmd(
    ctx: typer.Context,
    report: Optional[Path] = typer.Option(
        None,
        "--report",
        help="Folder for attributes.json/.md and the figures "
        "(default <workdir>/reports/attributes).",
    ),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Round-robin SGD steps."),
    no_ablations: bool = typer.Option(False, "--no-ablations", help="Skip the Figure 5 runs."),
) -> None:
    """Train the multi-task attribute model from Feast, evaluate it (Table 2, baselines,
    ablations, figures), log everything to MLflow and register it as `challenger`."""
    from training.attributes.evaluation import markdown_table
    from training.attributes.pipeline import train_attributes

    settings = _settings(ctx)
    if steps is not None:
        settings.attributes.steps = steps
    if no_ablations:
        settings.attributes.ablations = False
    out = _run(lambda: train_attributes(settings, report, progress=typer.echo))
    typer.echo(markdown_table(out["report"]))
    typer.echo(f"ablations: {_fmt_scores(out['report'].get('ablations', {}))}")
    typer.echo(
        f"report: {out['report_dir']}\nMLflow run {out['run_id']}, "
        f"{settings.mlflow.attributes_model} version {out['model_version']} (challenger)"
    )


@evaluate_app.command("attributes")
def evaluate_attributes_cmd(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="Folder of a labelled catalogue."),
    layout: str = typer.Option(..., "--layout", help="Its layout: hm or fashion-images."),
    report: Path = typer.Option(..., "--report", help="Folder for the evaluation report."),
    model_uri: Optional[str] = typer.Option(
        None, "--model-uri", help="Model to score (default: the champion)."
    ),
    weights: Optional[Path] = typer.Option(
        None,
        "--weights",
        help="VGG16 no-top weights file to embed the catalogue with; it must be the one the "
        "model was trained on (checked by its hash). Default: the file the model recorded.",
    ),
    allow_random_weights: bool = typer.Option(
        False,
        "--allow-random-weights",
        hidden=True,  # the bundle says which weights; this only serves bundles without it
    ),
) -> None:
    """Score the registered attribute model on a catalogue it has never seen (products and
    images are enough), embedded with the VGG16 weights the model was trained on."""
    from cli.evaluate import evaluate_attributes
    from training.attributes.evaluation import markdown_table

    settings = _settings(ctx)
    if allow_random_weights:
        settings.embed.allow_random_weights = True
    result = _run(
        lambda: evaluate_attributes(
            settings,
            source,
            layout,
            report,
            model_uri,
            progress=typer.echo,
            weights=None if weights is None else str(weights),
        )
    )
    typer.echo(markdown_table(result))
    typer.echo(f"report: {report}")


@train_app.command("recommender")
def train_recommender_cmd(
    ctx: typer.Context,
    train_end: Optional[datetime] = typer.Option(
        None,
        "--train-end",
        formats=["%Y-%m-%d"],
        help="Last day of the training window (inclusive); default: the lake's last "
        "interaction day minus the test period.",
    ),
    variants: str = typer.Option(
        "popularity,cf,content,hybrid", "--variants", help="Comma-separated variants to run."
    ),
    runs: Optional[int] = typer.Option(
        None, "--runs", min=1, help="Seeded runs per learned variant (default: the setting)."
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Most epochs per run."),
    report: Optional[Path] = typer.Option(
        None,
        "--report",
        help="Folder for recommender.json/.md/.png (default <workdir>/reports/recommender).",
    ),
) -> None:
    """Train the recommender variants, evaluate them on the following period (Table 3 in the
    all-products and new-to-customer modes), log everything to MLflow and register the hybrid
    run with the lowest validation loss as `challenger`. A --train-end at or after the last
    interaction trains to deploy: all history, validation metrics, no test table."""
    from training.recommender.pipeline import summary_markdown, train_recommender

    settings = _settings(ctx)
    if epochs is not None:
        settings.recommender.epochs = epochs
    end = train_end.date() if train_end is not None else None
    out = _run(
        lambda: train_recommender(
            settings, end, variants.split(","), runs, report, progress=typer.echo
        )
    )
    typer.echo(summary_markdown(out["report"]))
    version = out["model_version"]
    typer.echo(
        f"report: {out['report_dir']}\nMLflow run {out['run_id']}"
        + (
            f", {settings.mlflow.recommender_model} version {version} (challenger)"
            if version is not None
            else " (no hybrid run: nothing registered)"
        )
    )


@evaluate_app.command("recommender")
def evaluate_recommender_cmd(
    ctx: typer.Context,
    interactions: Path = typer.Option(
        ...,
        "--interactions",
        help="Purchases of a later period in the H&M transactions_train.csv layout.",
    ),
    report: Path = typer.Option(..., "--report", help="Folder for the evaluation report."),
    model_uri: Optional[str] = typer.Option(
        None, "--model-uri", help="Model to score (default: the champion and the challenger)."
    ),
) -> None:
    """Score the registered recommender(s) on a later period, in both modes (all products,
    new to customer); histories come from the lake."""
    from training.recommender.pipeline import evaluate_recommender, summary_markdown

    settings = _settings(ctx)
    result = _run(
        lambda: evaluate_recommender(settings, interactions, report, model_uri, typer.echo)
    )
    typer.echo(summary_markdown(result))
    typer.echo(f"report: {report}")


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    poll_seconds: float = typer.Option(
        30.0,
        "--poll-seconds",
        min=0.0,
        help="Reload when the champion or the lake's tables changed, this often (0: never).",
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        help="Server processes on the port (one state each; metrics summed, reloads shared).",
    ),
) -> None:
    """Serve the recommendation API (the champion over Feast online features)."""
    import uvicorn

    from serving.app import configure_access_log, create_app

    settings = _settings(ctx)
    base = f"http://{host}:{port}"
    customer, product = _examples(settings)
    admin_header = (
        ' -H "authorization: Bearer $ATELIER_SERVING__ADMIN_TOKEN"'
        if settings.serving.admin_token is not None
        else ""
    )
    typer.echo(
        f"atelier serving {settings.workdir} on {base} (docs {base}/docs, metrics {base}/metrics)\n"
        f"  gallery {base}/ui/  (e.g. {base}/ui/customers/{customer})\n"
        f"  curl {base}/ready\n"
        f"  curl -X POST {base}/recommendations -H 'content-type: application/json' "
        f"""-d '{{"customer_id": "{customer}", "k": 5, "explain": true}}'\n"""
        f"  curl '{base}/products/{product}/similar?k=5'\n"
        f"  curl {base}/products/{product}/attributes\n"
        f"  curl -X POST {base}/admin/reload{admin_header}"
    )
    if settings.serving.admin_token is None and host not in ("127.0.0.1", "::1", "localhost"):
        typer.echo(
            "  note: no serving.admin_token set: /admin/* answers loopback clients only "
            "(set ATELIER_SERVING__ADMIN_TOKEN to reload from elsewhere)"
        )
    if workers > 1:
        from serving.workers import serve_workers

        typer.echo(f"  {workers} worker processes")
        serve_workers(settings, host, port, workers, poll_seconds or None)
        return
    configure_access_log()
    # Requests run in a thread pool and each scores one customer (a 1 x k by k x n product):
    # BLAS threads gain nothing there, and their spin-waiting took the cores the other
    # requests needed (server CPU per request 7 ms with them, 2.5 ms without, on H&M).
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    app_ = create_app(settings, poll_seconds=poll_seconds or None)
    uvicorn.run(app_, host=host, port=port, access_log=False, log_level="warning")


def _examples(settings) -> tuple[str, str]:
    """A customer with the longest history and a product of theirs, for the example calls
    (placeholders when the lake has none yet)."""
    from atelier.lake import Lake

    try:
        lake = Lake(settings)
        frame = lake.read_pandas("customer_history", ["customer_id", "history_length", "history"])
        best = frame.sort_values(["history_length", "customer_id"], ascending=[False, True])
        row = best.iloc[0]
        return str(row["customer_id"]), str(list(row["history"])[0])
    except Exception:  # noqa: BLE001 - examples only: the server reports real problems itself
        return "CUSTOMER", "PRODUCT"


def _fmt_scores(scores: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items()) or "-"


def run() -> None:
    """Console-script entry point: the command's own exit status, every time (`exit_now`)."""
    from atelier.process import exit_now, known_failure

    try:
        app(prog_name="atelier")
    except SystemExit as e:
        exit_now(e.code)
    except Exception as e:
        # A known failure (lock held, commit conflict) is one line, never a traceback.
        failure = known_failure(e)
        if failure is None:
            raise
        print(f"error: {failure[1]}", file=sys.stderr)
        exit_now(failure[0])
    exit_now(0)


if __name__ == "__main__":
    run()
