"""Layout configs: declared inputs vs target attributes, loading errors."""

from __future__ import annotations

import pytest

from atelier.layout import Constant, WordsBefore, available_layouts, load_layout

pytestmark = pytest.mark.unit


def test_builtin_layouts():
    assert available_layouts() == ["fashion-images", "hm"]
    hm = load_layout("hm")
    assert hm.products.id == "article_id"
    assert hm.products.brand == Constant(constant="H&M")
    assert hm.products.division == "index_group_name"
    assert hm.attributes == [
        "graphical_appearance_name",
        "colour_group_name",
        "perceived_colour_value_name",
        "perceived_colour_master_name",
        "garment_group_name",
        "section_name",
        "product_group_name",
        "department_name",
    ]
    assert hm.images == ["images/{id[:3]}/{id}.jpg"]
    assert "article_id" in hm.source_columns("interactions")
    fi = load_layout("fashion-images")
    assert isinstance(fi.products.brand, WordsBefore) and fi.products.brand.from_ == (
        "productDisplayName"
    )
    assert fi.attributes == ["baseColour", "season", "usage"]
    assert fi.customers is None and fi.files.interactions is None
    assert fi.source_columns("products") == {
        "id",
        "articleType",
        "gender",
        "productDisplayName",
        "baseColour",
        "season",
        "usage",
    }


def test_unknown_layout_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown layout 'asos'.*fashion-images.*hm"):
        load_layout("asos")


def test_custom_layout_folder_and_validation(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "name: mine\nfiles: {products: p.csv}\n"
        "products: {id: sku, type: cat, brand: {constant: X}}\n"
        "images: ['pics/{id}.png']\nattributes: [colour]\n"
    )
    assert load_layout("mine", tmp_path).attributes == ["colour"]
    (tmp_path / "bad.yaml").write_text(
        "name: bad\nfiles: {products: p.csv}\nproducts: {id: sku, type: cat, brand: B}\n"
        "images: ['pics/static.png']\n"
    )
    with pytest.raises(ValueError, match="does not mention"):
        load_layout("bad", tmp_path)
