"""A "buy it again" probe for the recommender benchmark's split (not a test).

    .venv/bin/python benchmarks/repeat_baseline.py --workdir W --train-end 2020-05-31

Recommends each test customer the 10 products they bought most recently up to `--train-end`
(distinct, newest first) and scores them like Table 3: customers with a history who bought in
the following `recommender.test_days`, precision and recall@10 against the distinct products
they bought then. Also counts the test (customer, product) pairs bought before: what a model
that does not exclude a customer's history (`recommender.exclude_seen` false) can win by
recommending it back.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, time, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
K = 10


def repeat_baseline(frame, train_end: datetime, test_days: int, k: int = K) -> dict:
    """frame: customer_id, product_id, timestamp (UTC). Returns the counts and the metrics."""
    import pandas as pd

    end = pd.Timestamp(datetime.combine(train_end.date(), time.max), tz="UTC")
    train = frame[frame["timestamp"] <= end].sort_values("timestamp", ascending=False)
    test = frame[(frame["timestamp"] > end) & (frame["timestamp"] <= end + timedelta(test_days))]
    test = test[test["customer_id"].isin(set(train["customer_id"]))]
    relevant = test.groupby("customer_id")["product_id"].agg(set)
    histories = train.groupby("customer_id", sort=False)["product_id"].agg(
        lambda s: list(dict.fromkeys(s))
    )
    precision, recall, repeats = [], [], 0
    for customer, items in relevant.items():
        history = histories[customer]
        hits = len(set(history[:k]) & items)
        precision.append(hits / k)
        recall.append(hits / len(items))
        repeats += len(set(history) & items)
    return {
        "test_customers": len(relevant),
        "test_pairs": int(sum(len(v) for v in relevant)),
        "repeat_pairs": repeats,
        f"precision_at_{k}": float(np.mean(precision)),
        f"recall_at_{k}": float(np.mean(recall)),
    }


def main(argv: list[str] | None = None) -> int:
    from atelier.lake import Lake
    from atelier.settings import load_settings

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--train-end", type=datetime.fromisoformat, required=True)
    args = p.parse_args(argv)
    settings = load_settings(workdir=args.workdir)
    frame = Lake(settings).read_pandas("interactions", ["customer_id", "product_id", "timestamp"])
    out = repeat_baseline(frame, args.train_end, settings.recommender.test_days)
    for name, value in out.items():
        print(f"{name}: {value:.5f}" if isinstance(value, float) else f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
