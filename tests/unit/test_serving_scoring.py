"""serving.scoring: hand-computed scores, top-k with exclusions and filters, popularity,
similar products and explanations; serving.state's holder and online-store retry with fakes."""

from __future__ import annotations

import numpy as np
import pytest

from serving.scoring import (
    AttributeTable,
    Candidates,
    UnknownAttributeError,
    customer_vector,
    exclusion_mask,
    explain,
    filter_mask,
    popularity_scores,
    scores,
    similar,
    top_k,
)

pytestmark = pytest.mark.unit

# Five candidates in 2-d; "e" has no representation (zero vector).
IDS = ("a", "b", "c", "d", "e")
VECTORS = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]


@pytest.fixture
def candidates() -> Candidates:
    return Candidates.build(IDS, VECTORS)


@pytest.fixture
def attributes() -> AttributeTable:
    # "z" is a product without a vector (bought once, no longer a candidate).
    rows = [
        ("a", "pattern", "Stripe", 1.0, False),
        ("b", "pattern", "Dot", 0.7, True),
        ("c", "pattern", "Stripe", 0.9, True),
        ("d", "pattern", "Solid", 1.0, False),
        ("a", "colour", "Red", 1.0, False),
        ("c", "colour", "Blue", 1.0, False),
        ("d", "colour", "Red", 0.6, True),
        ("z", "pattern", "Stripe", 1.0, False),
        ("z", "colour", "Red", 1.0, False),
    ]
    return AttributeTable.from_rows(IDS, *zip(*rows))


def test_candidates_build_unit_rows_and_usable(candidates):
    assert candidates.k == 2 and len(candidates) == 5
    assert candidates.index["c"] == 2
    assert candidates.usable.tolist() == [True, True, True, True, False]
    np.testing.assert_allclose(candidates.unit[2], [2**-0.5, 2**-0.5], rtol=1e-6)
    assert candidates.unit[4].tolist() == [0.0, 0.0]
    assert not candidates.vectors.flags.writeable


def test_candidates_reject_bad_shapes_and_duplicates():
    with pytest.raises(ValueError, match=r"must be \(2, k\).*\(3, 2\)"):
        Candidates.build(["a", "b"], np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        Candidates.build(["a", "a"], np.ones((2, 2)))


def test_customer_vector_is_mean_of_first_n_recent_with_a_vector():
    history = [None, [1.0, 3.0], [3.0, 5.0], None, [100.0, 100.0]]
    np.testing.assert_allclose(customer_vector(history, 2), [2.0, 4.0])
    np.testing.assert_allclose(customer_vector(history, 5), [104 / 3, 36.0], rtol=1e-6)
    assert customer_vector([None, None], 5) is None
    assert customer_vector([], 5) is None
    with pytest.raises(ValueError, match="n_recent must be >= 1, got 0"):
        customer_vector(history, 0)


def test_scores_are_dot_products_and_minus_inf_for_zero_vectors(candidates):
    out = scores(candidates, np.array([2.0, 1.0], np.float32))
    assert out[:4].tolist() == [2.0, 1.0, 3.0, -2.0]
    assert out[4] == -np.inf
    with pytest.raises(ValueError, match=r"shape \(2,\), got \(3,\)"):
        scores(candidates, np.zeros(3))


def test_top_k_exclusions_order_and_short_lists(candidates):
    s = scores(candidates, np.array([2.0, 1.0], np.float32))  # a 2, b 1, c 3, d -2, e -inf
    assert top_k(s, 3).tolist() == [2, 0, 1]
    allowed = exclusion_mask(candidates, ["c", "unknown"])
    assert allowed.tolist() == [True, True, False, True, True]
    assert top_k(s, 3, allowed).tolist() == [0, 1, 3]
    # k beyond the finite allowed rows: the -inf product is never returned.
    assert top_k(s, 10, allowed).tolist() == [0, 1, 3]
    assert top_k(s, 10).tolist() == [2, 0, 1, 3]
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        top_k(s, 0)


def test_top_k_ties_go_to_the_lower_row_at_the_cut_and_in_order():
    s = np.array([1.0, 5.0, 3.0, 5.0, 3.0, 3.0], np.float32)
    assert top_k(s, 2).tolist() == [1, 3]
    assert top_k(s, 3).tolist() == [1, 3, 2]
    assert top_k(s, 4).tolist() == [1, 3, 2, 4]
    assert top_k(s, 4, np.array([True, True, False, True, True, True])).tolist() == [1, 3, 4, 5]
    # Same answer whatever argpartition does internally: many equal scores.
    many = np.zeros(1000, np.float32)
    assert top_k(many, 7).tolist() == list(range(7))


def test_popularity_counts_and_fallback_ranking_with_masks(candidates, attributes):
    counts = popularity_scores(candidates, ["b", "d", "b", "x", "d", "b", "e"])
    assert counts.tolist() == [0.0, 3.0, 0.0, 2.0, 1.0]
    assert top_k(counts, 3).tolist() == [1, 3, 4]
    # Popularity does not need vectors; unbought products follow in id order.
    assert top_k(counts, 5).tolist() == [1, 3, 4, 0, 2]
    allowed = exclusion_mask(candidates, ["b"]) & filter_mask(
        attributes, len(candidates), {"colour": ["Red"]}
    )
    assert top_k(counts, 5, allowed).tolist() == [3, 0]


def test_filter_mask_known_or_predicted_values_and_and_across_attributes(attributes):
    assert filter_mask(attributes, 5, {}).tolist() == [True] * 5
    stripe = filter_mask(attributes, 5, {"pattern": ["Stripe"]})
    assert stripe.tolist() == [True, False, True, False, False]  # c's Stripe is predicted
    both = filter_mask(attributes, 5, {"pattern": ["Stripe", "Solid"], "colour": ["Red"]})
    assert both.tolist() == [True, False, False, True, False]
    assert filter_mask(attributes, 5, {"pattern": ["Plaid"]}).tolist() == [False] * 5
    with pytest.raises(UnknownAttributeError, match=r"unknown filter attribute 'size'.*colour"):
        filter_mask(attributes, 5, {"size": ["M"]})
    with pytest.raises(ValueError, match="filter 'colour' lists no values"):
        filter_mask(attributes, 5, {"colour": []})


def test_attribute_table_rows_follow_candidates_then_others(attributes):
    assert attributes.product_ids == ("a", "b", "c", "d", "e", "z")
    assert attributes.names == ("colour", "pattern")
    assert attributes.of("c") == [
        {"attribute": "colour", "value": "Blue", "source": "label", "confidence": 1.0},
        {
            "attribute": "pattern",
            "value": "Stripe",
            "source": "predicted",
            "confidence": pytest.approx(0.9),
        },
    ]
    assert attributes.of("e") == [] and attributes.of("nope") == []


def test_explain_counts_shared_values_with_distinct_history_products(attributes):
    # History: a twice (repeat purchase), z, d. Shared with item c: Stripe (a, z) but not Blue.
    out = explain(attributes, [2, 0, 4], ["a", "z", "a", "d", "unknown"])
    assert out[0] == [
        {
            "attribute": "pattern",
            "value": "Stripe",
            "count": 2,
            "predicted": True,
            "text": "Stripe, like 2 items you bought",
        }
    ]
    # Item a: Red like a, z, d (3), Stripe like a, z (2).
    assert [(e["value"], e["count"]) for e in out[1]] == [("Red", 3), ("Stripe", 2)]
    assert out[1][0]["text"] == "Red, like 3 items you bought"
    assert out[2] == []  # e has no attributes
    one = explain(attributes, [1], ["b"])[0]
    assert one[0]["text"] == "Dot, like 1 item you bought"
    assert explain(attributes, [0], []) == [[]]


def test_explain_skips_the_grouped_rare_value():
    table = AttributeTable.from_rows(
        ["a", "b"],
        ["a", "b", "a", "b"],
        ["colour", "colour", "pattern", "pattern"],
        ["other", "other", "Dot", "Dot"],
        [0.5, 0.5, 1.0, 1.0],
        [True, True, False, False],
    )
    assert [e["value"] for e in explain(table, [0], ["b"])[0]] == ["Dot"]
    assert [e["value"] for e in explain(table, [0], ["b"], skip_values=())[0]] == ["other", "Dot"]


def test_similar_is_cosine_without_seed_and_zero_vectors(candidates):
    rows, sims = similar(candidates, 0, 10)  # seed a = (1, 0)
    assert rows.tolist() == [2, 1, 3]
    np.testing.assert_allclose(sims, [2**-0.5, 0.0, -1.0], atol=1e-6)
    assert similar(candidates, 2, 2)[0].tolist() == [0, 1]  # a and b tie: lower row first
    assert similar(candidates, 4, 3)[0].tolist() == []  # a zero seed has no neighbours
    with pytest.raises(ValueError, match=r"row must be in \[0, 5\), got 7"):
        similar(candidates, 7, 3)


# -- state holder and online store wrapper (no I/O: fake builder and fake Feast store) -------
class _Response:
    def __init__(self, data):
        self.data = data

    def to_dict(self):
        return self.data


class _FakeStore:
    """Answers like Feast's get_online_features, or raises while `broken`."""

    broken = False

    def get_online_features(self, features, entity_rows):
        if _FakeStore.broken:
            raise OSError("disk gone")
        if features == ["customer_history:history"]:
            known = {"c1": ["a", "b"], "c2": []}
            return _Response({"history": [known.get(r["customer_id"]) for r in entity_rows]})
        ids = [r["product_id"] for r in entity_rows]
        return _Response(
            {
                "vector": [[1.0, 0.0] if p != "x" else None for p in ids],
                "model_version": ["m/1" if p != "x" else None for p in ids],
            }
        )


def test_online_features_fall_over_then_reopen_after_retry_seconds():
    from serving.state import OnlineFeatures, OnlineStoreError

    opened = []

    def factory(_settings):
        opened.append(1)
        return _FakeStore()

    _FakeStore.broken = False
    online = OnlineFeatures(None, retry_seconds=3600, factory=factory)
    assert online.history("c1") == ["a", "b"]
    assert online.history("c2") == [] and online.history("nobody") is None
    assert online.vectors(["a", "x", "a"]) == {"a": ([1.0, 0.0], "m/1")}
    assert len(opened) == 1  # one store for every request
    _FakeStore.broken = True
    with pytest.raises(OnlineStoreError, match="OSError: disk gone"):
        online.history("c1")
    _FakeStore.broken = False
    with pytest.raises(OnlineStoreError, match=r"unavailable \(OSError: disk gone\); next try"):
        online.history("c1")  # within retry_seconds: no new store, no Feast call
    assert len(opened) == 1
    online.retry_seconds = 0.0
    assert online.history("c1") == ["a", "b"]
    assert len(opened) == 2


def test_state_holder_swaps_whole_states_and_keeps_the_old_one_on_failure():
    from serving.state import StateHolder

    built = iter(["s1", "s2", RuntimeError("no vectors of m/3"), "s4"])

    def builder(_settings):
        item = next(built)
        if isinstance(item, Exception):
            raise item
        return item

    heard = []
    holder = StateHolder(None, builder=builder)
    holder.on_swap.append(lambda new, prev, trigger: heard.append((new, prev, trigger)))
    holder.on_failure.append(lambda e, trigger: heard.append((str(e), trigger)))
    assert holder.state is None
    assert holder.reload("start") == ("s1", None)
    assert holder.reload() == ("s2", "s1")
    with pytest.raises(RuntimeError, match="no vectors of m/3"):
        holder.reload("poll")
    assert holder.state == "s2" and holder.error == "RuntimeError: no vectors of m/3"
    assert holder.reload() == ("s4", "s2") and holder.error is None
    assert heard == [
        ("s1", None, "start"),
        ("s2", "s1", "admin"),
        ("no vectors of m/3", "poll"),
        ("s4", "s2", "admin"),
    ]
    with pytest.raises(ValueError, match="poll interval must be > 0 seconds, got 0"):
        holder.start_polling(0)


def test_customer_vector_reads_the_most_recent_products_only_until_n_recent_found(candidates):
    from types import SimpleNamespace

    from serving.predictor import _customer_vector

    class Online:
        """Vectors of a, b, c, d (d of an older model version: stale); none for x, y."""

        def __init__(self):
            self.reads = []

        def vectors(self, ids):
            self.reads.append(list(ids))
            held = {"a": ([1.0, 0.0], "m/2"), "b": ([0.0, 1.0], "m/2")}
            held |= {"c": ([1.0, 1.0], "m/2"), "d": ([5.0, 5.0], "m/1")}
            return {p: held[p] for p in ids if p in held}

    online = Online()
    state = SimpleNamespace(online=online, n_recent=2, model_version="m/2", candidates=candidates)
    vector, stale = _customer_vector(state, ["a", "b", "c", "d"])
    assert online.reads == [["a", "b"]]  # two found in the first read: nothing more is read
    np.testing.assert_allclose(vector, [0.5, 0.5])
    assert stale == 0
    online.reads.clear()
    # x and y have no vector: the next two are read; d's stale vector is replaced by the
    # candidates' (row "d": [-1, 0], unit length).
    vector, stale = _customer_vector(state, ["x", "y", "d", "c", "a"])
    assert online.reads == [["x", "y"], ["d", "c"]]
    np.testing.assert_allclose(vector, np.mean([[-1.0, 0.0], [1.0, 1.0]], axis=0), rtol=1e-6)
    assert stale == 1
    online.reads.clear()
    assert _customer_vector(state, ["x", "y", "z"]) == (None, 0)
    assert online.reads == [["x", "y"], ["z"]]
