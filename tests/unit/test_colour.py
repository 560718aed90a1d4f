"""The colour descriptor: Lab conversion, foreground mask, palette shares, fallbacks, decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from atelier import colour as C

pytestmark = pytest.mark.unit

WHITE = (255, 255, 255)
STUDIO = (238, 236, 232)  # the demo's light packshot background
NAVY = (26, 40, 90)
RED = (255, 0, 0)
# The sRGB garment colours the palette's Lab values were computed from (atelier/colour.py).
ANCHORS = {
    "black": (20, 20, 22),
    "dark grey": (70, 70, 72),
    "grey": (128, 128, 130),
    "light grey": (190, 190, 190),
    "white": (248, 248, 246),
    "beige": (220, 198, 165),
    "brown": (115, 75, 45),
    "khaki": (125, 120, 70),
    "red": (205, 30, 40),
    "dark red": (120, 25, 40),
    "pink": (240, 160, 190),
    "orange": (235, 125, 40),
    "yellow": (240, 208, 50),
    "green": (55, 145, 70),
    "dark green": (35, 75, 45),
    "turquoise": (40, 175, 170),
    "light blue": (145, 188, 228),
    "denim": (82, 108, 143),
    "blue": (40, 85, 185),
    "navy": (34, 48, 78),
    "purple": (115, 55, 140),
}


def packshot(garment, background=WHITE, size=(100, 80), box=(30, 20, 70, 50)) -> np.ndarray:
    """(h, w, 3) uint8: `background` with a `garment`-coloured rectangle (top, left, bottom,
    right)."""
    img = np.empty((*size, 3), dtype=np.uint8)
    img[:] = background
    top, left, bottom, right = box
    img[top:bottom, left:right] = garment
    return img


def share(vector, name: str) -> float:
    return float(vector[C.PALETTE_NAMES.index(name)])


# -- constants ---------------------------------------------------------------------------------
def test_dimensions_names_and_version_agree():
    assert C.COLOUR_DIM == len(C.PALETTE) + len(C.SUMMARY) == len(C.FEATURE_NAMES) == 25
    assert len(set(C.PALETTE_NAMES)) == len(C.PALETTE) == 21
    assert C.FEATURE_NAMES[-4:] == (
        "foreground_fraction",
        "mean_lightness",
        "mean_chroma",
        "lightness_std",
    )
    assert C.DESCRIPTOR_VERSION == C._version()
    assert C.DESCRIPTOR_VERSION.startswith("lab21+4-")


def test_version_changes_with_the_palette_or_a_parameter(monkeypatch):
    before = C._version()
    monkeypatch.setattr(C, "SIGMA", C.SIGMA + 1)
    wider = C._version()
    monkeypatch.undo()
    monkeypatch.setattr(C, "PALETTE", C.PALETTE[:-1])
    shorter = C._version()
    assert len({before, wider, shorter}) == 3
    monkeypatch.undo()
    assert C._version() == before  # deterministic


def test_palette_is_the_lab_of_its_srgb_anchors():
    assert list(ANCHORS) == list(C.PALETTE_NAMES)
    lab = C.srgb_to_lab(np.asarray(list(ANCHORS.values()), dtype=np.uint8))
    np.testing.assert_allclose(C.palette_lab(), lab, atol=0.051)


# -- colour science ----------------------------------------------------------------------------
def test_srgb_to_lab_matches_reference_values():
    rgb = np.asarray([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255], [128, 128, 128]])
    lab = C.srgb_to_lab(rgb.astype(np.uint8))
    # CIE L*a*b* (D65) of sRGB white, black, red, blue and mid grey.
    expected = [
        [100.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [53.2408, 80.0925, 67.2032],
        [32.2970, 79.1875, -107.8602],
        [53.5850, 0.0, 0.0],
    ]
    np.testing.assert_allclose(lab, expected, atol=2e-3)
    with pytest.raises(ValueError, match="uint8"):
        C.srgb_to_lab(rgb.astype(np.float32))


def test_soft_assignment_rows_sum_to_one_and_favour_the_nearest_colour():
    lab = np.vstack([C.palette_lab(), [[50.0, 120.0, -120.0]]])  # far from every colour
    w = C.soft_assign(lab)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    assert (np.argmax(w[:-1], axis=1) == np.arange(len(C.PALETTE))).all()
    assert np.diag(w[:-1]).min() > 0.9  # a palette colour is mostly itself (SIGMA comment)
    assert np.isfinite(w[-1]).all() and w[-1].max() > 0.5


# -- mask and descriptor -----------------------------------------------------------------------
def test_red_square_on_white_is_red_and_the_background_is_left_out():
    c = C.analyse(packshot(RED))
    assert c.mask == "background"
    assert C.describe(c.vector, top=1)[0][0] == "red"
    assert share(c.vector, "red") > 0.6
    assert share(c.vector, "white") < 1e-6 and share(c.vector, "light grey") < 1e-6
    # The 30x40 square eroded by one pixel: 28x38 of the 100x80 image.
    assert c.foreground_fraction == pytest.approx(28 * 38 / 8000)
    fraction, lightness, chroma, spread = c.vector[len(C.PALETTE) :]
    assert fraction == pytest.approx(28 * 38 / 8000)
    assert lightness == pytest.approx(0.532408, abs=1e-5)  # L* of pure red / 100
    assert chroma == pytest.approx(np.hypot(80.0925, 67.2032) / C.CHROMA_SCALE, abs=1e-4)
    assert spread == pytest.approx(0.0, abs=1e-6)  # one flat colour


def test_navy_and_white_garments_differ():
    navy = C.analyse(packshot(NAVY, background=STUDIO))
    # White on a light background: the edge darkens like a packshot's, so the garment is found.
    white_img = packshot((90, 90, 90), background=STUDIO, box=(29, 19, 71, 51))
    white_img[30:70, 20:50] = (250, 250, 248)
    white = C.analyse(white_img)
    assert (navy.mask, white.mask) == ("background", "background")
    assert C.describe(navy.vector, 1)[0][0] == "navy" and share(navy.vector, "navy") > 0.9
    assert C.describe(white.vector, 1)[0][0] == "white" and share(white.vector, "white") > 0.9
    assert np.abs(navy.vector - white.vector)[: len(C.PALETTE)].sum() > 1.8
    assert white.vector[-3] > navy.vector[-3] + 0.7  # mean lightness


def test_garment_touching_the_edge_does_not_become_the_background():
    # Trousers cut by the bottom edge: a third of the ring is garment, the median is still white.
    c = C.analyse(packshot(NAVY, size=(100, 80), box=(40, 20, 100, 60)))
    assert c.mask == "background"
    assert share(c.vector, "navy") > 0.9 and share(c.vector, "white") < 1e-6


def test_uniform_image_falls_back_to_the_centre():
    c = C.analyse(packshot(NAVY, background=NAVY))
    assert c.mask == "centre_empty"
    assert c.foreground_fraction == pytest.approx(50 * 40 / 8000)  # the middle half of each side
    assert C.describe(c.vector, 1)[0][0] == "navy"


def test_garment_of_the_background_colour_falls_back_to_the_centre():
    c = C.analyse(packshot((240, 238, 234), background=STUDIO))  # 2 Lab units apart
    assert c.mask == "centre_empty"
    assert C.describe(c.vector, 1)[0][0] == "white"


def test_garment_filling_the_frame_falls_back_to_the_centre():
    c = C.analyse(packshot(RED, size=(100, 100), box=(3, 3, 97, 97)))  # a thin white frame
    assert c.mask == "centre_full"
    assert c.foreground_fraction == pytest.approx(0.25)
    assert share(c.vector, "red") > 0.9


def test_busy_border_falls_back_to_the_centre():
    rng = np.random.default_rng(0)
    c = C.analyse(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    assert c.mask == "centre_busy"
    assert c.foreground_fraction == pytest.approx(32 * 24 / (64 * 48))


@pytest.mark.parametrize("seed", range(4))
def test_output_is_a_float32_distribution_then_unit_summaries(seed):
    rng = np.random.default_rng(seed)
    img = packshot(tuple(int(v) for v in rng.integers(0, 256, 3)), size=(90, 70))
    img[30:60, 20:50] = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)  # a print
    v = C.colour_descriptor(img)
    assert v.dtype == np.float32 and v.shape == (C.COLOUR_DIM,) and np.isfinite(v).all()
    assert v[: len(C.PALETTE)].sum() == pytest.approx(1.0, abs=1e-5)
    assert (v >= 0).all() and (v <= 1).all()


def test_big_images_are_shrunk_first():
    small = packshot(NAVY, size=(128, 96), box=(32, 24, 96, 72))
    big = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)  # 1024 x 768, same picture
    assert C.shrink(big).shape == (128, 96, 3)
    np.testing.assert_allclose(C.colour_descriptor(big), C.colour_descriptor(small), atol=1e-6)


def test_bad_input_is_refused_with_its_shape():
    with pytest.raises(ValueError, match=r"\(10, 10\)"):
        C.colour_descriptor(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="float64"):
        C.colour_descriptor(np.zeros((10, 10, 3)))


def test_describe_names_the_largest_shares_first():
    v = np.zeros(C.COLOUR_DIM, dtype=np.float32)
    v[C.PALETTE_NAMES.index("navy")] = 0.43
    v[C.PALETTE_NAMES.index("white")] = 0.37
    v[C.PALETTE_NAMES.index("red")] = 0.2
    v[-4:] = 1.0  # summaries are never named
    assert C.describe(v) == [
        ("navy", pytest.approx(0.43)),
        ("white", pytest.approx(0.37)),
        ("red", pytest.approx(0.2)),
    ]
    assert [n for n, _ in C.describe(v, top=5)][3:] == ["black", "dark grey"]  # ties: order
    assert C.describe(v, top=0) == []
    with pytest.raises(ValueError, match="25"):
        C.describe(v[:20])


# -- decoding ----------------------------------------------------------------------------------
def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_reads_jpegs_at_a_reduced_scale_and_refuses_truncated_files():
    big = Image.fromarray(packshot(RED, size=(1600, 1000), box=(400, 300, 1200, 700)))
    data = _encoded(big, "JPEG", quality=90)
    rgb = C.decode(data)
    assert rgb.dtype == np.uint8 and rgb.shape == (200, 125, 3)  # 1/8 scale still covers 128
    assert C.describe(C.colour_descriptor(rgb), 1)[0][0] == "red"
    with pytest.raises(OSError):
        C.decode(data[: len(data) // 2])


def test_decode_lays_transparency_on_white():
    rgba = np.zeros((40, 30, 4), dtype=np.uint8)  # transparent black everywhere
    rgba[10:30, 8:22] = (*NAVY, 255)
    rgb = C.decode(_encoded(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(rgb[0, 0]) == WHITE and tuple(rgb[20, 15]) == NAVY
    assert C.analyse(rgb).mask == "background"
