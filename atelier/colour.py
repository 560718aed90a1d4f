"""A cheap, explainable colour descriptor of the garment in a product photo (numpy + PIL only).

VGG16's max-pooled conv features barely encode colour (see ARCHITECTURE.md), so colour gets a
descriptor of its own:

1. the image is shrunk to at most `MAX_SIDE` px (colour needs no detail, and it keeps the cost
   per image in the milliseconds);
2. the background colour is the median of a `BORDER`-px ring: packshots sit on a light, uniform
   background that the garment rarely touches. The background is the pixels within
   `FOREGROUND_DELTA_E` of it (CIE76 in CIELAB, D65) that connect to the border; the rest, eroded
   by one pixel, is the garment;
3. every garment pixel is softly assigned to the named `PALETTE` colours (Gaussian in Lab
   distance, width `SIGMA`, normalised per pixel) and the assignments are averaged: the first
   `len(PALETTE)` entries sum to 1 and read as "43% navy";
4. four summary numbers in [0, 1] follow (`SUMMARY`): the share of the image described, the
   mean lightness, the mean chroma and the spread of lightness of the garment.

When the mask is (nearly) empty (a garment of the background's colour), (nearly) everything (a
close-up) or the border is not uniform (not a packshot), the central crop is described instead
and `Colour.mask` says why. `DESCRIPTOR_VERSION` changes whenever the palette or a parameter
does, so stored descriptors of another version are recomputed.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# Bump when the algorithm changes in a way the parameters below do not show.
ALGORITHM = 1
MAX_SIDE = 128  # working resolution: longest side, px
BORDER = 3  # width of the border ring that samples the background, px at working resolution
FOREGROUND_DELTA_E = 10.0  # Lab distance from the background beyond which a pixel is garment
# A packshot's border is mostly background; below this share of ring pixels near the median
# there is no single background colour to subtract.
MIN_UNIFORM_BORDER = 0.6
# Garments cover ~10-60% of a packshot. Under MIN_FOREGROUND of the image the mask holds only
# outlines and JPEG noise; over MAX_FOREGROUND of the image inside the ring, the garment fills
# the frame and the "background" is a sliver of something else (a close-up).
MIN_FOREGROUND = 0.05
MAX_FOREGROUND = 0.95
# Width of the soft assignment, Lab units. Palette neighbours lie 20-48 apart: a pixel on a
# palette colour keeps >= ~90% of its weight there, one between two colours is split.
SIGMA = 8.0
CHROMA_SCALE = 128.0  # sRGB chroma barely exceeds 130 (saturated blue): maps it to ~1
LIGHTNESS_STD_SCALE = 50.0  # the largest possible std of L* in [0, 100]

# Named colours in CIELAB (D65), from representative sRGB garment colours (comment), rounded.
PALETTE: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("black", (6.4, 0.5, -1.3)),  # (20, 20, 22)
    ("dark grey", (29.8, 0.4, -1.2)),  # (70, 70, 72)
    ("grey", (53.6, 0.4, -1.1)),  # (128, 128, 130)
    ("light grey", (77.0, 0.0, 0.0)),  # (190, 190, 190)
    ("white", (97.5, -0.4, 1.0)),  # (248, 248, 246)
    ("beige", (80.9, 2.7, 19.4)),  # (220, 198, 165)
    ("brown", (35.7, 13.6, 24.6)),  # (115, 75, 45)
    ("khaki", (49.8, -5.9, 28.1)),  # (125, 120, 70)
    ("red", (44.3, 64.7, 41.3)),  # (205, 30, 40)
    ("dark red", (26.3, 41.1, 16.1)),  # (120, 25, 40)
    ("pink", (74.4, 33.8, -3.2)),  # (240, 160, 190)
    ("orange", (63.7, 37.1, 61.1)),  # (235, 125, 40)
    ("yellow", (83.9, -3.9, 75.7)),  # (240, 208, 50)
    ("green", (53.5, -43.2, 31.8)),  # (55, 145, 70)
    ("dark green", (28.3, -21.9, 13.7)),  # (35, 75, 45)
    ("turquoise", (65.0, -35.4, -7.5)),  # (40, 175, 170)
    ("light blue", (74.6, -4.6, -24.5)),  # (145, 188, 228)
    # Mid, greyish blue: most "blue" garments are denim, far from both blue and navy below.
    ("denim", (44.9, 0.1, -22.2)),  # (82, 108, 143)
    ("blue", (38.6, 21.3, -57.2)),  # (40, 85, 185)
    # Garment navy is darker and greyer than the screen colour.
    ("navy", (20.1, 4.2, -20.3)),  # (34, 48, 78)
    ("purple", (34.5, 40.9, -36.5)),  # (115, 55, 140)
)
PALETTE_NAMES = tuple(name for name, _ in PALETTE)
SUMMARY = ("foreground_fraction", "mean_lightness", "mean_chroma", "lightness_std")
FEATURE_NAMES = (*PALETTE_NAMES, *SUMMARY)
COLOUR_DIM = len(FEATURE_NAMES)
# How the described pixels were chosen: the background mask, or the central crop and why.
MASKS = ("background", "centre_empty", "centre_full", "centre_busy")


def _version() -> str:
    params = (
        ALGORITHM,
        MAX_SIDE,
        BORDER,
        FOREGROUND_DELTA_E,
        MIN_UNIFORM_BORDER,
        MIN_FOREGROUND,
        MAX_FOREGROUND,
        SIGMA,
        CHROMA_SCALE,
        LIGHTNESS_STD_SCALE,
        PALETTE,
        SUMMARY,
    )
    digest = hashlib.sha256(repr(params).encode()).hexdigest()[:8]
    return f"lab{len(PALETTE)}+{len(SUMMARY)}-{digest}"


DESCRIPTOR_VERSION = _version()


@dataclass(frozen=True)
class Colour:
    """The descriptor of one image and how its pixels were chosen."""

    vector: np.ndarray  # (COLOUR_DIM,) float32: palette shares (sum 1), then SUMMARY in [0, 1]
    mask: str  # one of MASKS
    foreground_fraction: float  # share of the working image described


# ---------------------------------------------------------------------------------------------
# Colour science
# ---------------------------------------------------------------------------------------------
_XYZ_FROM_LINEAR_RGB = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)
_LINEAR: np.ndarray | None = None  # sRGB byte -> linear light, built on first use


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float64 CIELAB (D65 white, L* in [0, 100])."""
    import numpy as np

    global _LINEAR
    if _LINEAR is None:
        c = np.arange(256, dtype=np.float64) / 255.0
        _LINEAR = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1:] != (3,):
        raise ValueError(f"expected (..., 3) uint8 sRGB, got {rgb.shape} {rgb.dtype}")
    linear = _LINEAR[rgb]  # a lookup: 256 values instead of a power per channel per pixel
    xyz = linear @ np.asarray(_XYZ_FROM_LINEAR_RGB).T / np.asarray(_D65_WHITE)
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta * delta) + 4.0 / 29.0)
    return np.stack(
        (
            116.0 * f[..., 1] - 16.0,
            500.0 * (f[..., 0] - f[..., 1]),
            200.0 * (f[..., 1] - f[..., 2]),
        ),
        axis=-1,
    )


def palette_lab() -> np.ndarray:
    """(len(PALETTE), 3) float64: the palette's Lab coordinates, in PALETTE order."""
    import numpy as np

    return np.asarray([lab for _, lab in PALETTE], dtype=np.float64)


def soft_assign(lab: np.ndarray) -> np.ndarray:
    """(n, 3) Lab -> (n, len(PALETTE)) weights exp(-d^2 / 2 SIGMA^2), each row summing to 1."""
    import numpy as np

    d2 = ((lab[:, None, :] - palette_lab()[None, :, :]) ** 2).sum(axis=-1)
    # Relative to each pixel's nearest colour: a pixel far from every colour still gets
    # weights (exp of a large negative number would underflow to 0 everywhere).
    w = np.exp(-(d2 - d2.min(axis=1, keepdims=True)) / (2.0 * SIGMA * SIGMA))
    return w / w.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Mask and descriptor
# ---------------------------------------------------------------------------------------------
def shrink(rgb: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """(h, w, 3) uint8 -> the same image with its longest side at most `max_side` (box filter:
    each output pixel is the mean of the pixels it covers, so colours are not shifted)."""
    import numpy as np
    from PIL import Image

    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


def centre_mask(h: int, w: int) -> np.ndarray:
    """(h, w) bool: the middle half of each side (never empty)."""
    import numpy as np

    mask = np.zeros((h, w), dtype=bool)
    mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    return mask


def foreground_mask(lab: np.ndarray) -> tuple[np.ndarray, str]:
    """(h, w, 3) Lab -> ((h, w) bool mask of the pixels to describe, one of MASKS).

    Background: pixels within FOREGROUND_DELTA_E of the border's median colour that connect
    to the border through such pixels. Everything else is the garment, so the white fabric
    between a white shirt's stripes counts, while its twin outside the outline does not.
    """
    import numpy as np

    h, w = lab.shape[:2]
    ring = np.ones((h, w), dtype=bool)
    ring[BORDER : h - BORDER, BORDER : w - BORDER] = False
    # The median, not the mean: a garment touching the edge must not tint the background.
    background = np.median(lab[ring], axis=0)
    near = np.linalg.norm(lab - background, axis=-1) <= FOREGROUND_DELTA_E
    if near[ring].mean() < MIN_UNIFORM_BORDER:
        return centre_mask(h, w), "centre_busy"
    outside = connected_to(near & ring, near)
    # Erode once (3x3 cross): drops outlines, anti-aliased edges that mix the garment with the
    # background, and isolated JPEG noise, none of which is the garment's colour.
    mask = ~outside
    core = mask.copy()
    core[1:, :] &= mask[:-1, :]
    core[:-1, :] &= mask[1:, :]
    core[:, 1:] &= mask[:, :-1]
    core[:, :-1] &= mask[:, 1:]
    if core.mean() < MIN_FOREGROUND:
        return centre_mask(h, w), "centre_empty"
    # Measured inside the ring: the ring is mostly background by construction.
    if (~ring).any() and core[~ring].mean() > MAX_FOREGROUND:
        return centre_mask(h, w), "centre_full"
    return core, "background"


def connected_to(seeds: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(h, w) bool: the `allowed` pixels 4-connected to `seeds` through `allowed` pixels.

    Grows the seeds one pixel per step (a flood fill in numpy): as many steps as the longest
    path, ~half the short side of a packshot, each a few array operations.
    """
    reached = seeds & allowed
    while True:
        grown = reached.copy()
        grown[1:, :] |= reached[:-1, :]
        grown[:-1, :] |= reached[1:, :]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= allowed
        if (grown == reached).all():
            return reached
        reached = grown


def analyse(rgb: np.ndarray) -> Colour:
    """(h, w, 3) uint8 sRGB -> its `Colour` (descriptor, mask kind, fraction described)."""
    import numpy as np

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise ValueError(
            f"expected a non-empty (h, w, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}"
        )
    lab = srgb_to_lab(shrink(rgb))
    mask, kind = foreground_mask(lab)
    pixels = lab[mask]
    shares = soft_assign(pixels).mean(axis=0)
    fraction = float(mask.mean())
    chroma = np.hypot(pixels[:, 1], pixels[:, 2])
    summary = np.clip(
        [
            fraction,
            pixels[:, 0].mean() / 100.0,
            chroma.mean() / CHROMA_SCALE,
            pixels[:, 0].std() / LIGHTNESS_STD_SCALE,
        ],
        0.0,
        1.0,
    )
    vector = np.concatenate([shares, summary]).astype(np.float32)
    return Colour(vector, kind, fraction)


def colour_descriptor(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 sRGB -> (COLOUR_DIM,) float32: palette shares of the garment's pixels
    (sum 1, PALETTE order), then SUMMARY (each in [0, 1])."""
    return analyse(rgb).vector


def describe(vector, top: int = 3) -> list[tuple[str, float]]:
    """The `top` largest palette shares of a descriptor, largest first: [("navy", 0.43), ...]."""
    import numpy as np

    v = np.asarray(vector, dtype=np.float64)
    if v.shape != (COLOUR_DIM,):
        raise ValueError(f"expected a descriptor of {COLOUR_DIM} values, got shape {v.shape}")
    shares = v[: len(PALETTE)]
    order = sorted(range(len(PALETTE)), key=lambda i: (-shares[i], i))[: max(0, top)]
    return [(PALETTE_NAMES[i], float(shares[i])) for i in order]


def decode(data: bytes) -> np.ndarray:
    """Image file bytes -> (h, w, 3) uint8 sRGB, decoded fully (a truncated file raises).

    JPEGs are decoded at the smallest DCT scale (1/2 to 1/8) that still covers `MAX_SIDE`: the
    descriptor shrinks them anyway, and a 1750-px packshot decodes several times faster.
    Transparent pixels are laid on white, as a packshot background would be.
    """
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        scale = min(1.0, MAX_SIDE / max(w, h, 1))
        im.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))
        return np.asarray(im.convert("RGB"))
