"""Attribute benchmark: Table 2, the TF-IDF + LR baseline, ablations, wall time, steps/s.

    .venv/bin/python benchmarks/attributes.py --catalogue fashion-small --layout fashion-images \
        --source ../shared/data/fashion-small --workdir /tmp/bench-fashion [--limit 6000]
    .venv/bin/python benchmarks/attributes.py --catalogue hm --layout hm \
        --source ../shared/data/hm --workdir /tmp/bench-hm

Builds (incrementally) the catalogue's features in `--workdir` — ingest, VGG16 embeddings with
the real ImageNet weights (`--weights`, default ../shared/models/vgg16_imagenet_notop.h5 when
present), colour descriptors, text and product features, `feast apply` — then runs `atelier
train attributes` with ablations and the baseline, optionally `atelier evaluate attributes` on a
catalogue-only folder of test products (`--unseen N`), and times the paper's round-robin SGD
step against a single-task Keras model of the same size trained with Keras' own
`train_on_batch`. A whole catalogue's embedding is best backfilled first, in slices
(`atelier embed --max-images N`, repeated): the report sums every saved run of a job in the
workdir. Each run writes `results/attributes-<catalogue>.json`; the Markdown
`results/attributes.md` is regenerated from every such JSON. Not a test: quote ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# The real ImageNet weights where the repository is checked out beside `shared` (the default).
SHARED_WEIGHTS = ROOT.parent / "shared" / "models" / "vgg16_imagenet_notop.h5"
sys.path.insert(0, str(ROOT))


def fashion_slice(src: Path, dst: Path, limit: int, start: int = 0) -> Path:
    """Products [start, start + limit) of a Fashion-Images folder among those with an image
    (symlinked)."""
    src = src.resolve()  # symlink targets must not depend on the link's folder
    with (src / "styles.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    picked = [r for r in rows[1:] if (src / "images" / f"{r[0]}.jpg").is_file()]
    picked = picked[start : start + limit]
    (dst / "images").mkdir(parents=True, exist_ok=True)
    with (dst / "styles.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([rows[0], *picked])
    for r in picked:
        link = dst / "images" / f"{r[0]}.jpg"
        if not link.exists():
            link.symlink_to(src / "images" / f"{r[0]}.jpg")
    return dst


def hm_slice(src: Path, dst: Path, limit: int) -> Path:
    """The first `limit` articles of an H&M-layout folder with their purchases and customers
    (images symlinked): the slice the features benchmark uses."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_features", ROOT / "benchmarks" / "features.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not (dst / "articles.csv").is_file():
        module.make_slice(src.resolve(), dst, limit)
    return dst


def test_catalogue(layout: str, src: Path, dst: Path, n: int, settings) -> Path:
    """A catalogue-only folder (articles or styles + images, symlinked) of the first `n`
    labelled products of the test split: products the model never trained on."""
    from training.attributes.data import held_out

    src = src.resolve()
    table = "styles.csv" if layout == "fashion-images" else "articles.csv"
    with (src / table).open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    ids = [r[0] for r in rows[1:]]
    test = held_out(ids, settings.attributes.test_fraction, settings.seed)
    picked = []
    for row, is_test in zip(rows[1:], test):
        image = (
            src / "images" / f"{row[0]}.jpg"
            if layout == "fashion-images"
            else src / "images" / row[0][:3] / f"{row[0]}.jpg"
        )
        if is_test and image.is_file():
            picked.append((row, image))
        if len(picked) == n:
            break
    (dst / "images").mkdir(parents=True, exist_ok=True)
    with (dst / table).open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([rows[0], *(r for r, _ in picked)])
    for _row, image in picked:
        link = dst / image.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(image)
    return dst


def build_features(settings, layout: str, source: Path) -> dict[str, float]:
    """Ingest, embed, colour, text + product features, feast apply; seconds per stage (of this
    call: a workdir backfilled earlier in slices does little here, see `backfill_seconds`)."""
    from atelier.feast_store import apply
    from atelier.spark import get_spark
    from spark_jobs.colour import run_colour
    from spark_jobs.embed import run_embed
    from spark_jobs.ingest import run_ingest
    from spark_jobs.product_features import run_product_features
    from spark_jobs.text_features import run_text_features

    spark = get_spark(settings)
    seconds = {}
    for name, fn in (
        ("ingest", lambda: run_ingest(settings, layout, source, spark=spark)),
        ("embed", lambda: run_embed(settings, spark=spark)),
        ("colour", lambda: run_colour(settings, spark=spark)),
        ("text_features", lambda: run_text_features(settings, spark=spark)),
        ("product_features", lambda: run_product_features(settings, spark=spark)),
        ("feast_apply", lambda: apply(settings)),
    ):
        t0 = time.perf_counter()
        fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {seconds[name]}s", flush=True)
    return seconds


def backfill_seconds(workdir: Path) -> dict[str, dict]:
    """Every saved run of the slow jobs in `workdir` (reports/<job>/<run_id>.json), summed: how
    long the whole catalogue's backfill took, however many slices and reruns it was cut into."""
    out = {}
    for job, counted in (("ingest", None), ("embed", "embedded"), ("colour", "described")):
        runs = [
            json.loads(f.read_text())
            for f in sorted((workdir / "reports" / job).glob("*.json"))
            if f.name != "latest.json"
        ]
        if runs:
            out[job] = {
                "runs": len(runs),
                "seconds": round(sum(float(r.get("seconds", 0)) for r in runs), 1),
                **({"items": sum(int(r.get(counted, 0)) for r in runs)} if counted else {}),
            }
    return out


def step_speed(settings, steps: int) -> dict:
    """Steps/s of the paper's per-head SGD step (multi-task model) vs a single-task Keras model
    of the same size (one head, `compile` + `train_on_batch`), same data, same batch size."""
    import keras

    from models.attributes.model import build_attribute_model
    from training.attributes.data import load_training_set, prepare_labels
    from training.attributes.schedule import MiniBatchSampler, round_robin
    from training.attributes.train_step import make_train_step
    from training.attributes.trainer import model_config

    cfg = settings.attributes
    ts = load_training_set(settings, with_tfidf=False)
    plan = prepare_labels(ts, cfg, settings.seed)
    sizes = cfg.model.model_dump()
    attributes = list(plan.classes)
    samplers = {a: MiniBatchSampler(plan.train[a], cfg.batch_size, seed=1) for a in attributes}
    schedule = round_robin({a: s.size for a, s in samplers.items()}, steps, seed=1)

    keras.utils.set_random_seed(settings.seed)
    multi = build_attribute_model(model_config(ts, plan, sizes))
    step = make_train_step(multi, cfg.learning_rate)
    for a in attributes:  # trace every head's step before timing
        rows = samplers[a].next()
        step(a, ts.rows(rows), plan.train[a][rows])
    t0 = time.perf_counter()
    for a in schedule:
        rows = samplers[a].next()
        step(a, ts.rows(rows), plan.train[a][rows])
    multi_s = time.perf_counter() - t0

    # The single task: the attribute with the most labels, the same layers and one head.
    biggest = max(attributes, key=lambda a: samplers[a].size)
    single_plan = type(plan)(
        {biggest: plan.classes[biggest]}, {}, {}, {biggest: plan.train[biggest]}, {}, {}
    )
    keras.utils.set_random_seed(settings.seed)
    single = build_attribute_model(model_config(ts, single_plan, sizes))
    single.compile(
        optimizer=keras.optimizers.SGD(cfg.learning_rate),
        loss={biggest: "sparse_categorical_crossentropy"},
    )
    sampler = samplers[biggest]
    rows = sampler.next()
    single.train_on_batch(ts.rows(rows), {biggest: plan.train[biggest][rows]})
    t0 = time.perf_counter()
    for _ in range(steps):
        rows = sampler.next()
        single.train_on_batch(ts.rows(rows), {biggest: plan.train[biggest][rows]})
    single_s = time.perf_counter() - t0
    return {
        "steps": steps,
        "multi_task_steps_per_s": round(steps / multi_s, 1),
        "single_task_steps_per_s": round(steps / single_s, 1),
        "ratio": round((steps / multi_s) / (steps / single_s), 2),
        "single_task_attribute": biggest,
        "heads": len(attributes),
    }


# Goals of issue 12: mean weighted F1 over TF-IDF + LR, per catalogue; colour attributes on hm.
LR_MARGIN = {"fashion-small": 0.02, "hm": 0.05}
COLOUR_ATTRIBUTES = ("colour_group_name", "perceived_colour_master_name")
COLOUR_GOAL = 0.45
SPEED_GOAL = 0.9
PAPER_ORDER = ["full", "no_metadata", "no_image", "no_text"]


def goals(r: dict) -> list[str]:
    """One line per goal of issue 12: met or missed, by how much."""
    rep = r["report"]
    lr = rep["baselines"].get("tfidf_lr", {})
    lr_mean = float(np.mean([m["weighted_f1"] for m in lr.values()])) if lr else float("nan")
    margin = LR_MARGIN.get(r["catalogue"], 0.02)
    diff = rep["mean_weighted_f1"] - lr_mean
    lines = [
        f"- Mean weighted F1 **{rep['mean_weighted_f1']:.3f}** vs TF-IDF + LR **{lr_mean:.3f}**: "
        f"{diff:+.3f} (goal >= +{margin:.2f}: {'met' if diff >= margin else 'missed'})."
    ]
    below = [a for a, m in rep["attributes"].items() if m["accuracy"] <= m["baseline_accuracy"]]
    lines.append(
        f"- Above the majority baseline (accuracy): {len(rep['attributes']) - len(below)} of "
        f"{len(rep['attributes'])} attributes"
        + (f" (not: {', '.join(below)})." if below else " (goal met).")
    )
    colour = {
        a: rep["attributes"][a]["weighted_f1"] for a in COLOUR_ATTRIBUTES if a in rep["attributes"]
    }
    if colour:
        lines.append(
            "- Colour attributes (goal weighted F1 >= 0.45): "
            + ", ".join(
                f"{a} {v:.3f} ({'met' if v >= COLOUR_GOAL else 'missed'})"
                for a, v in colour.items()
            )
            + "."
        )
    ab = rep.get("ablations", {})
    holds = all(ab.get(PAPER_ORDER[i], 0) >= ab.get(PAPER_ORDER[i + 1], 0) for i in range(3))
    lines.append(
        "- Ablations (mean weighted F1): "
        + ", ".join(f"{k} {v:.3f}" for k, v in ab.items())
        + f". Paper's order full > no_metadata > no_image > no_text "
        f"{'holds' if holds else 'does not hold'}."
    )
    speed = r["speed"]
    if "error" in speed:
        return [*lines, f"- Training speed: not measured ({speed['error']})."]
    lines.append(
        f"- Training speed: round-robin multi-task step {speed['multi_task_steps_per_s']} steps/s "
        f"({speed['heads']} heads) vs single-task Keras `train_on_batch` "
        f"{speed['single_task_steps_per_s']} steps/s (`{speed['single_task_attribute']}`), same "
        f"network and batch, one run: ratio **{speed['ratio']}** (goal >= {SPEED_GOAL}: "
        f"{'met' if speed['ratio'] >= SPEED_GOAL else 'missed'})."
    )
    return lines


def render(results: list[dict]) -> str:
    """The Markdown report of every catalogue's results."""
    from training.attributes.evaluation import markdown_table

    out = [
        "# Attribute benchmarks\n",
        "Machine: 2 cores, CPU only. Regenerated from `results/attributes-<catalogue>.json` by "
        "`benchmarks/attributes.py`; every number is from the held-out test split (the same "
        "split for every model), which nothing was chosen on: checkpoints, early stopping and "
        "settings use the validation split carved from the training products.\n",
    ]
    for r in results:
        rep = r["report"]
        plan = rep["label_plan"]
        weights = ", ".join(rep.get("training", {}).get("embedding_weights", [])) or "?"
        out += [
            f"## {r['catalogue']}\n",
            f"Command: `{r['command']}`  \n",
            f"{plan['products']} labelled products ({plan['train_products']} train / "
            f"{plan.get('validation_products', 0)} validation / {plan['test_products']} test), "
            f"hidden training labels: {plan['hidden_fraction']:.0%}; "
            f"{rep['training']['steps']} steps (best validation checkpoint at step "
            f"{rep['training'].get('best_step')}); image weights {weights}; {r['date']}.\n",
            markdown_table(rep),
            *goals(r),
            f"- Wall time: features {sum(r['feature_seconds'].values()):.0f}s "
            f"({', '.join(f'{k} {v:.0f}s' for k, v in r['feature_seconds'].items())}), "
            f"train + evaluate + ablations + baseline + MLflow {r['train_seconds']:.0f}s.",
            "- Whole-catalogue backfill (every saved run of the job in the workdir, slices "
            "included): "
            + "; ".join(
                f"{job} {b['seconds'] / 60:.0f} min over {b['runs']} run(s)"
                + (
                    f", {b['items']} images ({b['items'] / max(b['seconds'], 1):.1f}/s)"
                    if "items" in b
                    else ""
                )
                for job, b in r.get("backfill", {}).items()
            )
            + ".\n",
        ]
        conf = rep.get("confidence", {})
        if conf:
            out.append(
                "| attribute | ECE | coverage at 90% precision | coverage at 95% precision |\n"
                "|---|---:|---:|---:|"
            )
            for a, c in conf.items():
                out.append(
                    f"| {a} | {c['ece']:.3f} | {c['coverage_at_90']:.0%} | "
                    f"{c['coverage_at_95']:.0%} |"
                )
            out.append("")
        if (r.get("unseen") or {}).get("error"):
            out.append(f"`atelier evaluate attributes` failed: {r['unseen']['error']}\n")
        elif r.get("unseen"):
            u = r["unseen"]
            out.append(
                f"`atelier evaluate attributes` on {u['products']} products left out of "
                f"training ({u['seconds']}s, ingest + embed + colour in a scratch workdir + "
                f"scoring): mean weighted F1 **{u['mean_weighted_f1']:.3f}**; "
                + ", ".join(
                    f"{a} {m['weighted_f1']:.3f} (acc {m['accuracy']:.3f} vs majority "
                    f"{m['baseline_accuracy']:.3f})"
                    for a, m in u["attributes"].items()
                )
                + ".\n"
            )
        if r.get("notes"):
            out.append(r["notes"] + "\n")
    return "\n".join(out)


def evaluate_unseen(settings, args, source) -> dict:
    """`atelier evaluate attributes` on a catalogue-only folder of test-split products."""
    from atelier.registry import promote
    from cli.evaluate import evaluate_attributes

    promote(settings, settings.mlflow.attributes_model)
    part = test_catalogue(
        args.layout, source, args.workdir / "unseen-source", args.unseen, settings
    )
    t1 = time.perf_counter()
    ev = evaluate_attributes(settings, part, args.layout, args.workdir / "unseen-report")
    unseen = {
        "products": ev["catalogue"]["products"],
        "seconds": round(time.perf_counter() - t1),
        "mean_weighted_f1": ev["mean_weighted_f1"],
        "attributes": ev["attributes"],
        "coverage": ev["coverage"],
    }
    return unseen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalogue", required=True, help="name in the results, e.g. hm")
    p.add_argument("--layout", required=True, choices=["hm", "fashion-images"])
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--limit", type=int, default=0, help="first N products only")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=250, help="validation measurements")
    p.add_argument("--min-value-count", type=int, default=50)
    p.add_argument("--speed-steps", type=int, default=300)
    p.add_argument(
        "--wide-scale",
        type=float,
        default=None,
        help="attributes.model.wide_scale (default: the setting's); choose it on validation",
    )
    p.add_argument("--notes", default="", help="a sentence to print under the results")
    p.add_argument(
        "--unseen",
        type=int,
        default=0,
        help="also run `atelier evaluate attributes` on a catalogue-only folder (no customers, "
        "no purchases) of N test-split products, as a user would with a new catalogue",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=SHARED_WEIGHTS if SHARED_WEIGHTS.is_file() else None,
        help="VGG16 no-top weights file (default: ../shared/models/vgg16_imagenet_notop.h5 "
        "when present, else seeded random weights, flagged in the output)",
    )
    args = p.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from atelier.logs import setup_logging
    from atelier.settings import Settings
    from training.attributes.pipeline import train_attributes

    setup_logging("INFO")
    settings = Settings(
        workdir=args.workdir,
        gate={"build_data_docs": False},
        # Weights named outright (a file, or "random" without one): nothing falls back silently.
        embed={"weights": str(args.weights.resolve()) if args.weights else "random"},
        attributes={
            "steps": args.steps,
            "eval_every": args.eval_every,
            "min_value_count": args.min_value_count,
            **({"model": {"wide_scale": args.wide_scale}} if args.wide_scale else {}),
        },
    )
    if args.weights is None:
        print(
            "WARNING: no VGG16 weights file: seeded random weights (image features carry no "
            "visual meaning); the results record weights random:<seed>"
        )
    source = args.source
    if args.limit and args.layout == "fashion-images":
        source = fashion_slice(args.source, args.workdir / "source", args.limit)
    elif args.limit:
        source = hm_slice(args.source, args.workdir / "source", args.limit)
    feature_seconds = build_features(settings, args.layout, source)
    t0 = time.perf_counter()
    out = train_attributes(settings, args.workdir / "report", progress=print)
    train_seconds = time.perf_counter() - t0
    unseen = None
    if args.unseen:
        try:
            unseen = evaluate_unseen(settings, args, source)
        except Exception as error:  # the training results above must not be lost with it
            import traceback

            traceback.print_exc()
            unseen = {"error": f"{type(error).__name__}: {error}"}
    try:
        speed = step_speed(settings, args.speed_steps)
    except Exception as error:  # keep the training results
        import traceback

        traceback.print_exc()
        speed = {"error": f"{type(error).__name__}: {error}"}
    result = {
        "catalogue": args.catalogue,
        "command": "python benchmarks/attributes.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "feature_seconds": feature_seconds,
        "backfill": backfill_seconds(args.workdir),
        "train_seconds": round(train_seconds, 1),
        "speed": speed,
        "report": {k: v for k, v in out["report"].items() if k != "curves"},
        "notes": args.notes,
        "unseen": unseen,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"attributes-{args.catalogue}.json").write_text(json.dumps(result, indent=2))
    results = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("attributes-*.json"))]
    (RESULTS / "attributes.md").write_text(render(results))
    print(render([result]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
