"""Pure text helpers: normalisation, ids, TF-IDF terms and vectors, vocabulary versions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spark_jobs.product_features import check_windows, contract_windows
from spark_jobs.text_features import (
    assign_ids,
    normalise,
    tfidf_terms,
    tfidf_vector,
    token_ids,
    vocabulary_version,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Slim-fit T-shirt in organic cotton.", ["slimfit", "tshirt", "in", "organic", "cotton"]),
        ("Women's  JEANS, 3/4 length", ["womens", "jeans", "length"]),  # 1-char 3 and 4 dropped
        ("ＣＯＴＴＯＮ ﬁne café", ["cotton", "fine", "café"]),  # NFKC: full-width, ligature
        ("cotton/linen - blend_mix", ["cotton", "linen", "blend", "mix"]),
        ("Größe 38 — Ärmel", ["größe", "38", "ärmel"]),
        (None, []),
        ("", []),
        ("a b c !", []),
    ],
)
def test_normalise(text, tokens):
    assert normalise(text) == tokens


def test_ids_reserve_padding_and_oov():
    assert assign_ids([("dress", 5, 3), ("blue", 2, 2)]) == [("dress", 2, 5, 3), ("blue", 3, 2, 2)]
    ids = {"dress": 2, "blue": 3}
    assert token_ids(["blue", "silk", "dress"], ids, 5) == [3, 1, 2, 0, 0]
    assert token_ids(["blue", "silk", "dress"], ids, 2) == [3, 1]
    assert token_ids([], ids, 3) == [0, 0, 0]


def test_tfidf_terms_pick_the_highest_document_frequency_then_lowest_id():
    vocab = [("a", 2, 5), ("b", 3, 7), ("c", 4, 5), ("d", 5, 1)]  # (token, token_id, df)
    terms = tfidf_terms(vocab, n_documents=9, dim=3)
    assert {t: j for t, (j, _) in terms.items()} == {"b": 0, "a": 1, "c": 2}
    assert terms["b"][1] == pytest.approx(math.log(10 / 8) + 1)
    assert terms["a"][1] == pytest.approx(math.log(10 / 6) + 1)


def test_tfidf_vector_is_l2_normalised_float32():
    terms = {"x": (0, 2.0), "y": (2, 1.0)}
    v = tfidf_vector(["x", "y", "y", "zzz"], terms, 4)
    assert v.dtype == np.float32
    assert v.tolist() == pytest.approx([2 / math.sqrt(8), 0.0, 2 / math.sqrt(8), 0.0])
    assert tfidf_vector(["zzz"], terms, 4).tolist() == [0.0] * 4


def test_vocabulary_version_is_a_function_of_corpus_and_parameters():
    entries = [("dress", 3, 2), ("blue", 2, 1)]
    v = vocabulary_version(entries, 2, 10, 3)
    assert v == vocabulary_version(list(reversed(entries)), 2, 10, 3)  # order-free
    assert len(v) == 12 and int(v, 16) >= 0
    assert v != vocabulary_version([("dress", 3, 2), ("blue", 3, 1)], 2, 10, 3)
    assert v != vocabulary_version(entries, 1, 10, 3)
    assert v != vocabulary_version(entries, 2, 10, 4)


def test_windows_are_checked_against_the_contract():
    assert contract_windows() == (7, 30, 90)
    assert check_windows([90, 7, 30]) == (7, 30, 90)
    with pytest.raises(ValueError, match=r"\[7, 30\]"):
        check_windows([7, 30])
