"""`atelier evaluate attributes` on a new catalogue as a user has it: an H&M-layout folder with
articles and images only (no customers, no purchases). A tiny attribute model is trained on an
H&M slice; the evaluation embeds the new catalogue with the weights the model was trained on,
as its bundle records them, and refuses other weights before ingesting or embedding anything.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from tests.conftest import (
    embed_settings,
    embed_weights_id,
    make_hm_catalogue,
    make_hm_slice,
    read_csv,
    vgg16_weights_path,
)

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def champion(tmp_path_factory, hm_dir, spark):
    """A workdir with a 40-article H&M slice featurised, a tiny model trained and promoted, and
    a catalogue-only folder of 20 other articles."""
    from atelier.feast_store import apply
    from atelier.registry import promote
    from atelier.settings import Settings
    from spark_jobs.colour import run_colour
    from spark_jobs.embed import run_embed
    from spark_jobs.ingest import run_ingest
    from spark_jobs.product_features import run_product_features
    from spark_jobs.text_features import run_text_features
    from training.attributes.pipeline import train_attributes

    root = tmp_path_factory.mktemp("evaluate")
    make_hm_slice(hm_dir, root / "train-source", n_articles=40)
    header, train_rows = read_csv(root / "train-source" / "articles.csv")
    # New articles of the types the model learnt (3+ training products each).
    kinds = Counter(r[header.index("product_type_name")] for r in train_rows)
    ids = make_hm_catalogue(
        hm_dir,
        root / "new",
        20,
        skip={r[0] for r in train_rows},
        types={k for k, n in kinds.items() if n >= 3},
    )
    settings = Settings(
        workdir=root / "work",
        image_check_partitions=2,
        spark={"master": "local[2]", "shuffle_partitions": 4},
        gate={"build_data_docs": False},
        embed=embed_settings(),
        attributes={
            "steps": 40,
            "eval_every": 20,
            "min_value_count": 3,
            "ablations": False,
            "baseline": False,
            "hide_labels": "never",
            "model": {
                "token_embedding_dim": 8,
                "text_filters": 8,
                "text_units": 8,
                "image_units": 8,
                "attention_units": 8,
                "fusion_units": 16,
                "trunk_units": [16],
            },
        },
    )
    run_ingest(settings, "hm", root / "train-source", spark=spark)
    run_embed(settings, spark=spark)
    run_colour(settings, spark=spark)
    run_text_features(settings, spark=spark)
    run_product_features(settings, spark=spark)
    apply(settings)
    out = train_attributes(settings, root / "report")
    assert promote(settings, settings.mlflow.attributes_model).promoted
    return settings, root, out, ids


def _bundle(settings):
    from atelier import registry
    from models.attributes.pyfunc import load_bundle

    registry.configure(settings)
    return load_bundle(registry.champion_uri(settings.mlflow.attributes_model))


def test_a_catalogue_without_customers_or_purchases_is_evaluated_with_the_models_weights(
    champion,
):
    from atelier.lake import Lake
    from cli.evaluate import evaluate_attributes

    settings, root, out, ids = champion
    assert not (root / "new" / "customers.csv").exists()
    assert not (root / "new" / "transactions_train.csv").exists()
    bundle = _bundle(settings)
    assert bundle.metadata["embedding_weights"] == [embed_weights_id()]
    real = vgg16_weights_path()
    assert bundle.metadata["embedding_weights_source"] == (str(real) if real else "random")

    result = evaluate_attributes(settings, root / "new", "hm", root / "new-report")
    assert result["catalogue"] == {
        "source": str(root / "new"),
        "layout": "hm",
        "products": len(ids),
    }
    assert result["embedding_weights"] == [embed_weights_id()]
    assert result["attributes"] and set(result["attributes"]) <= set(bundle.attributes)
    for attribute, m in result["attributes"].items():
        cover = result["coverage"][attribute]
        assert m["support"] == cover["scored"] <= cover["labelled"] <= len(ids)
        assert 0.0 <= m["weighted_f1"] <= 1.0
    saved = json.loads((root / "new-report" / "attributes.json").read_text())
    assert saved["mean_weighted_f1"] == pytest.approx(result["mean_weighted_f1"])

    # The scratch lake holds the catalogue only, embedded with the model's weights.
    (scratch,) = (settings.workdir / "scratch").iterdir()
    lake = Lake(settings.model_copy(update={"workdir": scratch}))
    assert sorted(lake.read_pandas("products", ["product_id"])["product_id"]) == sorted(ids)
    assert not lake.exists("customers") and not lake.exists("interactions")
    embeddings = lake.read_pandas("image_embeddings", ["product_id", "weights"])
    assert sorted(embeddings["product_id"]) == sorted(ids)
    assert set(embeddings["weights"]) == {embed_weights_id()}
    if bundle.config.colour_dim:  # the model reads colour: the catalogue is described too
        colours = lake.read_pandas("colour_features", ["product_id"])
        assert sorted(colours["product_id"]) == sorted(ids)
    ingest = json.loads((scratch / "reports" / "ingest" / "latest.json").read_text())
    assert ingest["absent"] == ["customers.csv", "transactions_train.csv"]
    assert ingest["published"] and ingest["tables"]["products"]["good"] == len(ids)


def test_other_weights_are_refused_before_anything_is_ingested(champion, tmp_path):
    import shutil

    from cli.evaluate import WeightsMismatch, evaluate_attributes

    settings, root, _, _ = champion
    source = tmp_path / "copy"
    shutil.copytree(root / "new", source, symlinks=True)
    other = tmp_path / "other_vgg16.h5"
    other.write_bytes(b"not the model's weights")
    other_id = "file:" + hashlib.sha256(other.read_bytes()).hexdigest()[:12]
    scratch = settings.workdir / "scratch"
    before = sorted(p.name for p in scratch.iterdir()) if scratch.is_dir() else []

    with pytest.raises(WeightsMismatch) as e:
        evaluate_attributes(settings, source, "hm", tmp_path / "report", weights=str(other))
    msg = str(e.value)
    assert f"trained on image embeddings from weights {embed_weights_id()}" in msg
    assert f"{other} is {other_id}" in msg and "nothing was embedded" in msg
    after = sorted(p.name for p in scratch.iterdir()) if scratch.is_dir() else []
    assert after == before and not (tmp_path / "report").exists()


def test_the_cli_takes_the_weights_option_and_says_why_it_refuses(champion, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    settings, root, _, _ = champion
    other = tmp_path / "other_vgg16.h5"
    other.write_bytes(b"other weights")
    args = ["--workdir", str(settings.workdir), "evaluate", "attributes", str(root / "new")]
    args += ["--layout", "hm", "--report", str(tmp_path / "r"), "--weights", str(other)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 1
    needed = f"error: the model was trained on image embeddings from weights {embed_weights_id()}"
    # The way out: the model's own file, or no file for a model trained on random weights.
    how = "--weights PATH" if vgg16_weights_path() else "leave out --weights"
    assert needed in out.output and how in out.output
    assert not (tmp_path / "r").exists()
