"""Lake writes at scale (issue 15): a merge written by the Spark executors and committed by
delta-rs (`lake.spark_io` "executors") against the same merge funnelled through the driver as
Arrow ("driver"), side by side in one run.

    .venv/bin/python benchmarks/lake_writes.py --rows 100000 [--master spark://127.0.0.1:7078] \
        --out benchmarks/results

For each mode, in its own fresh process (so peaks do not mix), on the same Spark master:
1. `image_embeddings`-shaped rows (512 floats each) are generated on the executors (a hash of
   the row and the position: the same values in both modes, never on the driver);
2. `Lake.merge` creates the table from them (timed);
3. a second merge of 20% of the rows, half changed and half new (timed): the incremental case.
Measured: each merge's wall time and the peak resident memory of the driver (the Python process
and, when the master is a cluster, its JVM; under `local[*]` the JVM is also the executor), and
the table read back. The two tables must be equal (compared row by row, vectors exactly).
Results: `--out`/lake-writes.json and .md. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DIM = 512


def _rows(spark, n: int, start: int, variant: int):
    """n embedding rows with ids start..start+n-1, made on the executors."""
    from pyspark.sql import functions as F

    df = spark.range(start, start + n, numPartitions=max(2, n // 20000))
    vec = F.transform(
        F.sequence(F.lit(0), F.lit(DIM - 1)),
        lambda i: ((F.abs(F.hash(F.col("id"), i, F.lit(variant))) % 10000) / 10000.0).cast("float"),
    )
    t = F.lit("2020-06-01 00:00:00").cast("timestamp")
    return df.select(
        F.format_string("p%09d", F.col("id")).alias("product_id"),
        F.lit(0).cast("int").alias("shot"),
        F.sha2(F.col("id").cast("string"), 256).alias("content_hash"),
        F.lit("bench").alias("weights"),
        F.lit("224x224").alias("input_size"),
        vec.alias("embedding"),
        t.alias("event_timestamp"),
        t.alias("created_timestamp"),
    )


class Peak:
    """Peak RSS of this process and its child JVM, sampled every 50 ms."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.python = self.jvm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.python = max(self.python, self.me.memory_info().rss)
            jvm = sum(
                c.memory_info().rss for c in self.me.children(recursive=True) if "java" in c.name()
            )
            self.jvm = max(self.jvm, jvm)
            time.sleep(0.05)

    def __enter__(self):
        self.python, self.jvm = self.me.memory_info().rss, 0
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def one_mode(mode: str, workdir: Path, rows: int, master: str) -> dict:
    """Run both merges in this process with `lake.spark_io` = mode; the measurements."""
    from atelier.lake import Lake
    from atelier.settings import Settings
    from atelier.spark import get_spark

    settings = Settings(
        workdir=workdir,
        spark={"master": master, "driver_memory": "4g", "shuffle_partitions": 8},
        lake={"spark_io": mode},
    )
    spark = get_spark(settings)
    lake = Lake(settings, spark)
    out = {"mode": mode, "rows": rows}
    first = _rows(spark, rows, 0, 0)
    fifth = rows // 5
    second = _rows(spark, fifth // 2, rows - fifth // 2, 1).unionByName(
        _rows(spark, fifth - fifth // 2, rows, 0)
    )
    for name, df in (("create", first), ("incremental", second)):
        with Peak() as peak:
            t0 = time.perf_counter()
            res = lake.merge("image_embeddings", df)
            seconds = time.perf_counter() - t0
        out[name] = {
            "seconds": round(seconds, 2),
            "inserted": res.inserted,
            "updated": res.updated,
            "version": res.version,
            "peak_python_mb": round(peak.python / 2**20),
            "peak_jvm_mb": round(peak.jvm / 2**20),
        }
        print(f"{mode} {name}: {out[name]}", flush=True)
    spark.stop()
    return out


def _same(a: Path, b: Path) -> dict:
    from deltalake import DeltaTable

    t = {}
    for name, path in (("executors", a), ("driver", b)):
        table = DeltaTable(str(path / "lake" / "image_embeddings")).to_pyarrow_table()
        t[name] = table.sort_by([("product_id", "ascending"), ("shot", "ascending")])
    return {
        "rows": t["executors"].num_rows,
        "equal": t["executors"].equals(t["driver"]),
        "schema_equal": t["executors"].schema == t["driver"].schema,
    }


def _markdown(results: list[dict], same: dict, argv: list[str], master: str) -> str:
    ex, dr = results
    lines = [
        "# Lake writes: executors + delta-rs commit vs the driver (issue 15)",
        "",
        "Command: `" + " ".join(["python", "benchmarks/lake_writes.py", *argv]) + "`",
        "",
        f"Spark master `{master}`; `image_embeddings` rows of {DIM} floats; each mode in its own "
        "process, one after the other, same generated rows. Peaks are resident memory sampled "
        "every 50 ms during the merge.",
        "",
        "| merge | mode | rows in | inserted | updated | seconds | peak driver Python MB | "
        "peak driver JVM MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for step in ("create", "incremental"):
        for r in (ex, dr):
            s = r[step]
            n = r["rows"] if step == "create" else r["rows"] // 5
            lines.append(
                f"| {step} | {r['mode']} | {n:,} | {s['inserted']:,} | {s['updated']:,} | "
                f"{s['seconds']} | {s['peak_python_mb']:,} | {s['peak_jvm_mb']:,} |"
            )
    lines += ["", "Ratios (driver / executors):", ""]
    for step in ("create", "incremental"):
        a, b = ex[step], dr[step]
        lines.append(
            f"- {step}: time {b['seconds'] / max(a['seconds'], 1e-9):.2f}x, peak driver Python "
            f"memory {b['peak_python_mb'] / max(a['peak_python_mb'], 1):.2f}x"
        )
    lines += [
        "",
        f"Tables equal after both merges: **{same['equal']}** ({same['rows']:,} rows; "
        f"schemas equal: {same['schema_equal']}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--out", type=Path)
    p.add_argument("--mode", choices=("executors", "driver"), help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode:  # the child: one mode, its results as JSON on the last line
        print(json.dumps(one_mode(args.mode, args.workdir, args.rows, args.master)))
        return 0
    with tempfile.TemporaryDirectory(prefix="lake-writes-") as tmp:
        results, dirs = [], {}
        for mode in ("executors", "driver"):
            dirs[mode] = Path(tmp) / mode
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--mode",
                    mode,
                    "--workdir",
                    str(dirs[mode]),
                    "--rows",
                    str(args.rows),
                    "--master",
                    args.master,
                ],  # fmt: skip
                capture_output=True,
                text=True,
                env={**os.environ, "PYSPARK_PYTHON": sys.executable},
            )
            if out.returncode:
                sys.stderr.write(out.stderr[-4000:])
                return out.returncode
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        same = _same(dirs["executors"], dirs["driver"])
    text = _markdown(results, same, argv if argv is not None else sys.argv[1:], args.master)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lake-writes.json").write_text(
            json.dumps({"results": results, "same": same}, indent=1)
        )
        (args.out / "lake-writes.md").write_text(text)
    return 0 if same["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
