"""Recommender benchmark (issue 11): Table 3 in two modes with LightFM and implicit ALS.

    .venv/bin/python benchmarks/recommender.py --workdir W --train-end 2020-05-31 --runs 10 \
        --grid default --out benchmarks/results

`W` must hold a prepared H&M workdir: ingested, images embedded, text and product features
built, `feast apply` done (the script says what is missing). On one split — training up to
`--train-end` (inclusive), validation window its last `recommender.validation_days`, test
period the following `recommender.test_days` days:

1. with `--grid`, `pipeline.tune_recommender` chooses the recommender settings on the
   validation window only (hybrid, one seed; scheme, k, learning rate, l2, n_recent,
   negatives); the test period is not read;
2. `pipeline.train_recommender` trains popularity, cf, content and hybrid `--runs` times with
   those settings and scores them once on the test period, in both modes (all products, with
   "buy it again" and the blend; new to customer), with cold-start rows and diversity;
3. the peers of `benchmarks/peers.py` — LightFM WARP over the same content features and
   implicit ALS — train on the same interactions with the same seeds, recommend to the same
   test customers from the same catalogue in both modes, and are scored with the pipeline's
   own `score`;
4. Table 3 of everything in each mode with per-run hit counts and paired t-tests, hybrid's
   seconds per epoch vs LightFM's in this process, and the issue's goals, to
   `--out`/recommender.json and .md.

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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

PEERS = ("lightfm", "als")
K = 10  # the pipeline's cut-off (pipeline.K); precision/recall@10 as in the paper
METRIC, RECALL = f"precision_at_{K}", f"recall_at_{K}"
POPULARITY_RATIO = 1.35  # the paper's hybrid / popularity precision ratio


def say(message: str) -> None:
    """Progress on stderr, so stdout carries only the results."""
    print(message, file=sys.stderr, flush=True)


def per_run(message: str) -> None:
    """`say` without the trainer's per-epoch lines: one line per run and variant."""
    if ": epoch " not in message and ": early stop " not in message:
        say(message)


# -- the workdir -------------------------------------------------------------------------------


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
    new-to-customer mode drops every product the customer bought up to train_end)."""
    out = {}
    for customer, items in recommended.items():
        seen = set(histories.get(customer, ()))
        out[customer] = [p for p in items if p not in seen][:k]
    return out


def run_peers(
    settings,
    split,
    runs: int,
    item_features: np.ndarray,
    lightfm_epochs: int,
    als_iterations: int,
    lightfm_threads: int = 1,
    peers: Sequence[str] = PEERS,
) -> dict:
    """name → {"runs": {mode: [AtK]}, "cold": {mode: [AtK | None]}, "distinct": {mode: [int]},
    "info": [model_info], "seconds_per_epoch": [...]}: each peer trained `runs` times with seeds
    `settings.seed + r` on the interactions up to train_end and scored with `pipeline.score`
    on the test customers and catalogue, in both modes."""
    from benchmarks.peers import implicit_als, lightfm_warp
    from training.recommender.evaluation import MODES
    from training.recommender.pipeline import distinct_products, score

    cfg = settings.recommender
    test = split.test
    customers = list(test.relevant)
    longest = max(len(set(h)) for h in test.histories.values())
    out = {
        name: {
            "runs": {m: [] for m in MODES},
            "cold": {m: [] for m in MODES},
            "distinct": {m: [] for m in MODES},
            "info": [],
            "seconds_per_epoch": [],
        }
        for name in peers
    }
    catalogue = test.catalogue
    for r in range(runs):
        seed = settings.seed + r
        for name in peers:
            if name == "lightfm":
                trained = lightfm_warp(
                    split.interactions,
                    split.end,
                    item_features,
                    catalogue,
                    epochs=lightfm_epochs,
                    no_components=cfg.k,
                    seed=seed,
                    progress=lambda _m: None,
                    train_start=split.start,
                    num_threads=lightfm_threads,
                )
            else:
                trained = implicit_als(
                    split.interactions,
                    split.end,
                    catalogue,
                    factors=cfg.k,
                    iterations=als_iterations,
                    seed=seed,
                    progress=lambda _m: None,
                    train_start=split.start,
                )
            ranked = trained.recommend(customers, K + longest)
            lists = {
                "all_products": {c: items[:K] for c, items in ranked.items()},
                "new_to_customer": drop_seen(ranked, test.histories, K),
            }
            for mode, recs in lists.items():
                main, cold = score(recs, test.relevant, test.cold)
                out[name]["runs"][mode].append(main)
                out[name]["cold"][mode].append(cold)
                out[name]["distinct"][mode].append(distinct_products(recs))
            info = dict(trained.model_info)
            info["epoch_seconds"] = [round(x, 4) for x in info["epoch_seconds"]]
            out[name]["info"].append(info)
            out[name]["seconds_per_epoch"].append(trained.seconds_per_epoch)
            all_p = out[name]["runs"]["all_products"][-1].precision
            new_p = out[name]["runs"]["new_to_customer"][-1].precision
            say(
                f"{name} run {r + 1}/{runs}: {METRIC} all {all_p:.4f}, new {new_p:.4f}, "
                f"{trained.seconds_per_epoch:.3f}s/epoch"
            )
    return out


# -- Table 3 -----------------------------------------------------------------------------------


def combine(out: Mapping, peers: Mapping) -> dict:
    """mode → Table 3 (`evaluation.table3` shape) of the pipeline's rows and the peers',
    paired tests included, from the per-run `AtK`s."""
    from training.recommender.evaluation import table3
    from training.recommender.pipeline import _cold_runs

    tables = {}
    for mode, by_variant in out["runs"].items():
        runs = {name: list(values) for name, values in by_variant.items()}
        cold = {name: list(values) for name, values in out["cold_runs"][mode].items()}
        for name, peer in peers.items():
            runs[name] = peer["runs"][mode]
            cold[name] = peer["cold"][mode]
        tables[mode] = table3(runs, _cold_runs(cold), K)
    return tables


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


def goals(tables: Mapping, diversity: Mapping, ratio: float | None) -> list[dict]:
    """The issue's goals: {"goal", "met" (True / False / None = not measured), "detail"}."""
    out = []

    def p(mode, name, section="variants"):
        row = tables.get(mode, {}).get(section, {}).get(name)
        return None if row is None else row[METRIC]

    def pvalue(mode, a, b):
        tests = versus(tables[mode]["significance"], a).get(b)
        return None if tests is None else tests[METRIC]["p_value"]

    def add(goal, values, test, detail):
        if any(v is None for v in values):
            out.append({"goal": goal, "met": None, "detail": "not measured"})
        else:
            out.append({"goal": goal, "met": bool(test(*values)), "detail": detail(*values)})

    for mode in tables:
        h, c, pop = p(mode, "hybrid"), p(mode, "cf"), p(mode, "popularity")
        p_hc, p_cp = pvalue(mode, "hybrid", "cf"), pvalue(mode, "cf", "popularity")
        add(
            f"[{mode}] hybrid > cf > popularity, paired p < 0.05",
            (h, c, pop, p_hc, p_cp),
            lambda h, c, pop, a, b: h > c > pop and a < 0.05 and b < 0.05,
            lambda h, c, pop, a, b: (
                f"hybrid {h:.5f}, cf {c:.5f}, popularity {pop:.5f}; p(hybrid vs cf) {a:.3g}, "
                f"p(cf vs popularity) {b:.3g}"
            ),
        )
        add(
            f"[{mode}] hybrid ≥ {POPULARITY_RATIO} × popularity",
            (h, pop),
            lambda h, pop: pop > 0 and h >= POPULARITY_RATIO * pop,
            lambda h, pop: (
                f"hybrid {h:.5f} = {h / pop:.2f} × popularity {pop:.5f}"
                if pop
                else f"hybrid {h:.5f}, popularity 0"
            ),
        )
        hc, lc = p(mode, "hybrid", "cold_start"), p(mode, "lightfm", "cold_start")
        add(
            f"[{mode}] cold start: hybrid > 0 and > LightFM",
            (hc, lc),
            lambda h, lf: h > 0 and h > lf,
            lambda h, lf: f"hybrid {h:.5f}, LightFM {lf:.5f}",
        )
        d = (diversity.get(mode) or {}).get("hybrid", {}).get("distinct_products")
        add(
            f"[{mode}] hybrid recommends ≥ 150 distinct products across customers",
            (d,),
            lambda d: d >= 150,
            lambda d: f"{d:.1f} distinct products (mean over runs)",
        )
    new = "new_to_customer"
    for peer in ("lightfm", "als"):
        add(
            f"[{new}] hybrid ≥ {peer}",
            (p(new, "hybrid"), p(new, peer)),
            lambda h, x: h >= x,
            lambda h, x, peer=peer: f"hybrid {h:.5f}, {peer} {x:.5f} ({h - x:+.5f})",
        )
    add(
        "[all_products] blend ≥ 1.1 × buy again",
        (p("all_products", "blend"), p("all_products", "buy_again")),
        lambda b, a: a > 0 and b >= 1.1 * a,
        lambda b, a: f"blend {b:.5f} = {b / a:.2f} × buy again {a:.5f}" if a else f"blend {b}",
    )
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

    data, m, period = result["data"], result["machine"], result["period"]
    since = "" if period["train_start"] is None else f"after {period['train_start'][:10]} "
    lines = [
        "# Recommender benchmark (Table 3, two modes)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}. Machine: {m['cpus']} CPUs ({m['platform']}), Python "
        f"{m['python']}, training device {m['device']}; TensorFlow intra-op threads "
        f"{m['tf_intra_op_threads'] or 'default (all cores)'}, LightFM threads "
        f"{m['lightfm_threads']}, ALS threads 1.",
        "",
        "## Data",
        "",
        f"- Training: interactions {since}up to {period['train_end'][:10]} (inclusive); "
        f"validation window from {period['validation_start'][:10]} (model selection only); "
        f"test period: the purchases after train_end up to {period['test_end'][:10]}, read "
        "once by the final runs.",
        f"- {data['interactions']:,} interactions; {data['training_examples']:,} training "
        f"examples ({result['settings']['scheme']} scheme), "
        f"{data['validation_examples']:,} in the validation window; "
        f"{data['test_customers']:,} test customers (with a history) buying "
        f"{data['test_purchases']:,} distinct (customer, product) pairs; "
        f"{data['recommendable_products']:,} recommendable products.",
        f"- Cold-start (never bought up to train_end): {data['cold_start_products']:,} "
        f"products, {data['cold_start_purchases']:,} test purchases.",
        f"- Content blocks: {', '.join(f'{b} {w}' for b, w in result['content_blocks'].items())}"
        f"{'' if 'attributes' in result['content_blocks'] else ' (no predicted attributes)'}; "
        f"image embeddings: {result['images']}.",
    ]
    lf = result.get("lightfm_features")
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
    tuning = result.get("tuning")
    if tuning:
        lines += [
            "",
            "## Model selection (validation window only)",
            "",
            "| overrides | validation precision@10 all | new to customer | loss | best epoch |"
            " seconds |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for pt in tuning["points"]:
            lines.append(
                f"| `{json.dumps(pt['overrides'])}` | {pt[f'all_products.{METRIC}']:.5f} | "
                f"{pt[f'new_to_customer.{METRIC}']:.5f} | {pt['validation_loss']:.4f} | "
                f"{pt['best_epoch']} | {pt['seconds']} |"
            )
        lines += ["", f"Chosen: `{json.dumps(tuning['best'])}`."]
    titles = {
        "all_products": "All products (the paper's protocol)",
        "new_to_customer": "New to customer (each customer's purchases up to train_end excluded)",
    }
    for mode, table in result["tables"].items():
        shown = {k: v for k, v in table.items() if k != "significance"}
        lines += ["", f"## Table 3 — {titles.get(mode, mode)}", "", markdown_table(shown, K)]
        vs = versus(table["significance"], "hybrid")
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
        cf_pop = versus(table["significance"], "cf").get("popularity")
        if cf_pop:
            t = cf_pop[METRIC]
            lines.append(
                f"| (cf vs popularity) | precision@10 | {t['mean_diff']:+.5f} | "
                f"{_num(t['t'], '.3g')} | {_num(t['p_value'], '.3g')} |"
            )
    lines += [
        "",
        "## Diversity",
        "",
        "| mode | model | distinct products in all top-10s (mean over runs) | customer-vector "
        "cosine |",
        "|---|---|---:|---:|",
    ]
    for mode, by in result["diversity"].items():
        for name, d in by.items():
            cos = d.get("customer_cosine")
            lines.append(
                f"| {mode} | {name} | {d['distinct_products']:.1f} | "
                f"{'–' if cos is None else f'{cos:.3f}'} |"
            )
    lines += [
        "",
        "## Training time",
        "",
        "| model | runs | epochs (mean) | seconds/epoch (mean) | train loss drop |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, info in result["training"].items():
        drop = info.get("train_loss_drop")
        lines.append(
            f"| {name} | {info['runs']} | {info['epochs']:.1f} | {info['seconds_per_epoch']:.3f} "
            f"| {'–' if drop is None else f'{drop:.1%}'} |"
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


# The default tuning grid: one axis at a time around the settings' defaults (the cost of a
# full product is too high here); `--grid '[{...}, ...]'` gives another.
DEFAULT_GRID = (
    {},
    {"scheme": "last_month"},
    {"negatives": "uniform"},
    {"learning_rate": 0.002},
    {"l2": 0.01},
    {"k": 64},
    {"n_recent": 10},
)


def image_summary(settings) -> str:
    """How many products have an image embedding, and with which weights."""
    from atelier.lake import Lake

    lake = Lake(settings)
    emb = lake.read_pandas("image_embeddings", ["product_id", "weights"])
    products = len(lake.read_pandas("products", ["product_id"]))
    weights = ", ".join(sorted({str(w)[:24] for w in emb["weights"]}))
    return f"{emb['product_id'].nunique():,} of {products:,} products ({weights})"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True, help="a prepared H&M workdir")
    p.add_argument("--train-end", required=True, help="end of training, inclusive (2020-05-31)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--grid", help="'default' or a JSON list of recommender overrides to tune")
    p.add_argument("--settings", default="{}", help="JSON recommender overrides (before tuning)")
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
    from training.recommender.pipeline import (
        EXAMPLE_SETTINGS,
        check_variants,
        prepare_split,
        train_recommender,
        tune_recommender,
    )

    setup_logging("WARNING")  # progress lines come from `say`
    settings = Settings(workdir=args.workdir, recommender=json.loads(args.settings))
    variants = check_variants(args.variants)
    missing = missing_inputs(settings)
    if missing:
        say(f"{settings.workdir} is not prepared; it lacks:\n  " + "\n  ".join(missing))
        say("prepare it with the atelier commands named above")
        return 2

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    split = prepare_split(settings, args.train_end)
    seconds["split"] = round(time.perf_counter() - t0, 1)
    tuning = None
    if args.grid:
        grid = DEFAULT_GRID if args.grid == "default" else json.loads(args.grid)
        t0 = time.perf_counter()
        tuning = tune_recommender(settings, split, grid, progress=say)
        seconds["tuning"] = round(time.perf_counter() - t0, 1)
        best = tuning["best"]
        say(f"chosen on validation: {best}")
        settings = settings.model_copy(
            update={"recommender": settings.recommender.model_copy(update=best)}
        )
        if any(k in best for k in EXAMPLE_SETTINGS):
            split = prepare_split(settings, split.end, split.interactions, split.features)
    cfg = settings.recommender
    test = split.test
    say(
        f"split: {len(test.relevant)} test customers, {len(test.catalogue)} recommendable "
        f"products, {len(test.cold)} cold"
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
            split=split,
        )
    seconds["pipeline"] = round(time.perf_counter() - t0, 1)
    report = out["report"]
    training = {
        v: {k: info[k] for k in ("runs", "epochs", "seconds_per_epoch", "train_loss_drop")}
        for v, info in report["training"].items()
    }
    diversity = {m: dict(by) for m, by in report["diagnostics"].items()}
    peers, lightfm_features, lightfm_epochs = {}, None, None
    if not args.skip_peers:
        features = split.features
        dense = content_matrix(
            {b: v[features.rows(test.catalogue)] for b, v in features.blocks.items()},
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
                "train_loss_drop": None,
            }
            for mode, counts in peer["distinct"].items():
                diversity.setdefault(mode, {})[name] = {
                    "distinct_products": float(np.mean(counts)),
                    "distinct_products_runs": counts,
                    "customer_cosine": None,
                }

    tables = combine(out, peers)
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
        "images": image_summary(settings),
        "content_blocks": {**split.features.block_dims, **split.features.categorical_dims},
        "attribute_model_versions": list(split.features.attribute_model_versions),
        "lightfm_features": lightfm_features,
        "peer_budget": {"lightfm_epochs": lightfm_epochs, "als_iterations": args.als_iterations},
        "tuning": tuning,
        "tables": tables,
        "diversity": diversity,
        "validation": report.get("validation"),
        "blend_rule": (report.get("model") or {}).get("blend"),
        "training": training,
        "epoch_time_ratio": ratio,
        "goals": goals(tables, diversity, ratio),
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
