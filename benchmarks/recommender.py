"""Recommender benchmark (issue 5): Table 3 with LightFM and implicit ALS, epoch time vs LightFM.

    .venv/bin/python benchmarks/recommender.py --workdir W --train-end 2020-05-31 --runs 10 \
        --out benchmarks/results [--source ../shared/data/hm]

`W` must hold a prepared H&M workdir: ingested, images embedded, text and product features
built, `feast apply` done (the script says what is missing); `--source DIR` prepares it here
(ingest, VGG16 with seeded random weights, features, apply). Then, on one split — training
window up to `--train-end` (inclusive), test period the following `recommender.test_days` days:

1. `atelier train recommender` (`training.recommender.pipeline.train_recommender`) trains and
   scores popularity, cf, content and hybrid over `--runs` seeded runs, logging to W's MLflow;
2. the peers of `benchmarks/peers.py` — LightFM WARP over the same content features and
   implicit ALS — train on the same interactions with the same seeds (`settings.seed + run`),
   recommend to the same test customers from the same catalogue and are scored with the
   pipeline's own `score`, cold-start breakdown included; the split is recomputed with the
   pipeline's helpers and checked against the pipeline's own data summary;
3. Table 3 of all six with paired t-tests (hybrid vs each other), hybrid's seconds per epoch vs
   LightFM's in this process, and the issue's goals, to `--out`/recommender.json and .md.

Not a test: numbers depend on the machine; quote ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

PEERS = ("lightfm", "als")
K = 10  # the pipeline's cut-off (pipeline.K); precision/recall@10 as in the paper
METRIC, RECALL = f"precision_at_{K}", f"recall_at_{K}"
POPULARITY_RATIO = 1.35  # the paper's hybrid / popularity precision ratio
SPLIT_KEYS = (
    "interactions",
    "test_customers",
    "test_purchases",
    "window_products",
    "recommendable_products",
    "cold_start_products",
    "cold_start_purchases",
)


def say(message: str) -> None:
    """Progress on stderr, so stdout carries only the results."""
    print(message, file=sys.stderr, flush=True)


def per_run(message: str) -> None:
    """`say` without the trainer's per-epoch lines: one line per run and variant."""
    if ": epoch " not in message and ": early stop " not in message:
        say(message)


# -- the workdir -------------------------------------------------------------------------------


def prepare(settings, source: Path) -> dict[str, float]:
    """Ingest `source` (H&M layout), embed, text + product features, feast apply; seconds per
    stage. Every stage is incremental, so a prepared workdir costs little."""
    from atelier.feast_store import apply
    from atelier.spark import get_spark
    from spark_jobs.embed import run_embed
    from spark_jobs.ingest import run_ingest
    from spark_jobs.product_features import run_product_features
    from spark_jobs.text_features import run_text_features

    spark = get_spark(settings)
    seconds = {}
    for name, fn in (
        ("ingest", lambda: run_ingest(settings, "hm", source, spark=spark)),
        ("embed", lambda: run_embed(settings, spark=spark)),
        ("text_features", lambda: run_text_features(settings, spark=spark)),
        ("product_features", lambda: run_product_features(settings, spark=spark)),
        ("feast_apply", lambda: apply(settings)),
    ):
        t0 = time.perf_counter()
        fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        say(f"{name}: {seconds[name]}s")
    return seconds


def missing_inputs(settings) -> list[str]:
    """What the workdir lacks for the benchmark, each with the command that makes it."""
    from atelier.lake import Lake

    lake = Lake(settings)
    need = {
        "products": "atelier ingest hm DIR",
        "interactions": "atelier ingest hm DIR",
        "image_embeddings": "atelier embed",
        "text_features": "atelier features",
        "product_features": "atelier features",
    }
    out = [f"lake table {t!r} ({cmd})" for t, cmd in need.items() if not lake.exists(t)]
    if out:
        return out  # Feast would only fail on the missing tables too
    service = settings.recommender.feature_service
    if settings.feast.profile == "embedded" and not (settings.feast_dir / "registry.db").is_file():
        return [f"the Feast registry {settings.feast_dir / 'registry.db'} (atelier materialize)"]
    try:
        from atelier.feast_store import feature_store

        feature_store(settings).get_feature_service(service)
    except Exception as err:  # any registry failure means the same thing here
        return [f"feature service {service!r} in the Feast registry (atelier materialize): {err}"]
    return []


# -- the split ---------------------------------------------------------------------------------


@dataclass
class Split:
    """The pipeline's evaluation split, rebuilt with its own helpers (see `make_split`)."""

    interactions: object  # pd.DataFrame
    end: object  # pd.Timestamp
    test_end: object
    start: object  # None: all history
    relevant: dict
    histories: dict
    catalogue: np.ndarray
    cold: frozenset
    window: np.ndarray
    features: object  # ContentFeatures

    def summary(self) -> dict:
        """The keys of the pipeline's `report["data"]` that fix the split."""
        purchases = [set(v) for v in self.relevant.values()]
        return {
            "interactions": len(self.interactions),
            "test_customers": len(self.relevant),
            "test_purchases": int(sum(len(v) for v in purchases)),
            "window_products": len(self.window),
            "recommendable_products": len(self.catalogue),
            "cold_start_products": len(self.cold),
            "cold_start_purchases": int(sum(len(v & self.cold) for v in purchases)),
        }


def make_split(settings, train_end) -> Split:
    """The split `train_recommender` evaluates on, with the same calls in the same order: test
    customers with a history, their `n_inputs` most recent products, the recommendable catalogue
    (launched by the test end, with content features), the cold-start products."""
    import pandas as pd

    from training.recommender.data import (
        customer_histories,
        test_set,
        utc_timestamp,
        window_products,
    )
    from training.recommender.evaluation import cold_start_products
    from training.recommender.features import load_content_features
    from training.recommender.pipeline import read_interactions, recommendable_products

    cfg = settings.recommender
    interactions = read_interactions(settings)
    end = utc_timestamp(train_end, "train_end")
    test_end = end + pd.Timedelta(days=cfg.test_days)
    start = None if cfg.train_days is None else end - pd.Timedelta(days=cfg.train_days)
    relevant = test_set(interactions, end, test_end, train_start=start)
    if not relevant:
        raise ValueError(f"no customer with a history bought anything in ({end}, {test_end}]")
    catalogue = recommendable_products(settings, test_end)
    histories = customer_histories(interactions, end, relevant, max_items=cfg.n_inputs)
    window = window_products(interactions, end, start)
    features = load_content_features(settings, end, content_as_of=test_end)
    known = set(features.product_ids)
    catalogue = np.asarray([p for p in catalogue if p in known], dtype=object)
    cold = cold_start_products(interactions, end, catalogue=catalogue, train_start=start)
    # The peers index interactions by catalogue column: every bought product needs one.
    outside = sorted(set(window) - set(catalogue))
    if outside:
        raise ValueError(
            f"{len(outside)} products bought in the training window are not recommendable "
            f"(no content features or no catalogue row), e.g. {outside[:5]!r}"
        )
    return Split(
        interactions, end, test_end, start, relevant, histories, catalogue, cold, window, features
    )


def check_same_split(mine: Mapping, pipeline: Mapping, keys: Sequence[str] = SPLIT_KEYS) -> None:
    """Raise when the rebuilt split's summary differs from the pipeline's `report["data"]`:
    the peers would then be scored on another test set."""
    differ = {k: (mine.get(k), pipeline.get(k)) for k in keys if mine.get(k) != pipeline.get(k)}
    if differ:
        raise ValueError(
            f"the peers' split differs from the pipeline's (mine, pipeline): {differ!r}"
        )


# -- LightFM's item features -------------------------------------------------------------------


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def content_matrix(
    blocks: Mapping[str, np.ndarray],
    categorical_dims: Mapping[str, int],
    lifted: Sequence[str] = (),
) -> np.ndarray:
    """(n, d) float32: the content the hybrid's `ContentEncoder` reads before its network.

    Blocks in name order; a categorical block (n,) becomes a one-hot row of its size (zeros for
    index 0 or out of range); a `lifted` block gets a constant 1 appended; each block is scaled
    to unit norm, then the concatenation (a zero block stays zero). So LightFM sees the same
    content, weighted the same way, as the hybrid model's first layer.
    """
    parts = []
    for name in sorted(blocks):
        block = np.asarray(blocks[name])
        if name in categorical_dims:
            size = int(categorical_dims[name])
            idx = block.astype(np.int64)
            onehot = np.zeros((len(idx), size), np.float32)
            ok = (idx >= 1) & (idx < size)
            onehot[np.flatnonzero(ok), idx[ok]] = 1.0
            block = onehot
        else:
            block = np.asarray(block, np.float32).reshape(len(block), -1)
            block = np.where(np.isfinite(block), block, 0.0).astype(np.float32)
            if name in lifted:
                block = np.hstack([block, np.ones((len(block), 1), np.float32)])
        parts.append(_unit_rows(block))
    return _unit_rows(np.hstack(parts)).astype(np.float32)


def project(matrix: np.ndarray, dim: int, method: str = "svd", seed: int = 0):
    """(matrix (n, min(dim, d)), info): `matrix` (n, d) reduced to `dim` columns.

    "svd": the top right-singular vectors, uncentred (a zero row stays zero, so a product
    without content keeps no content feature); "random": a seeded Gaussian projection scaled by
    1/sqrt(dim). `dim` 0 or >= d: unchanged. LightFM's epoch time grows with the dense width.
    """
    n, d = matrix.shape
    info = {"input_columns": int(d), "method": "none", "columns": int(d)}
    if dim <= 0 or dim >= d:
        return matrix.astype(np.float32), info
    if method == "svd":
        # Right-singular vectors from the d x d Gram matrix: cheaper than an SVD of n x d.
        gram = matrix.astype(np.float64).T @ matrix.astype(np.float64)
        values, vectors = np.linalg.eigh(gram)
        order = np.argsort(values)[::-1][:dim]
        basis = vectors[:, order]
        # eigh's signs are arbitrary: fix them so a run is reproducible across BLAS builds.
        basis *= np.where(basis[np.abs(basis).argmax(axis=0), np.arange(dim)] < 0, -1.0, 1.0)
        total = float(values.clip(min=0).sum())
        kept = float(values[order].clip(min=0).sum()) / total if total > 0 else 1.0
        info["energy_kept"] = round(kept, 4)
    elif method == "random":
        basis = np.random.default_rng(seed).standard_normal((d, dim)) / math.sqrt(dim)
        info["seed"] = int(seed)
    else:
        raise ValueError(f"projection method must be 'svd' or 'random', got {method!r}")
    info.update(method=method, columns=int(dim))
    return (matrix.astype(np.float64) @ basis).astype(np.float32), info


# -- peers -------------------------------------------------------------------------------------


def drop_seen(recommended: Mapping, histories: Mapping, k: int) -> dict:
    """customer → the first `k` recommended products not in their history (the pipeline's
    `exclude_seen`, which drops the products of the same `n_inputs`-long histories)."""
    out = {}
    for customer, items in recommended.items():
        seen = set(histories.get(customer, ()))
        out[customer] = [p for p in items if p not in seen][:k]
    return out


def run_peers(
    settings,
    split: Split,
    runs: int,
    item_features: np.ndarray,
    lightfm_epochs: int,
    als_iterations: int,
    lightfm_threads: int = 1,
    peers: Sequence[str] = PEERS,
) -> dict:
    """name → {"main": [AtK per run], "cold": [AtK | None per run], "info": [model_info],
    "seconds_per_epoch": [...]}: each peer trained `runs` times with seeds `settings.seed + r`
    and scored with `pipeline.score` on the split's test customers and catalogue."""
    from benchmarks.peers import implicit_als, lightfm_warp
    from training.recommender.pipeline import score

    cfg = settings.recommender
    customers = list(split.relevant)
    extra = cfg.n_inputs if cfg.exclude_seen else 0  # room for the products dropped as seen
    out = {name: {"main": [], "cold": [], "info": [], "seconds_per_epoch": []} for name in peers}
    for r in range(runs):
        seed = settings.seed + r
        for name in peers:
            if name == "lightfm":
                trained = lightfm_warp(
                    split.interactions,
                    split.end,
                    item_features,
                    split.catalogue,
                    epochs=lightfm_epochs,
                    no_components=cfg.k,
                    seed=seed,
                    progress=lambda _m: None,  # one line per run below, not per epoch
                    train_start=split.start,
                    num_threads=lightfm_threads,
                )
            else:
                trained = implicit_als(
                    split.interactions,
                    split.end,
                    split.catalogue,
                    factors=cfg.k,
                    iterations=als_iterations,
                    seed=seed,
                    progress=lambda _m: None,
                    train_start=split.start,
                )
            recs = trained.recommend(customers, K + extra)
            if cfg.exclude_seen:
                recs = drop_seen(recs, split.histories, K)
            main, cold = score(recs, split.relevant, split.cold)
            info = dict(trained.model_info)
            info["epoch_seconds"] = [round(x, 4) for x in info["epoch_seconds"]]
            out[name]["main"].append(main)
            out[name]["cold"].append(cold)
            out[name]["info"].append(info)
            out[name]["seconds_per_epoch"].append(trained.seconds_per_epoch)
            say(
                f"{name} run {r + 1}/{runs}: {METRIC} {main.precision:.4f}, {RECALL} "
                f"{main.recall:.4f}, {trained.seconds_per_epoch:.3f}s/epoch"
            )
    return out


# -- Table 3 -----------------------------------------------------------------------------------


def learned_runs(settings, run_id: str, variants: Sequence[str], runs: int) -> dict:
    """variant → per-run {precision_at_10, recall_at_10} of the pipeline's learned variants,
    read back from its MLflow run (the report keeps only means): the paired tests need them."""
    from mlflow import MlflowClient

    metrics = (
        MlflowClient(settings.tracking_uri, settings.registry_uri).get_run(run_id).data.metrics
    )
    out = {}
    for variant in variants:
        keys = [(f"{variant}.run{r}.{METRIC}", f"{variant}.run{r}.{RECALL}") for r in range(runs)]
        absent = [key for pair in keys for key in pair if key not in metrics]
        if absent:
            raise ValueError(f"MLflow run {run_id} lacks per-run metrics {absent[:4]!r}")
        out[variant] = [{METRIC: metrics[p], RECALL: metrics[q]} for p, q in keys]
    return out


def combine(report: Mapping, learned: Mapping, peers: Mapping) -> dict:
    """Table 3 of the pipeline's variants and the peers (`evaluation.table3` shape): main rows
    and every paired test from the per-run values, cold-start rows from the pipeline's report
    and the peers' runs. The recomposed variant means must equal the pipeline's."""
    from training.recommender.evaluation import table3
    from training.recommender.pipeline import _cold_runs

    runs = {}
    for name, summary in report["variants"].items():
        # popularity is deterministic: its one run is its mean
        runs[name] = learned.get(name) or [{METRIC: summary[METRIC], RECALL: summary[RECALL]}]
    for name, peer in peers.items():
        runs[name] = peer["main"]
    table = table3(runs, None, K)
    for name, summary in report["variants"].items():
        for key in (METRIC, RECALL):
            if not math.isclose(table["variants"][name][key], summary[key], abs_tol=1e-12):
                raise ValueError(
                    f"{name} {key}: MLflow's runs give {table['variants'][name][key]!r}, the "
                    f"report {summary[key]!r}"
                )
    table["cold_start"] = dict(report.get("cold_start") or {})
    peer_cold = _cold_runs({name: peer["cold"] for name, peer in peers.items()})
    if table["cold_start"] and peer_cold:
        table["cold_start"].update(table3(peer_cold, None, K)["variants"])
    return table


def versus(significance: Mapping, name: str) -> dict:
    """other → tests of `name` against it, `mean_diff` = name − other (t flipped to match),
    from `table3`'s "B_vs_A" pairs (mean_diff = B − A) whichever side `name` is on."""
    out = {}
    for pair, tests in significance.items():
        second, _, first = pair.partition("_vs_")
        if name not in (first, second):
            continue
        flip = second != name
        other = second if flip else first
        out[other] = {
            metric: {
                **test,
                "mean_diff": -test["mean_diff"] if flip else test["mean_diff"],
                "t": None if test["t"] is None else (-test["t"] if flip else test["t"]),
            }
            for metric, test in tests.items()
        }
    return out


def goals(variants: Mapping, ratio: float | None) -> list[dict]:
    """The issue's goals: {"goal", "met" (True / False / None = not measured), "detail"}."""

    def p(name):
        return variants[name][METRIC] if name in variants else None

    def check(goal, names, test, detail):
        values = [p(n) for n in names]
        if any(v is None for v in values):
            absent = [n for n, v in zip(names, values) if v is None]
            return {"goal": goal, "met": None, "detail": f"not measured: no {', '.join(absent)}"}
        return {"goal": goal, "met": bool(test(*values)), "detail": detail(*values)}

    out = [
        check(
            "hybrid ≥ cf ≥ popularity (precision@10)",
            ("hybrid", "cf", "popularity"),
            lambda h, c, pop: h >= c >= pop,
            lambda h, c, pop: f"hybrid {h:.5f}, cf {c:.5f}, popularity {pop:.5f}",
        ),
        check(
            f"hybrid ≥ {POPULARITY_RATIO} × popularity (precision@10)",
            ("hybrid", "popularity"),
            lambda h, pop: h >= POPULARITY_RATIO * pop,
            lambda h, pop: (
                f"hybrid {h:.5f} = {h / pop:.2f} × popularity {pop:.5f}"
                if pop > 0
                else f"hybrid {h:.5f}, popularity 0"
            ),
        ),
        check(
            "hybrid ≥ LightFM (precision@10)",
            ("hybrid", "lightfm"),
            lambda h, lf: h >= lf,
            lambda h, lf: f"hybrid {h:.5f}, LightFM {lf:.5f} ({h - lf:+.5f})",
        ),
    ]
    goal = "hybrid / LightFM seconds per epoch ≤ 1.0"
    if ratio is None or not math.isfinite(ratio):
        out.append({"goal": goal, "met": None, "detail": "not measured"})
    else:
        out.append({"goal": goal, "met": ratio <= 1.0, "detail": f"ratio {ratio:.2f}"})
    return out


# -- the report --------------------------------------------------------------------------------


def _num(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _mark(met) -> str:
    return {True: "met", False: "**NOT met**", None: "not measured"}[met]


def render(result: Mapping) -> str:
    """The Markdown of one benchmark result (the JSON written beside it)."""
    from training.recommender.evaluation import markdown_table

    table, data, m = result["table"], result["data"], result["machine"]
    per = data["training_examples"]
    lf = result.get("lightfm_features")
    period = result["period"]
    since = "" if period["train_start"] is None else f"after {period['train_start'][:10]} "
    if not per:
        examples = "–"
    elif min(per) == max(per):
        examples = f"{per[0]:,}"
    else:
        examples = f"{min(per):,}–{max(per):,}"
    lines = [
        "# Recommender benchmark (Table 3)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}. Machine: {m['cpus']} CPUs ({m['platform']}), Python "
        f"{m['python']}, training device {m['device']}; TensorFlow intra-op threads "
        f"{m['tf_intra_op_threads'] or 'default (all cores)'}, LightFM threads "
        f"{m['lightfm_threads']}, ALS threads 1.",
        "",
        "## Data",
        "",
        f"- Training window: interactions {since}up to {period['train_end'][:10]} (inclusive); "
        f"test period: the purchases after it up to {period['test_end'][:10]} "
        f"({result['settings']['test_days']} days).",
        f"- {data['interactions']:,} interactions in the lake; {data['test_customers']:,} test "
        f"customers (with a history) buying {data['test_purchases']:,} distinct "
        f"(customer, product) pairs; {data['window_products']:,} products bought in the "
        f"training window; {data['recommendable_products']:,} recommendable products.",
        f"- Cold-start (never bought in training): {data['cold_start_products']:,} products, "
        f"{data['cold_start_purchases']:,} test purchases.",
        f"- Training examples per run: {examples} ({len(per)} runs).",
        f"- Content blocks: {', '.join(f'{b} {w}' for b, w in result['content_blocks'].items())}"
        f"{'' if 'attributes' in result['content_blocks'] else ' (no predicted attributes)'}.",
    ]
    if lf:
        how = (
            "all columns"
            if lf["method"] == "none"
            else f"projected to {lf['columns']} by {lf['method']}"
            + (f" (energy kept {lf['energy_kept']:.1%})" if "energy_kept" in lf else "")
        )
        lines.append(
            f"- LightFM item features: identity + the {lf['input_columns']} content columns "
            f"the hybrid's encoder reads (per-block unit norm), {how}."
        )
    shown = {k: v for k, v in table.items() if k != "significance"}
    lines += ["", "## Table 3", "", markdown_table(shown, K).rstrip(), ""]
    vs = result.get("hybrid_vs") or {}
    if vs:
        lines += [
            "Paired t-tests of hybrid against each other (two-sided, run i with run i; "
            "mean diff = hybrid − other):",
            "",
            "| hybrid vs | metric | mean diff | t | p |",
            "|---|---|---:|---:|---:|",
        ]
        for other, tests in vs.items():
            for metric, t in tests.items():
                lines.append(
                    f"| {other} | {metric.replace('_at_', '@')} | {t['mean_diff']:+.5f} | "
                    f"{_num(t['t'], '.3g')} | {_num(t['p_value'], '.3g')} |"
                )
        lines.append("")
    lines += [
        "## Training time",
        "",
        "| model | runs | epochs (mean) | seconds/epoch (mean) |",
        "|---|---:|---:|---:|",
    ]
    for name, info in result["training"].items():
        lines.append(
            f"| {name} | {info['runs']} | {info['epochs']:.1f} | {info['seconds_per_epoch']:.3f} |"
        )
    ratio = result.get("epoch_time_ratio")
    lines += [
        "",
        "ALS: seconds per ALS iteration. "
        + (
            f"hybrid / LightFM seconds per epoch, same process: **{ratio:.2f}**."
            if ratio is not None
            else "hybrid / LightFM: not measured."
        ),
        "",
        "## Goals",
        "",
    ]
    lines += [f"- {g['goal']}: {_mark(g['met'])} ({g['detail']})" for g in result["goals"]]
    lines += ["", "## Reading the results", "", "_To be written._", ""]
    return "\n".join(lines)


def command_line(argv: Sequence[str]) -> str:
    """The command as typed, with the ATELIER_* settings of the environment in front."""
    env = [
        f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("ATELIER_")
    ]
    return " ".join([*env, "python benchmarks/recommender.py", shlex.join(argv)])


def configure_tf_threads(threads: int | None) -> int:
    """Bound TensorFlow's intra-op threads (before any op runs); returns the setting, 0 =
    TensorFlow's default (every core)."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    return int(tf.config.threading.get_intra_op_parallelism_threads())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True, help="a prepared H&M workdir")
    p.add_argument("--source", type=Path, help="H&M-layout folder: prepare the workdir first")
    p.add_argument("--train-end", required=True, help="end of training, inclusive (2020-05-31)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--epochs", type=int, help="max epochs of the learned variants (setting)")
    p.add_argument("--variants", default="popularity,cf,content,hybrid")
    p.add_argument("--skip-peers", action="store_true")
    p.add_argument("--lightfm-epochs", type=int, help="default: the hybrid's mean epochs (rounded)")
    p.add_argument("--lightfm-feature-dim", type=int, default=128, help="0: every column")
    p.add_argument("--lightfm-projection", choices=["svd", "random"], default="svd")
    p.add_argument("--lightfm-threads", type=int, default=1, help="1 is deterministic")
    p.add_argument("--als-iterations", type=int, default=15)
    p.add_argument("--tf-threads", type=int, help="TensorFlow intra-op threads (default: all)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--verbose", action="store_true", help="one progress line per epoch")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be >= 1, got {args.runs}")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    tf_threads = configure_tf_threads(args.tf_threads)

    from atelier.logs import setup_logging
    from atelier.settings import Settings
    from training.attributes.pipeline import device
    from training.recommender.pipeline import LEARNED, check_variants, train_recommender

    setup_logging("WARNING")  # progress lines come from `say`
    overrides = {"recommender": {"epochs": args.epochs}} if args.epochs else {}
    if args.source:
        overrides["embed"] = {"allow_random_weights": True}  # offline: recorded in the lake
    settings = Settings(workdir=args.workdir, **overrides)
    cfg = settings.recommender
    variants = check_variants(args.variants)
    seconds: dict[str, float] = {}
    if args.source:
        seconds.update(prepare(settings, args.source))
    missing = missing_inputs(settings)
    if missing:
        say(f"{settings.workdir} is not prepared; it lacks:\n  " + "\n  ".join(missing))
        say("prepare it with --source DIR or the atelier commands named above")
        return 2

    t0 = time.perf_counter()
    split = make_split(settings, args.train_end)
    seconds["split"] = round(time.perf_counter() - t0, 1)
    mine = split.summary()
    say(
        f"split: {mine['test_customers']} test customers, {mine['recommendable_products']} "
        f"recommendable products, {mine['cold_start_purchases']} cold-start purchases"
    )

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-recommender-") as scratch:
        out = train_recommender(
            settings,
            split.end,
            variants,
            args.runs,
            Path(scratch),
            say if args.verbose else per_run,
        )
    seconds["pipeline"] = round(time.perf_counter() - t0, 1)
    report = out["report"]
    learned = [v for v in variants if v in LEARNED]
    # Without a learned variant the pipeline reads no content, so its catalogue is unfiltered.
    check_same_split(mine, report["data"], SPLIT_KEYS if learned else SPLIT_KEYS[:4])

    training = {
        v: {k: info[k] for k in ("runs", "epochs", "seconds_per_epoch")}
        for v, info in report["training"].items()
    }
    peers, lightfm_features, lightfm_epochs = {}, None, None
    if not args.skip_peers:
        features = split.features
        dense = content_matrix(
            {b: v[features.rows(split.catalogue)] for b, v in features.blocks.items()},
            features.categorical_dims,
            features.recommender_config("content").lifted_blocks,
        )
        item_features, lightfm_features = project(
            dense, args.lightfm_feature_dim, args.lightfm_projection, settings.seed
        )
        lightfm_epochs = args.lightfm_epochs or (
            max(1, round(training["hybrid"]["epochs"])) if "hybrid" in training else cfg.epochs
        )
        say(f"peers: LightFM {lightfm_epochs} epochs, ALS {args.als_iterations} iterations")
        t0 = time.perf_counter()
        peers = run_peers(
            settings,
            split,
            args.runs,
            item_features,
            lightfm_epochs,
            args.als_iterations,
            args.lightfm_threads,
        )
        seconds["peers"] = round(time.perf_counter() - t0, 1)
        for name, peer in peers.items():
            epochs = [len(i["epoch_seconds"]) for i in peer["info"]]
            training[name] = {
                "runs": len(epochs),
                "epochs": float(np.mean(epochs)),
                "seconds_per_epoch": float(np.mean(peer["seconds_per_epoch"])),
            }

    table = combine(report, learned_runs(settings, out["run_id"], learned, args.runs), peers)
    ratio = None
    if "hybrid" in training and "lightfm" in training:
        ratio = training["hybrid"]["seconds_per_epoch"] / training["lightfm"]["seconds_per_epoch"]
    result = {
        "command": command_line(argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "device": report.get("device", device()),
            "tf_intra_op_threads": tf_threads,
            "lightfm_threads": args.lightfm_threads,
        },
        "settings": {**cfg.model_dump(), "seed": settings.seed},
        "period": report["period"],
        "data": report["data"],
        "content_blocks": {**split.features.block_dims, **split.features.categorical_dims},
        "attribute_model_versions": list(split.features.attribute_model_versions),
        "lightfm_features": lightfm_features,
        "peer_budget": {"lightfm_epochs": lightfm_epochs, "als_iterations": args.als_iterations},
        "table": table,
        "hybrid_vs": versus(table["significance"], "hybrid"),
        "training": training,
        "epoch_time_ratio": ratio,
        "goals": goals(table["variants"], ratio),
        "peers": {name: peer["info"] for name, peer in peers.items()},
        "pipeline": {"run_id": out["run_id"], "model_version": out["model_version"]},
        "seconds": seconds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recommender.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "recommender.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
