"""Text and metadata feature jobs on hand-made lake tables: values, point in time, idempotence."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from atelier.contracts import contract
from atelier.lake import Lake

pytestmark = [pytest.mark.spark, pytest.mark.integration]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TABLES = ("vocabulary", "text_features", "category_index", "product_features", "customer_history")


def T(day: int, hour: int = 0, month: int = 1) -> datetime:
    return datetime(2024, month, day, hour, tzinfo=UTC)


def _product(
    pid,
    type_="Dress",
    brand="Xeno",
    division=None,
    title=None,
    description=None,
    price=None,
    first_seen=None,
):
    return dict(
        product_id=pid,
        type=type_,
        brand=brand,
        division=division,
        title=title,
        description=description,
        price=price,
        first_seen=first_seen,
        source="test",
    )


def _write(lake: Lake, table: str, rows: list[dict]) -> None:
    lake.merge(table, pa.Table.from_pylist(rows, schema=contract(table).schema()))


def _rows(lake: Lake, table: str, key: str) -> dict:
    return {r[key]: r for r in lake.read_arrow(table).to_pylist()}


def _versions(lake: Lake) -> dict:
    return {t: lake.version(t) for t in TABLES}


# ---------------------------------------------------------------------------------------------
# text_features
# ---------------------------------------------------------------------------------------------
def test_text_features_vocabulary_sequences_tfidf_and_reruns(spark, settings):
    from spark_jobs.text_features import run_text_features, vocabulary_version

    settings = settings.model_copy(
        update={
            "text": settings.text.model_copy(
                update=dict(min_count=2, max_vocab=10, sequence_length=4, tfidf_dim=8)
            )
        }
    )
    lake = Lake(settings)
    _write(
        lake,
        "products",
        [
            # red dress red cotton dress ("A" and "." dropped)
            _product("p1", title="Red Dress", description="A red cotton dress.", first_seen=T(2)),
            # blue dress blue denim
            _product("p2", title="Blue Dress", description="Blue denim!"),
            # NFKC turns the full-width letters into ASCII; the in-word hyphen joins
            _product("p3", title="Ｔ-shirt", first_seen=T(1, 12, month=2)),
        ],
    )
    now1 = datetime(2024, 6, 1, tzinfo=UTC)
    rep = run_text_features(settings, spark, now=now1)

    # counts: dress 3, blue 2, red 2, cotton/denim/tshirt 1 -> below min_count.
    # ids by count desc then token asc, from 2; df = products holding the token.
    v1 = vocabulary_version([("dress", 3, 2), ("blue", 2, 1), ("red", 2, 1)], 2, 10, 3)
    assert rep["vocab_version"] == v1 and len(v1) == 12
    vocab = {r["token"]: r for r in lake.read_arrow("vocabulary").to_pylist()}
    assert {
        t: (r["version"], r["token_id"], r["count"], r["document_frequency"])
        for t, r in vocab.items()
    } == {
        "dress": (v1, 2, 3, 2),
        "blue": (v1, 3, 2, 1),
        "red": (v1, 4, 2, 1),
    }

    feats = _rows(lake, "text_features", "product_id")
    # truncated to 4; cotton is out of vocabulary (1); padding is 0
    assert feats["p1"]["token_ids"] == [4, 2, 4, 1] and feats["p1"]["n_tokens"] == 5
    assert feats["p2"]["token_ids"] == [3, 2, 3, 1] and feats["p2"]["n_tokens"] == 4
    assert feats["p3"]["token_ids"] == [1, 0, 0, 0] and feats["p3"]["n_tokens"] == 1

    # TF-IDF dims: dress (df 2), blue (df 1, id 3), red (df 1, id 4); N = 3 products.
    idf_dress = math.log(4 / 3) + 1
    idf_one = math.log(4 / 2) + 1
    p1 = [2 * idf_dress, 0.0, 2 * idf_one]  # dress x2, red x2 (cotton is not a term)
    p2 = [idf_dress, 2 * idf_one, 0.0]  # dress x1, blue x2
    for pid, raw in (("p1", p1), ("p2", p2)):
        norm = math.sqrt(sum(x * x for x in raw))
        assert feats[pid]["tfidf"] == pytest.approx([x / norm for x in raw] + [0.0] * 5, abs=1e-6)
    assert feats["p1"]["tfidf"][0] == pytest.approx(0.60534, abs=1e-5)
    assert feats["p3"]["tfidf"] == [0.0] * 8  # no term: zeros, not NaN

    assert feats["p1"]["event_timestamp"] == T(2)
    assert feats["p2"]["event_timestamp"] == EPOCH  # never seen: holds from the epoch
    assert feats["p3"]["event_timestamp"] == T(1, 12, month=2)
    assert {r["vocab_version"] for r in feats.values()} == {v1}
    assert {r["created_timestamp"] for r in feats.values()} == {now1}

    # Rerun on the same corpus: same version, nothing written, rows keep their stamp.
    before = _versions(lake)
    rep = run_text_features(settings, spark, now=now1 + timedelta(days=1))
    assert rep["vocab_version"] == v1
    assert rep["vocabulary"]["new_version"] is False
    assert rep["text_features"]["written"] == 0
    assert _versions(lake) == before
    assert _rows(lake, "text_features", "product_id") == feats

    # A new product changes the corpus: a new version, and every product is re-encoded.
    _write(lake, "products", [_product("p4", title="Red skirt", description="Cotton skirt")])
    now3 = now1 + timedelta(days=2)
    rep = run_text_features(settings, spark, now=now3)
    v2 = rep["vocab_version"]
    assert v2 != v1 and rep["vocabulary"]["new_version"] is True
    vocab = lake.read_arrow("vocabulary").to_pylist()
    assert sorted((r["token"], r["token_id"]) for r in vocab if r["version"] == v2) == [
        ("blue", 4),
        ("cotton", 5),
        ("dress", 2),  # dress and red tie on 3: alphabetical
        ("red", 3),
        ("skirt", 6),
    ]
    assert sum(r["version"] == v1 for r in vocab) == 3  # old versions stay readable
    feats = _rows(lake, "text_features", "product_id")
    assert {r["vocab_version"] for r in feats.values()} == {v2}
    assert {r["created_timestamp"] for r in feats.values()} == {now3}
    assert feats["p1"]["token_ids"] == [3, 2, 3, 5]
    assert feats["p4"]["token_ids"] == [3, 6, 5, 6]
    t = rep["text_features"]
    assert (t["written"], t["inserted"], t["updated"]) == (4, 1, 3)


# ---------------------------------------------------------------------------------------------
# product_features, category_index, customer_history
# ---------------------------------------------------------------------------------------------
SALES = [  # (interaction_id, customer, product, timestamp)
    ("i1", "c1", "A", T(1)),
    ("i2", "c2", "A", T(3)),
    ("i3", "c3", "A", T(3, 10)),
    ("i4", "c3", "B", T(3, 10)),
    ("i5", "c2", "B", T(5)),
    ("i6", "c1", "B", T(20, 9)),
    ("i7", "c1", "A", T(20, 15)),
]
NOW = datetime(2024, 3, 1, tzinfo=UTC)


def _metadata_lake(settings) -> Lake:
    lake = Lake(settings)
    _write(
        lake,
        "products",
        [
            _product("A", "Dress", "Xeno", "Ladies", price=10.0, first_seen=T(1)),
            _product("B", "Dress", "Yolo", None, price=None, first_seen=T(3, 10)),
            _product("C", "Top", "Xeno", "Men", price=30.0, first_seen=None),
        ],
    )
    _write(
        lake,
        "interactions",
        [
            dict(
                interaction_id=i,
                customer_id=c,
                product_id=p,
                kind="purchase",
                timestamp=t,
                price=1.0,
                channel="1",
            )
            for i, c, p, t in SALES
        ],
    )
    return lake


def _as_of(rows: list[dict], pid: str, t: datetime) -> dict:
    """What a point-in-time join sees: the product's latest row at or before t."""
    return max(
        (r for r in rows if r["product_id"] == pid and r["event_timestamp"] <= t),
        key=lambda r: r["event_timestamp"],
    )


def test_product_features_point_in_time_indices_history_and_reruns(spark, settings):
    from spark_jobs.product_features import run_product_features

    settings = settings.model_copy(
        update={
            "product_features": settings.product_features.model_copy(update={"history_length": 2})
        }
    )
    lake = _metadata_lake(settings)
    rep = run_product_features(settings, spark, now=NOW)

    # -- category_index: 1.. by frequency then value; null -> 0 --------------------------
    index = {
        (r["column"], r["value"]): r["idx"] for r in lake.read_arrow("category_index").to_pylist()
    }
    assert index == {
        ("type", "Dress"): 1,
        ("type", "Top"): 2,
        ("brand", "Xeno"): 1,
        ("brand", "Yolo"): 2,
        ("division", "Ladies"): 1,  # tie on 1 product: alphabetical
        ("division", "Men"): 2,
    }

    # -- product_features ------------------------------------------------------------------
    rows = lake.read_arrow("product_features").to_pylist()
    a = sorted((r for r in rows if r["product_id"] == "A"), key=lambda r: r["event_timestamp"])
    pops = [
        (r["event_timestamp"], r["popularity_7d"], r["popularity_30d"], r["popularity_90d"])
        for r in a
    ]
    assert pops == [
        (T(1), 1, 1, 1),  # first_seen = first sale
        (T(3), 2, 2, 2),
        (T(3, 10), 3, 3, 3),
        (T(8), 2, 3, 3),  # the 01-01 sale leaves the 7-day window exactly 7 days later
        (T(10), 1, 3, 3),
        (T(10, 10), 0, 3, 3),
        (T(20, 15), 1, 4, 4),
        (T(27, 15), 0, 4, 4),
        (T(31), 0, 3, 4),
        (T(2, month=2), 0, 2, 4),
        (T(2, 10, month=2), 0, 1, 4),
        (T(19, 15, month=2), 0, 0, 4),
        # the 90-day leave times (from 2024-03-31) are after NOW: not written yet
    ]
    assert _as_of(rows, "A", T(7, 23))["popularity_7d"] == 3
    assert _as_of(rows, "A", T(8))["popularity_7d"] == 2
    assert _as_of(rows, "A", T(20, 14))["popularity_30d"] == 3  # the 15:00 sale not yet
    r = next(r for r in a if r["event_timestamp"] == T(20, 15))
    assert (r["type_idx"], r["brand_idx"], r["division_idx"]) == (1, 1, 1)
    assert r["recency_days"] == pytest.approx(19.625)
    assert r["first_seen"] == T(1)
    # log1p prices standardised over A (10) and C (30): two values -> -1 and +1; B has none.
    assert r["log_price"] == pytest.approx(-1.0)
    assert r["created_timestamp"] == NOW

    b = [r for r in rows if r["product_id"] == "B"]
    assert len(b) == 9 and min(r["event_timestamp"] for r in b) == T(3, 10)
    assert {(r["type_idx"], r["brand_idx"], r["division_idx"], r["log_price"]) for r in b} == {
        (1, 2, 0, None)
    }
    (c,) = [r for r in rows if r["product_id"] == "C"]
    assert (c["event_timestamp"], c["popularity_90d"], c["recency_days"], c["first_seen"]) == (
        EPOCH,
        0,
        None,
        None,
    )
    assert (c["type_idx"], c["division_idx"], c["log_price"]) == (2, 2, pytest.approx(1.0))

    # Point in time: every row counts exactly the sales in (t - w, t], never one after t.
    for r in rows:
        t = r["event_timestamp"]
        assert t <= NOW
        for w in (7, 30, 90):
            seen = sum(
                p == r["product_id"] and t - timedelta(days=w) < ts <= t for _, _, p, ts in SALES
            )
            assert r[f"popularity_{w}d"] == seen, (r["product_id"], t, w)

    # -- customer_history: most recent first, ties by product_id, capped at 2 ----------------
    hist = sorted(
        (r["customer_id"], r["event_timestamp"], r["history"], r["history_length"])
        for r in lake.read_arrow("customer_history").to_pylist()
    )
    assert hist == [
        ("c1", T(1), ["A"], 1),
        ("c1", T(20, 15), ["A", "B"], 2),  # the 01-01 purchase of A falls off the cap
        ("c2", T(3), ["A"], 1),
        ("c2", T(5), ["B", "A"], 2),
        ("c3", T(3, 10), ["A", "B"], 2),  # same timestamp: by product_id
    ]
    assert rep["customer_history"]["rows"] == 5 and rep["product_features"]["rows"] == 22

    # -- rerun: nothing written ---------------------------------------------------------
    before = _versions(lake)
    rep = run_product_features(settings, spark, now=NOW)
    assert [
        rep[t]["written"] for t in ("category_index", "product_features", "customer_history")
    ] == [0, 0, 0]
    assert _versions(lake) == before

    # -- a new brand: existing indices stay, the new one gets the next id -----------------
    _write(
        lake,
        "products",
        [
            _product("D", "Top", "Aardvark", "Men", price=20.0),
            _product("E", "Skirt", "Yolo"),
            _product("F", "Skirt", "Yolo"),  # Yolo is now the most frequent brand
        ],
    )
    rep = run_product_features(settings, spark, now=NOW + timedelta(days=1))
    index = {
        (r["column"], r["value"]): r["idx"] for r in lake.read_arrow("category_index").to_pylist()
    }
    assert index[("brand", "Xeno")] == 1 and index[("brand", "Yolo")] == 2
    assert index[("brand", "Aardvark")] == 3
    assert index[("type", "Skirt")] == 3
    assert rep["category_index"]["inserted"] == 2
    rows = lake.read_arrow("product_features").to_pylist()
    (d,) = [r for r in rows if r["product_id"] == "D"]
    assert (d["type_idx"], d["brand_idx"], d["division_idx"]) == (2, 3, 2)
    (e,) = [r for r in rows if r["product_id"] == "E"]
    assert (e["type_idx"], e["brand_idx"], e["division_idx"]) == (3, 2, 0)


def test_windows_must_match_the_contract(settings):
    from spark_jobs.product_features import run_product_features

    settings = settings.model_copy(
        update={
            "product_features": settings.product_features.model_copy(
                update={"popularity_windows_days": [7, 14, 90]}
            )
        }
    )
    with pytest.raises(ValueError, match=r"\[7, 14, 90\].*\[7, 30, 90\]"):
        run_product_features(settings, spark=None)
