"""Feature-table gates: embedding length and finiteness, token ids inside the vocabulary."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from atelier.contracts import contract
from expectations.gate import validate_table
from expectations.suites import ListCheck

pytestmark = pytest.mark.data

T0 = datetime(2020, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def _embeddings(vectors):
    n = len(vectors)
    return pa.table(
        {
            "product_id": [f"p{i}" for i in range(n)],
            "shot": [0] * n,
            "content_hash": ["h"] * n,
            "weights": ["random:1"] * n,
            "input_size": ["96x64"] * n,
            "embedding": vectors,
            "event_timestamp": [T0] * n,
            "created_timestamp": [NOW] * n,
        }
    ).cast(contract("image_embeddings").schema())


EMB = {"embedding": ListCheck(length=512, finite=True)}


def test_good_embeddings_pass(settings):
    r = validate_table(
        settings,
        "image_embeddings",
        _embeddings([[0.5] * 512, [1.0] * 512]),
        row_count_band=(1, 10),
        now=NOW,
        list_checks=EMB,
    )
    assert r.success, r.failures


def test_wrong_length_and_nan_fail_with_the_column_named(settings):
    bad = [[0.5] * 512, [0.5] * 511, [0.5] * 511 + [float("nan")], [float("inf")] * 512]
    r = validate_table(
        settings,
        "image_embeddings",
        _embeddings(bad),
        row_count_band=(1, 10),
        now=NOW,
        list_checks=EMB,
    )
    assert not r.success
    text = "\n".join(r.failures)
    assert "embedding__length" in text and "2 unexpected" in text
    assert "embedding__non_finite" in text


def test_token_ids_outside_the_vocabulary_fail(settings):
    spec = contract("text_features")
    table = pa.table(
        {
            "product_id": ["a", "b"],
            "vocab_version": ["v1", "v1"],
            "token_ids": [[2, 5, 0, 0], [2, 99, 1, 0]],
            "n_tokens": [2, 3],
            "tfidf": [[0.6, 0.8], [1.0, 0.0]],
            "event_timestamp": [T0, T0],
            "created_timestamp": [NOW, NOW],
        }
    ).cast(spec.schema())
    checks = {"token_ids": ListCheck(length=4, min=0, max=9), "tfidf": ListCheck(finite=True)}
    r = validate_table(
        settings, "text_features", table, row_count_band=(1, 10), now=NOW, list_checks=checks
    )
    assert [f.split(" failed")[0] for f in r.failures] == [
        "text_features: expect_column_values_to_be_between(token_ids__max)"
    ]
    assert "99" in r.failures[0]
