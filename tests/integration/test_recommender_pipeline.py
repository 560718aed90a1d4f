"""The recommender stage end to end on a small demo catalogue: ingest (purchases up to January
2020) → embed → text/product features → Feast → train the four variants (Table 3 in both modes,
MLflow run, hybrid registered as challenger) → promote; a worse challenger is refused; the
registered models are scored on February 2020 given as an H&M transactions file (also through
the CLI); training to deploy on all of the lake's history, then scoring that model on February;
the sales timeline the training examples read equals Feast's product features at train_end."""

from __future__ import annotations

import csv
import json
from datetime import date

import numpy as np
import pandas as pd
import pytest

from tests.conftest import embed_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN_END = date(2019, 12, 31)
LAKE_END = "2020-01-31"  # the lake holds purchases up to here; February is the later file
VARIANTS = ["popularity", "cf", "content", "hybrid"]


def split_transactions(source, later_file) -> int:
    """Move the purchases after LAKE_END out of `source` into `later_file`; returns their count."""
    path = source / "transactions_train.csv"
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    day = header.index("t_dat")
    keep = [r for r in body if r[day] <= LAKE_END]
    later = [r for r in body if r[day] > LAKE_END]
    for target, part in ((path, keep), (later_file, later)):
        with target.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(part)
    return len(later)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, spark):
    """A workdir with a demo catalogue featurised and the recommender trained once."""
    from atelier.feast_store import apply
    from atelier.settings import Settings
    from cli.demo_catalogue import generate_demo
    from spark_jobs.embed import run_embed
    from spark_jobs.ingest import run_ingest
    from spark_jobs.product_features import run_product_features
    from spark_jobs.text_features import run_text_features
    from training.recommender.pipeline import train_recommender

    root = tmp_path_factory.mktemp("recommender")
    generate_demo(root / "source", 3, n_products=150, n_customers=60)
    assert split_transactions(root / "source", root / "february.csv") > 0
    settings = Settings(
        workdir=root / "work",
        image_check_partitions=2,
        spark={"master": "local[2]", "shuffle_partitions": 4},
        gate={"build_data_docs": False},
        embed=embed_settings(),
        text={"tfidf_dim": 64},
        recommender={
            "k": 8,
            "hidden_units": [16],
            "epochs": 2,
            "patience": 1,
            "batch_size": 256,
            "n_negatives": 20,
            "runs": 2,
            "learning_rate": 0.01,
        },
    )
    run_ingest(settings, "hm", root / "source", spark=spark)
    run_embed(settings, spark=spark)
    run_text_features(settings, spark=spark)
    run_product_features(settings, spark=spark)
    apply(settings)
    lines = []
    out = train_recommender(
        settings, TRAIN_END, VARIANTS, report_dir=root / "report", progress=lines.append
    )
    return settings, root, out, lines


def lake_interactions(settings) -> pd.DataFrame:
    from atelier.lake import Lake

    frame = Lake(settings).read_pandas("interactions", ["customer_id", "product_id", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def test_table3_report_in_both_modes_with_cold_start_and_the_baselines(trained):
    settings, root, out, lines = trained
    report = json.loads((root / "report" / "recommender.json").read_text())
    assert report == json.loads(json.dumps(out["report"], default=str))
    assert list(report["variants"]) == [*VARIANTS, "buy_again", "blend"]
    assert list(report["new_to_customer"]["variants"]) == VARIANTS
    for name, m in report["variants"].items():
        assert 0.0 <= m["precision_at_10"] <= 1.0 and 0.0 <= m["recall_at_10"] <= 1.0
        assert m["runs"] == (1 if name in ("popularity", "buy_again") else 2)
        assert m["precision_at_10_std"] >= 0.0
        # per-run hit counts beside the mean
        assert len(m["hits_per_run"]) == m["runs"]
        assert m["precision_at_10"] == pytest.approx(
            np.mean(m["hits_per_run"]) / 10 / m["customers"]
        )
    assert report["period"]["train_end"].startswith("2019-12-31")
    assert report["period"]["validation_start"].startswith("2019-12-01")
    assert report["period"]["test_end"].startswith("2020-01-30")

    # The popularity baseline by hand: the 10 most bought products of December for everyone
    # who bought in January and has a history; new to customer: their own purchases skipped.
    frame = lake_interactions(settings)
    end = pd.Timestamp("2019-12-31", tz="UTC")
    window = frame[(frame["timestamp"] > end - pd.Timedelta(days=30)) & (frame["timestamp"] <= end)]
    counts = window.groupby("product_id").size().reset_index(name="n")
    ranked = list(counts.sort_values(["n", "product_id"], ascending=[False, True])["product_id"])
    test = frame[(frame["timestamp"] > end) & (frame["timestamp"] <= end + pd.Timedelta(days=30))]
    test = test[test["customer_id"].isin(set(frame.loc[frame["timestamp"] <= end, "customer_id"]))]
    bought = test.groupby("customer_id")["product_id"].agg(set)
    past = frame[frame["timestamp"] <= end].groupby("customer_id")["product_id"].agg(set)
    precision = np.mean([len(set(ranked[:10]) & items) / 10 for items in bought])
    assert report["variants"]["popularity"]["precision_at_10"] == pytest.approx(precision)
    new = np.mean(
        [
            len(set([p for p in ranked if p not in past[c]][:10]) & bought[c]) / 10
            for c in bought.index
        ]
    )
    assert report["new_to_customer"]["variants"]["popularity"]["precision_at_10"] == pytest.approx(
        new
    )
    assert report["data"]["test_customers"] == len(bought)

    # Cold-start: products never bought up to train_end. Only the content path reaches them:
    # cf and popularity cannot put one in a top 10.
    cold = report["cold_start"]
    assert set(VARIANTS) <= set(cold) and report["data"]["cold_start_purchases"] > 0
    assert cold["cf"]["precision_at_10"] == 0.0 and cold["popularity"]["precision_at_10"] == 0.0
    assert {"hybrid_vs_cf", "hybrid_vs_popularity", "content_vs_cf"} <= set(report["significance"])
    assert report["significance"]["hybrid_vs_cf"]["precision_at_10"]["n"] == 2

    # Diversity: distinct products in the top-10s and the customer-vector cosine per variant.
    for mode in ("all_products", "new_to_customer"):
        diag = report["diagnostics"][mode]
        popular = diag["popularity"]["distinct_products"]
        assert popular == 10 if mode == "all_products" else popular >= 10
        for variant in ("cf", "content", "hybrid"):
            assert 10 <= diag[variant]["distinct_products"] <= 150
            assert -1.0 <= diag[variant]["customer_cosine"] <= 1.0

    training = report["training"]
    assert set(training) == {"cf", "content", "hybrid"}
    assert all(1 <= t["epochs"] <= 2 and t["seconds_per_epoch"] > 0 for t in training.values())
    assert set(report["validation"]) == {"cf", "content", "hybrid"}
    assert report["feature_service"] == "recommender_v1"
    text = (root / "report" / "recommender.md").read_text()
    assert "## New to customer" in text and "| hybrid | 2 |" in text
    assert (root / "report" / "recommender.png").read_bytes()[:4] == b"\x89PNG"
    assert any(line.startswith("hybrid run 2/2: epoch 1/2") for line in lines)
    assert any("refit on every example up to 2019-12-31" in line for line in lines)


def test_the_run_is_logged_and_the_hybrid_chosen_by_validation_registered_as_challenger(trained):
    from mlflow import MlflowClient

    from models.recommender.pyfunc import load_bundle
    from training.recommender.trainer import N_RECENT

    settings, root, out, _ = trained
    report = out["report"]
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    run = client.get_run(out["run_id"])
    assert run.data.params["feature_service"] == "recommender_v1"
    assert run.data.tags["git_commit"] == report["git_commit"]
    model = report["model"]
    # The run with the lowest validation loss (never the test precision) is registered, with
    # that run's test precision.
    lowest = {
        r: min(m.value for m in client.get_metric_history(out["run_id"], f"hybrid.run{r}.val_loss"))
        for r in range(2)
    }
    assert model["run"] == min(lowest, key=lambda r: (lowest[r], r))
    assert model["selected_by"] == "validation_loss"
    assert model["validation_loss"] == pytest.approx(lowest[model["run"]])
    assert model["precision_at_10"] == pytest.approx(
        run.data.metrics[f"hybrid.run{model['run']}.precision_at_10"]
    )
    assert run.data.metrics["precision_at_10"] == pytest.approx(model["precision_at_10"])
    assert run.data.metrics["cf.precision_at_10"] == pytest.approx(
        report["variants"]["cf"]["precision_at_10"]
    )
    artifacts = {a.path for a in client.list_artifacts(out["run_id"], "report")}
    assert {"report/recommender.json", "report/recommender.png"} <= artifacts

    name = settings.mlflow.recommender_model
    version = client.get_model_version_by_alias(name, "challenger")
    assert int(version.version) == out["model_version"] == 1
    assert version.tags["metric_name"] == "precision_at_10"
    assert float(version.tags["metric_value"]) == pytest.approx(model["precision_at_10"])

    bundle = load_bundle(f"models:/{name}@challenger")
    assert bundle.variant == "hybrid" and bundle.k == 8 and bundle.layout == "dot+bias"
    assert bundle.metadata["feature_service"] == "recommender_v1"
    assert bundle.metadata["n_recent"] == N_RECENT
    rule = bundle.metadata["blend"]  # calibrated on the validation window
    assert len(rule["new"]) == 10 and len(rule["repeat"]) == 10
    assert run.data.params["vector_layout"] == "dot+bias"
    assert json.loads(run.data.params["recommender.blend_rule"]) == rule
    from models.recommender.features import load_content_features

    features = load_content_features(settings, pd.Timestamp("2019-12-31", tz="UTC"))
    vectors = bundle.item_vectors(features)
    assert vectors.shape == (len(features), 9) and np.isfinite(vectors).all()
    never = ~bundle.knows(features.product_ids)
    assert never.any() and (np.abs(vectors[never]).sum(axis=1) > 0).all()


def test_promotion_refuses_a_worse_challenger_then_evaluation_on_february(trained):
    from typer.testing import CliRunner

    from atelier import registry
    from cli.main import app
    from training.recommender.pipeline import evaluate_recommender

    settings, root, out, _ = trained
    name = settings.mlflow.recommender_model
    first = registry.promote(settings, name)
    assert first.promoted and first.champion_after == 1

    # The same model registered again with a lower precision@10: refused.
    value = out["report"]["model"]["precision_at_10"]
    worse = registry.register(settings, f"models:/{name}/1", name, "precision_at_10", value - 0.01)
    assert worse == 2
    decision = registry.promote(settings, name)
    assert not decision.promoted and decision.outcome == "refused"
    assert decision.champion_after == 1

    # February, never in the lake: champion and challenger (the same tower) score the same.
    report = evaluate_recommender(settings, root / "february.csv", root / "february-report")
    # popularity, the models (champion, then challenger), then the baselines in table order
    assert list(report["variants"]) == [
        "popularity",
        "hybrid",
        "buy_again",
        "blend",
        "hybrid_challenger",
        "blend_hybrid_challenger",
    ]
    assert list(report["new_to_customer"]["variants"]) == [
        "popularity",
        "hybrid",
        "hybrid_challenger",
    ]
    assert report["models"]["hybrid"]["role"] == "champion"
    assert report["models"]["hybrid_challenger"]["model_uri"] == f"models:/{name}/2"
    hybrid = report["variants"]["hybrid"]
    assert hybrid == report["variants"]["hybrid_challenger"]
    assert 0.0 <= hybrid["precision_at_10"] <= 1.0 and hybrid["runs"] == 1
    assert report["period"]["test_start"].startswith("2020-02-01")
    assert report["data"]["rows_skipped"] == 0 and report["data"]["test_customers"] > 0
    saved = json.loads((root / "february-report" / "recommender.json").read_text())
    assert saved["variants"] == json.loads(json.dumps(report["variants"]))

    result = CliRunner().invoke(
        app,
        [
            "--workdir",
            str(settings.workdir),
            "evaluate",
            "recommender",
            "--interactions",
            str(root / "february.csv"),
            "--report",
            str(root / "cli-report"),
            "--model-uri",
            f"models:/{name}@champion",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| hybrid | 1 |" in result.output and "## New to customer" in result.output
    cli = json.loads((root / "cli-report" / "recommender.json").read_text())
    assert cli["variants"]["hybrid"]["precision_at_10"] == pytest.approx(hybrid["precision_at_10"])


def test_training_to_deploy_then_scoring_on_later_purchases(trained):
    """--train-end at the lake's last day: no test table, registered with its validation
    precision; `evaluate recommender` then scores it on February (issue 11, item 8)."""
    from typer.testing import CliRunner

    from cli.main import app

    settings, root, _, _ = trained
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "--workdir",
            str(settings.workdir),
            "train",
            "recommender",
            "--train-end",
            LAKE_END,
            "--variants",
            "hybrid",
            "--runs",
            "1",
            "--report",
            str(root / "deploy"),
        ],
        env={
            "ATELIER_RECOMMENDER__K": "8",
            "ATELIER_RECOMMENDER__EPOCHS": "2",
            "ATELIER_RECOMMENDER__HIDDEN_UNITS": "[16]",
        },
    )
    assert result.exit_code == 0, result.output
    assert "Trained to deploy" in result.output
    report = json.loads((root / "deploy" / "recommender.json").read_text())
    assert report["period"]["deploy"] is True and report["variants"] == {}
    model = report["model"]
    assert model["evaluation"] == "validation:2020-01-01..2020-01-31"
    assert model["precision_at_10"] == pytest.approx(
        report["validation"]["hybrid"]["all_products.precision_at_10"]
    )
    uri = model["model_uri"]
    result = runner.invoke(
        app,
        [
            "--workdir",
            str(settings.workdir),
            "evaluate",
            "recommender",
            "--interactions",
            str(root / "february.csv"),
            "--report",
            str(root / "deploy-feb"),
            "--model-uri",
            uri,
        ],
    )
    assert result.exit_code == 0, result.output
    scored = json.loads((root / "deploy-feb" / "recommender.json").read_text())
    assert scored["models"]["hybrid"]["period_overlaps_training"] is False
    assert 0.0 <= scored["variants"]["hybrid"]["precision_at_10"] <= 1.0


def test_the_sales_timeline_equals_feast_product_features_at_train_end(trained):
    """Training examples read popularity and recency from the timeline at their cut-offs;
    scoring reads Feast's product features at train_end: the two must agree there."""
    from models.recommender.features import load_content_features
    from models.recommender.items import to_micros
    from training.recommender.timeline import SalesTimeline

    settings, _, _, _ = trained
    end = pd.Timestamp("2019-12-31", tz="UTC")
    features = load_content_features(settings, end)
    frame = lake_interactions(settings)
    timeline = SalesTimeline(frame[frame["timestamp"] <= end], features.product_ids)
    rows = np.arange(len(features))
    mine = timeline.blocks(rows, np.full(len(rows), to_micros([end])[0]))
    np.testing.assert_allclose(mine["popularity"], features.blocks["popularity"], atol=1e-6)
    np.testing.assert_allclose(mine["recency"], features.blocks["recency"], atol=1e-5)
    assert (features.blocks["popularity"] > 0).any()
