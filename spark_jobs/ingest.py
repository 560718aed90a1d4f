"""Ingest a raw catalogue into the lake: parse, check every row, gate every table, merge.

    spark-submit spark_jobs/ingest.py hm ../shared/data/hm --workdir W
    atelier --workdir W ingest hm ../shared/data/hm          # the same job

Rows that fail a check go to the `quarantine` table with the reason, the source file and line;
every good row is published. A table-level failure (GX suite, too many bad rows, missing
columns) publishes nothing and leaves the previous table versions in place. Rerunning on the same
input commits nothing new (merge by key, only changed rows rewritten). Only the catalogue
(products and their images) must be there: a layout's customers and purchases files are read
when present, and their tables left as they are when not (a new catalogue to evaluate).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from atelier.locks import locked
from expectations.gate import GateFailure
from spark_jobs.common import job_parser, new_run_id, run_job, save_report

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

    from atelier.layout import Layout, Source
    from atelier.settings import Settings

log = logging.getLogger("atelier.ingest")

# Order matters: the first failing check is the row's reason.
PRODUCT_REASONS = (
    "missing_id",
    "unsafe_id",
    "missing_type",
    "duplicate_key",
    "missing_price",
    "unparseable_price",
    "non_finite_price",
    "negative_price",
    "implausible_price",
)
INTERACTION_REASONS = (
    "missing_customer",
    "missing_product",
    "unparseable_timestamp",
    "future_timestamp",
    "implausible_timestamp",
    "missing_price",
    "unparseable_price",
    "non_finite_price",
    "negative_price",
    "implausible_price",
    "unknown_product",
    "unknown_customer",
)


# The columns `parse_csv` gives every line, before the source's own.
PARSED = ("_source", "_line", "_raw", "_error", "_detail")
# C0 controls but tab, newline and carriage return, and DEL: never part of a catalogue's text,
# often terminal escapes (ANSI) or binary garbage that would reach the gallery and the models.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A multi-line quoted field may span at most this many physical lines; a stray quote further
# apart is a malformed row, not the start of a record swallowing the lines after it.
MAX_RECORD_LINES = 50
# A product id becomes part of image file paths: path separators or a leading dot could reach
# files outside the source folder.
UNSAFE_ID = r"[/\\]|^\.|[\x00-\x1f\x7f]"


class IngestError(RuntimeError):
    """Raised when a source cannot be ingested at all (bad layout, missing file or column)."""


@dataclass
class TableCounts:
    read: int = 0
    good: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    inserted: int = 0
    updated: int = 0
    deleted: int = 0  # rows removed (or, for products, tombstoned) as gone from the source
    version: int | None = None


@dataclass
class IngestReport:
    run_id: str
    layout: str
    source: str
    started_at: str
    tables: dict[str, TableCounts] = field(default_factory=dict)
    published: bool = False
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Optional source files (customers, purchases) the folder does not have.
    absent: list[str] = field(default_factory=list)

    def quarantine_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, t in self.tables.items():
            for reason, n in t.quarantined.items():
                out[f"{name}:{reason}"] = n
        return out


# ---------------------------------------------------------------------------------------------
# Pure transforms (DataFrame -> DataFrame)
# ---------------------------------------------------------------------------------------------
def parse_csv(lines: DataFrame, header: list[str]) -> DataFrame:
    """Split raw lines (`_source`, `_line`, `_raw`) into string columns named by `header`.

    A line that is not valid UTF-8 or does not have exactly len(header) fields gets `_error`
    (`invalid_utf8` / `malformed_row`) and null fields, one with a control character
    `control_characters`; blank lines are skipped.
    """
    names = list(header)
    schema = "_source STRING, _line LONG, _raw STRING, _error STRING, _detail STRING, " + ", ".join(
        f"`{c}` STRING" for c in names
    )

    def parse(batches):
        import csv

        import pandas as pd

        n = len(names)
        for b in batches:
            out = []
            for src, line, raw in zip(b["_source"], b["_line"], b["_raw"]):
                if raw is None or not raw.strip():
                    continue
                err = detail = None
                fields: list = [None] * n
                if "\ufffd" in raw:  # Spark decodes invalid UTF-8 bytes to U+FFFD
                    err, detail = "invalid_utf8", "line is not valid UTF-8"
                else:
                    try:
                        parsed = next(csv.reader([raw], strict=True))
                    except csv.Error as e:
                        parsed = None
                        err, detail = "malformed_row", f"CSV error: {e}"
                    if parsed is not None:
                        if len(parsed) != n:
                            err = "malformed_row"
                            detail = f"expected {n} fields, got {len(parsed)}"
                        elif bad := _control_character(names, parsed):
                            err, detail = "control_characters", bad
                        else:
                            fields = parsed
                out.append([src, int(line), raw, err, detail, *fields])
            yield pd.DataFrame(out, columns=[*PARSED, *names])

    return lines.mapInPandas(parse, schema)


def _control_character(names: list[str], fields: list[str]) -> str | None:
    """Where the first control character of a parsed row is, or None."""
    for name, value in zip(names, fields):
        if m := CONTROL_CHARACTERS.search(value):
            return f"{name} has control character U+{ord(m.group()):04X}"
    return None


def source_column(df: DataFrame, src: Source) -> Column:
    """The canonical value for a layout source: a trimmed column (empty -> null) or a rule."""
    from pyspark.sql import functions as F

    from atelier.layout import Constant, WordsBefore

    if src is None:
        return F.lit(None).cast("string")
    if isinstance(src, Constant):
        return F.lit(src.constant)
    if isinstance(src, WordsBefore):
        words = "|".join(re.escape(w) for w in src.words_before)
        text = F.trim(F.col(f"`{src.from_}`"))
        before = F.regexp_extract(text, rf"^(.+?)\s+(?:{words})(?:\s|$)", 1)
        first_word = F.split(text, r"\s+").getItem(0)
        return F.when(before != "", before).otherwise(F.nullif(first_word, F.lit("")))
    return F.nullif(F.trim(F.col(f"`{src}`")), F.lit(""))


def _first_reason(checks: list[tuple[str, Column]]) -> Column:
    """The name of the first check whose condition is true, else null."""
    from pyspark.sql import functions as F

    expr = F.lit(None).cast("string")
    for reason, cond in reversed(checks):
        expr = F.when(cond, F.lit(reason)).otherwise(expr)
    return expr


def _price_checks(price_raw: Column, price: Column, required: bool) -> list[tuple[str, Column]]:
    """Row checks of a price; `required` when the layout maps a price column (an empty value
    is then missing, not unknown). The upper bound is the table gate's own."""
    from pyspark.sql import functions as F

    from expectations.suites import MAX_VALUE

    return [
        ("missing_price", F.lit(required) & price_raw.isNull()),
        ("unparseable_price", price_raw.isNotNull() & price.isNull()),
        ("non_finite_price", F.isnan(price) | (F.abs(price) == float("inf"))),
        ("negative_price", price < 0),
        ("implausible_price", price > MAX_VALUE),
    ]


def _flag_duplicates(df: DataFrame, key: str) -> DataFrame:
    """`df` with `_dup`: True on every well-parsed row of a `key` but its first (lowest line),
    which wins; the later ones are quarantined."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy(key).orderBy("_line")
    ok = F.col("_error").isNull() & F.col(key).isNotNull()
    return df.withColumn("_dup", F.when(ok, F.row_number().over(w) > 1).otherwise(F.lit(False)))


def products_candidates(parsed: DataFrame, layout: Layout) -> DataFrame:
    """Parsed product rows -> canonical columns + `_reason` (null when the row is good)."""
    from pyspark.sql import functions as F

    m = layout.products
    df = parsed.select(
        *PARSED,
        source_column(parsed, m.id).alias("product_id"),
        source_column(parsed, m.type).alias("type"),
        source_column(parsed, m.brand).alias("brand"),
        source_column(parsed, m.division).alias("division"),
        source_column(parsed, m.title).alias("title"),
        source_column(parsed, m.description).alias("description"),
        source_column(parsed, m.price).alias("_price_raw"),
        *[F.col(f"`{a}`") for a in layout.attributes],
    ).withColumn("price", F.expr("try_cast(_price_raw AS DOUBLE)"))
    df = _flag_duplicates(df, "product_id")
    checks = [
        ("missing_id", F.col("product_id").isNull()),
        ("unsafe_id", F.col("product_id").rlike(UNSAFE_ID)),
        ("missing_type", F.col("type").isNull()),
        ("duplicate_key", F.col("_dup")),
        *_price_checks(F.col("_price_raw"), F.col("price"), m.price is not None),
    ]
    reason = F.coalesce(F.col("_error"), _first_reason(checks))
    detail = F.coalesce(
        F.col("_detail"),
        F.when(
            F.col("_dup"),
            F.concat(
                F.lit("product_id "), F.col("product_id"), F.lit(" already on an earlier line")
            ),
        ),
        F.when(F.col("_price_raw").isNotNull(), F.concat(F.lit("price="), F.col("_price_raw"))),
    )
    return df.withColumn("_reason", reason).withColumn("_detail", detail).drop("_dup")


def customers_candidates(parsed: DataFrame, layout: Layout) -> DataFrame:
    """Parsed customer rows -> canonical columns + `_reason`."""
    from pyspark.sql import functions as F

    m = layout.customers
    assert m is not None
    df = parsed.select(
        *PARSED,
        source_column(parsed, m.id).alias("customer_id"),
        source_column(parsed, m.age).alias("_age_raw"),
        source_column(parsed, m.club_member_status).alias("club_member_status"),
        source_column(parsed, m.fashion_news_frequency).alias("fashion_news_frequency"),
        source_column(parsed, m.postal_code).alias("postal_code"),
    ).withColumn("_age", F.expr("try_cast(_age_raw AS DOUBLE)"))
    df = _flag_duplicates(df, "customer_id")
    # A fractional age (33.7) is an error upstream, not a value to truncate.
    age_ok = F.col("_age").between(0, 130) & (F.col("_age") == F.floor("_age"))
    checks = [
        ("missing_id", F.col("customer_id").isNull()),
        ("duplicate_key", F.col("_dup")),
        ("invalid_age", F.col("_age_raw").isNotNull() & ~F.coalesce(age_ok, F.lit(False))),
    ]
    detail = F.coalesce(
        F.col("_detail"),
        F.when(F.col("_dup"), F.lit("customer_id repeated")),
        F.when(F.col("_age_raw").isNotNull(), F.concat(F.lit("age="), F.col("_age_raw"))),
    )
    return (
        df.withColumn("_reason", F.coalesce(F.col("_error"), _first_reason(checks)))
        .withColumn("_detail", detail)
        .withColumn("age", F.when(F.col("_reason").isNull(), F.col("_age").cast("int")))
        .drop("_dup", "_age")
    )


def interactions_candidates(
    parsed: DataFrame,
    layout: Layout,
    known_products: DataFrame,
    known_customers: DataFrame | None,
    now: datetime,
) -> DataFrame:
    """Parsed interaction rows -> canonical columns + `_reason`.

    `known_*` hold the keys (`product_id` / `customer_id`) of the good rows of this batch plus
    those already in the lake. Repeat purchases (identical rows) are kept as separate
    interactions: the key includes the occurrence number of (customer, product, timestamp).
    """
    from pyspark.sql import functions as F

    m = layout.interactions
    assert m is not None
    df = parsed.select(
        *PARSED,
        source_column(parsed, m.customer).alias("customer_id"),
        source_column(parsed, m.product).alias("product_id"),
        source_column(parsed, m.timestamp).alias("_ts_raw"),
        source_column(parsed, m.price).alias("_price_raw"),
        source_column(parsed, m.channel).alias("channel"),
        source_column(parsed, m.kind).alias("kind"),
    ).withColumns(
        {
            "timestamp": F.try_to_timestamp(F.col("_ts_raw"), F.lit(m.timestamp_format)),
            "price": F.expr("try_cast(_price_raw AS DOUBLE)"),
        }
    )
    kp = known_products.select(F.col("product_id").alias("_kp")).distinct()
    df = df.join(kp, df.product_id == kp._kp, "left")
    has_customers = known_customers is not None
    if has_customers:
        kc = known_customers.select(F.col("customer_id").alias("_kc")).distinct()
        df = df.join(kc, df.customer_id == kc._kc, "left")
    from expectations.suites import EARLIEST_TIMESTAMP

    now_lit = F.lit(now.astimezone(UTC).replace(tzinfo=None)).cast("timestamp")
    earliest = F.lit(EARLIEST_TIMESTAMP.replace(tzinfo=None)).cast("timestamp")
    checks = [
        ("missing_customer", F.col("customer_id").isNull()),
        ("missing_product", F.col("product_id").isNull()),
        ("unparseable_timestamp", F.col("timestamp").isNull()),
        ("future_timestamp", F.col("timestamp") > now_lit),
        # Placeholder dates (1900-01-01) would otherwise rewrite a product's first_seen.
        ("implausible_timestamp", F.col("timestamp") < earliest),
        *_price_checks(F.col("_price_raw"), F.col("price"), m.price is not None),
        ("unknown_product", F.col("_kp").isNull()),
    ]
    if has_customers:
        checks.append(("unknown_customer", F.col("_kc").isNull()))
    reason = F.coalesce(F.col("_error"), _first_reason(checks))
    detail = F.coalesce(
        F.col("_detail"),
        F.concat_ws(
            " ",
            F.concat(F.lit("customer="), F.col("customer_id")),
            F.concat(F.lit("product="), F.col("product_id")),
            F.concat(F.lit("t="), F.col("_ts_raw")),
            F.concat(F.lit("price="), F.col("_price_raw")),
        ),
    )
    return (
        df.withColumn("_reason", reason)
        .withColumn("_detail", detail)
        .withColumn("interaction_id", F.when(F.col("_reason").isNull(), _interaction_key()))
        .drop("_kp", *(["_kc"] if has_customers else []))
    )


def _interaction_key() -> Column:
    """sha256 of (customer, product, timestamp, occurrence): repeat purchases stay apart."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    occ = Window.partitionBy("customer_id", "product_id", "timestamp").orderBy("_line")
    return F.sha2(
        F.concat_ws(
            "|",
            "customer_id",
            "product_id",
            F.date_format("timestamp", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS"),
            F.row_number().over(occ).cast("string"),
        ),
        256,
    )


def labels_from_products(products: DataFrame, layout: Layout) -> DataFrame:
    """Long-form labels (product_id, attribute, value) of good products; missing -> no row."""
    from pyspark.sql import functions as F

    missing = [v for v in layout.missing_values]
    parts = []
    for a in layout.attributes:
        v = F.trim(F.col(f"`{a}`"))
        parts.append(
            products.select("product_id", F.lit(a).alias("attribute"), v.alias("value")).where(
                F.col("value").isNotNull() & ~F.col("value").isin(missing)
            )
        )
    if not parts:
        spark = products.sparkSession
        return spark.createDataFrame([], "product_id STRING, attribute STRING, value STRING")
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def image_path(template: str, source_dir: Path) -> Column:
    """Absolute path column for an image template with `{id}` and `{id[:N]}` placeholders."""
    from pyspark.sql import functions as F

    parts: list[Column] = []
    pos = 0
    for m in re.finditer(r"\{id(?:\[:(\d+)\])?\}", template):
        parts.append(F.lit(template[pos : m.start()]))
        pid = F.col("product_id")
        parts.append(F.substring(pid, 1, int(m.group(1))) if m.group(1) else pid)
        pos = m.end()
    parts.append(F.lit(template[pos:]))
    return F.concat(F.lit(str(source_dir.resolve()) + "/"), *parts)


IMAGE_COLUMNS = (
    "product_id", "shot", "path", "_source", "_line", "_raw",
    "content_hash", "width", "height", "_reason", "_detail",
)  # fmt: skip


def check_images(
    images: DataFrame, partitions: int, root: Path, max_pixels: int, lake_root: Path
) -> DataFrame:
    """(product_id, shot, path, _source, _line, _raw) -> + content_hash, width, height, _reason.

    Opens every file (`read_image`); a good one is copied into the lake's image store
    (`store_image`) and its `path` becomes the copy's, relative to `lake_root`; a bad one keeps
    its source path (in `_detail` too).
    """
    import os

    prefix = os.path.normpath(str(root)) + os.sep
    store = str(lake_root.resolve())
    schema = (
        "product_id STRING, shot INT, path STRING, _source STRING, _line LONG, _raw STRING, "
        "content_hash STRING, width INT, height INT, _reason STRING, _detail STRING"
    )

    def check(batches):
        import pandas as pd

        for b in batches:
            out = []
            cols = ["product_id", "shot", "path", "_source", "_line", "_raw"]
            for pid, shot, path, src, line, raw in zip(*(b[c] for c in cols)):
                data, size, reason, detail = read_image(path, prefix, max_pixels)
                h = w = ht = None
                if data is not None:
                    h, (w, ht) = hashlib.sha256(data).hexdigest(), size
                    path = store_image(data, h, os.path.splitext(path)[1], store)
                out.append([pid, shot, path, src, line, raw, h, w, ht, reason, detail])
            yield pd.DataFrame(out, columns=list(IMAGE_COLUMNS))

    return images.repartition(partitions).mapInPandas(check, schema)


def read_image(
    path: str, prefix: str, max_pixels: int
) -> tuple[bytes | None, tuple[int, int] | None, str | None, str]:
    """(bytes, (width, height), None, path) of a good image file, else (None, None, reason,
    detail): `image_outside_source` for a path outside `prefix` (never opened; lexical, not
    realpath, so a symlinked folder inside the source is fine), `image_missing`,
    `image_too_large` (more than `max_pixels`, read from the header before decoding),
    `image_corrupt` (does not decode fully)."""
    import io
    import os

    from PIL import Image

    if not os.path.normpath(path).startswith(prefix):
        return None, None, "image_outside_source", path
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, None, "image_missing", path
    except OSError as e:
        return None, None, "image_missing", f"{path}: {e}"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                detail = f"{path}: {im.width}x{im.height} > {max_pixels} pixels"
                return None, None, "image_too_large", detail
            im.load()  # full decode: truncated files fail here
            return data, im.size, None, path
    except Image.DecompressionBombError as e:
        return None, None, "image_too_large", f"{path}: {e}"
    except Exception as e:  # PIL raises many types for bad data
        return None, None, "image_corrupt", f"{path}: {e}"


def store_image(data: bytes, content_hash: str, suffix: str, lake_root: str) -> str:
    """Copy an image into `<lake_root>/_images/<hash[:2]>/<hash><suffix>` once (atomic, so a
    killed run leaves no half file); returns that path relative to the lake root."""
    import os

    from atelier.lake import IMAGES_DIR

    rel = f"{IMAGES_DIR}/{content_hash[:2]}/{content_hash}{suffix.lower()}"
    dst = os.path.join(lake_root, rel)
    if not os.path.exists(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, dst)
    return rel


def derive_price_and_first_seen(
    products: DataFrame, interactions: DataFrame, has_price: bool
) -> DataFrame:
    """Fill `first_seen` (first interaction) and, when the layout has no price, the median paid
    price, from all good interactions (lake and batch) of each product."""
    from pyspark.sql import functions as F

    agg = interactions.groupBy("product_id").agg(
        F.min("timestamp").alias("_first"),
        F.percentile_approx("price", 0.5, 10000).alias("_median"),
    )
    out = products.join(agg, "product_id", "left").withColumn("first_seen", F.col("_first"))
    if not has_price:
        out = out.withColumn("price", F.col("_median"))
    return out.drop("_first", "_median")


def quarantine_rows(bad: DataFrame, table: str, run_id: str, now: datetime) -> DataFrame:
    from pyspark.sql import functions as F

    return bad.select(
        F.lit(table).alias("table"),
        F.col("_source").alias("source_file"),
        F.col("_line").alias("line"),
        F.col("_reason").alias("reason"),
        F.col("_detail").alias("detail"),
        F.col("_raw").alias("record"),
        F.lit(run_id).alias("run_id"),
        F.lit(now.astimezone(UTC).replace(tzinfo=None)).cast("timestamp").alias("quarantined_at"),
    )


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def read_source(spark: SparkSession, path: Path) -> tuple[list[str], DataFrame]:
    """(header, parsed rows) of a CSV file, each row with the 1-based line it starts on.

    A byte-order mark (Excel's UTF-8 export) is dropped from the header; a quoted field that
    spans lines is one record (see `join_multiline_records`).
    """
    import csv

    if not path.is_file():
        raise IngestError(f"source file not found: {path}")
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        header = next(csv.reader([f.readline()]), [])
    if not [h for h in header if h.strip()]:
        raise IngestError(f"{path.name}: empty file or header line (expected CSV column names)")
    src = str(path.resolve())
    rdd = spark.read.text(str(path)).rdd.zipWithIndex().map(lambda p: (src, p[1] + 1, p[0][0]))
    lines = spark.createDataFrame(rdd, "_source STRING, _line LONG, _raw STRING").where("_line > 1")
    return header, parse_csv(join_multiline_records(lines, len(header)), header)


def join_multiline_records(lines: DataFrame, n_fields: int) -> DataFrame:
    """Lines -> records: a quoted field with line breaks rejoins the lines it spans.

    Such a record starts and ends on a line with an odd number of quotes; those lines are rare,
    so only they (and the few between each pair) go to the driver. A pair further apart than
    MAX_RECORD_LINES, or whose joined text is not one CSV row of `n_fields` fields, is left
    alone (its lines are then quarantined as malformed, and the lines between stay good).
    """
    from pyspark.sql import functions as F

    odd_quote = (F.length("_raw") - F.length(F.regexp_replace("_raw", '"', ""))) % 2 == 1
    odd = [r["_line"] for r in lines.where(odd_quote).select("_line").orderBy("_line").collect()]
    pairs = [(a, b) for a, b in zip(odd, odd[1:]) if b - a < MAX_RECORD_LINES]
    if not pairs:
        return lines
    wanted = sorted({n for a, b in pairs for n in range(a, b + 1)})
    text = {
        r["_line"]: r["_raw"]
        for r in lines.where(F.col("_line").isin(wanted)).select("_line", "_raw").collect()
    }
    joined, dropped = _pair_records(odd, pairs, text, n_fields)
    if not joined:
        return lines
    spark = lines.sparkSession
    repl = spark.createDataFrame(sorted(joined.items()), "_line LONG, _joined STRING")
    return (
        lines.where(~F.col("_line").isin(sorted(dropped)))
        .join(F.broadcast(repl), "_line", "left")
        .select("_source", "_line", F.coalesce("_joined", "_raw").alias("_raw"))
    )


def _pair_records(
    odd: list[int], pairs: list[tuple[int, int]], text: dict[int, str], n_fields: int
) -> tuple[dict[int, str], set[int]]:
    """({first line: joined record}, lines folded into one) for the odd-quote lines that pair
    into valid records, scanning in order so each odd line belongs to one record at most."""
    import csv

    spans = dict(pairs)
    joined: dict[int, str] = {}
    dropped: set[int] = set()
    i = 0
    while i < len(odd) - 1:
        a = odd[i]
        b = spans.get(a)
        if b is not None and b == odd[i + 1]:
            record = "\n".join(text.get(n, "") for n in range(a, b + 1))
            try:
                rows = list(csv.reader([record], strict=True))
            except csv.Error:
                rows = []
            if len(rows) == 1 and len(rows[0]) == n_fields:
                joined[a] = record
                dropped.update(range(a + 1, b + 1))
                i += 2
                continue
        i += 1
    return joined, dropped


def _optional_file(layout: Layout, table: str, source_dir: Path, report: IngestReport) -> bool:
    """Whether the layout's customers / interactions file is there to read.

    Only the catalogue (products and images) is required: a folder without customers or
    purchases (a new catalogue to evaluate or predict on) lands its products, and those
    tables are left as they are, noted in `report.absent`.
    """
    name = getattr(layout.files, table)
    if getattr(layout, table) is None or not name:
        return False
    if (source_dir / name).is_file():
        return True
    report.absent.append(name)
    log.warning("%s not found in %s: no %s ingested (catalogue only)", name, source_dir, table)
    return False


def _require_columns(layout: Layout, table: str, header: list[str], path: Path) -> None:
    missing = sorted(layout.source_columns(table) - set(header))
    if missing:
        raise IngestError(
            f"{path.name}: layout {layout.name!r} needs columns {missing}, the file has {header}"
        )


@locked("ingest")
def run_ingest(
    settings: Settings,
    layout_name: str,
    source_dir: Path,
    spark: SparkSession | None = None,
    now: datetime | None = None,
) -> IngestReport:
    """Ingest `source_dir` (laid out as `layout_name`) into the lake; returns the report.

    Raises IngestError when the source cannot be read and GateFailure when a table-level check
    fails (nothing published then).
    """
    from atelier.lake import Lake
    from atelier.layout import load_layout
    from atelier.spark import get_spark

    t0 = time.time()
    layout = load_layout(layout_name, settings.layouts_dir)
    source_dir = Path(source_dir).resolve()
    if not source_dir.is_dir():
        raise IngestError(f"source folder not found: {source_dir}")
    now = now or datetime.now(UTC)
    run_id = new_run_id(now)
    spark = spark or get_spark(settings)
    lake = Lake(settings, spark)
    report = IngestReport(run_id, layout.name, str(source_dir), now.isoformat())
    step = _Progress(t0)

    batch = _parse(spark, lake, layout, source_dir, now, report, step)
    batch.derive(settings, lake, layout, source_dir, step)
    staged, bad, read = batch.split()
    quarantine, by_reason = _quarantine(bad, run_id, now)
    frames = _gate(settings, lake, staged, read, by_reason, now, report)
    step("quality gates run")

    # Quarantine is recorded even when a gate fails: it is the evidence of what went wrong.
    qres = lake.merge("quarantine", quarantine, update=False)
    if report.failures:
        report.seconds = round(time.time() - t0, 1)
        save_report(settings, "ingest", asdict(report))
        raise GateFailure("table-level checks", report.failures, report)

    removals = _removals(lake, layout, batch, frames, now, report.run_id, settings.ingest.deletes)
    _publish(lake, staged, frames, report, removals)
    report.published = True
    report.seconds = round(time.time() - t0, 1)
    log.info("quarantine: %d new rows (table version %s)", qres.inserted, qres.version)
    save_report(settings, "ingest", asdict(report))
    step("published")
    for df in (*batch.cached(), quarantine):
        df.unpersist()
    return report


@dataclass
class _Batch:
    """One run's parsed candidates (cached), and what `derive` adds to the good products."""

    products: DataFrame
    customers: DataFrame | None
    interactions: DataFrame | None
    good_products: DataFrame | None = None
    labels: DataFrame | None = None
    images: DataFrame | None = None

    def derive(
        self, settings: Settings, lake, layout: Layout, source_dir: Path, step: _Progress
    ) -> None:
        """Price and first_seen from every good interaction (lake and batch), the source,
        labels, and each image shot opened and checked."""
        from pyspark.sql import functions as F

        cols = ["product_id", "timestamp", "price"]
        all_inter = lake.read_spark("interactions", cols)
        if self.interactions is not None:
            good = self.interactions.where("_reason IS NULL").select(*cols)
            all_inter = all_inter.unionByName(good)
        has_price = layout.products.price is not None
        good_p = self.products.where("_reason IS NULL")
        good_p = derive_price_and_first_seen(good_p, all_inter, has_price)
        self.good_products = good_p.withColumn("source", F.lit(layout.name)).cache()
        self.labels = labels_from_products(self.good_products, layout)
        shots = [
            self.good_products.select(
                "product_id",
                F.lit(i).cast("int").alias("shot"),
                image_path(t, source_dir).alias("path"),
                "_source",
                "_line",
                "_raw",
            )
            for i, t in enumerate(layout.images)
        ]
        if shots:
            images = shots[0]
            for shot in shots[1:]:
                images = images.unionByName(shot)
            self.images = check_images(
                images,
                settings.image_check_partitions,
                source_dir,
                settings.max_image_pixels,
                settings.lake_dir,
            ).cache()
            step("images checked")

    def split(self) -> tuple[dict[str, DataFrame], dict[str, DataFrame], dict[str, int]]:
        """(good rows to publish, bad rows to quarantine, rows read) by table."""
        assert self.good_products is not None and self.labels is not None, "derive first"
        staged: dict[str, DataFrame] = {"products": self.good_products}
        bad: dict[str, DataFrame] = {"products": self.products.where("_reason IS NOT NULL")}
        read: dict[str, int] = {"products": self.products.count()}
        for table, df in (("customers", self.customers), ("interactions", self.interactions)):
            if df is not None:
                staged[table] = df.where("_reason IS NULL")
                bad[table] = df.where("_reason IS NOT NULL")
                read[table] = df.count()
        staged["product_labels"] = self.labels
        if self.images is not None:
            staged["product_images"] = self.images.where("_reason IS NULL")
            bad["product_images"] = self.images.where("_reason IS NOT NULL")
        return staged, bad, read

    def cached(self) -> list[DataFrame]:
        frames = (self.products, self.customers, self.interactions)
        return [df for df in (*frames, self.good_products, self.images) if df is not None]


def _parse(
    spark: SparkSession,
    lake,
    layout: Layout,
    source_dir: Path,
    now: datetime,
    report: IngestReport,
    step: _Progress,
) -> _Batch:
    """Read and row-check the products, then the optional customers and interactions (an
    interaction's product and customer must be good in this batch or already in the lake)."""
    ppath = source_dir / layout.files.products
    header, parsed = read_source(spark, ppath)
    _require_columns(layout, "products", header, ppath)
    prods = products_candidates(parsed, layout).cache()
    good_p = prods.where("_reason IS NULL")
    step(f"products parsed from {ppath.name}")

    custs = None
    if _optional_file(layout, "customers", source_dir, report):
        cpath = source_dir / layout.files.customers
        header, parsed = read_source(spark, cpath)
        _require_columns(layout, "customers", header, cpath)
        custs = customers_candidates(parsed, layout).cache()
        step(f"customers parsed from {cpath.name}")

    inter = None
    if _optional_file(layout, "interactions", source_dir, report):
        ipath = source_dir / layout.files.interactions
        header, parsed = read_source(spark, ipath)
        _require_columns(layout, "interactions", header, ipath)
        known_p = good_p.select("product_id").unionByName(
            lake.read_spark("products", ["product_id"])
        )
        known_c = None
        if custs is not None:
            known_c = (
                custs.where("_reason IS NULL")
                .select("customer_id")
                .unionByName(lake.read_spark("customers", ["customer_id"]))
            )
        elif layout.customers is not None and lake.exists("customers"):
            # Purchases without a customers file: their customers must be in the lake already.
            known_c = lake.read_spark("customers", ["customer_id"])
        inter = interactions_candidates(parsed, layout, known_p, known_c, now).cache()
        step(f"interactions parsed from {ipath.name}")
    return _Batch(prods, custs, inter)


def _quarantine(
    bad: dict[str, DataFrame], run_id: str, now: datetime
) -> tuple[DataFrame, dict[tuple[str, str], int]]:
    """The quarantine rows of every table (cached) and their counts by (table, reason)."""
    from pyspark.sql import functions as F

    quarantine = None
    for table, df in bad.items():
        q = quarantine_rows(df, table, run_id, now)
        quarantine = q if quarantine is None else quarantine.unionByName(q)
    assert quarantine is not None
    quarantine = quarantine.cache()
    by_reason = {
        (r["table"], r["reason"]): r["n"]
        for r in quarantine.groupBy("table", "reason").agg(F.count("*").alias("n")).collect()
    }
    return quarantine, by_reason


def _gate(
    settings: Settings,
    lake,
    staged: dict[str, DataFrame],
    read: dict[str, int],
    by_reason: dict[tuple[str, str], int],
    now: datetime,
    report: IngestReport,
) -> dict:
    """Each staged table as checked Arrow, its counts and gate failures in `report`: the
    quarantine share, then the GX suite (row band, contract, references to parents)."""
    from atelier.contracts import contract
    from expectations.gate import validate_table

    frames = {}
    for table, df in staged.items():
        c = contract(table)
        # Arrow, not pandas: keeps NaN apart from null for the gate, and delta-rs writes it as is.
        arrow = df.select(*c.column_names).toArrow().cast(c.schema())
        frames[table] = arrow
        counts = report.tables.setdefault(table, TableCounts())
        counts.good = arrow.num_rows
        counts.quarantined = {r: n for (t, r), n in by_reason.items() if t == table}
        counts.read = read.get(table, counts.good + sum(counts.quarantined.values()))
        nbad = sum(counts.quarantined.values())
        if counts.read and nbad / counts.read > settings.gate.max_quarantine_fraction:
            report.failures.append(
                f"{table}: {nbad} of {counts.read} rows quarantined "
                f"({nbad / counts.read:.0%} > {settings.gate.max_quarantine_fraction:.0%})"
            )
    references = _reference_values(frames, lake)
    for table, arrow in frames.items():
        band = (settings.gate.min_rows.get(table, 0), settings.gate.max_rows)
        result = validate_table(
            settings,
            table,
            arrow,
            row_count_band=band,
            reference_values=references.get(table),
            now=now,
        )
        report.failures.extend(result.failures)
    return frames


def _removals(
    lake, layout: Layout, batch: _Batch, frames: dict, now: datetime, run_id: str, deletes: bool
) -> dict[str, pa.Table]:
    """What this run takes out of the lake: {"untombstone": listed products that had a
    tombstone (always)}, and with `deletes` (the source is the whole catalogue) the
    tombstones of this layout's products missing from the file ("product_tombstones"), and
    the labels and image shots of listed products missing from the source, plus every label
    and image of a tombstoned product ("product_labels", "product_images": keys to delete).

    A product whose row was quarantined is listed (bad now, not gone); an image is gone when
    its file is missing, not when it is corrupt.
    """
    import pyarrow as pa

    good = set(frames["products"]["product_id"].to_pylist())
    tombstoned = set(
        lake.read_arrow("product_tombstones", ["product_id"])["product_id"].to_pylist()
    )
    out = {"untombstone": pa.table({"product_id": sorted(good & tombstoned)})}
    if not deletes:
        return out
    listed = {r[0] for r in batch.products.select("product_id").collect() if r[0] is not None}
    known = lake.read_arrow("products", ["product_id", "source"]).to_pylist()
    gone = {r["product_id"] for r in known if r["source"] == layout.name} - listed
    new_gone = sorted(gone - tombstoned)
    out["product_tombstones"] = pa.table(
        {
            "product_id": new_gone,
            "deleted_at": pa.array([now] * len(new_gone), pa.timestamp("us", tz="UTC")),
            "run_id": [run_id] * len(new_gone),
        }
    )
    labels = frames["product_labels"].select(["product_id", "attribute"]).to_pylist()
    kept_labels = {(r["product_id"], r["attribute"]) for r in labels}
    out["product_labels"] = _gone_keys(
        lake.read_arrow("product_labels", ["product_id", "attribute"]),
        lambda r: (
            r["product_id"] in gone
            or (r["product_id"] in good and (r["product_id"], r["attribute"]) not in kept_labels)
        ),
    )
    missing = set()
    if batch.images is not None:
        missing = {
            (r["product_id"], r["shot"])
            for r in batch.images.where("_reason = 'image_missing'")
            .select("product_id", "shot")
            .collect()
        }
    out["product_images"] = _gone_keys(
        lake.read_arrow("product_images", ["product_id", "shot"]),
        lambda r: r["product_id"] in gone or (r["product_id"], r["shot"]) in missing,
    )
    return out


def _gone_keys(rows: pa.Table, gone) -> pa.Table:
    """The rows of `rows` (key columns) for which `gone(row)` holds."""
    import pyarrow as pa

    keep = [gone(r) for r in rows.to_pylist()]
    return rows.filter(pa.array(keep, pa.bool_())) if rows.num_rows else rows


def _publish(
    lake,
    staged: dict[str, DataFrame],
    frames: dict,
    report: IngestReport,
    removals: dict[str, pa.Table],
) -> None:
    """Merge every gated table, parents before children, then apply `removals` (`_removals`);
    readers see it all at once, when the last is committed (`Lake.publishing`)."""
    order = ("products", "customers", "product_labels", "product_images", "interactions")
    with lake.publishing("ingest", report.run_id):
        for table in (t for t in order if t in frames):
            # delta-spark merges the Spark frame on the cluster; delta-rs the checked Arrow.
            data = staged[table] if lake.uses_delta_spark else frames[table]
            res = lake.merge(table, data)
            counts = report.tables[table]
            counts.inserted, counts.updated = res.inserted, res.updated
            counts.version = res.version
        lake.delete("product_tombstones", removals["untombstone"])
        for table in ("product_labels", "product_images"):
            if table in removals:
                counts = report.tables.setdefault(table, TableCounts())
                counts.deleted = lake.delete(table, removals[table])
                counts.version = lake.version(table)
        tombstones = removals.get("product_tombstones")
        if tombstones is not None and tombstones.num_rows:
            lake.merge("product_tombstones", tombstones)
            report.tables["products"].deleted = tombstones.num_rows


def _reference_values(frames: dict, lake) -> dict[str, dict[str, list]]:
    """Parent keys (batch ∪ lake) for the reference expectations of each child table."""
    from atelier.contracts import contract

    out: dict[str, dict[str, list]] = {}
    for table in frames:
        for col, (parent, pcol) in contract(table).references.items():
            if parent not in frames:
                continue
            keys = set(frames[parent][pcol].to_pylist()) | set(
                lake.read_arrow(parent, [pcol])[pcol].to_pylist()
            )
            out.setdefault(table, {})[col] = sorted(keys)
    return out


class _Progress:
    def __init__(self, t0: float):
        self.t0 = t0

    def __call__(self, msg: str) -> None:
        log.info("[%6.1fs] %s", time.time() - self.t0, msg)


def format_report(report: IngestReport) -> str:
    """The run's counts as a plain-text table (printed by the CLI and spark-submit)."""
    lines = [
        f"ingest {report.layout} from {report.source} (run {report.run_id})",
        f"{'table':<16}{'read':>9}{'good':>9}{'quar.':>7}{'ins.':>9}{'upd.':>7}  version",
    ]
    for name, t in report.tables.items():
        q = sum(t.quarantined.values())
        lines.append(
            f"{name:<16}{t.read:>9}{t.good:>9}{q:>7}{t.inserted:>9}{t.updated:>7}  "
            f"{'-' if t.version is None else t.version}"
        )
    deleted = {name: t.deleted for name, t in report.tables.items() if t.deleted}
    if deleted:
        # Products are tombstoned (kept for their purchases), labels and images removed.
        lines.append("gone from the source: " + ", ".join(f"{k} {v}" for k, v in deleted.items()))
    if report.absent:
        lines.append(f"not in the folder (left untouched): {', '.join(report.absent)}")
    reasons = report.quarantine_by_reason()
    lines.append(
        "quarantine by reason: "
        + (", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) if reasons else "none")
    )
    lines.append(
        "published" if report.published else "NOT published: " + "; ".join(report.failures)
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`spark-submit spark_jobs/ingest.py LAYOUT DIR [--workdir W] [--deletes]`."""
    p = job_parser("ingest.py", __doc__)
    p.add_argument("layout")
    p.add_argument("source", type=Path)
    p.add_argument(
        "--deletes",
        action="store_true",
        help="the source is the whole catalogue: tombstone products missing from it, delete "
        "labels and images missing from it (default: the setting ingest.deletes)",
    )
    args = p.parse_args(argv)

    def run(settings: Settings) -> IngestReport:
        if args.deletes:
            settings.ingest.deletes = True
        return run_ingest(settings, args.layout, args.source)

    return run_job(args.workdir, run, format_report, (IngestError, ValueError))


if __name__ == "__main__":
    from atelier.process import exit_now

    exit_now(main())
