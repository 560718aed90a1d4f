"""Run a table's contract suite against a DataFrame and say whether the table may be published.

One file-backed GX context lives in `settings.gx_dir` and is reused across runs: its data
sources, suites, validation definitions and checkpoints are looked up or updated in place, so
running the gate twice in the same workdir is fine. Validation results are stored there too
and, when `settings.gate.build_data_docs` is on, rendered into Data Docs
(`<gx_dir>/uncommitted/data_docs/local_site/index.html`).

Layout inside the context:
- data source "atelier" (pandas) and "atelier_spark" (Spark), one dataframe asset per table,
  each with one whole-dataframe batch definition "whole";
- suite `<table>` (see `expectations.suites.build_suite`), rebuilt on every run because the
  row-count band, the reference sets and "now" change between runs;
- validation definition and checkpoint `<table>` (pandas) / `<table>_spark` (Spark).

Not safe for two processes writing the same gx_dir at once (GX rewrites YAML/JSON files).
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:  # pragma: no cover - typing only; keeps the import cheap
    from atelier.settings import Settings

PANDAS_SOURCE = "atelier"
SPARK_SOURCE = "atelier_spark"
BATCH_DEFINITION = "whole"
DATA_DOCS_SITE = "local_site"
# How many offending values a failure message quotes.
EXAMPLES = 5


class GateFailure(RuntimeError):
    """A job's batch failed its gate: nothing was published. `report` is the job's report (what
    its `format_report` prints); `what` names the gate in the message."""

    def __init__(self, what: str, failures: list[str], report: Any):
        super().__init__(f"{what} failed, nothing published:\n  " + "\n  ".join(failures))
        self.failures = failures
        self.report = report


@dataclass
class GateResult:
    """Outcome of one table's gate."""

    table: str
    success: bool
    # One human-readable line per failed expectation, e.g.
    # "products: expect_column_values_to_be_unique(product_id) failed: 3 unexpected values,
    # e.g. ['0108775015']".
    failures: list[str] = field(default_factory=list)
    # evaluated/successful/unsuccessful_expectations, success_percent, row_count.
    statistics: dict[str, Any] = field(default_factory=dict)
    # Data Docs index.html, when they were built.
    data_docs: Path | None = None

    def summary(self) -> str:
        state = "passed" if self.success else f"FAILED ({len(self.failures)} failures)"
        return f"{self.table}: gate {state}"


def validate_table(
    settings: Settings,
    table: str,
    df: Any,
    *,
    row_count_band: tuple[int, int],
    reference_values: dict[str, list] | None = None,
    now: datetime | None = None,
    list_checks: dict | None = None,
) -> GateResult:
    """Validate `df` (pandas, pyarrow.Table or Spark DataFrame) against `table`'s contract.

    row_count_band: inclusive (min, max) rows. reference_values: column -> the keys of the
    referenced table (see `expectations.suites.build_suite`). now: timezone-aware instant
    timestamps must not exceed (default: the current time). list_checks: list column ->
    `expectations.suites.ListCheck` (e.g. embedding length 512 and finite).
    """
    from atelier.contracts import contract
    from expectations.suites import build_suite

    spec = contract(table)
    suite = build_suite(
        spec,
        row_count_band=row_count_band,
        reference_values=reference_values,
        now=now,
        list_checks=list_checks,
    )
    df, spark = _with_check_columns(df, spec, reference_values, list_checks)
    with _quiet():
        context = _context(settings)
        checkpoint, suite = _checkpoint(context, settings, table, suite, spark=spark)
        result = _run_checkpoint(checkpoint, df, spark=spark)
    (run,) = result.run_results.values()
    docs = _index_html(context) if settings.gate.build_data_docs else None
    return _gate_result(table, suite, run, docs)


def _with_check_columns(df: Any, spec, reference_values, list_checks) -> tuple[Any, bool]:
    """(`df` with the list and reference check columns added, whether it is a Spark frame)."""
    from expectations.suites import with_list_checks, with_reference_checks

    spark = _is_spark(df)
    if spark and list_checks:
        df = df.toPandas()  # list statistics are computed row-wise in pandas
        spark = False
    if not spark:
        df = with_list_checks(_as_pandas(df), list_checks)
    return with_reference_checks(df, spec, reference_values), spark


def _checkpoint(context, settings: Settings, table: str, suite, *, spark: bool):
    """(checkpoint `<table>` (`<table>_spark` for Spark) validating `suite`, the stored suite).

    The suite, validation definition and checkpoint are added or updated in the context.
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    batch_definition = _batch_definition(context, table, spark=spark)
    suite = context.suites.add_or_update(suite)
    name = f"{table}_spark" if spark else table
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
    )
    actions = []
    if settings.gate.build_data_docs:
        actions.append(UpdateDataDocsAction(name="update_data_docs", site_names=[DATA_DOCS_SITE]))
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=name,
            validation_definitions=[validation],
            actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
        )
    )
    return checkpoint, suite


def _run_checkpoint(checkpoint, df: Any, *, spark: bool):
    """The checkpoint's result over `df`."""
    if spark:
        # Every metric is a Spark job over the whole lineage (the reference joins
        # included): compute it once, and release it afterwards.
        df = df.persist()
    try:
        return checkpoint.run(batch_parameters={"dataframe": df})
    finally:
        if spark:
            df.unpersist()


def _gate_result(table: str, suite, run, data_docs: Path | None) -> GateResult:
    """The `GateResult` of one validation run of `suite`."""
    # GX reports results in its own order (errored metrics first); keep the suite's order.
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    results = sorted(run.results, key=lambda r: order.get(r.expectation_config.id, len(order)))
    failures = [_describe(table, r) for r in results if not r.success]
    statistics = dict(run.statistics)
    statistics["row_count"] = _row_count(run.results)
    return GateResult(
        table=table,
        success=bool(run.success),
        failures=failures,
        statistics=statistics,
        data_docs=data_docs,
    )


def build_data_docs(settings: Settings) -> Path | None:
    """(Re)build Data Docs from every stored suite and validation result; their index.html."""
    with _quiet():
        context = _context(settings)
        context.build_data_docs(site_names=[DATA_DOCS_SITE])
    return _index_html(context)


# --- context -------------------------------------------------------------------------------


def _context(settings: Settings):
    """The file-backed context rooted in `settings.gx_dir` (scaffolded on first use)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    root = settings.gx_dir
    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", context_root_dir=root)
    # Persisted once in great_expectations.yml; later runs find them already set.
    # A ProgressBarsConfig when set in this process, a plain dict when read back from YAML.
    bars = context.variables.progress_bars
    if bars is not None and not isinstance(bars, dict):
        bars = bars.to_dict()
    if not bars or bars.get("globally", True) or bars.get("metric_calculations", True):
        context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        context.variables.save()
    if context.config.analytics_enabled is not False:
        context.enable_analytics(False)
    return context


def _batch_definition(context, table: str, *, spark: bool):
    """Get-or-create data source -> dataframe asset `table` -> whole-dataframe batch definition.

    Get-or-create rather than `add_or_update_*`: re-adding a data source replaces it and drops
    the assets (and batch definitions) the stored validation definitions point to.
    """
    name = SPARK_SOURCE if spark else PANDAS_SOURCE
    try:
        source = context.data_sources.get(name)
    except KeyError:
        if spark:
            # Verified with pyspark 4.2: the Spark data source works (no toPandas() needed).
            # persist=False: GX would otherwise cache every validated frame and never
            # unpersist it; callers cache themselves if they want.
            source = context.data_sources.add_spark(name=name, persist=False)
        else:
            source = context.data_sources.add_pandas(name=name)
    try:
        asset = source.get_asset(table)
    except LookupError:
        asset = source.add_dataframe_asset(name=table)
    try:
        return asset.get_batch_definition(BATCH_DEFINITION)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)


def _index_html(context) -> Path | None:
    for site in context.get_docs_sites_urls(site_name=DATA_DOCS_SITE, only_if_exists=True):
        url = site.get("site_url")
        if url and url.startswith("file://"):
            path = Path(unquote(urlparse(url).path))
            if path.is_file():
                return path
    return None


@contextmanager
def _quiet():
    """Keep GX's chatter (deprecation/future warnings, INFO logging) out of pipeline output.

    Entered before great_expectations is imported, so the analytics switch is seen in time.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
                warnings.simplefilter("ignore", category)
            warnings.filterwarnings("ignore", module=r"great_expectations(\.|$)")
            yield
    finally:
        logger.setLevel(level)


# --- inputs --------------------------------------------------------------------------------


def _is_spark(df: Any) -> bool:
    # No pyspark import: a pandas-only caller must not pay for it.
    return type(df).__module__.startswith("pyspark.")


def _as_pandas(df: Any):
    """pandas as is; a pyarrow.Table converted so that NaN and null stay distinct."""
    import pandas as pd

    if isinstance(df, pd.DataFrame):
        return df
    if type(df).__module__.startswith("pyarrow"):
        import pyarrow as pa

        # Masked Float64 keeps NaN (a value, fails the bounds) apart from null (missing);
        # numpy float64 would turn both into NaN.
        mapping = {pa.float64(): pd.Float64Dtype(), pa.float32(): pd.Float32Dtype()}
        return df.to_pandas(types_mapper=mapping.get)
    raise TypeError(
        f"expected a pandas DataFrame, pyarrow Table or Spark DataFrame, got {type(df)!r}"
    )


# --- results -------------------------------------------------------------------------------


def _row_count(results) -> int | None:
    for r in results:
        if r.expectation_config.type == "expect_table_row_count_to_be_between":
            observed = (r.result or {}).get("observed_value")
            return int(observed) if observed is not None else None
    return None


def _describe(table: str, r) -> str:
    """'products: expect_column_values_to_be_unique(product_id) failed: 3 unexpected ...'."""
    config = r.expectation_config
    kwargs = config.kwargs
    if "column_list" in kwargs:
        target = ", ".join(kwargs["column_list"])
    else:
        target = kwargs.get("column", "")
    head = f"{table}: {config.type}({target}) failed"
    error = _exception_message(r.exception_info)
    if error:
        return f"{head}: raised {error}"
    result = r.result or {}
    if config.type == "expect_column_to_exist":
        return f"{head}: column is missing"
    if config.type == "expect_table_row_count_to_be_between":
        return (
            f"{head}: {result.get('observed_value')} rows, expected between "
            f"{kwargs.get('min_value')} and {kwargs.get('max_value')}"
        )
    if result.get("unexpected_count") is not None:
        # Distinct examples (a duplicated key shows up once per offending row); none for the
        # not-null check, whose examples are all nulls.
        examples = (
            []
            if config.type == "expect_column_values_to_not_be_null"
            else list(dict.fromkeys(_show(v) for v in result.get("partial_unexpected_list") or []))
        )
        detail = f"{result['unexpected_count']} unexpected values"
        if examples:
            detail += f", e.g. [{', '.join(examples[:EXAMPLES])}]"
        reference = (config.meta or {}).get("reference")
        if reference:
            detail += f" (missing from {reference.split(' -> ')[-1]})"
        return f"{head}: {detail}{_bounds(kwargs)}"
    if "observed_value" in result:
        return f"{head}: observed {result['observed_value']!r}"
    return head


def _bounds(kwargs: dict) -> str:
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if lo is None and hi is None:
        return ""
    parts = []
    for op, bound in ((">=", lo), ("<=", hi)):
        if bound is not None:
            shown = f"{bound:g}" if isinstance(bound, float) else _show(bound)
            parts.append(f"{op} {shown}")
    return f" (expected {' and '.join(parts)})"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return repr(float(value))  # -1.0, inf, nan, 1e+15 (numpy floats print as np.float64)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _exception_message(info: Any) -> str | None:
    """GX puts one dict at the top level, or one per failing metric."""
    if not info:
        return None
    if "raised_exception" in info:
        infos = [info]
    else:
        infos = [v for v in info.values() if isinstance(v, dict)]
    messages = [i.get("exception_message") or "error" for i in infos if i.get("raised_exception")]
    return "; ".join(dict.fromkeys(messages)) or None
