"""Registration and champion/challenger promotion against a real embedded MLflow store.

Versions are real registered pyfunc models (two constant models, so loading `@champion` shows
which one the alias points at). One workdir for the module: creating the sqlite store costs
seconds; every test uses its own model name, so their aliases and decisions never mix.
"""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

pytestmark = pytest.mark.integration


class Constant(mlflow.pyfunc.PythonModel):
    """Predicts the same number for every row."""

    def __init__(self, value: float):
        self.value = value

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return [self.value] * len(model_input)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    from atelier.registry import configure
    from atelier.settings import Settings

    s = Settings(workdir=tmp_path_factory.mktemp("registry") / "work")
    configure(s)
    return s


@pytest.fixture(scope="module")
def models(settings):
    """Two logged pyfunc models: {"one": uri, "two": uri}, predicting 1.0 and 2.0."""
    uris = {}
    for key, value in (("one", 1.0), ("two", 2.0)):
        with mlflow.start_run(run_name=f"constant-{key}"):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=Constant(value), pip_requirements=[]
            )
        uris[key] = info.model_uri
    return uris


def _aliases(name: str) -> dict[str, int]:
    rm = mlflow.MlflowClient().get_registered_model(name)
    return {a: int(v) for a, v in rm.aliases.items()}


def _decisions(settings, name: str) -> list[dict]:
    path = settings.reports_dir / "promotions.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if r["model"] == name]


def _promotion_run(run_id: str):
    run = mlflow.MlflowClient().get_run(run_id)
    exp = mlflow.MlflowClient().get_experiment(run.info.experiment_id)
    return exp.name, run.data


def test_configure_is_idempotent_and_keeps_artifacts_under_the_workdir(settings):
    from atelier.registry import PROMOTIONS_EXPERIMENT, configure

    configure(settings)  # the fixture configured once already: the experiments exist
    configure(settings)
    client = mlflow.MlflowClient()
    assert mlflow.get_tracking_uri() == f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}"
    assert (settings.mlflow_dir / "mlflow.db").is_file()
    for name in ("atelier", PROMOTIONS_EXPERIMENT):
        exps = [e for e in client.search_experiments() if e.name == name]
        assert len(exps) == 1
        assert exps[0].artifact_location == (settings.artifacts_dir / name).as_uri()
    with mlflow.start_run() as run:
        mlflow.log_text("x", "probe.txt")
    assert run.info.artifact_uri.startswith(settings.artifacts_dir.as_uri())
    assert (settings.artifacts_dir / "atelier" / run.info.run_id / "artifacts/probe.txt").is_file()


def test_register_tags_the_version_and_sets_challenger(settings, models):
    from atelier.registry import RegistryError, challenger_uri, champion_uri, register

    name = "reg-tags"
    with mlflow.start_run(run_name="training") as run:  # as a training job calls it
        v = register(settings, models["one"], name, "mean_weighted_f1", 0.61, tags={"run": "a"})
        assert mlflow.active_run().info.run_id == run.info.run_id
    assert v == 1
    mv = mlflow.MlflowClient().get_model_version(name, "1")
    assert mv.tags["metric_name"] == "mean_weighted_f1"
    assert float(mv.tags["metric_value"]) == 0.61
    assert mv.tags["greater_is_better"] == "true"
    assert mv.tags["run"] == "a"
    assert _aliases(name) == {"challenger": 1}
    assert challenger_uri(name) == f"models:/{name}@challenger"
    with pytest.raises(RegistryError, match="has no 'champion' version"):
        champion_uri(name, settings)
    with pytest.raises(ValueError, match="not a finite number"):
        register(settings, models["one"], name, "mean_weighted_f1", float("nan"))


def test_first_registration_becomes_champion(settings, models):
    from atelier.registry import champion_uri, promote, register

    name = "first"
    register(settings, models["two"], name, "mean_weighted_f1", 0.5)
    d = promote(settings, name)
    assert (d.challenger, d.champion_before, d.champion_after) == (1, None, 1)
    assert d.promoted and not d.forced and d.outcome == "promoted"
    assert d.challenger_value == 0.5 and d.champion_value is None
    assert "no champion yet" in d.reason
    assert _aliases(name) == {"challenger": 1, "champion": 1}
    uri = champion_uri(name, settings)
    assert uri == f"models:/{name}@champion"
    assert mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"x": [0, 0]})) == [2.0, 2.0]


def test_worse_or_equal_challenger_is_refused_and_every_decision_logged(settings, models):
    from atelier.registry import PROMOTIONS_EXPERIMENT, latest_decision, promote, register

    name = "worse"
    register(settings, models["one"], name, "mean_weighted_f1", 0.6)
    promote(settings, name)
    assert register(settings, models["two"], name, "mean_weighted_f1", 0.55) == 2
    d = promote(settings, name)
    assert not d.promoted and d.outcome == "refused"
    assert (d.challenger, d.champion_before, d.champion_after) == (2, 1, 1)
    assert (d.challenger_value, d.champion_value) == (0.55, 0.6)
    assert "0.55" in d.reason and "0.6" in d.reason and "champion kept" in d.reason
    assert _aliases(name) == {"champion": 1, "challenger": 2}

    # an equal value does not promote either
    register(settings, models["two"], name, "mean_weighted_f1", 0.6)
    eq = promote(settings, name)
    assert not eq.promoted and (eq.challenger, eq.champion_after) == (3, 1)
    assert _aliases(name)["champion"] == 1

    rows = _decisions(settings, name)
    assert [(r["challenger"], r["outcome"], r["champion_after"]) for r in rows] == [
        (1, "promoted", 1),
        (2, "refused", 1),
        (3, "refused", 1),
    ]
    assert rows[1]["reason"] == d.reason and rows[1]["run_id"] == d.run_id
    assert rows[1]["challenger_value"] == 0.55 and rows[1]["champion_value"] == 0.6
    assert latest_decision(settings, name)["challenger"] == 3

    exp_name, data = _promotion_run(d.run_id)
    assert exp_name == PROMOTIONS_EXPERIMENT
    assert data.params["model"] == name
    assert data.params["challenger_version"] == "2"
    assert data.params["champion_before"] == "1" and data.params["champion_after"] == "1"
    assert data.params["promoted"] == "False" and data.params["forced"] == "False"
    assert data.metrics == {"challenger_value": 0.55, "champion_value": 0.6, "promoted": 0.0}
    assert data.tags["reason"] == d.reason and data.tags["outcome"] == "refused"

    mv = mlflow.MlflowClient().get_model_version(name, "2")
    assert mv.tags["promotion_decision"] == "refused"
    assert mv.tags["promotion_reason"] == d.reason
    assert mv.tags["promotion_run_id"] == d.run_id


def test_better_challenger_is_promoted(settings, models):
    from atelier.registry import champion_uri, promote, register

    name = "better"
    register(settings, models["one"], name, "mean_weighted_f1", 0.6)
    promote(settings, name)
    register(settings, models["two"], name, "mean_weighted_f1", 0.7)
    d = promote(settings, name)
    assert d.promoted and not d.forced
    assert (d.challenger, d.champion_before, d.champion_after) == (2, 1, 2)
    assert "0.7 vs 0.6" in d.reason
    assert _aliases(name) == {"champion": 2, "challenger": 2}
    model = mlflow.pyfunc.load_model(champion_uri(name))
    assert model.predict(pd.DataFrame({"x": [0]})) == [2.0]
    tags = mlflow.MlflowClient().get_model_version(name, "2").tags
    assert tags["promotion_decision"] == "promoted"


def test_metrics_of_different_evaluations_are_not_compared(settings, models):
    from atelier.registry import promote, register

    name = "periods"
    register(settings, models["one"], name, "precision_at_10", 0.1,
             tags={"evaluation": "2020-04-30..2020-05-30"})
    promote(settings, name)
    register(settings, models["two"], name, "precision_at_10", 0.3,
             tags={"evaluation": "2020-05-31..2020-06-30"})
    d = promote(settings, name)
    assert not d.promoted and d.outcome == "refused" and d.champion_after == 1
    assert "different evaluations" in d.reason and "2020-04-30..2020-05-30" in d.reason
    register(settings, models["two"], name, "precision_at_10", 0.2,
             tags={"evaluation": "2020-04-30..2020-05-30"})
    d = promote(settings, name)
    assert d.promoted and d.champion_after == 3 and "0.2 vs 0.1" in d.reason


def test_lower_is_better_metric(settings, models):
    from atelier.registry import promote, register

    name = "loss"
    register(settings, models["one"], name, "val_loss", 0.4, greater_is_better=False)
    promote(settings, name)
    register(settings, models["two"], name, "val_loss", 0.5, greater_is_better=False)
    assert not promote(settings, name).promoted
    register(settings, models["two"], name, "val_loss", 0.3, greater_is_better=False)
    d = promote(settings, name)
    assert d.promoted and d.champion_after == 3 and "lower is better" in d.reason


def test_force_promotes_a_worse_challenger_and_rerun_is_a_noop(settings, models):
    from atelier.registry import promote, register

    name = "forced"
    register(settings, models["one"], name, "mean_weighted_f1", 0.8)
    promote(settings, name)
    register(settings, models["two"], name, "mean_weighted_f1", 0.2)
    d = promote(settings, name, force=True)
    assert d.promoted and d.forced
    assert (d.champion_before, d.champion_after) == (1, 2)
    assert d.reason.startswith("forced:") and "0.2" in d.reason and "0.8" in d.reason
    assert _aliases(name) == {"champion": 2, "challenger": 2}

    again = promote(settings, name)
    assert not again.promoted and again.outcome == "already_champion"
    assert (again.champion_before, again.champion_after) == (2, 2)
    assert "already the champion" in again.reason
    assert [r["outcome"] for r in _decisions(settings, name)] == [
        "promoted",
        "promoted",
        "already_champion",
    ]
    assert [r["forced"] for r in _decisions(settings, name)] == [False, True, False]


def test_cli_promote(settings, models):
    from typer.testing import CliRunner

    from atelier.registry import register
    from cli.main import app

    runner = CliRunner()
    name = "atelier-attributes"

    def cli(*args):
        return runner.invoke(app, ["--workdir", str(settings.workdir), "promote", *args])

    register(settings, models["one"], name, "mean_weighted_f1", 0.6)
    r = cli(name)
    assert r.exit_code == 0, r.output
    assert f"{name}: PROMOTED version 1 to champion (was none)" in r.output

    register(settings, models["two"], name, "mean_weighted_f1", 0.4)
    r = cli("attributes")  # shorthand for settings.mlflow.attributes_model
    assert r.exit_code == 0, r.output
    assert f"{name}: REFUSED version 2; champion stays version 1" in r.output
    assert "0.4 vs 0.6" in r.output
    assert _aliases(name)["champion"] == 1

    r = cli(name, "--force")
    assert r.exit_code == 0, r.output
    assert "PROMOTED version 2 to champion (was version 1) [forced]" in r.output
    assert _aliases(name)["champion"] == 2
    assert [r["outcome"] for r in _decisions(settings, name)] == [
        "promoted",
        "refused",
        "promoted",
    ]

    r = cli("no-such-model")
    assert r.exit_code == 2
    assert "error: no registered model 'no-such-model'" in r.output

    mlflow.MlflowClient().create_registered_model("bare")
    r = cli("bare")
    assert r.exit_code == 2
    assert "error: model 'bare' has no 'challenger' version to promote" in r.output
