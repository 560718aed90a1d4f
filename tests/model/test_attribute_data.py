"""Label hygiene before training: split, hidden labels, applicability, rare values (by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from atelier.settings import AttributeSettings
from training.attributes.data import (
    TrainingSet,
    held_out,
    hide_labels,
    labels_complete,
    prepare_labels,
    stack_shots,
)

pytestmark = pytest.mark.unit


def _set(types, labels, is_test):
    n = len(types)
    return TrainingSet(
        product_ids=np.array([f"p{i:03d}" for i in range(n)], dtype=object),
        inputs={"image": np.zeros((n, 1, 4), np.float32)},
        types=np.array(types, dtype=object),
        labels={a: np.array(v, dtype=object) for a, v in labels.items()},
        is_test=np.array(is_test, bool),
        tfidf=None,
        vocabulary={"a": 2},
        vocab_version="v",
        categories={"type": {"Dress": 1, "Shoe": 2}},
        sequence_length=4,
        max_shots=2,
    )


def test_split_is_a_stable_function_of_the_id():
    ids = [f"p{i}" for i in range(2000)]
    split = held_out(ids, 0.2, seed=7)
    assert 0.17 < split.mean() < 0.23
    # Growing the catalogue does not move existing products across the split.
    grown = held_out([*ids, "new1", "new2"], 0.2, seed=7)
    np.testing.assert_array_equal(grown[:2000], split)
    assert not np.array_equal(held_out(ids, 0.2, seed=8), split)
    with pytest.raises(ValueError, match="got 1.0"):
        held_out(ids, 1.0, seed=7)


def test_stack_shots_pads_and_masks():
    image, mask = stack_shots([[[1.0, 2.0]], [], [[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]], 2, dim=2)
    assert image.shape == (3, 2, 2)
    np.testing.assert_array_equal(mask, [[1, 0], [0, 0], [1, 1]])
    np.testing.assert_array_equal(image[2], [[3, 4], [5, 6]])
    np.testing.assert_array_equal(image[1], 0)
    with pytest.raises(ValueError, match="must have 2 values"):
        stack_shots([[[1.0, 2.0, 3.0]]], 2, dim=2)


def test_hide_labels_hides_the_fraction_of_chosen_rows_only():
    labels = {"colour": np.array(["red"] * 10 + [None] * 2, dtype=object)}
    rows = np.array([True] * 8 + [False] * 4)
    hidden, counts = hide_labels(labels, rows, 0.5, seed=1)
    assert counts == {"colour": 4}
    # Rows outside `rows` (the test split) keep their labels; the input is not modified.
    assert list(hidden["colour"][8:10]) == ["red", "red"]
    assert sum(v is None for v in hidden["colour"][:8]) == 4
    assert sum(v is None for v in labels["colour"]) == 2
    again, _ = hide_labels(labels, rows, 0.5, seed=1)
    assert list(again["colour"]) == list(hidden["colour"])


def test_prepare_labels_hides_groups_and_learns_applicability():
    # 20 dresses labelled with colours (red x 9 train, blue x 6 train, rare green/pink), 10 shoes
    # never labelled for neckline; the last 5 dresses and 2 shoes are test products.
    colour = ["red"] * 9 + ["blue"] * 6 + ["green", "pink"] + ["red", "blue", "teal"] + ["red"] * 10
    neckline = ["v"] * 8 + ["round"] * 7 + ["v", "v"] + ["v", "round", "v"] + [None] * 10
    types = ["Dress"] * 20 + ["Shoe"] * 10
    is_test = [False] * 17 + [True] * 3 + [False] * 8 + [True] * 2
    ts = _set(types, {"colour": colour, "neckline": neckline}, is_test)
    cfg = AttributeSettings(min_value_count=2, applicability_min_fraction=0.3, hide_labels="never")
    plan = prepare_labels(ts, cfg, seed=1)

    # green + pink (1 each) pool to 2 >= min count: grouped into "other".
    assert plan.classes["colour"] == ["blue", "other", "red"]
    assert plan.report["attributes"]["colour"]["grouped"] == {"green": 1, "pink": 1}
    assert plan.grouping["colour"]["green"] == "other"
    assert plan.applies_to["neckline"] == ["Dress"]
    assert plan.applies_to["colour"] == ["Dress", "Shoe"]
    # Shoes never reach the neckline head, in training or testing.
    assert (plan.train["neckline"][20:] == -1).all() and (plan.test["neckline"][20:] == -1).all()
    # Test labels are encoded only on test rows; "teal" was never seen: left out and counted.
    assert list(plan.test["colour"][17:20]) == [2, 0, -1]
    assert (plan.test["colour"][:17] == -1).all()
    assert plan.report["attributes"]["colour"]["test_unscorable"] == 1
    assert list(plan.train["colour"][:3]) == [2, 2, 2] and (plan.train["colour"][17:20] == -1).all()
    assert plan.report["hidden_fraction"] == 0.0


def test_complete_labels_are_hidden_on_the_training_split_only():
    types = ["Dress"] * 40
    colour = ["red", "blue"] * 20
    is_test = [i % 4 == 0 for i in range(40)]
    ts = _set(types, {"colour": colour}, is_test)
    assert labels_complete(ts.labels)
    cfg = AttributeSettings(min_value_count=1, hide_label_fraction=0.7, hide_labels="auto")
    plan = prepare_labels(ts, cfg, seed=3)
    assert plan.report["hidden_fraction"] == 0.7
    assert plan.report["attributes"]["colour"]["hidden"] == 21  # round(0.7 * 30)
    assert (plan.train["colour"] >= 0).sum() == 9
    assert (plan.test["colour"] >= 0).sum() == 10  # test labels untouched


def test_an_attribute_without_two_frequent_values_gets_no_head():
    ts = _set(
        ["Dress"] * 6, {"colour": ["red"] * 5 + ["blue"], "size": ["s", "m"] * 3}, [False] * 6
    )
    plan = prepare_labels(ts, AttributeSettings(min_value_count=3, hide_labels="never"), seed=0)
    assert "colour" not in plan.classes and "colour" in plan.report["skipped"]
    assert plan.classes["size"] == ["m", "s"]
