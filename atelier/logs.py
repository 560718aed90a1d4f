"""Logging set-up for the CLI and spark-submit entry points (never at import time)."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    """Timestamped, one-line records on stderr; `ATELIER_LOG_LEVEL` overrides the level."""
    level = (level or os.environ.get("ATELIER_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Third-party chatter that buries the job's own progress lines.
    # Feast logs "Registry cache expired, so refreshing" at INFO on every lookup after the TTL.
    for noisy in ("py4j", "great_expectations", "urllib3", "matplotlib", "feast.infra.registry"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
