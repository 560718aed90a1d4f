"""SparkSession for jobs: local by default, whatever `spark-submit` says when run under it."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from atelier.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

_DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def get_spark(settings: Settings) -> SparkSession:
    """Build (or reuse) the session. Delta extensions are only set when jars are configured."""
    # Workers must run the same interpreter as the driver (the venv), also under spark-submit.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    s = settings.spark
    submitted = SparkConf()  # carries spark-submit's --master/--conf when run under it
    builder = SparkSession.builder.appName(s.app_name)
    if not submitted.contains("spark.master"):
        builder = builder.master(s.master).config("spark.driver.memory", s.driver_memory)
    conf = {
        "spark.sql.shuffle.partitions": str(s.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.local.dir": str(settings.workdir / "tmp" / "spark"),
    }
    if s.packages:
        conf["spark.jars.packages"] = ",".join(s.packages)
    if s.jars:
        conf["spark.jars"] = ",".join(s.jars)
    if s.packages or s.jars or _jars_in(submitted):
        conf.update(_DELTA_CONF)
    conf.update(gpu_conf(s))
    conf.update(s.conf)
    for k, v in conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def gpu_conf(s) -> dict[str, str]:
    """Spark's resource settings for `s.executor_gpus` GPUs per executor (SparkSettings);
    empty without GPUs. Tasks then learn their GPU from TaskContext (`task_gpu`)."""
    if not s.executor_gpus:
        return {}
    if s.task_gpus > s.executor_gpus:
        raise ValueError(
            f"spark.task_gpus {s.task_gpus:g} exceeds spark.executor_gpus {s.executor_gpus}: "
            "no task could ever be scheduled"
        )
    conf = {
        "spark.executor.resource.gpu.amount": str(s.executor_gpus),
        "spark.task.resource.gpu.amount": f"{s.task_gpus:g}",
    }
    if s.gpu_discovery_script:
        conf["spark.executor.resource.gpu.discoveryScript"] = s.gpu_discovery_script
    return conf


def task_gpu(resources: dict | None) -> str | None:
    """The GPU address Spark gave the running task (`TaskContext.get().resources()`), or
    None when it has none: the worker pins TensorFlow to it (CUDA_VISIBLE_DEVICES)."""
    gpu = (resources or {}).get("gpu")
    addresses = list(getattr(gpu, "addresses", None) or [])
    return addresses[0] if addresses else None


def _jars_in(conf) -> bool:
    jars = (conf.get("spark.jars", "") or "") + (conf.get("spark.jars.packages", "") or "")
    return "delta" in jars


def has_delta_spark(spark: SparkSession) -> bool:
    """True when delta-spark's classes are loadable and its extension is configured."""
    if "Delta" not in (spark.conf.get("spark.sql.extensions", "") or ""):
        return False
    try:
        jvm = spark.sparkContext._jvm  # noqa: SLF001 - no public API for a class probe
        jvm.java.lang.Class.forName(
            "org.apache.spark.sql.delta.catalog.DeltaCatalog",
            True,
            jvm.Thread.currentThread().getContextClassLoader(),
        )
        return True
    except Exception:  # py4j raises its own error types for ClassNotFound
        return False
