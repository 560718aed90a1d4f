"""Training the attribute model end to end on a slice of real Fashion Product Images data:
ingest → embed → text/product features → Feast → train (report, MLflow, registry) → promote →
evaluate on products the model has never seen; a worse challenger is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import embed_settings, make_fashion_slice

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN_ROWS = slice(0, 400)
UNSEEN_ROWS = slice(400, 520)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_dir, spark):
    """A workdir with a fashion-small slice featurised and one attribute model trained."""
    from atelier.feast_store import apply
    from atelier.settings import Settings
    from spark_jobs.colour import run_colour
    from spark_jobs.embed import run_embed
    from spark_jobs.ingest import run_ingest
    from spark_jobs.product_features import run_product_features
    from spark_jobs.text_features import run_text_features
    from training.attributes.pipeline import train_attributes

    root = tmp_path_factory.mktemp("attributes")
    make_fashion_slice(fashion_dir, root / "train-source", TRAIN_ROWS)
    make_fashion_slice(fashion_dir, root / "unseen-source", UNSEEN_ROWS)
    settings = Settings(
        workdir=root / "work",
        image_check_partitions=2,
        spark={"master": "local[2]", "shuffle_partitions": 4},
        gate={"build_data_docs": False},
        embed=embed_settings(),
        attributes={
            "steps": 600,
            "eval_every": 200,
            "min_value_count": 10,
            "model": {"fusion_units": 64, "trunk_units": [64], "text_filters": 32},
        },
    )
    run_ingest(settings, "fashion-images", root / "train-source", spark=spark)
    run_embed(settings, spark=spark)
    run_colour(settings, spark=spark)
    run_text_features(settings, spark=spark)
    run_product_features(settings, spark=spark)
    apply(settings)
    out = train_attributes(settings, root / "report")
    return settings, root, out


def test_training_beats_the_majority_baseline_and_writes_the_report(trained):
    settings, root, out = trained
    report = json.loads((root / "report" / "attributes.json").read_text())
    assert report == json.loads(json.dumps(out["report"]))
    attributes = report["attributes"]
    assert {"baseColour", "season", "usage"} <= set(attributes) | set(
        report["label_plan"]["skipped"]
    )
    assert any(m["accuracy"] > m["baseline_accuracy"] for m in attributes.values())
    mean = np.mean([m["weighted_f1"] for m in attributes.values()])
    assert report["mean_weighted_f1"] == pytest.approx(mean)
    # fashion-small is fully labelled: 70% of training labels hidden, test labels untouched.
    plan = report["label_plan"]
    assert plan["labels_complete"] is True and plan["hidden_fraction"] == 0.7
    for attribute, info in plan["attributes"].items():
        assert info["hidden"] > 0
        assert attributes[attribute]["support"] == info["test_samples"]
    assert set(report["baselines"]["tfidf_lr"]) == set(attributes)
    assert set(report["ablations"]) == {"full", "no_image", "no_text", "no_metadata", "no_colour"}
    # Validation curves every 200 steps; the kept checkpoint is the best mean validation F1.
    for points in report["curves"].values():
        assert [p[0] for p in points] == [200, 400, 600]
    training = report["training"]
    means = [np.mean([pts[k][2] for pts in report["curves"].values()]) for k in range(3)]
    assert training["best_validation_f1"] == pytest.approx(max(means))
    assert training["best_step"] == [200, 400, 600][int(np.argmax(means))]
    assert plan["validation_products"] > 0
    assert (root / "report" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for attribute in attributes:
        assert (root / "report" / f"confusion_{attribute}.png").is_file()
    assert "| baseColour |" in (root / "report" / "attributes.md").read_text() or (
        "baseColour" in plan["skipped"]
    )
    # Confidence on the test split: calibration and the thresholds that reach 90% / 95%.
    assert set(report["confidence"]) == set(attributes)
    for attribute, c in report["confidence"].items():
        assert 0.0 <= c["ece"] <= 1.0
        assert 0.0 <= c["coverage_at_95"] <= c["coverage_at_90"] <= 1.0
        assert sum(b["count"] for b in c["bins"]) == attributes[attribute]["support"]
    assert (root / "report" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Confidence" in (root / "report" / "attributes.md").read_text()


def test_the_run_is_logged_and_the_model_registered_as_challenger(trained):
    import mlflow
    from mlflow import MlflowClient

    settings, root, out = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    run = client.get_run(out["run_id"])
    assert run.data.params["feature_service"] == "attributes_v2"
    assert run.data.params["optimizer"] == "SGD (no momentum)"
    assert run.data.tags["git_commit"] == out["report"]["training"]["git_commit"]
    assert run.data.metrics["mean_weighted_f1"] == pytest.approx(out["report"]["mean_weighted_f1"])
    artifacts = {a.path for a in client.list_artifacts(out["run_id"], "report")}
    assert "report/curves.png" in artifacts and "report/attributes.json" in artifacts
    assert "report/reliability.png" in artifacts
    for attribute, c in out["report"]["confidence"].items():
        assert run.data.metrics[f"{attribute}.ece"] == pytest.approx(c["ece"])
    version = client.get_model_version_by_alias(settings.mlflow.attributes_model, "challenger")
    assert int(version.version) == out["model_version"] == 1
    # The model reads the colour descriptor and records its version.
    from atelier.colour import COLOUR_DIM, DESCRIPTOR_VERSION
    from models.attributes.pyfunc import load_bundle

    bundle = load_bundle(f"models:/{settings.mlflow.attributes_model}/1")
    assert bundle.config.colour_dim == COLOUR_DIM and bundle.config.wide_text
    assert bundle.metadata["colour_descriptor_version"] == DESCRIPTOR_VERSION


def test_promotion_then_evaluation_on_unseen_products_and_a_worse_challenger(trained):
    from atelier.registry import promote
    from cli.evaluate import evaluate_attributes
    from training.attributes.pipeline import train_attributes

    settings, root, out = trained
    first = promote(settings, settings.mlflow.attributes_model)
    assert first.promoted and first.champion_after == 1

    result = evaluate_attributes(
        settings, root / "unseen-source", "fashion-images", root / "unseen-report"
    )
    assert result["catalogue"]["products"] == 120
    assert set(result["attributes"]) <= set(out["report"]["attributes"])
    for attribute, m in result["attributes"].items():
        cover = result["coverage"][attribute]
        assert m["support"] == cover["scored"] <= cover["labelled"] <= 120
        assert 0.0 <= m["weighted_f1"] <= 1.0
    assert json.loads((root / "unseen-report" / "attributes.json").read_text())["coverage"]
    assert set(result["confidence"]) == set(result["attributes"])
    for attribute, c in result["confidence"].items():
        assert sum(b["count"] for b in c["bins"]) == result["attributes"][attribute]["support"]

    # Five steps cannot beat 600: registered as challenger, refused as champion.
    worse_settings = settings.model_copy(deep=True)
    worse_settings.attributes.steps = 5
    worse_settings.attributes.ablations = False
    worse_settings.attributes.baseline = False
    worse = train_attributes(worse_settings, root / "worse-report")
    assert worse["model_version"] == 2
    assert worse["report"]["mean_weighted_f1"] < out["report"]["mean_weighted_f1"]
    decision = promote(settings, settings.mlflow.attributes_model)
    assert not decision.promoted and decision.champion_after == 1
