"""The `atelier` command line: thin commands over the stage functions.

Heavy libraries (Spark, TensorFlow, GX, pandas) are imported inside the command that needs them,
so `atelier --help` answers at once.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
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


class _State:
    workdir: Optional[Path] = None


def _settings():
    from atelier.settings import load_settings

    return load_settings(workdir=_State.workdir)


@app.callback()
def main(
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

    _State.workdir = workdir
    setup_logging(log_level)


@app.command("generate-demo")
def generate_demo_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write the H&M-layout catalogue into."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
    products: int = typer.Option(2400, "--products", min=50),
    customers: int = typer.Option(600, "--customers", min=10),
) -> None:
    """Write a synthetic catalogue in the H&M layout (images, articles, customers, purchases)."""
    from cli.demo import generate_demo

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
    layout: str = typer.Argument(..., help="Source layout: hm or fashion-images."),
    source: Path = typer.Argument(..., help="Folder holding the source files."),
) -> None:
    """Land a source into the lake, gated (same job as `spark-submit spark_jobs/ingest.py`)."""
    from spark_jobs.ingest import GateFailure, IngestError, format_report, run_ingest

    settings = _settings()
    try:
        report = run_ingest(settings, layout, source)
    except GateFailure as e:
        typer.echo(format_report(e.report))
        raise typer.Exit(2) from None
    except (IngestError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(format_report(report))


@app.command("embed")
def embed_cmd(
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
    from spark_jobs.embed import GateFailure, format_report, run_embed

    settings = _settings()
    if allow_random_weights:
        settings.embed.allow_random_weights = True
    if max_images is not None:
        settings.embed.max_images = max_images
    try:
        report = run_embed(settings)
    except GateFailure as e:
        typer.echo(format_report(e.report))
        raise typer.Exit(2) from None
    except (ValueError, RuntimeError) as e:  # e.g. no weights and random ones not allowed
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(format_report(report))


@app.command("colour")
def colour_cmd(
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
    from spark_jobs.colour import GateFailure, format_report, run_colour

    settings = _settings()
    try:
        report = run_colour(settings, max_images=max_images)
    except GateFailure as e:
        typer.echo(format_report(e.report))
        raise typer.Exit(2) from None
    except (ValueError, RuntimeError) as e:  # e.g. no product_images table yet
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(format_report(report))


@app.command("features")
def features_cmd() -> None:
    """Build text features (vocabulary, token ids, TF-IDF) and product/customer features."""
    from atelier.spark import get_spark
    from spark_jobs.product_features import run_product_features
    from spark_jobs.text_features import run_text_features

    settings = _settings()
    spark = get_spark(settings)
    _echo_dict("text features", _run(lambda: run_text_features(settings, spark=spark)))
    _echo_dict("product features", _run(lambda: run_product_features(settings, spark=spark)))


@app.command("materialize")
def materialize_cmd() -> None:
    """Gate every feature table, `feast apply`, then materialise the passing ones incrementally."""
    from atelier.feast_store import apply
    from spark_jobs.materialize import materialize

    settings = _settings()
    _run(lambda: apply(settings))
    result = _run(lambda: materialize(settings))
    _echo_dict("materialize", result)
    if any(isinstance(v, dict) and v.get("failures") for v in result.values()):
        raise typer.Exit(2)


@app.command("online")
def online_cmd(
    product_id: str = typer.Argument(..., help="Product whose online features to print."),
) -> None:
    """Print a product's online features from the Feast online store."""
    from atelier.feast_store import online_features

    settings = _settings()
    row = _run(lambda: online_features(settings, [product_id]))
    for name, values in row.items():
        typer.echo(f"  {name}: {_short(values[0])}")


@app.command("similar")
def similar_cmd(
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

    settings = _settings()
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
        GateFailure,
        PredictError,
        format_report,
        parse_min_confidence,
        run_predict_attributes,
    )

    try:
        minimums = parse_min_confidence(min_confidence) if min_confidence else None
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    settings = _settings()
    try:
        report = run_predict_attributes(settings, model_uri=model_uri, min_confidence=minimums)
    except GateFailure as e:
        typer.echo(format_report(e.report))
        raise typer.Exit(2) from None
    except (PredictError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(format_report(report))


@predict_app.command("item-vectors")
def predict_item_vectors_cmd(
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
        GateFailure,
        ItemVectorError,
        format_report,
        run_item_vectors,
    )

    settings = _settings()
    when = None if as_of is None else as_of.replace(tzinfo=UTC)
    try:
        report = run_item_vectors(settings, model_uri=model_uri, as_of=when)
    except GateFailure as e:
        typer.echo(format_report(e.report))
        raise typer.Exit(2) from None
    except (ItemVectorError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(format_report(report))


@app.command("promote")
def promote_cmd(
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

    settings = _settings()
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
    seed: int = typer.Option(0, "--seed"),
    products: int = typer.Option(2400, "--products", min=50),
    customers: int = typer.Option(600, "--customers", min=10),
) -> None:
    """Generate the demo catalogue under the workdir and run every stage on it.

    Offline by design: VGG16 uses seeded random weights unless ImageNet weights are available.
    """
    from atelier.spark import get_spark
    from cli.demo import generate_demo
    from spark_jobs.ingest import GateFailure, format_report, run_ingest

    settings = _settings()
    steps = 12
    source = settings.workdir / "demo-source"
    if not (source / "articles.csv").is_file():
        typer.echo(f"[1/{steps}] generating the demo catalogue in {source}")
        generate_demo(
            source,
            seed,
            n_products=products,
            n_customers=customers,
            progress=lambda m: typer.echo("  " + m, err=True),
        )
    else:
        typer.echo(f"[1/{steps}] demo catalogue already in {source}")

    typer.echo(f"[2/{steps}] ingesting it into the lake")
    spark = get_spark(settings)
    try:
        report = run_ingest(settings, "hm", source, spark=spark)
    except GateFailure as e:
        typer.echo(format_report(e.report))
        raise typer.Exit(2) from None
    typer.echo(format_report(report))

    from atelier.feast_store import apply, online_features
    from spark_jobs.colour import format_report as format_colour
    from spark_jobs.colour import run_colour
    from spark_jobs.embed import format_report as format_embed
    from spark_jobs.embed import run_embed
    from spark_jobs.materialize import materialize
    from spark_jobs.product_features import run_product_features
    from spark_jobs.text_features import run_text_features

    typer.echo(f"[3/{steps}] embedding product images (VGG16) and describing their colour")
    settings.embed.allow_random_weights = True  # the demo is offline; recorded in `weights`
    typer.echo(format_embed(_run(lambda: run_embed(settings, spark=spark))))
    typer.echo(format_colour(_run(lambda: run_colour(settings, spark=spark))))
    typer.echo(f"[4/{steps}] text and product features")
    _echo_dict("text features", _run(lambda: run_text_features(settings, spark=spark)))
    _echo_dict("product features", _run(lambda: run_product_features(settings, spark=spark)))
    typer.echo(f"[5/{steps}] feast apply + gated materialisation")
    _run(lambda: apply(settings))
    _echo_dict("materialize", _run(lambda: materialize(settings)))

    from atelier.lake import Lake
    from atelier.registry import format_decision, promote
    from spark_jobs.predict_attributes import format_report as format_predict
    from spark_jobs.predict_attributes import run_predict_attributes
    from training.attributes.evaluation import markdown_table
    from training.attributes.pipeline import train_attributes

    typer.echo(
        f"[6/{steps}] training the attribute model (Feast {settings.attributes.feature_service})"
    )
    # The demo shows the pipeline, not the Figure 5 study: ablations are for `train attributes`.
    settings.attributes.ablations = False
    # The paper's 500-sample floor is for ~100k products; scale it to the demo's catalogue so
    # the small runs still learn the attributes whose labels have gaps.
    n_products = Lake(settings).read_arrow("products", ["product_id"]).num_rows
    settings.attributes.min_value_count = min(
        settings.attributes.min_value_count, max(5, n_products // 100)
    )
    trained = _run(lambda: train_attributes(settings, progress=lambda m: typer.echo("  " + m)))
    typer.echo(markdown_table(trained["report"]))
    typer.echo(f"[7/{steps}] promotion of {settings.mlflow.attributes_model}")
    typer.echo(format_decision(_run(lambda: promote(settings, settings.mlflow.attributes_model))))
    typer.echo(f"[8/{steps}] predicting missing attributes for the whole catalogue")
    typer.echo(format_predict(_run(lambda: run_predict_attributes(settings, spark=spark))))
    _echo_dict("materialize", _run(lambda: materialize(settings)))

    from spark_jobs.item_vectors import format_report as format_vectors
    from spark_jobs.item_vectors import run_item_vectors, similar_lines
    from training.recommender.pipeline import summary_markdown, train_recommender

    typer.echo(
        f"[9/{steps}] training the recommender: popularity, cf, content, hybrid "
        f"(Feast {settings.recommender.feature_service}, predicted attributes included)"
    )
    recommender = _run(lambda: train_recommender(settings, progress=lambda m: typer.echo("  " + m)))
    typer.echo(summary_markdown(recommender["report"]))
    typer.echo(f"[10/{steps}] promotion of {settings.mlflow.recommender_model}")
    typer.echo(format_decision(_run(lambda: promote(settings, settings.mlflow.recommender_model))))
    # The catalogue is historical: take popularity and recency as of the day after its last
    # purchase, not today (when every popularity window would be empty).
    as_of = datetime.fromisoformat(recommender["report"]["period"]["lake_last_interaction"])
    as_of = as_of.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    typer.echo(f"[11/{steps}] item vectors of every product (champion, as of {as_of.date()})")
    typer.echo(format_vectors(_run(lambda: run_item_vectors(settings, spark=spark, as_of=as_of))))
    _echo_dict("materialize", _run(lambda: materialize(settings)))

    pid = Lake(settings).read_arrow("products", ["product_id"])["product_id"][0].as_py()
    typer.echo(f"[12/{steps}] online features of product {pid}")
    row = _run(lambda: online_features(settings, [pid]))
    # One call per view: both name a feature model_version (Feast refuses the collision).
    for view, features in (
        ("predicted_attributes", ("attribute_values", "model_version")),
        ("item_vectors", ("vector", "model_version")),
    ):
        refs = [f"{view}:{f}" for f in features]
        found = _run(lambda refs=refs: online_features(settings, [pid], refs))
        row.update({f"{view}.{n}": v for n, v in found.items() if n != "product_id"})
    for name, values in row.items():
        typer.echo(f"  {name}: {_short(values[0])}")
    from atelier.colour import describe

    colour = _run(lambda: online_features(settings, [pid], ["colour_features:colour"]))["colour"]
    if colour[0] is not None:
        shares = ", ".join(f"{share:.0%} {name}" for name, share in describe(colour[0]))
        typer.echo(f"  colour (main image): {shares}")
    typer.echo(f"similar products of {pid} (hybrid item vectors, cosine):")
    typer.echo("\n".join(_run(lambda: similar_lines(settings, pid, "hybrid", 5, None))))
    typer.echo(
        f"\nlake: {settings.lake_dir}\nGX Data Docs: "
        f"{settings.gx_dir / 'uncommitted/data_docs/local_site/index.html'}\n"
        "feature repo: cd feature_repo && "
        f"ATELIER_WORKDIR={settings.workdir} feast feature-views list\n"
        f"attribute report: {trained['report_dir']}\n"
        f"recommender report (Table 3, Figure 7): {recommender['report_dir']}\n"
        f"MLflow UI: mlflow ui --backend-store-uri {settings.tracking_uri}"
    )


def _short(v) -> str:
    """A value for the terminal: long vectors shortened to their first few numbers."""
    if isinstance(v, list) and len(v) > 8:
        head = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v[:6])
        return f"[{head}, ...] ({len(v)} values)"
    return str(v)


@app.command("tables")
def tables_cmd() -> None:
    """List the lake's tables with their Delta version and row count."""
    from atelier.contracts import ALL
    from atelier.lake import Lake

    lake = Lake(_settings())
    for name in ALL:
        if lake.exists(name):
            typer.echo(
                f"{name:<16} v{lake.version(name):<4} {lake.read_arrow(name).num_rows:>9} rows"
            )
        else:
            typer.echo(f"{name:<16} (absent)")


train_app = typer.Typer(
    help="Train a model, evaluate it, log it to MLflow, register it.", no_args_is_help=True
)
evaluate_app = typer.Typer(help="Evaluate a registered model on other data.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")


@train_app.command("attributes")
def train_attributes_cmd(
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

    settings = _settings()
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

    settings = _settings()
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

    settings = _settings()
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

    settings = _settings()
    result = _run(
        lambda: evaluate_recommender(settings, interactions, report, model_uri, typer.echo)
    )
    typer.echo(summary_markdown(result))
    typer.echo(f"report: {report}")


@app.command("serve")
def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    poll_seconds: float = typer.Option(
        30.0,
        "--poll-seconds",
        min=0.0,
        help="Reload when the champion or the lake's tables changed, this often (0: never).",
    ),
) -> None:
    """Serve the recommendation API (the champion over Feast online features)."""
    import uvicorn

    from serving.app import configure_access_log, create_app

    settings = _settings()
    base = f"http://{host}:{port}"
    customer, product = _examples(settings)
    typer.echo(
        f"atelier serving {settings.workdir} on {base} (docs {base}/docs, metrics {base}/metrics)\n"
        f"  gallery {base}/ui/  (e.g. {base}/ui/customers/{customer})\n"
        f"  curl {base}/ready\n"
        f"  curl -X POST {base}/recommendations -H 'content-type: application/json' "
        f"""-d '{{"customer_id": "{customer}", "k": 5, "explain": true}}'\n"""
        f"  curl '{base}/products/{product}/similar?k=5'\n"
        f"  curl {base}/products/{product}/attributes\n"
        f"  curl -X POST {base}/admin/reload"
    )
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


def run() -> None:  # console-script entry point
    app(prog_name="atelier")


if __name__ == "__main__":
    sys.exit(run())
