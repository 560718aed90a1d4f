"""Similar products: cosine neighbours against hand-computed similarities, seeds, the grid PNG."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.recommender.similar import (
    SEED_LABELS,
    cosine_neighbours,
    figure7,
    main_image_paths,
    plot_similar_grid,
    popularity_seeds,
    similar_by_variant,
    similar_products,
    unit_rows,
)

pytestmark = [pytest.mark.unit]

R = 1 / math.sqrt(2)
IDS = ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]
VECTORS = np.array(
    [
        [1.0, 0.0],  # p0
        [2.0, 0.0],  # p1: same direction as p0, twice as long
        [1.0, 1.0],  # p2: 45 degrees
        [0.0, 0.0],  # p3: no direction (cf, never bought)
        [-1.0, 0.0],  # p4: opposite to p0
        [0.0, 3.0],  # p5: orthogonal to p0
        [3.0, 3.0],  # p6: same direction as p2
    ],
    dtype=np.float32,
)


def test_unit_rows_scales_to_length_one_and_keeps_zero_rows():
    unit = unit_rows(VECTORS)
    np.testing.assert_allclose(unit[1], [1.0, 0.0])
    np.testing.assert_allclose(unit[6], [R, R])
    assert not unit[3].any()
    with pytest.raises(ValueError, match=r"got shape \(7,\)"):
        unit_rows(VECTORS[:, 0])


def test_neighbours_of_p0_by_hand():
    # cos(p0, .) = p1 1, p2 R, p6 R (tie: p2 is listed first), p5 0, p4 -1; p3 has none.
    got = similar_products(IDS, VECTORS, "p0", n=10)
    assert [p for p, _ in got] == ["p1", "p2", "p6", "p5", "p4"]
    np.testing.assert_allclose([s for _, s in got], [1.0, R, R, 0.0, -1.0], atol=1e-7)
    assert [p for p, _ in similar_products(IDS, VECTORS, "p0", n=2)] == ["p1", "p2"]


def test_neighbours_of_p2_ties_in_listing_order():
    # cos(p2, .) = p6 1; p0, p1, p5 all R (listing order); p4 -R.
    rows, sims = cosine_neighbours(VECTORS, 2, n=4)
    assert rows.tolist() == [6, 0, 1, 5]
    np.testing.assert_allclose(sims, [1.0, R, R, R], atol=1e-7)


def test_a_zero_vector_has_no_neighbours_and_is_nobodys_neighbour():
    assert similar_products(IDS, VECTORS, "p3") == []
    for pid in IDS:
        assert "p3" not in [p for p, _ in similar_products(IDS, VECTORS, pid, n=10)]


def test_bad_arguments_quote_the_value():
    with pytest.raises(ValueError, match="'nope' has no item vector"):
        similar_products(IDS, VECTORS, "nope")
    with pytest.raises(ValueError, match="got 0"):
        cosine_neighbours(VECTORS, 0, n=0)
    with pytest.raises(ValueError, match=r"\[0, 7\), got 7"):
        cosine_neighbours(VECTORS, 7)
    with pytest.raises(ValueError, match=r"must be \(3, k\)"):
        similar_products(IDS[:3], VECTORS, "p0")


def test_similar_by_variant():
    cf = VECTORS.copy()
    cf[0] = 0.0  # p0 never bought: cf cannot represent it
    got = similar_by_variant(
        {"cf": (IDS, cf), "hybrid": (IDS, VECTORS), "other": (["p1", "p2"], VECTORS[1:3])},
        "p0",
        n=2,
    )
    assert got["cf"] == []
    assert [p for p, _ in got["hybrid"]] == ["p1", "p2"]
    assert got["other"] == []  # no vector for p0 at all


def test_popularity_seeds_by_hand():
    popularity = {"a": 5, "b": 9, "c": 0, "d": 5, "e": 1}
    # ranking: b 9, a 5, d 5 (tie by id), e 1, c 0 -> first, position 5 // 2 = 2, last
    assert popularity_seeds(popularity) == dict(zip(SEED_LABELS, ["b", "d", "c"]))
    # f was never bought: it counts 0 and comes last; position 6 // 2 = 3 is e
    assert popularity_seeds(popularity, [*popularity, "f"]) == dict(
        zip(SEED_LABELS, ["b", "e", "f"])
    )
    with pytest.raises(ValueError, match="at least one candidate"):
        popularity_seeds({})


def test_figure7_picks_seeds_every_variant_can_show():
    popularity = {"p1": 10, "p2": 4, "p6": 3, "p0": 1}
    seeds, neighbours = figure7(
        {"hybrid": (IDS, VECTORS), "content": (IDS[:3], VECTORS[:3])}, popularity, n=1
    )
    # common products p0, p1, p2 ranked p1 10, p2 4, p0 1
    assert seeds == dict(zip(SEED_LABELS, ["p1", "p2", "p0"]))
    assert [p for p, _ in neighbours["hybrid"]["p2"]] == ["p6"]
    assert [p for p, _ in neighbours["content"]["p2"]] == ["p0"]


def test_main_image_paths_take_the_lowest_shot():
    rows = [
        {"product_id": "a", "shot": 1, "path": "/a1.jpg"},
        {"product_id": "a", "shot": 0, "path": "/a0.jpg"},
        {"product_id": "b", "shot": 2, "path": "/b2.jpg"},
    ]
    assert main_image_paths(rows) == {"a": "/a0.jpg", "b": "/b2.jpg"}


def test_grid_is_a_png_of_one_row_per_seed_and_variant(tmp_path):
    from PIL import Image

    paths = {}
    for i, pid in enumerate(["p0", "p1", "p2"]):
        paths[pid] = str(tmp_path / f"{pid}.jpg")
        Image.new("RGB", (60, 90), (40 * i, 100, 200)).save(paths[pid])
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths["p4"] = str(tmp_path / "broken.jpg")  # unreadable: a grey tile
    seeds = {"most popular": "p0", "median popularity": "p2", "least popular": "p3"}
    neighbours = {
        variant: {seed: similar_products(IDS, VECTORS, seed, n=3) for seed in seeds.values()}
        for variant in ("cf", "hybrid")
    }
    out = plot_similar_grid(seeds, neighbours, paths, tmp_path / "fig" / "figure7.png", n=3)
    assert out == tmp_path / "fig" / "figure7.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        # 3 seeds x 2 variants = 6 rows of 1.9 in, 1 + 3 columns of 1.6 in, at 100 dpi
        assert image.format == "PNG"
        assert image.size == (640, 1140)
    with pytest.raises(ValueError, match="got 0 seeds"):
        plot_similar_grid([], neighbours, paths, tmp_path / "x.png")
