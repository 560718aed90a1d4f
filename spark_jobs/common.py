"""Spark helpers shared by the feature jobs (pure: DataFrame/Column in, DataFrame/Column out)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros_lit(t: datetime) -> Column:
    """Microseconds since the epoch of `t`, as a literal."""
    from pyspark.sql import functions as F

    return F.lit((t.astimezone(UTC) - EPOCH) // timedelta(microseconds=1))


def timestamp_lit(t: datetime) -> Column:
    """A TIMESTAMP literal that does not depend on the session or machine time zone."""
    from pyspark.sql import functions as F

    return F.timestamp_micros(micros_lit(t))


def changed_rows(new: DataFrame, existing: DataFrame, key: Sequence[str], now: datetime):
    """Rows of `new` that are absent from `existing` or differ from it, stamped
    created_timestamp = `now`. Unchanged rows are dropped, so they keep their old stamp and a
    rerun writes nothing."""
    from pyspark.sql import functions as F

    types = dict(existing.dtypes)
    new = new.select(*[F.col(c).cast(types[c]).alias(c) for c in new.columns])
    values = [c for c in new.columns if c not in key]
    old = existing.select(
        *key, *[F.col(c).alias(f"_old_{c}") for c in values], F.lit(True).alias("_exists")
    )
    same = F.lit(True)
    for c in values:
        same = same & F.col(c).eqNullSafe(F.col(f"_old_{c}"))
    return (
        new.join(old, list(key), "left")
        .where(F.col("_exists").isNull() | ~same)
        .select(*new.columns, timestamp_lit(now).alias("created_timestamp"))
    )
