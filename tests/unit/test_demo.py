"""The synthetic H&M-layout catalogue: layout, counts, labels, images and determinism."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import re
from pathlib import Path

import pytest

from cli.demo_catalogue import (
    ARTICLE_COLUMNS,
    CUSTOMER_COLUMNS,
    IMAGE_SIZE,
    LABEL_COMPANIONS,
    TARGET_ATTRIBUTES,
    TRANSACTION_COLUMNS,
    generate_demo,
    image_path,
)

pytestmark = pytest.mark.unit


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    # Plain csv keeps every cell a string: leading zeros and empty labels stay as written.
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    messages: list[str] = []
    summary = generate_demo(out, seed=0, progress=messages.append)
    a_cols, articles = _read(out / "articles.csv")
    c_cols, customers = _read(out / "customers.csv")
    t_cols, transactions = _read(out / "transactions_train.csv")
    return {
        "out": out,
        "summary": summary,
        "messages": messages,
        "columns": (a_cols, c_cols, t_cols),
        "articles": articles,
        "customers": customers,
        "transactions": transactions,
    }


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_exact_kaggle_columns(demo):
    a_cols, c_cols, t_cols = demo["columns"]
    assert a_cols == list(ARTICLE_COLUMNS)
    assert len(a_cols) == 25 and a_cols[0] == "article_id" and a_cols[-1] == "detail_desc"
    assert c_cols == list(CUSTOMER_COLUMNS)
    assert t_cols == ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]
    assert t_cols == list(TRANSACTION_COLUMNS)
    raw = (demo["out"] / "articles.csv").read_bytes()
    assert b"\r\n" not in raw and raw.startswith(b"article_id,product_code,prod_name,")


def test_counts_and_summary(demo):
    s, articles, tx = demo["summary"], demo["articles"], demo["transactions"]
    assert len(articles) == s["products"] == 2400
    assert len(demo["customers"]) == s["customers"] == 600
    assert len(tx) == s["purchases"] >= 20_000
    types = {a["product_type_name"] for a in articles}
    assert len(types) == s["types"] >= 8
    assert {"Dress", "T-shirt", "Trousers", "Skirt", "Sweater", "Shorts", "Jacket", "Bag"} <= types
    assert min(sum(a["product_type_name"] == t for a in articles) for t in types) >= 100
    dates = [r["t_dat"] for r in tx]
    assert dates == sorted(dates)
    assert s["first_date"] == dates[0] == "2019-01-01"
    assert s["last_date"] == dates[-1] and dates[-1] < "2020-03-01"
    span = dt.date.fromisoformat(dates[-1]) - dt.date.fromisoformat(dates[0])
    assert span.days >= 365
    assert s["images"] == 2400
    assert any(m.startswith("images: 400/") for m in demo["messages"])
    assert demo["messages"][-1] == "images: 2400/2400"


def test_ids_keep_leading_zeros(demo):
    ids = [a["article_id"] for a in demo["articles"]]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 10 and i.isdigit() and i[0] == "0" for i in ids)
    assert all(a["product_code"] == a["article_id"][:7] for a in demo["articles"])
    # Several colourways share a product code, as in H&M's catalogue.
    assert demo["summary"]["product_codes"] == len({a["product_code"] for a in demo["articles"]})
    assert demo["summary"]["product_codes"] < 0.7 * len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{64}", c["customer_id"]) for c in demo["customers"])
    assert all(16 <= int(c["age"]) <= 80 for c in demo["customers"])


def test_transactions_reference_catalogue(demo):
    articles = {a["article_id"] for a in demo["articles"]}
    customers = {c["customer_id"] for c in demo["customers"]}
    tx = demo["transactions"]
    assert {r["article_id"] for r in tx} <= articles
    assert {r["customer_id"] for r in tx} <= customers
    prices = [float(r["price"]) for r in tx]
    assert min(prices) > 0.004
    assert max(prices) < 0.125
    assert {r["sales_channel_id"] for r in tx} == {"1", "2"}
    per_customer: dict[str, int] = {}
    for r in tx:
        per_customer[r["customer_id"]] = per_customer.get(r["customer_id"], 0) + 1
    counts = sorted(per_customer.values())
    assert len(counts) == 600
    assert sum(c >= 6 for c in counts) / len(counts) >= 0.8
    assert counts[-1] >= 5 * counts[len(counts) // 2]  # heavy tail of very active customers
    per_article: dict[str, int] = {}
    for r in tx:
        per_article[r["article_id"]] = per_article.get(r["article_id"], 0) + 1
    top = sorted(per_article.values(), reverse=True)
    assert sum(top[:24]) / len(tx) >= 0.08  # the top 1% of articles sell far above their share


def test_missing_labels(demo):
    articles = demo["articles"]
    for attr in TARGET_ATTRIBUTES:
        blank = [a[attr] == "" for a in articles]
        frac = sum(blank) / len(articles)
        assert 0.60 <= frac <= 0.75, (attr, frac)
        assert frac == pytest.approx(demo["summary"]["missing_fraction"][attr])
        companion = LABEL_COMPANIONS[attr]
        assert all((a[companion] == "") == b for a, b in zip(articles, blank, strict=True))
    # Attributes are blanked independently, not all together.
    both = sum(
        a["graphical_appearance_name"] == "" and a["colour_group_name"] == "" for a in articles
    )
    assert both / len(articles) < 0.6
    labelled = [a for a in articles if a["graphical_appearance_name"]]
    assert {a["graphical_appearance_name"] for a in labelled} == {
        "Solid", "Stripe", "Check", "Dot", "All over pattern"
    }  # fmt: skip
    assert len({a["colour_group_name"] for a in articles if a["colour_group_name"]}) >= 8
    values = {a["perceived_colour_value_name"] for a in articles} - {""}
    assert values == {"Dark", "Medium", "Light"}
    for a in articles:
        if a["colour_group_name"] == "Dark Blue" and a["perceived_colour_master_name"]:
            assert a["perceived_colour_master_name"] == "Blue"
    # Everything that is not a label (or the description) is always filled.
    always = set(ARTICLE_COLUMNS) - set(LABEL_COMPANIONS) - set(LABEL_COMPANIONS.values())
    always.discard("detail_desc")
    assert all(a[c] for a in articles for c in always)
    empty_desc = sum(a["detail_desc"] == "" for a in articles) / len(articles)
    assert 0.08 <= empty_desc <= 0.22


def test_divisions_follow_types(demo):
    divisions = {a["index_group_name"] for a in demo["articles"]}
    assert divisions == {"Ladieswear", "Menswear", "Divided", "Baby/Children", "Sport"}
    dresses = [a for a in demo["articles"] if a["product_type_name"] == "Dress"]
    assert not any(a["index_group_name"] == "Menswear" for a in dresses)
    ladies = sum(a["index_group_name"] == "Ladieswear" for a in dresses) / len(dresses)
    assert ladies > 0.4


def test_text_mentions_attributes_with_noise(demo):
    def text(a):
        return f"{a['prod_name']} {a['detail_desc']}".lower()

    labelled = [a for a in demo["articles"] if a["graphical_appearance_name"]]
    striped = [a for a in labelled if a["graphical_appearance_name"] == "Stripe"]
    others = [a for a in labelled if a["graphical_appearance_name"] != "Stripe"]
    hit = sum("stripe" in text(a) for a in striped) / len(striped)
    false_hit = sum("stripe" in text(a) for a in others) / len(others)
    assert 0.4 <= hit <= 0.85
    assert false_hit <= 0.1


def test_images_exist_with_expected_size(demo):
    from PIL import Image

    out = demo["out"]
    jpgs = list((out / "images").rglob("*.jpg"))
    assert len(jpgs) == len(demo["articles"])
    for a in demo["articles"]:
        path = image_path(out, a["article_id"])
        assert path.parent.name == a["article_id"][:3]
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == IMAGE_SIZE
    assert IMAGE_SIZE == (112, 160)
    with Image.open(image_path(out, demo["articles"][0]["article_id"])) as im:
        corner = im.convert("RGB").getpixel((1, 1))
    assert min(corner) > 215  # light packshot background


def _directional_variance(path: Path) -> float:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"), dtype=np.float64)
    # A torso patch that lies inside every T-shirt silhouette.
    patch = grey[70:110, 42:70]
    return max(patch.var(axis=0).mean(), patch.var(axis=1).mean())


def test_pattern_is_visible(demo):
    import numpy as np

    tees = [a for a in demo["articles"] if a["product_type_name"] == "T-shirt"]
    striped = [a for a in tees if a["graphical_appearance_name"] == "Stripe"]
    solid = [a for a in tees if a["graphical_appearance_name"] == "Solid"]
    assert len(striped) >= 3 and len(solid) >= 3
    out = demo["out"]
    v_striped = np.mean([_directional_variance(image_path(out, a["article_id"])) for a in striped])
    v_solid = np.mean([_directional_variance(image_path(out, a["article_id"])) for a in solid])
    assert v_striped > 10 * v_solid
    assert v_striped > 300


def test_products_appear_over_time(demo):
    first_sale: dict[str, str] = {}
    for r in demo["transactions"]:  # sorted by date: the first hit is the first sale
        first_sale.setdefault(r["article_id"], r["t_dat"])
    assert len(first_sale) >= 0.7 * len(demo["articles"])
    late = [d for d in first_sale.values() if d >= "2019-07-01"]
    # A good share of the catalogue only starts selling after the first six months...
    assert len(late) / len(first_sale) >= 0.2
    # ...including articles first sold in the last two months (cold start for early windows).
    assert any(d >= "2020-01-01" for d in late)
    assert 0.2 <= demo["summary"]["products_at_start"] / len(demo["articles"]) <= 0.5
    first_month = {r["article_id"] for r in demo["transactions"] if r["t_dat"] < "2019-02-01"}
    assert len(first_month) <= demo["summary"]["products_at_start"]


def test_deterministic_per_seed(tmp_path):
    small = {"n_products": 200, "n_customers": 50}
    s1 = generate_demo(tmp_path / "a", seed=7, **small)
    s2 = generate_demo(tmp_path / "b", seed=7, **small)
    s3 = generate_demo(tmp_path / "c", seed=8, **small)
    h1, h2, h3 = (_hashes(tmp_path / d) for d in "abc")
    assert len(h1) == 3 + 200
    assert h1 == h2
    assert {k: v for k, v in s1.items() if k != "out_dir"} == {
        k: v for k, v in s2.items() if k != "out_dir"
    }
    assert s3["products"] == 200
    for name in ("articles.csv", "customers.csv", "transactions_train.csv"):
        assert h1[name] != h3[name]
    assert set(h1) != set(h3)  # different article ids, so different image paths


def test_rerun_replaces_previous_catalogue(tmp_path):
    generate_demo(tmp_path, seed=1, n_products=60, n_customers=20)
    generate_demo(tmp_path, seed=2, n_products=50, n_customers=20)
    jpgs = list((tmp_path / "images").rglob("*.jpg"))
    _, articles = _read(tmp_path / "articles.csv")
    assert len(jpgs) == len(articles) == 50
