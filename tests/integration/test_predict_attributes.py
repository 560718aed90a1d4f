"""Batch attribute prediction: the label encoders and transforms by hand, then the job end to end
on a 30-product H&M slice with a tiny registered champion (untrained, random weights).

The end-to-end test hides some labels of the slice, so the champion has gaps to fill, and one
product's type is outside an attribute's applicability, so that attribute gets no row.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from spark_jobs.materialize import materialize
from tests.conftest import embed_settings, embed_weights_id, make_hm_slice

NOW = datetime(2026, 11, 25, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SEED = 20181
MODEL = "atelier-attributes"

# Two attributes of the H&M layout; "Denim" was dropped in training, rare values are "other".
GRAPHIC = "graphical_appearance_name"
COLOUR_VALUE = "perceived_colour_value_name"


def _specs(not_graphic: str = "Ring"):
    from models.attributes.bundle import AttributeSpec

    return {
        GRAPHIC: AttributeSpec(
            classes=["Solid", "Melange", "other"],
            grouping={
                "Solid": "Solid",
                "Melange": "Melange",
                "All over pattern": "other",
                "Lace": "other",
                "Denim": None,
            },
            applies_to=[],  # filled with the slice's types but `not_graphic`
        ),
        COLOUR_VALUE: AttributeSpec(
            classes=["Dark", "Light", "other"],
            grouping={"Dark": "Dark", "Light": "Light", "Dusty Light": "other"},
            applies_to=[],
        ),
    }


# ---------------------------------------------------------------------------------------------
# Pure Python: label encoders and layout
# ---------------------------------------------------------------------------------------------
@pytest.mark.unit
def test_labels_map_to_classes_through_the_grouping():
    from spark_jobs.predict_attributes import (
        attribute_layout,
        class_of,
        label_encoding,
        one_hot,
    )

    g = _specs()[GRAPHIC]
    assert class_of(g, "Solid") == "Solid"
    assert class_of(g, "Lace") == "other"  # rare in training: grouped
    assert class_of(g, "other") == "other"  # a class name maps to itself
    assert class_of(g, "Denim") is None  # dropped in training
    assert class_of(g, "Check") is None  # never seen
    assert class_of(g, None) is None
    assert one_hot(g, "Lace") == [0.0, 0.0, 1.0]
    assert one_hot(g, "Denim") == []
    enc = label_encoding(_specs())
    assert (GRAPHIC, "All over pattern", [0.0, 0.0, 1.0]) in enc
    assert (COLOUR_VALUE, "Light", [0.0, 1.0, 0.0]) in enc
    assert not [r for r in enc if r[1] == "Denim"]
    assert len(enc) == 5 + 4  # graphic: 4 raw values + "other"; colour: 3 raw + "other"
    assert attribute_layout(_specs()) == [(GRAPHIC, 0, 3), (COLOUR_VALUE, 1, 3)]


@pytest.mark.unit
def test_min_confidence_is_parsed_checked_and_resolved_per_attribute(capsys):
    from typer.testing import CliRunner

    from cli.main import app
    from spark_jobs.predict_attributes import (
        PredictError,
        main,
        min_confidence_by_attribute,
        parse_min_confidence,
    )

    assert parse_min_confidence(["0.8"]) == {"*": 0.8}
    assert parse_min_confidence(["0.8", f"{GRAPHIC}=0.95", f"{GRAPHIC}=0.9", "x = 1"]) == {
        "*": 0.8,
        GRAPHIC: 0.9,  # the later value wins
        "x": 1.0,
    }
    assert parse_min_confidence(["0"]) == {"*": 0.0}  # 0: fill every gap
    for bad, why in [
        ("1.5", r"must be in \[0, 1\], got 1.5"),
        ("-0.1", r"must be in \[0, 1\]"),
        ("nan", r"must be in \[0, 1\]"),
        (f"{GRAPHIC}=high", "expected 0.8 or ATTRIBUTE=0.8"),
        ("=0.5", "the attribute name is empty"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_min_confidence([bad])

    attributes = [GRAPHIC, COLOUR_VALUE]
    assert min_confidence_by_attribute({}, attributes) == {GRAPHIC: 0.0, COLOUR_VALUE: 0.0}
    assert min_confidence_by_attribute({"*": 0.8, COLOUR_VALUE: 0.0}, attributes) == {
        GRAPHIC: 0.8,
        COLOUR_VALUE: 0.0,
    }
    with pytest.raises(PredictError, match="does not predict: \\['colour'\\]") as e:
        min_confidence_by_attribute({"colour": 0.8}, attributes)
    assert f"the model's attributes are {attributes!r}" in str(e.value)
    with pytest.raises(ValueError, match=r"min_confidence\['\*'\] must be in \[0, 1\]"):
        min_confidence_by_attribute({"*": 2.0}, attributes)

    # Both entry points refuse a bad value before doing anything.
    with pytest.raises(SystemExit) as exit_:
        main(["--min-confidence", "1.5"])
    assert exit_.value.code == 2
    assert "--min-confidence '1.5' must be in [0, 1]" in capsys.readouterr().err
    out = CliRunner().invoke(app, ["predict", "attributes", "--min-confidence", "colour=x"])
    assert out.exit_code == 2
    message = " ".join(out.output.replace("│", " ").split())  # unwrap the error box
    assert "--min-confidence 'colour=x': expected 0.8 or ATTRIBUTE=0.8" in message


# ---------------------------------------------------------------------------------------------
# Spark transforms with hand-computed rows
# ---------------------------------------------------------------------------------------------
@pytest.mark.spark
def test_attribute_rows_and_vectors_by_hand(spark):
    from spark_jobs.predict_attributes import (
        attribute_layout,
        attribute_rows,
        attribute_vectors,
        label_encoding,
    )

    t1 = datetime(2020, 5, 1, tzinfo=UTC)
    events = spark.createDataFrame(
        [("p1", t1), ("p2", EPOCH), ("p3", t1)], "product_id STRING, event_timestamp TIMESTAMP"
    )
    # The workers' output: applicable attributes only (p3's type takes no graphic).
    scored = spark.createDataFrame(
        [
            ("p1", GRAPHIC, "Melange", 0.5, [0.25, 0.5, 0.25]),
            ("p1", COLOUR_VALUE, "Dark", 0.75, [0.75, 0.125, 0.125]),
            ("p2", GRAPHIC, "Solid", 0.625, [0.625, 0.25, 0.125]),
            ("p2", COLOUR_VALUE, "Light", 0.5, [0.25, 0.5, 0.25]),
            ("p3", COLOUR_VALUE, "other", 0.5, [0.25, 0.25, 0.5]),
            ("px", COLOUR_VALUE, "Dark", 1.0, [1.0, 0.0, 0.0]),  # not a product: dropped
        ],
        "product_id STRING, attribute STRING, value STRING, confidence DOUBLE, "
        "probabilities ARRAY<FLOAT>",
    )
    labels = spark.createDataFrame(
        [
            ("p1", GRAPHIC, "Lace"),  # grouped into "other"
            ("p2", COLOUR_VALUE, "Medium"),  # maps to no class: kept, empty probabilities
            ("p3", GRAPHIC, "Denim"),  # not applicable and dropped: kept all the same
            ("p3", "colour_group_name", "Black"),  # not an attribute of the model: kept
        ],
        "product_id STRING, attribute STRING, value STRING",
    )
    encoding = spark.createDataFrame(
        label_encoding(_specs()), "attribute STRING, value STRING, probabilities ARRAY<FLOAT>"
    )
    layout = spark.createDataFrame(
        attribute_layout(_specs()), "attribute STRING, position INT, size INT"
    )
    rows = attribute_rows(scored, labels, encoding, events, "m/3")
    got = {
        (r["product_id"], r["attribute"]): (
            r["value"],
            r["confidence"],
            r["probabilities"],
            r["source"],
            r["model_version"],
            r["event_timestamp"].replace(tzinfo=UTC),  # collect(): naive, session zone UTC
        )
        for r in rows.collect()
    }
    assert got == {
        ("p1", GRAPHIC): ("Lace", 1.0, [0.0, 0.0, 1.0], "label", "m/3", t1),
        ("p1", COLOUR_VALUE): ("Dark", 0.75, [0.75, 0.125, 0.125], "predicted", "m/3", t1),
        ("p2", GRAPHIC): ("Solid", 0.625, [0.625, 0.25, 0.125], "predicted", "m/3", EPOCH),
        ("p2", COLOUR_VALUE): ("Medium", 1.0, [], "label", "m/3", EPOCH),
        ("p3", GRAPHIC): ("Denim", 1.0, [], "label", "m/3", t1),
        ("p3", "colour_group_name"): ("Black", 1.0, [], "label", "m/3", t1),
        ("p3", COLOUR_VALUE): ("other", 0.5, [0.25, 0.25, 0.5], "predicted", "m/3", t1),
    }

    vectors = {
        r["product_id"]: r.asDict()
        for r in attribute_vectors(rows, layout, events, "m/3").collect()
    }
    assert sorted(vectors) == ["p1", "p2", "p3"]
    # graphic block then colour-value block; a label without a class and no row -> zeros
    assert vectors["p1"]["attribute_vector"] == [0.0, 0.0, 1.0, 0.75, 0.125, 0.125]
    assert vectors["p1"]["attribute_values"] == ["Lace", "Dark"]
    assert vectors["p2"]["attribute_vector"] == [0.625, 0.25, 0.125, 0.0, 0.0, 0.0]
    assert vectors["p2"]["attribute_values"] == ["Solid", "Medium"]
    assert vectors["p3"]["attribute_vector"] == [0.0, 0.0, 0.0, 0.25, 0.25, 0.5]
    assert vectors["p3"]["attribute_values"] == ["Denim", "other"]
    assert {v["model_version"] for v in vectors.values()} == {"m/3"}
    assert vectors["p2"]["event_timestamp"].replace(tzinfo=UTC) == EPOCH


@pytest.mark.spark
def test_predictions_below_the_minimum_confidence_leave_the_gap_empty(spark):
    from spark_jobs.predict_attributes import (
        attribute_layout,
        attribute_vectors,
        min_confidence_by_attribute,
        withhold_below,
    )

    t1 = datetime(2020, 5, 1, tzinfo=UTC)
    events = spark.createDataFrame(
        [("p1", t1), ("p2", t1), ("p3", t1)], "product_id STRING, event_timestamp TIMESTAMP"
    )
    rows = spark.createDataFrame(
        [
            ("p1", GRAPHIC, "Lace", 1.0, [0.0, 0.0, 1.0], "label", "m/3", t1),
            ("p1", COLOUR_VALUE, "Dark", 0.75, [0.75, 0.125, 0.125], "predicted", "m/3", t1),
            ("p2", GRAPHIC, "Solid", 0.625, [0.625, 0.25, 0.125], "predicted", "m/3", t1),
            ("p2", COLOUR_VALUE, "Light", 0.5, [0.25, 0.5, 0.25], "predicted", "m/3", t1),
            ("p3", COLOUR_VALUE, "other", 0.5, [0.25, 0.25, 0.5], "predicted", "m/3", t1),
            ("p3", "colour_group_name", "Black", 1.0, [], "label", "m/3", t1),
        ],
        "product_id STRING, attribute STRING, value STRING, confidence DOUBLE, "
        "probabilities ARRAY<FLOAT>, source STRING, model_version STRING, "
        "event_timestamp TIMESTAMP",
    )

    def sources(df):
        return {(r["product_id"], r["attribute"]): r["source"] for r in df.collect()}

    everything = sources(rows)
    # graphic needs 0.7: p2's 0.625 stays empty; colour needs 0.5: exactly 0.5 fills
    withheld = withhold_below(rows, {GRAPHIC: 0.7, COLOUR_VALUE: 0.5})
    assert sources(withheld) == {**everything, ("p2", GRAPHIC): "below_confidence"}
    assert withheld.columns == rows.columns
    kept = {r["product_id"]: r for r in withheld.where("attribute = '" + GRAPHIC + "'").collect()}
    assert (kept["p2"]["value"], kept["p2"]["confidence"]) == ("Solid", 0.625)  # for audit
    # 1 for every attribute: no prediction fills, every label stays
    strict = withhold_below(rows, min_confidence_by_attribute({"*": 1.0}, [GRAPHIC, COLOUR_VALUE]))
    assert sources(strict) == {
        k: ("label" if s == "label" else "below_confidence") for k, s in everything.items()
    }
    # 0 everywhere: the rows as they were
    assert withhold_below(rows, {GRAPHIC: 0.0, COLOUR_VALUE: 0.0}) is rows

    # The vector keeps a withheld prediction's probabilities; its value is empty.
    layout = spark.createDataFrame(
        attribute_layout(_specs()), "attribute STRING, position INT, size INT"
    )
    vectors = {
        r["product_id"]: r for r in attribute_vectors(withheld, layout, events, "m/3").collect()
    }
    assert vectors["p2"]["attribute_vector"] == [0.625, 0.25, 0.125, 0.25, 0.5, 0.25]
    assert vectors["p2"]["attribute_values"] == ["", "Light"]
    assert vectors["p1"]["attribute_values"] == ["Lace", "Dark"]
    assert vectors["p3"]["attribute_values"] == ["", "other"]


# ---------------------------------------------------------------------------------------------
# The job end to end
# ---------------------------------------------------------------------------------------------
def _tiny_bundle(settings, lake):
    """An untrained bundle over the lake's vocabulary and category index (tiny layers)."""
    import keras

    from models.attributes.bundle import AttributeBundle
    from models.attributes.model import AttributeModelConfig, build_attribute_model

    vocab = lake.read_pandas("vocabulary", ["version", "token", "token_id"])
    assert vocab["version"].nunique() == 1
    index = lake.read_pandas("category_index")
    categories = {
        col: {str(v): int(i) for v, i in zip(g["value"], g["idx"])}
        for col, g in index.groupby("column")
    }
    specs = _specs()
    types = sorted(categories["type"])
    specs[GRAPHIC].applies_to = [t for t in types if t != "Ring"]
    specs[COLOUR_VALUE].applies_to = types
    config = AttributeModelConfig(
        vocab_size=int(vocab["token_id"].max()) + 1,
        sequence_length=settings.text.sequence_length,
        n_types=max(categories["type"].values()) + 1,
        n_brands=max(categories["brand"].values()) + 1,
        n_divisions=max(categories["division"].values()) + 1,
        heads={a: len(s.classes) for a, s in specs.items()},
        token_embedding_dim=4,
        text_filters=4,
        text_units=4,
        type_embedding_dim=2,
        brand_embedding_dim=2,
        division_embedding_dim=2,
        image_units=4,
        attention_units=4,
        fusion_units=8,
        trunk_units=(8,),
        dropout=0.0,
    )
    keras.utils.set_random_seed(SEED)
    return AttributeBundle(
        model=build_attribute_model(config),
        config=config,
        attributes=specs,
        vocabulary=dict(zip(vocab["token"], (int(i) for i in vocab["token_id"]))),
        vocab_version=str(vocab["version"].iloc[0]),
        sequence_length=settings.text.sequence_length,
        categories=categories,
        max_shots=4,
        metadata={
            "feature_service": "attributes_v1",
            "embedding_weights": [embed_weights_id(SEED)],
        },
    )


def _register_champion(settings, bundle) -> int:
    import mlflow

    from atelier import registry
    from models.attributes.pyfunc import log_attribute_model

    registry.configure(settings)
    with mlflow.start_run(run_name="tiny-attributes"):
        info = log_attribute_model(bundle)
    version = registry.register(settings, info.model_uri, MODEL, "mean_weighted_f1", 0.5)
    assert registry.promote(settings, MODEL).promoted
    return version


def _by_key(lake, table: str, key) -> dict:
    return {tuple(r[k] for k in key): r for r in lake.read_arrow(table).to_pylist()}


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, hm_dir, spark):
    """Slice ingested, embedded and featurised; labels hidden; champion registered; one run."""
    from atelier.contracts import contract
    from atelier.lake import Lake
    from atelier.settings import Settings
    from spark_jobs.embed import run_embed
    from spark_jobs.ingest import run_ingest
    from spark_jobs.predict_attributes import run_predict_attributes
    from spark_jobs.product_features import run_product_features
    from spark_jobs.text_features import run_text_features

    root = tmp_path_factory.mktemp("predict")
    make_hm_slice(hm_dir, root / "hm", n_articles=30)
    settings = Settings(
        workdir=root / "w",
        spark={"master": "local[2]", "shuffle_partitions": 4},
        gate={"build_data_docs": False},
        embed=embed_settings(SEED, partitions=2),
    )
    run_ingest(settings, "hm", root / "hm", spark=spark, now=NOW)
    run_embed(settings, spark=spark, now=NOW)
    run_text_features(settings, spark=spark, now=NOW)
    run_product_features(settings, spark=spark, now=NOW)
    lake = Lake(settings)

    # Hide labels so there are gaps: graphic for the first ten products and the ring (whose
    # type it does not apply to), colour value for products 5..14.
    products = lake.read_pandas("products", ["product_id", "type"]).sort_values("product_id")
    ids = products["product_id"].tolist()
    ring = products.loc[products["type"] == "Ring", "product_id"].tolist()
    assert len(ids) == 30 and len(ring) == 1
    hidden = {(p, GRAPHIC) for p in ids[:10] + ring} | {(p, COLOUR_VALUE) for p in ids[5:15]}
    labels = lake.read_arrow("product_labels").to_pylist()
    kept = [r for r in labels if (r["product_id"], r["attribute"]) not in hidden]
    assert len(labels) - len(kept) == len(hidden)  # the slice labels all of them
    lake.overwrite(
        "product_labels", pa.Table.from_pylist(kept, contract("product_labels").schema())
    )

    bundle = _tiny_bundle(settings, lake)
    version = _register_champion(settings, bundle)
    report = run_predict_attributes(settings, spark=spark, now=NOW)
    return settings, bundle, version, report, kept, hidden, ring[0]


@pytest.mark.spark
@pytest.mark.integration
def test_known_labels_are_kept_and_gaps_filled_by_the_champion(predicted):
    import pandas as pd

    from atelier.contracts import contract
    from atelier.lake import Lake
    from atelier.text import product_text
    from spark_jobs.predict_attributes import one_hot

    settings, bundle, version, report, kept, hidden, ring = predicted
    lake = Lake(settings)
    assert report["model_version"] == f"{MODEL}/{version}"
    assert report["model_uri"] == f"models:/{MODEL}@champion"
    assert report["published"] and report["failures"] == []
    assert report["products"] == 30 and report["vector_size"] == 6

    table = lake.read_arrow("predicted_attributes")
    assert table.schema == contract("predicted_attributes").schema()
    rows = _by_key(lake, "predicted_attributes", ("product_id", "attribute"))
    # Every label verbatim, also of attributes the model does not predict.
    for label in kept:
        row = rows[(label["product_id"], label["attribute"])]
        assert (row["value"], row["source"], row["confidence"]) == (label["value"], "label", 1.0)
        spec = bundle.attributes.get(label["attribute"])
        assert row["probabilities"] == (one_hot(spec, label["value"]) if spec else [])
    # Every hidden label of an applicable type is predicted; the ring's graphic has no row.
    assert (ring, GRAPHIC) not in rows
    gaps = sorted(hidden - {(ring, GRAPHIC)})
    assert len(rows) == len(kept) + len(gaps)
    assert report["labels_kept"] == len(kept) and report["predicted"] == len(gaps)

    # The champion's own predictions on the same inputs, in this process.
    products = lake.read_pandas("products").set_index("product_id")
    shots = lake.read_pandas("image_embeddings").sort_values("shot")
    ids = sorted({p for p, _ in gaps})
    frame = pd.DataFrame(
        {
            "product_id": ids,
            "text": [
                product_text(products.at[p, "title"], products.at[p, "description"]) for p in ids
            ],
            "type": [products.at[p, "type"] for p in ids],
            "brand": [products.at[p, "brand"] for p in ids],
            "division": [products.at[p, "division"] for p in ids],
            "embeddings": [list(shots.loc[shots["product_id"] == p, "embedding"]) for p in ids],
        }
    )
    expected = {
        (r["product_id"], r["attribute"]): r for r in bundle.predict(frame).to_dict("records")
    }
    for key in gaps:
        row, want = rows[key], expected[key]
        classes = bundle.attributes[key[1]].classes
        assert row["source"] == "predicted" and row["value"] in classes
        assert len(row["probabilities"]) == len(classes)
        assert math.fsum(row["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert row["confidence"] == max(row["probabilities"])  # float32 -> float64: exact
        assert row["value"] == classes[int(np.argmax(row["probabilities"]))]
        assert row["value"] == want["value"]
        np.testing.assert_allclose(row["probabilities"], want["probabilities"], atol=1e-5)
        first_seen = products.at[key[0], "first_seen"]
        assert row["event_timestamp"] == (EPOCH if pd.isna(first_seen) else first_seen)
        assert row["created_timestamp"] == NOW
        assert row["model_version"] == f"{MODEL}/{version}"

    # One vector per product: the long rows end to end, the ring's graphic block zeros.
    vectors = _by_key(lake, "attribute_vectors", ("product_id",))
    assert len(vectors) == 30
    for (pid,), v in vectors.items():
        assert len(v["attribute_vector"]) == bundle.vector_size == 6
        parts, values = [], []
        for attribute in bundle.attribute_order:
            row = rows.get((pid, attribute))
            n = len(bundle.attributes[attribute].classes)
            probs = row["probabilities"] if row and len(row["probabilities"]) == n else [0.0] * n
            parts.extend(probs)
            values.append(row["value"] if row else "")
        assert v["attribute_vector"] == parts
        assert v["attribute_values"] == values
    assert vectors[(ring,)]["attribute_vector"][:3] == [0.0, 0.0, 0.0]
    assert vectors[(ring,)]["attribute_values"][0] == ""


@pytest.mark.spark
@pytest.mark.integration
def test_rerun_writes_nothing_and_the_gate_holds(predicted, spark, monkeypatch):
    from typer.testing import CliRunner

    from atelier.lake import Lake
    from cli.main import app
    from expectations.gate import validate_table
    from expectations.suites import gate_checks

    settings, bundle, version, report, *_ = predicted
    lake = Lake(settings)
    before = {t: lake.version(t) for t in ("predicted_attributes", "attribute_vectors")}

    # `atelier predict attributes`, same champion, unchanged inputs: nothing written.
    monkeypatch.setenv("ATELIER_GATE__BUILD_DATA_DOCS", "false")
    out = CliRunner().invoke(app, ["--workdir", str(settings.workdir), "predict", "attributes"])
    assert out.exit_code == 0, out.output
    assert f"model {MODEL}/{version}" in out.output
    assert "predicted_attributes  written 0 (ins. 0, upd. 0)" in out.output
    assert "attribute_vectors     written 0 (ins. 0, upd. 0)" in out.output
    assert {t: lake.version(t) for t in before} == before

    # The full tables pass their suites; a broken vector or confidence does not.
    products = {"product_id": lake.read_arrow("products")["product_id"].to_pylist()}
    vectors = lake.read_arrow("attribute_vectors")
    checks = gate_checks(settings, "attribute_vectors", vector_size=bundle.vector_size)
    ok = validate_table(
        settings,
        "attribute_vectors",
        vectors,
        row_count_band=(1, 100),
        reference_values=products,
        list_checks=checks,
    )
    assert ok.success, ok.failures
    rows = lake.read_arrow("predicted_attributes")
    ok = validate_table(
        settings,
        "predicted_attributes",
        rows,
        row_count_band=(1, 1000),
        reference_values=products,
        list_checks=gate_checks(settings, "predicted_attributes"),
    )
    assert ok.success, ok.failures

    bad_vectors = vectors.to_pylist()
    bad_vectors[0]["attribute_vector"] = bad_vectors[0]["attribute_vector"][:5]
    bad_vectors[1]["attribute_vector"] = [1.5] + bad_vectors[1]["attribute_vector"][1:]
    bad = validate_table(
        settings,
        "attribute_vectors",
        pa.Table.from_pylist(bad_vectors, vectors.schema),
        row_count_band=(1, 100),
        reference_values=products,
        list_checks=checks,
    )
    assert not bad.success
    assert any("attribute_vector__length" in f for f in bad.failures), bad.failures
    assert any("attribute_vector__max" in f for f in bad.failures), bad.failures
    bad_rows = rows.to_pylist()
    predicted_row = next(r for r in bad_rows if r["source"] == "predicted")
    predicted_row["confidence"] = float("nan")
    predicted_row["probabilities"] = [0.5, 0.25, 0.0]
    bad = validate_table(
        settings,
        "predicted_attributes",
        pa.Table.from_pylist(bad_rows, rows.schema),
        row_count_band=(1, 1000),
        reference_values=products,
        list_checks=gate_checks(settings, "predicted_attributes"),
    )
    assert not bad.success
    assert any("(confidence)" in f for f in bad.failures), bad.failures
    assert any("probabilities__total_error" in f for f in bad.failures), bad.failures


@pytest.mark.spark
@pytest.mark.integration
def test_materialize_serves_the_attribute_vector_online(predicted):
    from atelier import feast_store
    from atelier.lake import Lake

    settings, *_ = predicted
    feast_store.apply(settings)
    result = materialize(settings, end=LATER, tables=["attribute_vectors"])
    assert result["predicted_attributes"]["status"] == "materialized", result
    vectors = Lake(settings).read_arrow("attribute_vectors").to_pylist()
    ids = [v["product_id"] for v in vectors[:3]]
    row = feast_store.online_features(
        settings,
        ids + ["nope"],
        ["predicted_attributes:attribute_vector", "predicted_attributes:attribute_values"],
    )
    for i, v in enumerate(vectors[:3]):
        np.testing.assert_array_equal(
            np.asarray(row["attribute_vector"][i], np.float32),
            np.asarray(v["attribute_vector"], np.float32),
        )
        assert row["attribute_values"][i] == v["attribute_values"]
    assert row["attribute_vector"][3] is None


@pytest.mark.integration
def test_materialize_without_predictions_reports_the_view_missing(settings):
    from atelier import feast_store

    feast_store.apply(settings)
    result = materialize(settings, tables=["attribute_vectors"])
    assert result["predicted_attributes"] == {
        "table": "attribute_vectors",
        "status": "missing",
        "failures": [],
    }


@pytest.mark.spark
@pytest.mark.integration
def test_min_confidence_leaves_gaps_empty_and_zero_fills_them_again(predicted, spark):
    from atelier.lake import Lake
    from serving.state import _attribute_rows
    from spark_jobs.predict_attributes import PredictError, format_report, run_predict_attributes

    settings, bundle, version, report, kept, hidden, ring = predicted
    lake = Lake(settings)
    key = ("product_id", "attribute")
    before = _by_key(lake, "predicted_attributes", key)
    vectors_before = _by_key(lake, "attribute_vectors", ("product_id",))
    gaps = set(hidden - {(ring, GRAPHIC)})
    gap_products = {p for p, _ in gaps}
    assert {k for k, r in before.items() if r["source"] == "predicted"} == gaps

    # A name the model does not predict: refused, naming the model's attributes; nothing written.
    versions = {t: lake.version(t) for t in ("predicted_attributes", "attribute_vectors")}
    with pytest.raises(PredictError, match=f"model's attributes are \\['{GRAPHIC}'"):
        run_predict_attributes(settings, spark=spark, now=LATER, min_confidence={"colour": 0.5})
    assert {t: lake.version(t) for t in versions} == versions
    assert not list((settings.workdir / "tmp" / "predict_attributes").iterdir())  # bundle removed

    # 1 for every attribute: an untrained model is never that sure, so no gap is filled.
    strict = run_predict_attributes(settings, spark=spark, now=LATER, min_confidence={"*": 1.0})
    assert strict["published"] and strict["min_confidence"] == {GRAPHIC: 1.0, COLOUR_VALUE: 1.0}
    assert strict["predicted"] == 0
    assert strict["below_confidence"] == len(gaps)
    assert strict["labels_kept"] == len(kept)
    assert strict["predicted_attributes"]["updated"] == len(gaps)  # only the gaps' rows
    assert strict["attribute_vectors"]["updated"] == len(gap_products)
    assert f"predicted 0, below minimum confidence (left empty) {len(gaps)}" in format_report(
        strict
    )
    rows = _by_key(lake, "predicted_attributes", key)
    assert set(rows) == set(before)
    for k, row in rows.items():
        if k in gaps:
            # the model's guess is kept for audit, marked as not filled
            assert row["source"] == "below_confidence" and row["created_timestamp"] == LATER
            for column in ("value", "confidence", "probabilities", "model_version"):
                assert row[column] == before[k][column]
        else:
            assert row == before[k]  # known labels untouched
    vectors = _by_key(lake, "attribute_vectors", ("product_id",))
    for (pid,), v in vectors.items():
        assert v["attribute_vector"] == vectors_before[(pid,)]["attribute_vector"]
        assert v["attribute_values"] == [
            "" if (pid, a) in gaps else value
            for a, value in zip(bundle.attribute_order, vectors_before[(pid,)]["attribute_values"])
        ]
    # Serving shows the labels only.
    served = _attribute_rows(lake)
    assert set(zip(served["product_id"], served["attribute"])) == set(before) - gaps
    assert set(served["source"]) == {"label"}

    # 0: every gap is filled again with the same prediction.
    relaxed = run_predict_attributes(settings, spark=spark, now=LATER, min_confidence={"*": 0.0})
    assert relaxed["predicted"] == len(gaps) and relaxed["below_confidence"] == 0
    assert relaxed["predicted_attributes"]["updated"] == len(gaps)
    rows = _by_key(lake, "predicted_attributes", key)
    for k, row in rows.items():
        stamp = LATER if k in gaps else before[k]["created_timestamp"]
        assert row == {**before[k], "created_timestamp": stamp}
    vectors = _by_key(lake, "attribute_vectors", ("product_id",))
    assert {p: v["attribute_values"] for p, v in vectors.items()} == {
        p: v["attribute_values"] for p, v in vectors_before.items()
    }
