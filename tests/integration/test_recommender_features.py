"""The recommender's content features from Feast, point in time, over small Delta tables.

The tables follow `atelier.contracts` and are written straight into a temporary lake (no
Spark): Feast's duckdb offline store joins them as of the end of the training window.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from atelier import feast_store
from atelier.contracts import contract
from atelier.lake import Lake
from models.recommender.features import (
    ATTRIBUTE_REFS,
    FEATURE_SERVICE,
    PRODUCT_REFS,
    content_inputs,
    load_content_features,
)

pytestmark = [pytest.mark.integration]

T0 = datetime(2020, 1, 1, tzinfo=UTC)
AS_OF = datetime(2020, 5, 31, tzinfo=UTC)
LATER = AS_OF + timedelta(days=10)  # p2 is launched after the training window


def table(name: str, columns: dict) -> pa.Table:
    return pa.table(columns).cast(contract(name).schema())


def stamps(times) -> dict:
    times = list(times)
    return {"event_timestamp": list(times), "created_timestamp": list(times)}


def product_features(rows) -> pa.Table:
    """rows: (product_id, event_timestamp, first_seen, type_idx, log_price, popularity)."""
    return table(
        "product_features",
        {
            "product_id": [r[0] for r in rows],
            "type_idx": [r[3] for r in rows],
            "brand_idx": [1] * len(rows),
            "division_idx": [1] * len(rows),
            "log_price": [r[4] for r in rows],
            "first_seen": [r[2] for r in rows],
            "recency_days": [(r[1] - r[2]).days for r in rows],
            "popularity_7d": [r[5] for r in rows],
            "popularity_30d": [2 * r[5] for r in rows],
            "popularity_90d": [3 * r[5] for r in rows],
            **stamps(r[1] for r in rows),
        },
    )


@pytest.fixture
def settings(tmp_path):
    from atelier.settings import Settings

    return Settings(workdir=tmp_path / "work", gate={"build_data_docs": False})


@pytest.fixture
def lake(settings) -> Lake:
    lake = Lake(settings)
    ids = ["p0", "p1", "p2"]
    first = {"p0": T0, "p1": T0 + timedelta(days=30), "p2": LATER}
    lake.merge(
        "product_features",
        product_features(
            [
                ("p0", T0, T0, 2, 0.5, 1),
                ("p0", AS_OF + timedelta(days=5), T0, 2, 0.5, 9),  # after as_of: not seen
                ("p1", first["p1"], first["p1"], 1, None, 0),
                ("p2", LATER, LATER, 3, -1.0, 4),  # sold right away, after the window
            ]
        ),
    )
    lake.merge(
        "text_features",
        table(
            "text_features",
            {
                "product_id": ids,
                "vocab_version": ["v1"] * 3,
                "token_ids": [[2, 0], [3, 0], [4, 0]],
                "n_tokens": [1] * 3,
                "tfidf": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                **stamps(first[p] for p in ids),
            },
        ),
    )
    vectors = np.random.default_rng(0).normal(size=(2, 512)).astype(np.float32)
    lake.merge(
        "image_embeddings",
        table(
            "image_embeddings",
            {
                "product_id": ["p0", "p2"],  # p1 has no image
                "shot": [0, 0],
                "content_hash": ["h0", "h2"],
                "weights": ["random:1"] * 2,
                "input_size": ["64x64"] * 2,
                "embedding": [v.tolist() for v in vectors],
                **stamps([T0, LATER]),
            },
        ),
    )
    lake.merge(
        "category_index",
        table(
            "category_index",
            {"column": ["type"] * 5, "value": list("abcde"), "idx": [1, 2, 3, 4, 5]},
        ),
    )
    feast_store.apply(settings)
    lake.vectors = vectors
    return lake


def test_the_refs_are_the_recommender_services_product_features(settings):
    service = feast_store.definitions(settings)[FEATURE_SERVICE]
    served = {f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features}
    assert set(PRODUCT_REFS) <= served
    assert not {r for r in served if r.startswith("customer_history:")} & set(PRODUCT_REFS)


def test_content_features_are_point_in_time_and_standardised(settings, lake):
    features = load_content_features(settings, AS_OF)
    assert list(features.product_ids) == ["p0", "p1", "p2"]  # the catalogue: product_features
    assert features.index == {"p0": 0, "p1": 1, "p2": 2}
    assert features.block_dims == {
        "image": 512,
        "popularity": 3,
        "price": 1,
        "recency": 1,
        "tfidf": 3,
    }
    assert features.categorical_dims == {"type": 6}  # category index 1..5, plus 0
    assert "attributes" not in features.blocks and features.attribute_model_versions == ()
    b = features.blocks
    # p0: the row of T0, not the one 5 days after as_of; recency in years since first_seen.
    np.testing.assert_allclose(b["popularity"][0], np.log1p([1, 2, 3]), rtol=1e-6)
    np.testing.assert_allclose(b["recency"][:, 0], [(AS_OF - T0).days / 365.25, 121 / 365.25, 0])
    np.testing.assert_allclose(b["price"][:, 0], [0.5, 0.0, 0.0])  # p1 has no price
    np.testing.assert_array_equal(b["type"], [2, 1, 0])
    np.testing.assert_allclose(b["image"][0], lake.vectors[0])
    assert not b["image"][1].any()  # p1: no image
    np.testing.assert_array_equal(b["tfidf"], [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    # p2 does not exist yet at as_of: nothing at all.
    assert not b["image"][2].any() and not b["popularity"][2].any()

    inputs = content_inputs(features, [2, 0], {"p0": 1})
    np.testing.assert_array_equal(inputs["item_idx"], [0, 1])
    np.testing.assert_array_equal(inputs["type"], [0, 2])


def test_a_product_launched_after_the_window_gets_its_content_without_its_sales(settings, lake):
    features = load_content_features(
        settings, AS_OF, product_ids=["p2", "p0"], content_as_of=LATER + timedelta(days=20)
    )
    assert list(features.product_ids) == ["p0", "p2"]
    b = features.blocks
    row = features.index["p2"]
    assert b["type"][row] == 3 and b["price"][row, 0] == -1.0
    np.testing.assert_allclose(b["image"][row], lake.vectors[1])
    np.testing.assert_array_equal(b["tfidf"][row], [0, 0, 1])
    # Its sales after as_of never leak in; it is brand new at as_of.
    assert not b["popularity"][row].any() and b["recency"][row, 0] == 0.0
    # p0's popularity is still as of as_of (its later row has 9 sales).
    np.testing.assert_allclose(b["popularity"][features.index["p0"]], np.log1p([1, 2, 3]))
    with pytest.raises(ValueError, match="must not be before as_of"):
        load_content_features(settings, AS_OF, content_as_of=AS_OF - timedelta(days=1))


def test_predicted_attributes_are_a_block_once_their_table_exists(settings, lake):
    lake.merge(
        "attribute_vectors",
        table(
            "attribute_vectors",
            {
                "product_id": ["p0", "p1"],
                "attribute_vector": [[1.0, 0.0, 0.25, 0.75], [0.0, 1.0, 0.5, 0.5]],
                "attribute_values": [["x", "y"], ["z", "y"]],
                "model_version": ["atelier-attributes/3"] * 2,
                **stamps([T0, T0]),
            },
        ),
    )
    feast_store.apply(settings)
    features = load_content_features(settings, AS_OF)
    assert set(ATTRIBUTE_REFS) <= set(features.feature_refs)
    assert features.block_dims["attributes"] == 4
    assert features.attribute_model_versions == ("atelier-attributes/3",)
    np.testing.assert_allclose(
        features.blocks["attributes"], [[1, 0, 0.25, 0.75], [0, 1, 0.5, 0.5], [0, 0, 0, 0]]
    )
    assert math.isclose(float(features.blocks["recency"][0, 0]), 151 / 365.25, rel_tol=1e-6)
