"""serving.scoring: hand-computed scores, top-k with exclusions and filters, popularity,
similar products and explanations, in both vector layouts; serving.predictor's history rule,
modes and blend on a fake state; serving.state's run params, holder and online-store retry with
fakes."""

from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest

from models.blend import BlendRule
from models.ranking import customer_vector, recent_items, top_k
from serving.scoring import (
    AttributeTable,
    Candidates,
    UnknownAttributeError,
    exclusion_mask,
    explain,
    filter_mask,
    popularity_scores,
    scores,
    similar,
)

pytestmark = pytest.mark.unit

# Five candidates in 2-d; "e" has no representation (zero vector).
IDS = ("a", "b", "c", "d", "e")
VECTORS = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]

# "dot+bias": 2 match coordinates, then the bias. "c" matches like "a" with another bias; "f"
# has a bias only (scored, like nothing); "e" has no representation.
BIAS_IDS = ("a", "b", "c", "d", "e", "f")
BIAS_VECTORS = [
    [1.0, 0.0, 0.5],
    [0.0, 1.0, 0.0],
    [1.0, 0.0, -2.0],
    [1.0, 1.0, 1.0],
    [0.0, 0.0, 0.0],
    [0.0, 0.0, 3.0],
]


@pytest.fixture
def candidates() -> Candidates:
    return Candidates.build(IDS, VECTORS)


@pytest.fixture
def biased() -> Candidates:
    return Candidates.build(BIAS_IDS, BIAS_VECTORS, "dot+bias")


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


def test_candidates_default_to_dot_and_check_the_layout(candidates):
    assert candidates.layout == "dot"
    with pytest.raises(ValueError, match=r"layout must be one of .*got 'cosine'"):
        Candidates.build(IDS, VECTORS, "cosine")
    with pytest.raises(ValueError, match=r"'dot\+bias' vectors need k >= 1 match.*got 1"):
        Candidates.build(["a"], [[1.0]], "dot+bias")


def test_dot_bias_unit_rows_use_the_match_coordinates_only(biased):
    assert biased.layout == "dot+bias" and biased.k == 3
    # Usable: a non-zero full vector ("f" scores by its bias); unit: the match part only.
    assert biased.usable.tolist() == [True, True, True, True, False, True]
    assert biased.unit.shape == (6, 2)
    np.testing.assert_allclose(biased.unit[[0, 2]], [[1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(biased.unit[3], [2**-0.5, 2**-0.5], rtol=1e-6)
    assert biased.unit[4].tolist() == [0.0, 0.0] and biased.unit[5].tolist() == [0.0, 0.0]


def test_dot_bias_similar_ignores_the_bias(biased):
    # a and c: same match part, biases 0.5 and -2: cosine 1 (the full vectors' cosine is 0).
    rows, sims = similar(biased, 0, 10)
    assert rows.tolist() == [2, 3, 1]  # f (bias only) and e (zero) are nobody's neighbours
    np.testing.assert_allclose(sims, [1.0, 2**-0.5, 0.0], atol=1e-6)
    assert similar(biased, 5, 3)[0].tolist() == []  # a bias-only seed has no neighbours


def test_history_rule_distinct_recent_products_with_a_vector(biased):
    # Most recent first: d twice (counts once), x without a vector (skipped, not counted).
    history = ["d", "x", "a", "d", "b", "c"]
    assert recent_items(history, 2, known=biased.index) == ["d", "a"]
    assert recent_items(history, 3, known=biased.index) == ["d", "a", "b"]
    rows = [biased.index[p] for p in recent_items(history, 3, known=biased.index)]
    vector = customer_vector(biased.vectors[rows], "dot+bias")
    # Mean match of d, a, b: ([1, 1] + [1, 0] + [0, 1]) / 3; the bias slot is 1.
    np.testing.assert_allclose(vector, [2 / 3, 2 / 3, 1.0], rtol=1e-6)
    assert customer_vector([], "dot+bias") is None


def test_dot_bias_customer_vector_ends_with_1_and_scores_match_plus_bias(biased):
    vector = customer_vector([biased.vectors[3], biased.vectors[0]], "dot+bias")  # d, a
    # Mean of [1, 1, 1] and [1, 0, 0.5] is [1, 0.5, 0.75]; the last becomes 1.
    assert vector.tolist() == [1.0, 0.5, 1.0]
    out = scores(biased, vector)
    # match [1, 0.5] . item match + item bias: a 1 + 0.5, b 0.5 + 0, c 1 - 2, d 1.5 + 1, f 0 + 3.
    assert out[[0, 1, 2, 3, 5]].tolist() == [1.5, 0.5, -1.0, 2.5, 3.0]
    assert out[4] == -np.inf


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


class _SlowStore(_FakeStore):
    """A backend that stopped answering (Redis down: redis-py retries with back-off)."""

    delay = 0.0

    def get_online_features(self, features, entity_rows):
        time.sleep(_SlowStore.delay)
        return super().get_online_features(features, entity_rows)


def test_a_read_past_its_deadline_trips_the_breaker_and_one_probe_closes_it():
    from serving.state import OnlineFeatures, OnlineStoreError

    opened = []

    def factory(_settings):
        opened.append(1)
        return _SlowStore()

    _FakeStore.broken, _SlowStore.delay = False, 2.0
    online = OnlineFeatures(None, retry_seconds=3600, factory=factory, timeout_s=0.1)
    t = time.monotonic()
    with pytest.raises(OnlineStoreError, match=r"timed out \(0.1 s\)"):
        online.history("c1")
    assert time.monotonic() - t < 1.0  # the request did not wait for the backend
    with pytest.raises(OnlineStoreError, match=r"unavailable \(no answer in 0.1 s\); next try"):
        online.history("c1")  # the breaker is open: no read at all
    _SlowStore.delay = 0.0
    online.retry_seconds = 0.0
    assert online.history("c1") == ["a", "b"]  # the probe closes it
    assert online.history("c2") == []
    assert len(opened) == 1  # a timeout keeps the store (an error would drop it)


def test_while_one_request_reopens_the_store_the_others_fail_fast():
    import threading

    from serving.state import OnlineFeatures, OnlineStoreError

    opening, release = threading.Event(), threading.Event()

    def slow_factory(_settings):
        opening.set()
        release.wait(30)  # a registry load that takes a while
        return _FakeStore()

    _FakeStore.broken = False
    online = OnlineFeatures(None, retry_seconds=0.0, factory=slow_factory)
    prober = threading.Thread(target=online.history, args=("c1",))
    prober.start()
    assert opening.wait(10)
    t = time.monotonic()
    with pytest.raises(OnlineStoreError, match="being opened by another request"):
        online.history("c2")
    assert time.monotonic() - t < 1.0  # not queued behind the opening
    release.set()
    prober.join(10)
    assert online.history("c1") == ["a", "b"]


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


def test_state_holder_warms_a_new_state_before_anyone_sees_it():
    from serving.state import StateHolder

    seen = []
    holder = StateHolder(None, builder=lambda _s: f"s{len(seen) + 1}")
    holder.warmers.append(lambda new: seen.append((new, holder.state)))
    assert holder.reload("start") == ("s1", None)
    assert holder.reload() == ("s2", "s1")
    # Warmed while the previous state (None, then s1) was still the one served.
    assert seen == [("s1", None), ("s2", "s1")]

    def broken(_new):
        raise RuntimeError("online store down")

    holder.warmers.append(broken)  # a failed warm-up serves the new state cold, not nothing
    assert holder.reload() == ("s3", "s2") and holder.state == "s3"


# -- predictor on a fake state (no Feast: a fake online store) -------------------------------
class _Online:
    """Histories and online vectors; records every vector read."""

    def __init__(self, histories, vectors):
        self.histories, self.held, self.reads = histories, vectors, []

    def history(self, customer_id):
        return self.histories.get(customer_id)

    def vectors(self, ids):
        self.reads.append(list(ids))
        return {p: self.held[p] for p in ids if p in self.held}


def test_customer_vector_reads_exactly_the_chosen_products_once(candidates):
    from serving.predictor import _customer_vector

    # a, b current; d of an older model version (stale); c not materialised online yet.
    online = _Online({}, {"a": ([1.0, 0.0], "m/2"), "b": ([0.0, 1.0], "m/2")})
    online.held["d"] = ([5.0, 5.0], "m/1")
    state = SimpleNamespace(
        online=online, n_recent=2, layout="dot", model_version="m/2", candidates=candidates
    )
    vector, stale = _customer_vector(state, ["a", "b", "c", "d"])
    assert online.reads == [["a", "b"]]
    np.testing.assert_allclose(vector, [0.5, 0.5])
    assert stale == 0
    online.reads.clear()
    # x and y have no vector of the model: skipped unread; a twice counts once. d's stale
    # vector and c's missing one are the candidates' (d [-1, 0], c [1, 1]); only d is stale.
    state.n_recent = 3
    vector, stale = _customer_vector(state, ["x", "a", "y", "a", "d", "c", "b"])
    assert online.reads == [["a", "d", "c"]]
    np.testing.assert_allclose(vector, [1 / 3, 1 / 3], rtol=1e-6)
    assert stale == 1
    online.reads.clear()
    assert _customer_vector(state, ["x", "y", "z"]) == (None, 0)
    assert online.reads == []


# Rates by rank: new products 0.3, 0.2, 0.1; rebuys bought once / more than once.
RULE = BlendRule((0.3, 0.2, 0.1), ((0.25, 0.5), (0.05, 0.15), (0.01, 0.02)))


def _state(biased, rule=RULE):
    """A "dot+bias" state: c1 bought d twice, a, and x (no vector); n_recent 2, so c1's
    vector is [1, 0.5, 1] and scores a 1.5, b 0.5, c -1, d 2.5, f 3 (e none)."""
    colours = ["Red", "Blue", "Red", "Blue", "Red", "Red"]
    attributes = AttributeTable.from_rows(
        BIAS_IDS, BIAS_IDS, ["colour"] * 6, colours, [1.0] * 6, [False] * 6
    )
    held = {p: (v, "m/1") for p, v in zip(BIAS_IDS, BIAS_VECTORS)}
    return SimpleNamespace(
        model_version="m/1",
        n_recent=2,
        layout="dot+bias",
        blend_rule=rule,
        candidates=biased,
        attributes=attributes,
        popularity=popularity_scores(biased, ["b", "b", "c"]),
        catalogue=frozenset(BIAS_IDS),
        online=_Online({"c1": ["d", "a", "d", "x"]}, held),
    )


def _listed(rec):
    return [(i["product_id"], i["score"], i["rank"]) for i in rec.items]


def test_recommend_modes_all_products_and_new_to_customer(biased):
    from serving.predictor import recommend

    state = _state(biased)
    rec = recommend(state, "c1", k=3)
    assert (rec.mode, rec.fallback) == ("all_products", None)
    assert _listed(rec) == [("f", 3.0, 1), ("d", 2.5, 2), ("a", 1.5, 3)]
    rec = recommend(state, "c1", k=3, exclude_purchased=True)
    assert rec.mode == "new_to_customer"
    assert _listed(rec) == [("f", 3.0, 1), ("b", 0.5, 2), ("c", -1.0, 3)]


def test_recommend_blend_ranks_by_the_rule_and_scores_by_the_model(biased):
    from serving.predictor import recommend

    state = _state(biased)
    # Rebuys: d (rank 0, bought twice) 0.5, a (rank 1, once) 0.05; new: f 0.3, b 0.2, c 0.1.
    rec = recommend(state, "c1", k=3, blend=True)
    assert (rec.mode, rec.fallback) == ("blend", None)
    assert _listed(rec) == [("d", 2.5, 1), ("f", 3.0, 2), ("b", 0.5, 3)]
    assert [i["product_id"] for i in recommend(state, "c1", k=6, blend=True).items] == [
        "d", "f", "b", "c", "a"
    ]  # fmt: skip
    # Filters apply to rebuys too: d is Blue, so a is the most recent rebuy (rank 0, 0.25).
    rec = recommend(state, "c1", k=3, blend=True, filters={"colour": ["Red"]})
    assert _listed(rec) == [("f", 3.0, 1), ("a", 1.5, 2), ("c", -1.0, 3)]
    # Beyond the rule's ranks the list goes on in the model's order of new products.
    short = _state(biased, BlendRule((0.3,), ((0.5, 0.6),)))
    assert [i["product_id"] for i in recommend(short, "c1", k=4, blend=True).items] == [
        "d", "f", "b", "c"
    ]  # fmt: skip


def test_recommend_blend_refusals_and_fallback(biased):
    from serving.predictor import NoBlendRuleError, recommend

    with pytest.raises(NoBlendRuleError, match="model m/1 has no blend rule: retrain with"):
        recommend(_state(biased, rule=None), "c1", blend=True)
    with pytest.raises(ValueError, match="cannot exclude purchased products"):
        recommend(_state(biased), "c1", blend=True, exclude_purchased=True)
    # No history: popularity over all products (b 2, c 1, then id order), never a blend.
    rec = recommend(_state(biased), "nobody", k=3, blend=True)
    assert (rec.mode, rec.fallback) == ("all_products", "unknown_customer")
    assert _listed(rec) == [("b", 2.0, 1), ("c", 1.0, 2), ("a", 0.0, 3)]


# -- the champion's training run params ------------------------------------------------------
def test_model_params_read_layout_n_recent_and_blend_rule():
    from serving.state import model_params

    rule = json.dumps(RULE.to_dict())
    params = {
        "vector_layout": "dot+bias",
        "recommender.n_recent": "3",
        "recommender.n_inputs": "9",
        "recommender.blend_rule": rule,
    }
    assert model_params(params, 5) == ("dot+bias", 3, RULE)
    # A run from before the bias and n_recent: "dot", its n_inputs, no rule.
    assert model_params({"recommender.n_inputs": "4"}, 5) == ("dot", 4, None)
    assert model_params({}, 7) == ("dot", 7, None)


def test_model_params_unreadable_values_fall_back_with_warnings(caplog):
    from serving.state import StateError, model_params

    bad = {
        "recommender.n_recent": "five",
        "recommender.n_inputs": "0",
        "recommender.blend_rule": '{"new": [0.1]}',
    }
    with caplog.at_level(logging.WARNING, logger="atelier.serving"):
        assert model_params(bad, 6) == ("dot", 6, None)
    text = caplog.text
    assert "recommender.n_recent='five'" in text and "recommender.n_inputs='0'" in text
    assert "ignoring the training run's recommender.blend_rule" in text
    with pytest.raises(StateError, match=r"vector_layout is 'cosine'"):
        model_params({"vector_layout": "cosine"}, 5)


def test_warm_up_runs_every_request_path_of_the_state(biased):
    from serving.predictor import warm_up

    state = _state(biased)
    warm_up(state, rounds=3)
    # The online store was asked for vectors of candidate histories (the scoring path).
    assert state.online.reads and all(set(r) <= set(BIAS_IDS) for r in state.online.reads)
