"""Settings: defaults, yaml < env < CLI flags, nested env keys, absolute workdir."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from atelier.settings import Settings, load_settings

pytestmark = pytest.mark.unit


def test_defaults_put_everything_under_the_workdir(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.workdir == tmp_path / "workspace"
    for p in (s.lake_dir, s.reports_dir, s.gx_dir, s.feast_dir, s.mlflow_dir):
        assert p.parent == s.workdir
    assert s.spark.master == "local[*]"


def test_yaml_then_env_then_flags(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "atelier.yaml").write_text(
        "workdir: from-yaml\nseed: 7\nspark:\n  master: local[3]\n  shuffle_partitions: 3\n"
    )
    s = load_settings()
    assert (s.workdir, s.seed, s.spark.master, s.spark.shuffle_partitions) == (
        tmp_path / "from-yaml",
        7,
        "local[3]",
        3,
    )
    monkeypatch.setenv("ATELIER_SEED", "8")
    monkeypatch.setenv("ATELIER_SPARK__MASTER", "local[1]")
    s = load_settings()
    assert (s.seed, s.spark.master, s.spark.shuffle_partitions) == (8, "local[1]", 3)
    s = load_settings(workdir=Path("flag"), seed=None)  # None: flag not given
    assert (s.workdir, s.seed) == (tmp_path / "flag", 8)


def test_config_file_named_by_env(monkeypatch, tmp_path):
    cfg = tmp_path / "other.yaml"
    cfg.write_text("gate:\n  max_quarantine_fraction: 0.05\n")
    monkeypatch.setenv("ATELIER_CONFIG", str(cfg))
    assert load_settings().gate.max_quarantine_fraction == 0.05


def test_bad_values_are_rejected_with_the_field_named(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match="max_quarantine_fraction"):
        Settings(gate={"max_quarantine_fraction": 1.5})
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings(no_such_setting=1)


def test_predict_min_confidence_per_attribute_from_env_and_bounded(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert Settings().predict.min_confidence == {}
    monkeypatch.setenv("ATELIER_PREDICT__MIN_CONFIDENCE", '{"*": 0.8, "colour": 0.95}')
    assert Settings().predict.min_confidence == {"*": 0.8, "colour": 0.95}
    with pytest.raises(ValidationError, match=r"predict\.min_confidence\.colour"):
        Settings(predict={"min_confidence": {"colour": 1.5}})


@pytest.mark.unit
def test_gpu_executors_produce_spark_resource_settings_and_tasks_find_their_gpu():
    from types import SimpleNamespace

    from atelier.settings import Settings
    from atelier.spark import gpu_conf, task_gpu

    assert gpu_conf(Settings().spark) == {}  # CPU by default: no resource settings
    s = Settings(
        spark={"executor_gpus": 2, "task_gpus": 1, "gpu_discovery_script": "/opt/gpus.sh"}
    ).spark
    assert gpu_conf(s) == {
        "spark.executor.resource.gpu.amount": "2",
        "spark.task.resource.gpu.amount": "1",  # one task, one model, per GPU
        "spark.executor.resource.gpu.discoveryScript": "/opt/gpus.sh",
    }
    shared = Settings(spark={"executor_gpus": 1, "task_gpus": 0.5}).spark
    assert gpu_conf(shared)["spark.task.resource.gpu.amount"] == "0.5"  # two tasks share one
    with pytest.raises(ValueError, match="task_gpus 2 exceeds spark.executor_gpus 1"):
        gpu_conf(Settings(spark={"executor_gpus": 1, "task_gpus": 2}).spark)
    # TaskContext.resources(): name -> ResourceInformation(name, addresses)
    assert task_gpu({"gpu": SimpleNamespace(name="gpu", addresses=["3"])}) == "3"
    assert task_gpu({"gpu": SimpleNamespace(name="gpu", addresses=[])}) is None
    assert task_gpu({}) is None and task_gpu(None) is None
