"""One pipeline job in its own process, for the kill tests: `python -m tests.faults.runner
WORKDIR JOB SOURCE` runs `ingest`, `embed`, `features` (text then product features) or
`predict` (attributes, with the workdir's registered champion) with the
suite's fixed clock and test settings, exactly as the uninterrupted reference does in-process."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def settings_for(workdir: Path):
    from atelier.settings import Settings
    from tests.conftest import embed_settings

    return Settings(
        workdir=workdir,
        image_check_partitions=2,
        spark={"master": "local[2]", "shuffle_partitions": 4},
        gate={"build_data_docs": False},
        embed=embed_settings(chunk_images=8),  # several commits per embed run
    )


def run(job: str, settings, source: Path, spark=None) -> None:
    if job == "ingest":
        from spark_jobs.ingest import run_ingest

        run_ingest(settings, "hm", source, spark=spark, now=NOW)
    elif job == "embed":
        from spark_jobs.embed import run_embed

        run_embed(settings, spark=spark, now=NOW)
    elif job == "features":
        from spark_jobs.product_features import run_product_features
        from spark_jobs.text_features import run_text_features

        run_text_features(settings, spark=spark, now=NOW)
        run_product_features(settings, spark=spark, now=NOW)
    elif job == "predict":
        from spark_jobs.predict_attributes import run_predict_attributes

        run_predict_attributes(settings, spark=spark, now=NOW)
    else:
        raise SystemExit(f"unknown job {job!r}")


if __name__ == "__main__":
    workdir, job, source = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    run(job, settings_for(workdir), source)
    print("done", flush=True)
