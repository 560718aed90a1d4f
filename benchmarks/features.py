"""Feature benchmarks: Spark embed vs one bare Keras process, rerun cost, online lookups.

    .venv/bin/python benchmarks/features.py --hm ../shared/data/hm --images 256 \
        --out benchmarks/results/features.md

1. `spark_jobs/embed.py` (Spark local, `embed.partitions` workers x `embed.tf_threads` threads)
   against one bare Keras process using every core, on the same images, same weights and input
   sizes: throughput ratio (goal >= 0.8).
2. The same job rerun on the unchanged catalogue vs the first run (goal <= 10%).
3. `get_online_features` p50/p99 for 1 and 100 products on the sqlite and Redis online stores.

Not a test: numbers depend on the machine; quote ratios.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The real ImageNet weights where the repository is checked out beside `shared` (the default).
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared/models/vgg16_imagenet_notop.h5"


def make_slice(src: Path, dst: Path, n: int) -> list[str]:
    """The first `n` articles of an H&M-layout folder, their purchases and customers."""
    def rows(name):
        with (src / name).open(encoding="utf-8", newline="") as f:
            r = list(csv.reader(f))
        return r[0], r[1:]

    ah, arts = rows("articles.csv")
    arts = arts[:n]
    keep = {a[0] for a in arts}
    th, tx = rows("transactions_train.csv")
    tx = [t for t in tx if t[2] in keep]
    ch, cs = rows("customers.csv")
    cs = [c for c in cs if c[0] in {t[1] for t in tx}]
    dst.mkdir(parents=True)
    for name, h, body in (("articles.csv", ah, arts), ("transactions_train.csv", th, tx),
                          ("customers.csv", ch, cs)):
        with (dst / name).open("w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([h, *body])
    for a in arts:
        link = dst / "images" / a[0][:3] / f"{a[0]}.jpg"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(src / "images" / a[0][:3] / f"{a[0]}.jpg")
    return sorted(keep)


BARE = r"""
import sys, time, json
import pyarrow as pa
from deltalake import DeltaTable
from atelier.settings import EmbedSettings
from spark_jobs.embed import (configure_tensorflow, build_model, load_image, batch_plan,
                              resolve_weights)
lake, mode = sys.argv[1], sys.argv[2]
seed, threads, batch = (int(v) for v in sys.argv[3:6])
weights = sys.argv[6]  # a file, or "random"
t0 = time.perf_counter()
configure_tensorflow(threads)
import numpy as np
rows = DeltaTable(lake + "/product_images").to_pyarrow_table().to_pylist()
model = build_model(resolve_weights(EmbedSettings(weights=weights, random_seed=seed)))
arrays = [load_image(r["path"], r["content_hash"], mode)[0] for r in rows]
order = sorted(range(len(arrays)), key=lambda i: arrays[i].shape[:2])
arrays = [arrays[i] for i in order]
from keras.applications.vgg16 import preprocess_input
n = 0
for idx in batch_plan([a.shape[:2] for a in arrays], batch):
    x = preprocess_input(np.stack([arrays[i] for i in idx]))
    n += len(model.predict_on_batch(x))
print(json.dumps({"images": n, "seconds": time.perf_counter() - t0}))
"""


def bare_keras(settings, threads: int) -> dict:
    import json

    out = subprocess.run(
        [sys.executable, "-c", BARE, str(settings.lake_dir), settings.embed.input_size,
         str(settings.embed.random_seed), str(threads), str(settings.embed.batch_size),
         settings.embed.weights],
        capture_output=True, text=True, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def latencies(fn, repeat: int) -> tuple[float, float]:
    fn()  # warm the connection and caches
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def online_bench(settings, ids: list[str], repeat: int) -> list[tuple[str, int, float, float]]:
    from atelier.feast_store import apply, feature_store
    from spark_jobs.materialize import materialize

    results = []
    port = free_port()
    redis = None
    stores = [("sqlite", None)]
    if shutil.which("redis-server"):
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        stores.append(("redis", {"online_store": {"type": "redis",
                                                  "connection_string": f"127.0.0.1:{port}"}}))
    try:
        apply(settings)
        for name, overrides in stores:
            store = feature_store(settings, overrides)
            materialize(settings, store=store)
            for n in (1, 100):
                rows = [{"product_id": p, "shot": 0} for p in ids[:n]]

                def lookup(rows=rows, store=store):
                    return store.get_online_features(
                        features=["image_embedding:embedding"], entity_rows=rows).to_dict()

                got = lookup()
                assert len(got["embedding"]) == n and len(got["embedding"][0]) == 512
                p50, p99 = latencies(lookup, repeat)
                results.append((name, n, p50, p99))
    finally:
        if redis:
            redis.terminate()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hm", type=Path, default=Path("../shared/data/hm"))
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/features.md"))
    ap.add_argument("--weights", type=Path,
                    default=SHARED_WEIGHTS if SHARED_WEIGHTS.is_file() else None,
                    help="VGG16 no-top weights file (default: ../shared/models/"
                         "vgg16_imagenet_notop.h5 when present, else seeded random weights, "
                         "flagged in the results)")
    args = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from atelier.logs import setup_logging
    from atelier.settings import Settings
    from atelier.spark import get_spark
    from spark_jobs.embed import run_embed
    from spark_jobs.ingest import run_ingest

    setup_logging("WARNING")
    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    cores = os.cpu_count() or 1
    # Weights named outright (a file, or "random" without one): nothing falls back silently.
    weights = str(args.weights.resolve()) if args.weights else "random"
    settings = Settings(workdir=tmp / "w", gate={"build_data_docs": False},
                        embed={"weights": weights, "partitions": cores, "tf_threads": 1})
    ids = make_slice(args.hm.resolve(), tmp / "src", args.images)
    spark = get_spark(settings)
    run_ingest(settings, "hm", tmp / "src", spark=spark)

    bare = bare_keras(settings, threads=cores)
    t = time.perf_counter()
    first = run_embed(settings, spark=spark)
    spark_s = time.perf_counter() - t
    t = time.perf_counter()
    second = run_embed(settings, spark=spark)
    rerun_s = time.perf_counter() - t
    online = online_bench(settings, ids, args.repeat)
    spark.stop()

    n = bare["images"]
    ratio = (n / spark_s) / (n / bare["seconds"])
    lines = [
        "# Feature benchmarks",
        "",
        f"Command: `.venv/bin/python benchmarks/features.py --hm {args.hm} --images {args.images}"
        f" --repeat {args.repeat}`  ",
        f"Machine: {cores} cores, CPU only; {time.strftime('%Y-%m-%d')}. VGG16 weights "
        f"`{first['weights']}`"
        + (" (**seeded random weights**: no weights file; same FLOPs as ImageNet's)"
           if first["weights"].startswith("random:") else "")
        + f", input size `{settings.embed.input_size}`.",
        "",
        "## Image embeddings: Spark job vs one bare Keras process",
        "",
        "| run | images | seconds | images/s |",
        "|---|---:|---:|---:|",
        f"| bare Keras, 1 process x {cores} TF threads (model build + decode + predict) | {n} | "
        f"{bare['seconds']:.1f} | {n / bare['seconds']:.2f} |",
        f"| `spark_jobs/embed.py`, {cores} workers x 1 TF thread (whole job) | "
        f"{first.get('embedded', first)} | {spark_s:.1f} | {n / spark_s:.2f} |",
        f"| rerun on the unchanged catalogue | {second.get('embedded', second)} | {rerun_s:.1f} "
        "| - |",
        "",
        f"- Throughput ratio Spark / bare Keras: **{ratio:.2f}** (goal >= 0.8).",
        f"- Rerun time / first run: **{rerun_s / spark_s:.1%}** (goal <= 10%).",
        "",
        "## Online lookups (`get_online_features`, image embedding, 512 floats)",
        "",
        "| online store | products per call | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        *[f"| {s} | {k} | {p50:.2f} | {p99:.2f} |" for s, k, p50, p99 in online],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
