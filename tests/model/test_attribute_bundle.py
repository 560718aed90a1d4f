"""The attribute bundle (features -> probabilities) and its MLflow pyfunc packaging."""

from __future__ import annotations

import math
import sys

import keras
import numpy as np
import pandas as pd
import pytest

from atelier.text import normalise, token_ids
from models.attributes.bundle import AttributeBundle, AttributeSpec
from models.attributes.model import AttributeModelConfig, build_attribute_model

pytestmark = pytest.mark.unit

SEQ = 6
DIM = 4
VOCAB = {"red": 2, "cotton": 3, "dress": 4, "blue": 5, "denim": 6, "jeans": 7}
TYPES = {"Dress": 1, "Trousers": 2}
BRANDS = {"Acme": 1, "Zed": 2}
DIVISIONS = {"Ladies": 1}
TINY = dict(
    vocab_size=30,
    sequence_length=SEQ,
    n_types=3,
    n_brands=3,
    n_divisions=2,
    heads={"colour": 3, "length": 2},
    image_dim=DIM,
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


def make_bundle(seed: int = 0) -> AttributeBundle:
    keras.utils.set_random_seed(seed)
    config = AttributeModelConfig(**TINY)
    return AttributeBundle(
        model=build_attribute_model(config),
        config=config,
        attributes={
            "colour": AttributeSpec(
                classes=["red", "blue", "other"],
                grouping={"red": "red", "blue": "blue", "teal": "other", "mauve": None},
                applies_to=["Dress", "Trousers"],
            ),
            "length": AttributeSpec(
                classes=["mini", "maxi"],
                grouping={"mini": "mini", "maxi": "maxi"},
                applies_to=["Dress"],
            ),
        },
        vocabulary=dict(VOCAB),
        vocab_version="v-abc",
        sequence_length=SEQ,
        categories={"type": dict(TYPES), "brand": dict(BRANDS), "division": dict(DIVISIONS)},
        max_shots=3,
        metadata={"feature_service": "attributes_v1", "embedding_weights": ["random:20181"]},
    )


@pytest.fixture(scope="module")
def bundle() -> AttributeBundle:
    return make_bundle()


def shot(seed: int) -> list[float]:
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32).tolist()


def raw_frame() -> pd.DataFrame:
    """Five products in the raw form: shots lists, text, type/brand/division names."""
    return pd.DataFrame(
        {
            "product_id": ["p1", "p2", "p3", "p4", "p5"],
            "embeddings": [
                [shot(1), shot(2)],
                [shot(3)],
                [],  # no image at all
                None,
                [shot(4), shot(5), shot(6), shot(7)],  # more shots than max_shots=3
            ],
            "text": ["Red cotton dress", "Blue denim JEANS, slim", None, "", "red sequins"],
            "type": ["Dress", "Trousers", "Dress", "Hat", None],
            "brand": ["Acme", "Zed", "Nobody", None, "Acme"],
            "division": ["Ladies", "Ladies", None, "Ladies", "Kids"],
        }
    )


def index_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """The same products in the feature-table form: token ids and category indices."""
    return pd.DataFrame(
        {
            "product_id": raw["product_id"],
            "embeddings": [_as_parquet_list(e) for e in raw["embeddings"]],
            "token_ids": [np.asarray(token_ids(normalise(t), VOCAB, SEQ)) for t in raw["text"]],
            "vocab_version": "v-abc",
            "type_idx": [1, 2, 1, 0, 0],
            "brand_idx": [1, 2, 0, 0, 1],
            "division_idx": [1, 1, 0, 1, 0],
        }
    )


def _as_parquet_list(shots):
    """A list of shots as pandas reads it from Parquet: an object array of float arrays."""
    if shots is None:
        return None
    out = np.empty(len(shots), dtype=object)
    out[:] = [np.asarray(s, np.float32) for s in shots]
    return out


# -- encode ---------------------------------------------------------------------------------


def test_encode_builds_the_six_inputs_by_hand(bundle):
    inputs = bundle.encode(raw_frame())
    assert {k: (v.shape, v.dtype) for k, v in inputs.items()} == {
        "image": ((5, 3, DIM), np.float32),
        "image_mask": ((5, 3), np.float32),
        "token_ids": ((5, SEQ), np.int32),
        "type_idx": ((5,), np.int32),
        "brand_idx": ((5,), np.int32),
        "division_idx": ((5,), np.int32),
    }
    np.testing.assert_array_equal(
        inputs["image_mask"], [[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]]
    )
    np.testing.assert_array_equal(inputs["image"][0, 1], np.float32(shot(2)))
    np.testing.assert_array_equal(inputs["image"][4, 2], np.float32(shot(6)))  # 4th shot cut
    assert not inputs["image"][2:4].any() and not inputs["image"][0, 2].any()
    np.testing.assert_array_equal(
        inputs["token_ids"],
        [
            [2, 3, 4, 0, 0, 0],
            [5, 6, 7, 1, 0, 0],  # "slim" is out of vocabulary
            [0] * SEQ,
            [0] * SEQ,
            [2, 1, 0, 0, 0, 0],
        ],
    )
    # Unknown or missing names (Hat, Nobody, Kids, None) are the unknown index 0.
    np.testing.assert_array_equal(inputs["type_idx"], [1, 2, 1, 0, 0])
    np.testing.assert_array_equal(inputs["brand_idx"], [1, 2, 0, 0, 1])
    np.testing.assert_array_equal(inputs["division_idx"], [1, 1, 0, 1, 0])


def test_raw_and_indexed_forms_encode_identically(bundle):
    raw = raw_frame()
    from_raw, from_ids = bundle.encode(raw), bundle.encode(index_frame(raw))
    for name in from_raw:
        np.testing.assert_array_equal(from_raw[name], from_ids[name], err_msg=name)
    # The raw form wins when both are present.
    both = index_frame(raw).assign(text=["dress"] * 5, type=["Trousers"] * 5)
    inputs = bundle.encode(both)
    np.testing.assert_array_equal(inputs["token_ids"][:, 0], [4] * 5)
    np.testing.assert_array_equal(inputs["type_idx"], [2] * 5)


def test_single_embedding_column_and_shot_count(bundle):
    frame = index_frame(raw_frame()).drop(columns="embeddings")
    frame["embedding"] = [shot(1), None, shot(2), None, None]
    inputs = bundle.encode(frame)
    assert inputs["image"].shape == (5, 1, DIM)
    np.testing.assert_array_equal(inputs["image_mask"][:, 0], [1, 0, 1, 0, 0])
    np.testing.assert_array_equal(inputs["image"][2, 0], np.float32(shot(2)))
    # No product has a shot: still one (masked) shot, never a zero-length axis.
    frame["embedding"] = None
    inputs = bundle.encode(frame)
    assert inputs["image"].shape == (5, 1, DIM) and not inputs["image_mask"].any()


def test_product_without_image_gets_finite_probabilities(bundle):
    probabilities = bundle.predict_proba(raw_frame().iloc[[2]])  # a Dress with no shot
    for attribute, probs in probabilities.items():
        assert np.isfinite(probs).all(), attribute
        np.testing.assert_allclose(probs.sum(axis=1), [1.0], rtol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="embeddings"), "'embeddings' or 'embedding'"),
        (lambda f: f.drop(columns="token_ids"), "'text' or 'token_ids'"),
        (lambda f: f.drop(columns="type_idx"), "'type' or 'type_idx'"),
        (lambda f: f.drop(columns="brand_idx"), "'brand' or 'brand_idx'"),
        (
            lambda f: f.assign(vocab_version="v-old"),
            "'v-old' but the model was trained with 'v-abc'",
        ),
        (
            lambda f: f.assign(token_ids=[[2, 3]] + f["token_ids"].tolist()[1:]),
            "token_ids of row 0 have length 2, expected sequence_length=6",
        ),
        (
            lambda f: f.assign(embeddings=[[[1.0] * 5]] + f["embeddings"].tolist()[1:]),
            "row 0 shot 0 has length 5, expected image_dim=4",
        ),
        (
            lambda f: f.assign(type_idx=["Dress"] * 5),
            "type_idx must be an integer index, got 'Dress'",
        ),
    ],
)
def test_bad_inputs_raise_quoting_the_value(bundle, change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        bundle.encode(change(index_frame(raw_frame())))


def test_inconsistent_bundles_are_refused(bundle):
    fields = dict(
        model=bundle.model,
        config=bundle.config,
        attributes=bundle.attributes,
        vocabulary=bundle.vocabulary,
        vocab_version="v",
        sequence_length=SEQ,
        categories=bundle.categories,
        max_shots=2,
    )
    with pytest.raises(ValueError, match="'colour' has 2 classes but its head has 3"):
        AttributeBundle(
            **{
                **fields,
                "attributes": {**bundle.attributes, "colour": AttributeSpec(["a", "b"], {}, [])},
            }
        )
    with pytest.raises(ValueError, match=r"vocabulary id of 'big' must be in \[2, 30\), got 30"):
        AttributeBundle(**{**fields, "vocabulary": {"big": 30}})
    with pytest.raises(ValueError, match=r"categories\['type'\]\['Coat'\] must be in \[1, 3\)"):
        AttributeBundle(**{**fields, "categories": {**bundle.categories, "type": {"Coat": 3}}})
    with pytest.raises(ValueError, match="grouping maps 'teal' to 'green'"):
        AttributeSpec(["red", "blue"], {"teal": "green"}, [])


# -- prediction -----------------------------------------------------------------------------


def test_applicability_masks_probabilities_and_predictions(bundle):
    frame = raw_frame()
    probabilities = bundle.predict_proba(frame)
    assert list(probabilities) == ["colour", "length"] == bundle.attribute_order
    assert bundle.vector_size == 5
    assert probabilities["colour"].shape == (5, 3) and probabilities["length"].shape == (5, 2)
    # colour applies to Dress and Trousers; length to Dress only; Hat and None to neither.
    np.testing.assert_array_equal(
        np.isnan(probabilities["colour"]).all(axis=1), [False, False, False, True, True]
    )
    np.testing.assert_array_equal(
        np.isnan(probabilities["length"]).all(axis=1), [False, True, False, True, True]
    )
    raw = bundle.model(bundle.encode(frame), training=False)
    np.testing.assert_array_equal(probabilities["colour"][:3], np.asarray(raw["colour"])[:3])

    out = bundle.predict(frame)
    assert list(out.columns) == [
        "product_id",
        "attribute",
        "value",
        "confidence",
        "probabilities",
        "applicable",
    ]
    assert out[["product_id", "attribute"]].values.tolist() == [
        [p, a] for p in ["p1", "p2", "p3", "p4", "p5"] for a in ["colour", "length"]
    ]
    np.testing.assert_array_equal(
        out["applicable"], [True, True, True, False, True, True, False, False, False, False]
    )
    for row in out.itertuples():
        if not row.applicable:
            assert row.value is None and math.isnan(row.confidence) and row.probabilities == []
            continue
        i = ["p1", "p2", "p3", "p4", "p5"].index(row.product_id)
        probs = probabilities[row.attribute][i]
        assert row.probabilities == [float(p) for p in probs]
        assert row.value == bundle.attributes[row.attribute].classes[int(np.argmax(probs))]
        assert row.confidence == float(probs.max())


def test_type_index_only_inverts_categories_for_applicability(bundle):
    frame = index_frame(raw_frame())
    probabilities = bundle.predict_proba(frame)
    np.testing.assert_array_equal(
        np.isnan(probabilities["length"]).all(axis=1), [False, True, False, True, True]
    )
    expected = bundle.predict_proba(raw_frame())
    for attribute in probabilities:
        np.testing.assert_array_equal(probabilities[attribute], expected[attribute])


def test_without_product_id_the_index_is_carried(bundle):
    frame = raw_frame().drop(columns="product_id").set_axis([10, 11, 12, 13, 14])
    out = bundle.predict(frame)
    assert out["product_id"].tolist() == [10, 10, 11, 11, 12, 12, 13, 13, 14, 14]


def test_empty_frame_gives_empty_outputs(bundle):
    frame = raw_frame().iloc[:0]
    probabilities = bundle.predict_proba(frame)
    assert probabilities["colour"].shape == (0, 3) and probabilities["length"].shape == (0, 2)
    assert len(bundle.predict(frame)) == 0


# -- persistence ----------------------------------------------------------------------------


def test_save_load_round_trip_is_identical(bundle, tmp_path):
    path = bundle.save(tmp_path / "bundle")
    assert sorted(p.name for p in path.iterdir()) == ["bundle.json", "model.keras"]
    loaded = AttributeBundle.load(path)
    assert loaded.config == bundle.config
    assert loaded.attributes == bundle.attributes
    assert loaded.vocabulary == bundle.vocabulary and loaded.vocab_version == "v-abc"
    assert loaded.categories == bundle.categories and loaded.max_shots == 3
    assert loaded.metadata == bundle.metadata
    frame = raw_frame()
    before, after = bundle.predict_proba(frame), loaded.predict_proba(frame)
    for attribute in before:
        np.testing.assert_array_equal(after[attribute], before[attribute])
    pd.testing.assert_frame_equal(loaded.predict(frame), bundle.predict(frame))


def test_load_refuses_a_folder_without_a_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an attribute bundle"):
        AttributeBundle.load(tmp_path)


# -- MLflow pyfunc --------------------------------------------------------------------------


@pytest.fixture
def tracking(tmp_path):
    import mlflow

    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), list(sys.path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment(
        "bundle-test", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    mlflow.set_experiment(experiment_id=experiment)
    yield mlflow
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])
    sys.path[:] = before[2]  # loading a pyfunc prepends its code path


def test_pyfunc_log_load_predict_equals_bundle(bundle, tracking):
    from models.attributes.pyfunc import load_bundle, log_attribute_model

    mlflow = tracking
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_attribute_model(bundle)
    with mlflow.start_run():
        info = log_attribute_model(bundle, name="model", registered_model_name="atelier-test")
    assert info.registered_model_version == 1

    frame = raw_frame()
    expected = bundle.predict(frame)
    model = mlflow.pyfunc.load_model(info.model_uri)
    got = model.predict(frame)
    pd.testing.assert_frame_equal(got, expected)
    # The feature-table form through the pyfunc gives the very same predictions.
    pd.testing.assert_frame_equal(model.predict(index_frame(frame)), expected)

    for uri in (info.model_uri, "models:/atelier-test/1"):
        loaded = load_bundle(uri)
        assert loaded.attributes == bundle.attributes and loaded.metadata == bundle.metadata
        probs, want = loaded.predict_proba(frame), bundle.predict_proba(frame)
        for attribute in want:
            np.testing.assert_array_equal(probs[attribute], want[attribute])
