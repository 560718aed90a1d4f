"""Text features: a versioned vocabulary, fixed-length token-id sequences and TF-IDF vectors.

    spark-submit spark_jobs/text_features.py --workdir W

Reads `products` (title + description), writes `vocabulary` (one set of rows per version) and
`text_features` (one row per product). The vocabulary depends on the whole corpus, so every run
recomputes everything, but only rows whose values changed are written: a rerun on unchanged data
commits nothing, and a new vocabulary version re-encodes every product with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from atelier.locks import locked
from atelier.text import FIRST_ID, TOKENIZER, normalise, token_ids
from spark_jobs.common import (
    EPOCH,
    changed_rows,
    job_parser,
    new_run_id,
    run_job,
    save_report,
    timestamp_lit,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from atelier.settings import Settings

log = logging.getLogger("atelier.text_features")


# ---------------------------------------------------------------------------------------------
# Pure Python (also run inside Spark workers); tokenisation itself lives in atelier.text
# ---------------------------------------------------------------------------------------------
def vocabulary_version(
    entries: Iterable[tuple[str, int, int]], min_count: int, max_vocab: int, n_documents: int
) -> str:
    """Short sha256 of the build parameters and the sorted (token, count, document_frequency).

    The document count and frequencies are hashed too: they fix the idf, so one version means
    one set of TF-IDF weights.
    """
    payload = {
        "tokenizer": TOKENIZER,
        "min_count": min_count,
        "max_vocab": max_vocab,
        "n_documents": n_documents,
        "tokens": sorted([t, int(c), int(df)] for t, c, df in entries),
    }
    blob = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:12]


def assign_ids(ranked: Sequence[tuple[str, int, int]]) -> list[tuple[str, int, int, int]]:
    """(token, count, df) in rank order -> (token, token_id, count, df) with ids from 2."""
    return [(t, FIRST_ID + i, c, df) for i, (t, c, df) in enumerate(ranked)]


def tfidf_terms(
    vocab: Iterable[tuple[str, int, int]], n_documents: int, dim: int
) -> dict[str, tuple[int, float]]:
    """token -> (dimension, idf) for the `dim` (token, token_id, df) with the highest df.

    Ties go to the lower token_id (the more frequent token, then the alphabetically first).
    idf is the smooth ln((1 + N) / (1 + df)) + 1.
    """
    top = sorted(vocab, key=lambda e: (-e[2], e[1]))[:dim]
    return {
        tok: (j, math.log((1 + n_documents) / (1 + df)) + 1.0) for j, (tok, _, df) in enumerate(top)
    }


def tfidf_vector(
    tokens: Sequence[str], terms: dict[str, tuple[int, float]], dim: int
) -> np.ndarray:
    """L2-normalised raw-count x idf vector (float32, `dim` long); all zeros when no term hits."""
    import numpy as np

    v = np.zeros(dim, dtype=np.float64)
    for t in tokens:
        hit = terms.get(t)
        if hit is not None:
            v[hit[0]] += hit[1]
    norm = float(np.sqrt(np.dot(v, v)))
    if norm > 0:
        v /= norm
    return v.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Pure transforms (DataFrame -> DataFrame)
# ---------------------------------------------------------------------------------------------
def tokenise(products: DataFrame) -> DataFrame:
    """(product_id, title, description, first_seen) -> (product_id, tokens, event_timestamp).

    event_timestamp is first_seen, or the epoch when unknown: content holds from the
    product's existence.
    """
    from pyspark.sql import functions as F

    _normalise = F.udf(normalise, "array<string>", useArrow=True)
    text = F.concat_ws(" ", F.col("title"), F.col("description"))
    return products.select(
        "product_id",
        _normalise(text).alias("tokens"),
        F.coalesce(F.col("first_seen"), timestamp_lit(EPOCH)).alias("event_timestamp"),
    )


def token_stats(tokens: DataFrame) -> DataFrame:
    """(product_id, tokens) -> (token, count, document_frequency) over the corpus."""
    from pyspark.sql import functions as F

    return (
        tokens.select("product_id", F.explode("tokens").alias("token"))
        .groupBy("token")
        .agg(
            F.count("*").alias("count"),
            F.countDistinct("product_id").alias("document_frequency"),
        )
    )


def top_tokens(stats: DataFrame, min_count: int, max_vocab: int) -> DataFrame:
    """The `max_vocab` tokens with count >= `min_count`, by count desc then token asc."""
    from pyspark.sql import functions as F

    return (
        stats.where(F.col("count") >= min_count)
        .orderBy(F.col("count").desc(), F.col("token").asc())
        .limit(max_vocab)
    )


def encode(
    tokens: DataFrame,
    ids: dict[str, int],
    terms: dict[str, tuple[int, float]],
    version: str,
    sequence_length: int,
    tfidf_dim: int,
) -> DataFrame:
    """(product_id, tokens, event_timestamp) -> text_features columns but created_timestamp.

    `ids` and `terms` are shipped to the workers with the UDFs (bounded by max_vocab).
    """
    from pyspark.sql import functions as F

    _ids = F.udf(lambda t: token_ids(t, ids, sequence_length), "array<int>", useArrow=True)
    # float32 -> Python float is exact, so the stored float32 is the computed one.
    _tfidf = F.udf(
        lambda t: tfidf_vector(t, terms, tfidf_dim).tolist(), "array<float>", useArrow=True
    )

    return tokens.select(
        "product_id",
        F.lit(version).alias("vocab_version"),
        _ids("tokens").alias("token_ids"),
        F.size("tokens").cast("int").alias("n_tokens"),
        _tfidf("tokens").alias("tfidf"),
        "event_timestamp",
    )


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def vocabulary_arrow(entries: list[tuple[str, int, int, int]], version: str) -> pa.Table:
    """(token, token_id, count, df) rows as a `vocabulary` Arrow table."""
    import pyarrow as pa

    from atelier.contracts import contract

    cols = list(zip(*entries)) if entries else [(), (), (), ()]
    return pa.table(
        {
            "version": [version] * len(entries),
            "token": list(cols[0]),
            "token_id": list(cols[1]),
            "count": list(cols[2]),
            "document_frequency": list(cols[3]),
        },
        schema=contract("vocabulary").schema(),
    )


@locked("text-features")
def run_text_features(
    settings: Settings, spark: SparkSession | None = None, now: datetime | None = None
) -> dict:
    """Build the vocabulary and encode every product; returns a report dict.

    `now` stamps created_timestamp of the rows written (default: the current time).
    """
    from atelier.lake import Lake
    from atelier.spark import get_spark

    t0 = time.time()
    now = now or datetime.now(UTC)
    cfg = settings.text
    spark = spark or get_spark(settings)
    lake = Lake(settings, spark)

    products = lake.read_spark("products", ["product_id", "title", "description", "first_seen"])
    tokens = tokenise(products).cache()
    n_documents = tokens.count()
    stats = token_stats(tokens)
    ranked = [
        (r["token"], r["count"], r["document_frequency"])
        for r in top_tokens(stats, cfg.min_count, cfg.max_vocab).collect()
    ]
    version = vocabulary_version(ranked, cfg.min_count, cfg.max_vocab, n_documents)
    entries = assign_ids(ranked)
    log.info("vocabulary %s: %d tokens over %d products", version, len(entries), n_documents)

    report: dict = {
        "vocab_version": version,
        "vocab_size": len(entries),
        "products": n_documents,
        "now": now.isoformat(),
    }
    with lake.publishing("text_features", new_run_id(now)):
        known = set(lake.read_arrow("vocabulary", ["version"])["version"].to_pylist())
        # A version's rows are a function of the version: write them once.
        new_version = bool(entries) and version not in known
        inserted = 0
        if new_version:
            inserted = lake.merge("vocabulary", vocabulary_arrow(entries, version)).inserted
        report["vocabulary"] = {
            "new_version": new_version,
            "inserted": inserted,
            "version": lake.version("vocabulary"),
        }

        ids = {tok: tid for tok, tid, _, _ in entries}
        terms = tfidf_terms([(t, tid, df) for t, tid, _, df in entries], n_documents, cfg.tfidf_dim)
        features = encode(tokens, ids, terms, version, cfg.sequence_length, cfg.tfidf_dim)
        out = changed_rows(features, lake.read_spark("text_features"), ["product_id"], now).cache()
        n_out = out.count()
        tf_report = {"written": n_out, "inserted": 0, "updated": 0}
        if n_out:
            res = lake.merge("text_features", out)
            tf_report.update(inserted=res.inserted, updated=res.updated)
        tf_report["version"] = lake.version("text_features")
        report["text_features"] = tf_report
    report["seconds"] = round(time.time() - t0, 1)
    out.unpersist()
    tokens.unpersist()
    save_report(settings, "text_features", report)
    return report


def format_report(report: dict) -> str:
    """The run's counts as plain text (printed by spark-submit)."""
    v, t = report["vocabulary"], report["text_features"]
    return "\n".join(
        [
            f"text features over {report['products']} products ({report['seconds']}s)",
            f"vocabulary     {report['vocab_version']}  {report['vocab_size']} tokens  "
            f"{'new' if v['new_version'] else 'unchanged'}  version {v['version']}",
            f"text_features  written {t['written']} (ins. {t['inserted']}, upd. {t['updated']})"
            f"  version {t['version']}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """`spark-submit spark_jobs/text_features.py [--workdir W]`."""
    args = job_parser("text_features.py", __doc__).parse_args(argv)
    # No error is expected here: any exception is a bug and keeps its traceback.
    return run_job(args.workdir, run_text_features, format_report, errors=())


if __name__ == "__main__":
    from atelier.process import exit_now

    exit_now(main())
