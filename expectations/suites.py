"""Build a Great Expectations suite from a table contract.

The suite is derived, never hand-written: every rule comes from `atelier.contracts`
(columns, nullability, key, non_negative, past_timestamps, references) plus the two inputs
that only the caller knows (the allowed row-count band and the referenced key sets).

NaN and infinity. GX's column-map expectations skip values that pandas calls null, and
`expect_column_values_to_be_between` then compares the rest:
- +/-inf fail because the upper bound is the finite `MAX_VALUE` (and the lower bound is 0);
- NaN fails wherever the frame tells NaN apart from null: Spark DataFrames, and pandas
  columns backed by Arrow (`double[pyarrow]`) or masked (`Float64`) arrays, because every
  comparison with NaN is false;
- in a plain numpy `float64` column NaN *is* pandas' null marker (a null read from Delta or
  Spark arrives as NaN), so it is treated as null: allowed in nullable columns, caught by
  `expect_column_values_to_not_be_null` in required ones. To keep NaN and null apart, hand
  `expectations.gate.validate_table` the Spark DataFrame or the pyarrow Table (it converts
  float columns to masked `Float64`) rather than `Table.to_pandas()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only; keeps the import cheap
    import great_expectations as gx

    from atelier.contracts import TableContract
    from atelier.settings import Settings

# Upper bound of non-negative columns: large, but finite, so that +inf fails.
MAX_VALUE = 1e15
# Earliest plausible event: placeholder dates (1900-01-01, the epoch) are data errors.
EARLIEST_TIMESTAMP = datetime(1990, 1, 1, tzinfo=UTC)
# Clock skew allowed for "not in the future" timestamps.
FUTURE_TOLERANCE = timedelta(minutes=5)


def build_suite(
    contract: TableContract,
    *,
    row_count_band: tuple[int, int],
    reference_values: Mapping[str, Sequence] | None = None,
    now: datetime | None = None,
    list_checks: Mapping[str, ListCheck] | None = None,
) -> gx.ExpectationSuite:
    """The expectation suite named `contract.name` that enforces the contract.

    Long by design: one expectation per contract rule, in the contract's order, so a reader can
    check the suite against `atelier.contracts` line by line.

    row_count_band: inclusive (min, max) number of rows.
    reference_values: column -> allowed values, for columns in `contract.references`; a
        reference without an entry is not checked. The suite only records which references
        are checked: the frame must go through `with_reference_checks` with the same values
        (`expectations.gate.validate_table` does).
    now: the instant past timestamps are compared to (default: the current UTC time); must
        be timezone-aware. `FUTURE_TOLERANCE` is added to absorb clock skew.
    list_checks: list column -> `ListCheck` (length, value bounds, finiteness); like
        references, they run on derived columns added by `with_list_checks`.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    lo, hi = (int(v) for v in row_count_band)
    if not 0 <= lo <= hi:
        raise ValueError(f"row_count_band must satisfy 0 <= min <= max, got {row_count_band}")
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (the lake stores UTC timestamps)")
    reference_values = dict(reference_values or {})
    unknown = sorted(set(reference_values) - set(contract.references))
    if unknown:
        raise ValueError(
            f"{contract.name}: reference_values for {unknown}, but only "
            f"{sorted(contract.references)} are references"
        )
    names = set(contract.column_names)
    clash = sorted(
        {reference_check_column(c, t) for c, (t, _) in contract.references.items()} & names
    )
    if clash:
        raise ValueError(f"{contract.name}: reference check columns {clash} clash with columns")
    for group, cols in (
        ("key", contract.key),
        ("non_negative", contract.non_negative),
        ("past_timestamps", contract.past_timestamps),
        ("unit_interval", contract.unit_interval),
    ):
        missing = sorted(set(cols) - names)
        if missing:
            raise ValueError(f"{contract.name}: {group} names unknown columns {missing}")

    # Collected first and handed to the constructor: `ExpectationSuite.add_expectation` looks
    # the suite up in the current data context and raises without one.
    expectations: list = []
    add = expectations.append

    add(gxe.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi))
    for col in contract.column_names:
        add(gxe.ExpectColumnToExist(column=col))
    for col in contract.required:
        add(gxe.ExpectColumnValuesToNotBeNull(column=col))

    if len(contract.key) == 1:
        add(gxe.ExpectColumnValuesToBeUnique(column=contract.key[0]))
    elif contract.key:
        add(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(contract.key)))

    for col in contract.non_negative:
        add(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0, max_value=MAX_VALUE))

    # Probabilities: NaN and +/-inf fail the closed bounds like any other value outside them.
    for col in contract.unit_interval:
        add(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0.0, max_value=1.0))

    latest = now.astimezone(UTC) + FUTURE_TOLERANCE
    for col in contract.past_timestamps:
        add(
            gxe.ExpectColumnValuesToBeBetween(
                column=col, min_value=EARLIEST_TIMESTAMP, max_value=latest
            )
        )

    # References: not `expect_column_values_to_be_in_set` with the key set inline. GX copies
    # an expectation's kwargs (pydantic v1 `.dict()`) hundreds of times per run and stores
    # them in the suite, every validation result and the Data Docs: two 30k-value sets took
    # a 30k-row validation from ~1.5 s to ~15 s, and the catalogue's real customer set has
    # >1M ids. Instead `with_reference_checks` adds one column per reference holding the
    # values missing from the referenced table (null elsewhere) and the suite expects it to
    # be null; failures still quote the offending values.
    for col, (ref_table, ref_col) in contract.references.items():
        if col in reference_values:
            add(
                gxe.ExpectColumnValuesToBeNull(
                    column=reference_check_column(col, ref_table),
                    meta={
                        "reference": f"{contract.name}.{col} -> {ref_table}.{ref_col}",
                        "reference_size": len(set(reference_values[col])),
                    },
                    notes=f"Values of {col} missing from {ref_table}.{ref_col}.",
                )
            )
    for col, check in (list_checks or {}).items():
        if col not in names:
            raise ValueError(f"{contract.name}: list check on unknown column {col!r}")
        if check.length is not None:
            add(
                gxe.ExpectColumnValuesToBeBetween(
                    column=f"{col}__length", min_value=check.length, max_value=check.length
                )
            )
        if check.finite:
            add(
                gxe.ExpectColumnValuesToBeBetween(
                    column=f"{col}__non_finite", min_value=0, max_value=0
                )
            )
        if check.min is not None:
            add(gxe.ExpectColumnValuesToBeBetween(column=f"{col}__min", min_value=check.min))
        if check.max is not None:
            add(gxe.ExpectColumnValuesToBeBetween(column=f"{col}__max", max_value=check.max))
        if check.total is not None:
            add(
                gxe.ExpectColumnValuesToBeBetween(
                    column=f"{col}__total_error", min_value=0, max_value=check.total_tolerance
                )
            )
    return gx.ExpectationSuite(
        name=contract.name,
        expectations=expectations,
        notes=f"Derived from atelier.contracts.{contract.name}. {contract.doc}".strip(),
    )


@dataclass(frozen=True)
class ListCheck:
    """Rules for a list column (embeddings, token ids, probabilities): every row's length,
    value bounds, whether every element must be finite and what a non-empty row must add up to
    (within `total_tolerance`; only its first `total_over` values when set, e.g. the palette
    shares of a colour descriptor ahead of its summary numbers). None means "not checked"."""

    length: int | None = None
    min: float | None = None
    max: float | None = None
    finite: bool = False
    total: float | None = None
    total_tolerance: float = 1e-4
    total_over: int | None = None


def with_list_checks(df: Any, list_checks: Mapping[str, ListCheck] | None) -> Any:
    """`df` (pandas) plus `<col>__length`, `__non_finite`, `__min`, `__max`, `__total_error`
    per checked column.

    GX has no list-aware expectations: the per-row statistics become scalar columns that the
    suite bounds. An empty list has null min/max/total error (its length is what fails).
    """
    import numpy as np

    if not list_checks:
        return df
    out = df.copy(deep=False)
    for col, check in list_checks.items():
        if col not in out.columns:
            continue
        arrays = [None if v is None else np.asarray(v, dtype="float64") for v in out[col]]
        out[f"{col}__length"] = [None if a is None else len(a) for a in arrays]
        if check.finite:
            out[f"{col}__non_finite"] = [
                None if a is None else int((~np.isfinite(a)).sum()) for a in arrays
            ]
        if check.min is not None:
            out[f"{col}__min"] = [None if a is None or not len(a) else a.min() for a in arrays]
        if check.max is not None:
            out[f"{col}__max"] = [None if a is None or not len(a) else a.max() for a in arrays]
        if check.total is not None:
            head = check.total_over  # None slices the whole row
            out[f"{col}__total_error"] = [
                None if a is None or not len(a) else abs(float(a[:head].sum()) - check.total)
                for a in arrays
            ]
    return out


def reference_check_column(column: str, ref_table: str) -> str:
    """Name of the derived column that holds `column`'s values missing from `ref_table`."""
    return f"{column}__not_in_{ref_table}"


def with_reference_checks(
    df: Any, contract: TableContract, reference_values: Mapping[str, Iterable] | None
) -> Any:
    """`df` plus one `reference_check_column` per checked reference (the frame is not modified).

    Each added column holds the value where it is missing from the reference set and null
    otherwise (nulls stay null: nullability is checked on the column itself). Works on pandas
    (a shallow copy, `isin`) and Spark DataFrames (a left join against the broadcast set).
    A column absent from `df` is skipped: `expect_column_to_exist` reports it.
    """
    checks = {
        col: reference_check_column(col, ref_table)
        for col, (ref_table, _) in contract.references.items()
        if reference_values and col in reference_values and col in df.columns
    }
    if not checks:
        return df
    if type(df).__module__.startswith("pyspark."):
        return _spark_reference_checks(df, checks, reference_values)
    out = df.copy(deep=False)
    for col, flag in checks.items():
        allowed = {v for v in reference_values[col] if v is not None}
        values = out[col]
        out[flag] = values.where(~values.isin(allowed) & values.notna())
    return out


def _spark_reference_checks(df: Any, checks: dict[str, str], reference_values: Mapping) -> Any:
    import pandas as pd
    from pyspark.sql import functions as F

    spark = df.sparkSession
    for col, flag in checks.items():
        hit = f"{flag}__hit"
        allowed = sorted({v for v in reference_values[col] if v is not None})
        # Via pandas: Arrow-backed when spark.sql.execution.arrow.pyspark.enabled (the
        # catalogue's key sets have up to ~1M values).
        ref = spark.createDataFrame(
            pd.DataFrame({col: allowed}), schema=df.select(col).schema
        ).withColumn(hit, F.lit(True))
        df = (
            df.join(F.broadcast(ref), on=col, how="left")
            .withColumn(flag, F.when(F.col(hit).isNull(), F.col(col)))
            .drop(hit)
        )
    return df


def gate_checks(settings: Settings, table: str, vector_size: int | None = None) -> dict[str, Any]:
    """The list checks a feature table must pass before it is served.

    vector_size: the length every `attribute_vectors.attribute_vector` (the model's
    `AttributeBundle.vector_size`) or `item_vectors.vector` (the recommender's k) must have;
    None checks values only.
    """
    if table == "predicted_attributes":
        # Empty for a label that maps to no class of the model: no length check, and the
        # sum is checked on non-empty vectors only.
        return {"probabilities": ListCheck(min=0.0, max=1.0, finite=True, total=1.0)}
    if table == "attribute_vectors":
        return {"attribute_vector": ListCheck(length=vector_size, min=0.0, max=1.0, finite=True)}
    if table == "item_vectors":
        return {"vector": ListCheck(length=vector_size, finite=True)}
    if table == "image_embeddings":
        from atelier.feast_store import EMBEDDING_DIM

        return {"embedding": ListCheck(length=EMBEDDING_DIM, finite=True)}
    if table == "colour_features":
        from atelier.colour import COLOUR_DIM, PALETTE

        # Palette shares then summary numbers, all in [0, 1]; the shares sum to 1.
        return {
            "colour": ListCheck(
                length=COLOUR_DIM,
                min=0.0,
                max=1.0,
                finite=True,
                total=1.0,
                total_over=len(PALETTE),
            )
        }
    if table == "text_features":
        return {
            "token_ids": ListCheck(length=settings.text.sequence_length, min=0),
            "tfidf": ListCheck(finite=True),
        }
    return {}
