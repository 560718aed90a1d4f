"""Attribute benchmark: Table 2, the TF-IDF + LR baseline, ablations, wall time, steps/s.

    .venv/bin/python benchmarks/attributes.py --catalogue fashion-small --layout fashion-images \
        --source ../shared/data/fashion-small --workdir /tmp/bench-fashion [--limit 6000]
    .venv/bin/python benchmarks/attributes.py --catalogue hm --layout hm \
        --source ../shared/data/hm --workdir /tmp/bench-hm

Builds (incrementally) the catalogue's features in `--workdir` — ingest, VGG16 embeddings with
seeded random weights (ImageNet weights cannot be downloaded here), text and product features,
`feast apply` — then runs `atelier train attributes` with ablations and the baseline, and times
the paper's round-robin SGD step against a single-task Keras model of the same size trained with
Keras' own `train_on_batch`. Each run writes `results/attributes-<catalogue>.json`; the Markdown
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


def build_features(settings, layout: str, source: Path) -> dict[str, float]:
    """Ingest, embed, text + product features, feast apply; seconds per stage."""
    from atelier.feast_store import apply
    from atelier.spark import get_spark
    from spark_jobs.embed import run_embed
    from spark_jobs.ingest import run_ingest
    from spark_jobs.product_features import run_product_features
    from spark_jobs.text_features import run_text_features

    spark = get_spark(settings)
    seconds = {}
    for name, fn in (
        ("ingest", lambda: run_ingest(settings, layout, source, spark=spark)),
        ("embed", lambda: run_embed(settings, spark=spark)),
        ("text_features", lambda: run_text_features(settings, spark=spark)),
        ("product_features", lambda: run_product_features(settings, spark=spark)),
        ("feast_apply", lambda: apply(settings)),
    ):
        t0 = time.perf_counter()
        fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {seconds[name]}s", flush=True)
    return seconds


def step_speed(settings, steps: int) -> dict:
    """Steps/s of the paper's per-head SGD step (multi-task model) vs a single-task Keras model
    of the same size (one head, `compile` + `train_on_batch`), same data, same batch size."""
    import keras

    from training.attributes.data import load_training_set, prepare_labels
    from training.attributes.model import build_attribute_model
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


def render(results: list[dict]) -> str:
    """The Markdown report of every catalogue's results."""
    from training.attributes.evaluation import markdown_table

    out = [
        "# Attribute benchmarks\n",
        "Machine: 2 cores, CPU only. VGG16 image features come from **seeded random weights** "
        "(ImageNet weights cannot be downloaded here), so the image modality carries little "
        "meaning: expect the no-image ablation to lose little, unlike the paper.\n",
    ]
    for r in results:
        rep = r["report"]
        lr = rep["baselines"].get("tfidf_lr", {})
        lr_mean = float(np.mean([m["weighted_f1"] for m in lr.values()])) if lr else float("nan")
        above = [a for a, m in rep["attributes"].items() if m["accuracy"] > m["baseline_accuracy"]]
        ab = rep.get("ablations", {})
        order = ["full", "no_metadata", "no_image", "no_text"]
        holds = all(ab.get(order[i], 0) >= ab.get(order[i + 1], 0) for i in range(3))
        out += [
            f"## {r['catalogue']}\n",
            f"Command: `{r['command']}`  \n",
            f"{rep['label_plan']['products']} labelled products "
            f"({rep['label_plan']['train_products']} train / "
            f"{rep['label_plan']['test_products']} test), hidden training labels: "
            f"{rep['label_plan']['hidden_fraction']:.0%}; {rep['training']['steps']} steps; "
            f"{r['date']}.\n",
            markdown_table(rep),
            f"- Mean weighted F1 **{rep['mean_weighted_f1']:.3f}** vs TF-IDF + LR "
            f"**{lr_mean:.3f}**: difference {rep['mean_weighted_f1'] - lr_mean:+.3f} "
            "(goal >= +0.03).",
            f"- Above the majority baseline (accuracy): {len(above)} of "
            f"{len(rep['attributes'])} attributes.",
            "- Ablations (mean weighted F1): "
            + ", ".join(f"{k} {v:.3f}" for k, v in ab.items())
            + f". Paper's order full > no_metadata > no_image > no_text "
            f"{'holds' if holds else 'does not hold'}.",
            f"- Wall time: features {sum(r['feature_seconds'].values()):.0f}s "
            f"({', '.join(f'{k} {v:.0f}s' for k, v in r['feature_seconds'].items())}), "
            f"train + evaluate + ablations + baseline + MLflow {r['train_seconds']:.0f}s.",
            f"- Training speed: round-robin multi-task step "
            f"{r['speed']['multi_task_steps_per_s']} steps/s ({r['speed']['heads']} heads) vs "
            f"single-task Keras `train_on_batch` {r['speed']['single_task_steps_per_s']} steps/s "
            f"(`{r['speed']['single_task_attribute']}`): ratio **{r['speed']['ratio']}**.\n",
        ]
        if r.get("unseen"):
            u = r["unseen"]
            out.append(
                f"`atelier evaluate attributes` on {u['products']} fashion-small products left "
                f"out of training ({u['seconds']}s, ingest + embed in a scratch workdir + "
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalogue", required=True, help="name in the results, e.g. hm")
    p.add_argument("--layout", required=True, choices=["hm", "fashion-images"])
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--limit", type=int, default=0, help="first N products only")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--min-value-count", type=int, default=50)
    p.add_argument("--speed-steps", type=int, default=300)
    p.add_argument("--notes", default="", help="a sentence to print under the results")
    p.add_argument(
        "--unseen",
        type=int,
        default=0,
        help="fashion-images: also evaluate the champion on the N products after --limit",
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
        embed={"allow_random_weights": True},
        attributes={"steps": args.steps, "min_value_count": args.min_value_count},
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
    if args.unseen and args.layout == "fashion-images":
        from training.attributes.pipeline import evaluate_attributes
        from training.registry import promote

        promote(settings, settings.mlflow.attributes_model)
        part = fashion_slice(args.source, args.workdir / "unseen-source", args.unseen, args.limit)
        t1 = time.perf_counter()
        ev = evaluate_attributes(settings, part, "fashion-images", args.workdir / "unseen-report")
        unseen = {
            "products": ev["catalogue"]["products"],
            "seconds": round(time.perf_counter() - t1),
            "mean_weighted_f1": ev["mean_weighted_f1"],
            "attributes": ev["attributes"],
            "coverage": ev["coverage"],
        }
    speed = step_speed(settings, args.speed_steps)
    result = {
        "catalogue": args.catalogue,
        "command": "python benchmarks/attributes.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "feature_seconds": feature_seconds,
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
