"""The `atelier` command line: thin commands over the stage functions.

Heavy libraries (Spark, TensorFlow, GX, pandas) are imported inside the command that needs them,
so `atelier --help` answers at once.
"""

from __future__ import annotations

import sys
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
    from atelier.demo import generate_demo

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


@app.command("demo")
def demo_cmd(
    seed: int = typer.Option(0, "--seed"),
    products: int = typer.Option(2400, "--products", min=50),
    customers: int = typer.Option(600, "--customers", min=10),
) -> None:
    """Generate the demo catalogue under the workdir and run every stage on it."""
    from atelier.demo import generate_demo
    from spark_jobs.ingest import GateFailure, format_report, run_ingest

    settings = _settings()
    source = settings.workdir / "demo-source"
    if not (source / "articles.csv").is_file():
        typer.echo(f"[1/2] generating the demo catalogue in {source}")
        generate_demo(
            source,
            seed,
            n_products=products,
            n_customers=customers,
            progress=lambda m: typer.echo("  " + m, err=True),
        )
    else:
        typer.echo(f"[1/2] demo catalogue already in {source}")
    typer.echo("[2/2] ingesting it into the lake")
    try:
        report = run_ingest(settings, "hm", source)
    except GateFailure as e:
        typer.echo(format_report(e.report))
        raise typer.Exit(2) from None
    typer.echo(format_report(report))
    typer.echo(
        f"\nlake: {settings.lake_dir}\nGX Data Docs: "
        f"{settings.gx_dir / 'uncommitted/data_docs/local_site/index.html'}"
    )


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


def run() -> None:  # console-script entry point
    app(prog_name="atelier")


if __name__ == "__main__":
    sys.exit(run())
