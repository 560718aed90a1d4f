"""Deterministic synthetic catalogue in the H&M Kaggle layout.

`generate_demo` writes `articles.csv`, `customers.csv`, `transactions_train.csv` and
`images/<3>/<article_id>.jpg` exactly as the Kaggle "H&M Personalized Fashion Recommendations"
dump has them, so the demo goes through the same adapter as the real data. The content is
synthetic but shaped like the real thing: garment silhouettes with visible pattern and colour,
60-75% of each target label missing, titles/descriptions that mention the attributes with noise,
customers with latent tastes, products released over time and a long-tailed popularity.

Everything is drawn from numpy Generators seeded by `seed` (never time or `hash()`), and JPEGs are
encoded with fixed settings, so two runs with the same seed give byte-identical files. Importing
this module is cheap; numpy and PIL are imported inside the functions.
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import functools
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ARTICLE_COLUMNS",
    "CUSTOMER_COLUMNS",
    "IMAGE_SIZE",
    "LABEL_COMPANIONS",
    "TARGET_ATTRIBUTES",
    "TRANSACTION_COLUMNS",
    "generate_demo",
    "image_path",
]

ARTICLE_COLUMNS = (
    "article_id", "product_code", "prod_name", "product_type_no", "product_type_name",
    "product_group_name", "graphical_appearance_no", "graphical_appearance_name",
    "colour_group_code", "colour_group_name", "perceived_colour_value_id",
    "perceived_colour_value_name", "perceived_colour_master_id", "perceived_colour_master_name",
    "department_no", "department_name", "index_code", "index_name", "index_group_no",
    "index_group_name", "section_no", "section_name", "garment_group_no", "garment_group_name",
    "detail_desc",
)  # fmt: skip
CUSTOMER_COLUMNS = (
    "customer_id", "FN", "Active", "club_member_status", "fashion_news_frequency", "age",
    "postal_code",
)  # fmt: skip
TRANSACTION_COLUMNS = ("t_dat", "customer_id", "article_id", "price", "sales_channel_id")

# The label columns the attribute model predicts; each is blanked together with its id column.
TARGET_ATTRIBUTES = (
    "graphical_appearance_name",
    "colour_group_name",
    "perceived_colour_value_name",
    "perceived_colour_master_name",
)
LABEL_COMPANIONS = {
    "graphical_appearance_name": "graphical_appearance_no",
    "colour_group_name": "colour_group_code",
    "perceived_colour_value_name": "perceived_colour_value_id",
    "perceived_colour_master_name": "perceived_colour_master_id",
}

IMAGE_SIZE = (112, 160)  # (width, height), portrait like the H&M packshots
JPEG_QUALITY = 90
MISSING_RATE_RANGE = (0.62, 0.72)
_BACKGROUND = (238, 236, 232)
_SS = 2  # supersampling factor for silhouettes, gives anti-aliased edges


def image_path(out_dir: Path, article_id: str) -> Path:
    """Where the Kaggle layout keeps an article's image."""
    return Path(out_dir) / "images" / article_id[:3] / f"{article_id}.jpg"


# --------------------------------------------------------------------------- vocabularies


@dataclass(frozen=True)
class _Colour:
    name: str
    code: str
    rgb: tuple[int, int, int]
    value: str  # perceived colour value: Dark / Medium / Light
    master: str
    weight: float  # how common the colour is in the assortment
    words: tuple[str, ...]


_COLOURS = (
    _Colour("Black", "09", (28, 28, 30), "Dark", "Black", 0.19, ("black",)),
    _Colour("White", "10", (250, 250, 248), "Light", "White", 0.11, ("white",)),
    _Colour("Beige", "13", (214, 192, 160), "Light", "Beige", 0.09, ("beige", "sand")),
    _Colour("Grey", "07", (128, 128, 132), "Medium", "Grey", 0.09, ("grey",)),
    _Colour("Red", "42", (196, 32, 40), "Medium", "Red", 0.07, ("red",)),
    _Colour("Pink", "52", (240, 160, 190), "Light", "Pink", 0.08, ("pink",)),
    _Colour("Yellow", "22", (240, 206, 50), "Light", "Yellow", 0.05, ("yellow",)),
    _Colour("Green", "62", (50, 120, 70), "Medium", "Green", 0.07, ("green",)),
    _Colour("Dark Blue", "73", (26, 40, 90), "Dark", "Blue", 0.14, ("dark blue", "navy")),
    _Colour("Light Blue", "71", (150, 190, 230), "Light", "Blue", 0.08, ("light blue",)),
)
_COLOUR_VALUE_IDS = {"Dark": "4", "Medium": "7", "Light": "3"}
_COLOUR_MASTER_IDS = {
    "Black": "5", "White": "9", "Beige": "11", "Grey": "12", "Red": "18", "Pink": "4",
    "Yellow": "8", "Green": "19", "Blue": "2",
}  # fmt: skip

_PATTERNS = ("Solid", "Stripe", "Check", "Dot", "All over pattern")
_PATTERN_NO = {
    "Solid": "1010016", "Stripe": "1010017", "Check": "1010004", "Dot": "1010008",
    "All over pattern": "1010001",
}  # fmt: skip
_PATTERN_WORDS = {
    "Solid": ("plain", "solid-colour"),
    "Stripe": ("striped", "striped", "pinstriped"),
    "Check": ("checked", "checked", "plaid"),
    "Dot": ("dotted", "dotted", "polka-dot"),
    "All over pattern": ("floral", "floral", "flower-print"),
}

# Divisions as H&M's index groups: (index_group_no, index_code, index_name, section prefix).
_DIVISIONS = {
    "Ladieswear": ("1", "A", "Ladieswear", "Womens"),
    "Divided": ("2", "D", "Divided", "Divided"),
    "Menswear": ("3", "F", "Menswear", "Mens"),
    "Baby/Children": ("4", "H", "Children Sizes 92-140", "Kids"),
    "Sport": ("26", "S", "Sport", "Sport"),
}
_DIVISION_NAMES = tuple(_DIVISIONS)

_MATERIALS_TOP = ("cotton jersey", "soft jersey", "organic cotton", "linen blend", "modal")
_MATERIALS_KNIT = ("fine knit", "rib knit", "wool blend", "chunky knit", "cashmere blend")
_MATERIALS_BOTTOM = ("denim", "twill", "linen", "cotton", "crepe", "stretch twill")
_MATERIALS_OUTER = ("padded nylon", "denim", "twill", "faux leather", "cotton canvas")
_MATERIALS_BAG = ("canvas", "faux leather", "woven straw", "nylon")
_MATERIALS_SHOE = ("mesh", "faux leather", "canvas", "suede-look")


@dataclass(frozen=True)
class _Type:
    name: str
    no: str
    group: str
    garment_group: tuple[str, str]  # (garment_group_no, garment_group_name)
    division_weights: tuple[float, ...]  # over _DIVISION_NAMES
    pattern_weights: tuple[float, ...]  # over _PATTERNS
    prices: tuple[float, ...]  # shelf prices the type is sold at (EUR-like)
    nouns: tuple[str, ...]
    materials: tuple[str, ...]
    features: tuple[str, ...]


#                    Ladies Divided  Mens  Kids  Sport
_TYPES = (
    _Type("T-shirt", "255", "Garment Upper body", ("1002", "Jersey Basic"),
          (0.22, 0.22, 0.28, 0.16, 0.12), (0.40, 0.25, 0.05, 0.10, 0.20),
          (4.99, 7.99, 9.99, 12.99, 14.99), ("T-shirt", "tee", "top"), _MATERIALS_TOP,
          ("a round neckline", "short sleeves", "a chest pocket", "dropped shoulders",
           "a straight-cut hem")),
    _Type("Vest top", "253", "Garment Upper body", ("1005", "Jersey Fancy"),
          (0.45, 0.30, 0.0, 0.12, 0.13), (0.45, 0.25, 0.0, 0.10, 0.20),
          (4.99, 7.99, 9.99, 12.99), ("vest top", "strap top", "tank top"), _MATERIALS_TOP,
          ("narrow shoulder straps", "a scoop neck", "a racer back", "a wide neckline")),
    _Type("Sweater", "252", "Garment Upper body", ("1003", "Knitwear"),
          (0.30, 0.20, 0.30, 0.20, 0.0), (0.50, 0.25, 0.10, 0.05, 0.10),
          (19.99, 24.99, 29.99, 34.99, 39.99), ("jumper", "sweater", "cardigan"),
          _MATERIALS_KNIT,
          ("long sleeves", "ribbing at the cuffs and hem", "a turtle neck", "dropped shoulders")),
    _Type("Jacket", "264", "Garment Upper body", ("1007", "Outdoor"),
          (0.25, 0.15, 0.35, 0.10, 0.15), (0.65, 0.05, 0.20, 0.02, 0.08),
          (29.99, 39.99, 49.99, 59.99, 69.99), ("jacket", "bomber jacket", "parka"),
          _MATERIALS_OUTER,
          ("a zip down the front", "a stand-up collar", "side pockets", "a detachable hood")),
    _Type("Trousers", "272", "Garment Lower body", ("1009", "Trousers"),
          (0.25, 0.15, 0.35, 0.10, 0.15), (0.55, 0.20, 0.20, 0.02, 0.03),
          (19.99, 24.99, 29.99, 34.99, 39.99), ("trousers", "chinos", "joggers"),
          _MATERIALS_BOTTOM,
          ("a high waist", "tapered legs", "side pockets", "an elasticated waist", "a zip fly")),
    _Type("Shorts", "274", "Garment Lower body", ("1025", "Shorts"),
          (0.15, 0.20, 0.30, 0.15, 0.20), (0.50, 0.20, 0.15, 0.05, 0.10),
          (9.99, 12.99, 14.99, 19.99), ("shorts", "bermuda shorts"), _MATERIALS_BOTTOM,
          ("an elasticated drawstring waist", "side pockets", "turn-ups at the hems")),
    _Type("Skirt", "275", "Garment Lower body", ("1012", "Skirts"),
          (0.55, 0.35, 0.0, 0.10, 0.0), (0.35, 0.15, 0.15, 0.10, 0.25),
          (14.99, 19.99, 24.99, 29.99), ("skirt", "midi skirt", "mini skirt"), _MATERIALS_BOTTOM,
          ("a high waist", "a flared hem", "pleats", "a concealed zip at the back")),
    _Type("Dress", "265", "Garment Full body", ("1013", "Dresses Ladies"),
          (0.58, 0.30, 0.0, 0.12, 0.0), (0.30, 0.15, 0.10, 0.15, 0.30),
          (19.99, 24.99, 29.99, 34.99, 49.99), ("dress", "midi dress", "shirt dress"),
          ("chiffon", "cotton jersey", "satin", "linen blend", "crepe"),
          ("a V-neck", "short puff sleeves", "a tie belt", "a flared skirt", "a smocked bodice")),
    _Type("Bag", "66", "Accessories", ("1019", "Accessories"),
          (0.55, 0.25, 0.12, 0.05, 0.03), (0.70, 0.10, 0.08, 0.04, 0.08),
          (12.99, 19.99, 24.99, 29.99), ("bag", "shoulder bag", "shopper"), _MATERIALS_BAG,
          ("a zip closure", "an inner pocket", "two handles", "an adjustable shoulder strap")),
    _Type("Sneakers", "89", "Shoes", ("1020", "Shoes"),
          (0.25, 0.15, 0.25, 0.15, 0.20), (0.75, 0.10, 0.05, 0.05, 0.05),
          (24.99, 29.99, 39.99, 49.99, 59.99), ("sneakers", "trainers"), _MATERIALS_SHOE,
          ("lacing at the front", "a padded top edge", "a chunky rubber sole",
           "a loop at the back")),
)  # fmt: skip
_TYPE_SHARES = (0.13, 0.09, 0.11, 0.09, 0.12, 0.08, 0.09, 0.13, 0.08, 0.08)

_FITS = ("relaxed-fit", "slim-fit", "oversized", "regular-fit", "fitted", "loose-fit")
_CARE_NOTES = (
    "Machine washable.",
    "Unlined.",
    "Soft, brushed inside.",
    "Made partly from recycled materials.",
)
_MODEL_NAMES = ("Tilly", "Jade", "Luna", "Mia", "Nora", "Ivy", "Otto", "Leo", "Sam", "Elle")

# H&M shelf prices divided by this give the scaled prices of transactions_train.csv.
_PRICE_SCALE = 590.0


# --------------------------------------------------------------------------- silhouettes

# Outlines in unit coordinates (x across the width, y down the height).
_POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "T-shirt": ((0.33, 0.12), (0.42, 0.10), (0.50, 0.15), (0.58, 0.10), (0.67, 0.12),
                (0.93, 0.28), (0.85, 0.40), (0.75, 0.34), (0.75, 0.88), (0.25, 0.88),
                (0.25, 0.34), (0.15, 0.40), (0.07, 0.28)),
    "Vest top": ((0.33, 0.10), (0.39, 0.10), (0.43, 0.25), (0.57, 0.25), (0.61, 0.10),
                 (0.67, 0.10), (0.72, 0.36), (0.74, 0.88), (0.26, 0.88), (0.28, 0.36)),
    "Sweater": ((0.33, 0.10), (0.42, 0.08), (0.50, 0.12), (0.58, 0.08), (0.67, 0.10),
                (0.86, 0.22), (0.97, 0.80), (0.86, 0.82), (0.77, 0.38), (0.77, 0.88),
                (0.23, 0.88), (0.23, 0.38), (0.14, 0.82), (0.03, 0.80), (0.14, 0.22)),
    "Jacket": ((0.32, 0.08), (0.42, 0.06), (0.50, 0.10), (0.58, 0.06), (0.68, 0.08),
               (0.88, 0.20), (0.97, 0.84), (0.86, 0.86), (0.79, 0.40), (0.80, 0.92),
               (0.20, 0.92), (0.21, 0.40), (0.14, 0.86), (0.03, 0.84), (0.12, 0.20)),
    "Trousers": ((0.29, 0.06), (0.71, 0.06), (0.77, 0.95), (0.56, 0.95), (0.50, 0.34),
                 (0.44, 0.95), (0.23, 0.95)),
    "Shorts": ((0.25, 0.24), (0.75, 0.24), (0.84, 0.68), (0.56, 0.70), (0.50, 0.48),
               (0.44, 0.70), (0.16, 0.68)),
    "Skirt": ((0.30, 0.20), (0.70, 0.20), (0.88, 0.80), (0.12, 0.80)),
    "Dress": ((0.36, 0.05), (0.42, 0.05), (0.50, 0.13), (0.58, 0.05), (0.64, 0.05),
              (0.68, 0.33), (0.62, 0.45), (0.86, 0.95), (0.14, 0.95), (0.38, 0.45),
              (0.32, 0.33)),
    "Bag": ((0.16, 0.42), (0.84, 0.42), (0.90, 0.86), (0.10, 0.86)),
    "Sneakers": ((0.06, 0.64), (0.08, 0.52), (0.30, 0.47), (0.46, 0.37), (0.62, 0.35),
                 (0.70, 0.47), (0.92, 0.55), (0.95, 0.66)),
}  # fmt: skip

# Seams, zips and hems drawn darker on top of the pattern: lists of polylines.
_DETAILS: dict[str, tuple[tuple[tuple[float, float], ...], ...]] = {
    "T-shirt": (((0.42, 0.10), (0.50, 0.17), (0.58, 0.10)),),
    "Vest top": (((0.43, 0.25), (0.57, 0.25)),),
    "Sweater": (((0.23, 0.84), (0.77, 0.84)), ((0.03, 0.76), (0.14, 0.78)),
                ((0.86, 0.78), (0.97, 0.76))),
    "Jacket": (((0.42, 0.06), (0.50, 0.30), (0.58, 0.06)), ((0.50, 0.30), (0.50, 0.92)),
               ((0.28, 0.62), (0.40, 0.62)), ((0.60, 0.62), (0.72, 0.62))),
    "Trousers": (((0.29, 0.11), (0.71, 0.11)), ((0.50, 0.11), (0.50, 0.26))),
    "Shorts": (((0.25, 0.29), (0.75, 0.29)),),
    "Skirt": (((0.30, 0.25), (0.70, 0.25)),),
    "Dress": (((0.34, 0.40), (0.66, 0.40)),),
    "Bag": (((0.16, 0.52), (0.84, 0.52)),),
    "Sneakers": (((0.50, 0.42), (0.56, 0.50)), ((0.56, 0.40), (0.62, 0.48))),
}  # fmt: skip


def _silhouette(type_name: str, rng) -> tuple[Any, Any, Any]:
    """Alpha, detail-line and trim masks (float32 HxW in [0, 1]; trim None if none)."""
    import numpy as np
    from PIL import Image, ImageDraw

    w, h = IMAGE_SIZE
    big = (w * _SS, h * _SS)
    # Per-article jitter so two dresses are not pixel-identical shapes.
    sx, sy = rng.uniform(0.9, 1.06), rng.uniform(0.93, 1.04)
    dx, dy = rng.uniform(-0.02, 0.02), rng.uniform(-0.015, 0.015)

    def pts(poly):
        return [
            (((x - 0.5) * sx + 0.5 + dx) * big[0], ((y - 0.5) * sy + 0.5 + dy) * big[1])
            for x, y in poly
        ]

    shape = Image.new("L", big, 0)
    draw = ImageDraw.Draw(shape)
    draw.polygon(pts(_POLYGONS[type_name]), fill=255)
    if type_name == "Bag":
        # Handle: an elliptical ring above the body.
        (x0, y0), (x1, _) = pts(((0.32, 0.16), (0.68, 0.16)))
        y1 = pts(((0.5, 0.62),))[0][1]
        draw.ellipse((x0, y0, x1, y1), outline=255, width=5 * _SS)
    detail = Image.new("L", big, 0)
    ddraw = ImageDraw.Draw(detail)
    for line in _DETAILS.get(type_name, ()):
        ddraw.line(pts(line), fill=255, width=2 * _SS)
    trim = Image.new("L", big, 0)
    if type_name == "Sneakers":
        # A light rubber sole, not patterned.
        tdraw = ImageDraw.Draw(trim)
        tdraw.polygon(pts(((0.05, 0.64), (0.96, 0.64), (0.95, 0.72), (0.07, 0.72))), fill=255)
        draw.polygon(pts(((0.05, 0.64), (0.96, 0.64), (0.95, 0.72), (0.07, 0.72))), fill=255)

    def down(im):
        return np.asarray(im.resize((w, h), Image.Resampling.BOX), dtype=np.float32) / 255.0

    trim_arr = down(trim) if type_name == "Sneakers" else None
    return down(shape), down(detail), trim_arr


def _contrast_colour(colour: _Colour, rng) -> tuple[int, int, int]:
    """A second colour for the pattern that stands out against the base colour."""
    pool: tuple[str, ...]
    if colour.value == "Light":
        pool = ("Black", "Dark Blue", "Red", "Green")
    elif colour.value == "Dark":
        pool = ("White", "Beige", "Yellow", "Pink", "Light Blue")
    else:
        pool = ("White", "Black")
    name = pool[int(rng.integers(len(pool)))]
    return next(c.rgb for c in _COLOURS if c.name == name)


def _pattern_image(pattern: str, type_name: str, base, second, rng, yy, xx):
    """The garment's fabric (HxWx3 float32) over the whole canvas, before masking."""
    import numpy as np

    h, w = yy.shape
    base = np.asarray(base, dtype=np.float32)
    second = np.asarray(second, dtype=np.float32)
    fabric = np.broadcast_to(base, (h, w, 3))

    def paint(mask, colour):
        # np.where beats boolean-mask assignment on HxWx3 by a wide margin.
        return np.where(mask[..., None], np.asarray(colour, dtype=np.float32), fabric)

    if pattern == "Stripe":
        period = rng.uniform(8.0, 15.0)
        width = period * rng.uniform(0.28, 0.45)  # keep the base colour dominant
        # Trousers mostly get pinstripes, everything else mostly Breton stripes.
        vertical = rng.random() < (0.7 if type_name == "Trousers" else 0.25)
        coord = xx if vertical else yy
        mask = ((coord + rng.uniform(0, period)) % period) < width
        fabric = paint(mask, second)
    elif pattern == "Check":
        period = rng.uniform(10.0, 18.0)
        width = period * rng.uniform(0.25, 0.38)  # base colour keeps the largest share
        a = ((yy + rng.uniform(0, period)) % period) < width
        b = ((xx + rng.uniform(0, period)) % period) < width
        # Gingham: full second colour where bands cross, half tone on single bands.
        fabric = paint(a ^ b, 0.5 * (base + second))
        fabric = paint(a & b, second)
    elif pattern == "Dot":
        period = rng.uniform(9.0, 15.0)
        radius = period * rng.uniform(0.18, 0.28)
        y = yy + rng.uniform(0, period)
        row = np.floor(y / period)
        # Staggered rows like a polka-dot print.
        x = xx + rng.uniform(0, period) + (row % 2) * period / 2
        ddy = (y % period) - period / 2
        ddx = (x % period) - period / 2
        fabric = paint(ddx * ddx + ddy * ddy < radius * radius, second)
    elif pattern == "All over pattern":
        # Floral: one five-petal flower per jittered grid cell, randomly turned and sized.
        period = rng.uniform(14.0, 22.0)
        y = yy + rng.uniform(0, period)
        x = xx + rng.uniform(0, period)
        cy, cx = np.floor(y / period).astype(np.int64), np.floor(x / period).astype(np.int64)
        ny, nx = int(cy.max()) + 1, int(cx.max()) + 1
        jit = period * 0.12
        off_y = rng.uniform(-jit, jit, (ny, nx)).astype(np.float32)[cy, cx]
        off_x = rng.uniform(-jit, jit, (ny, nx)).astype(np.float32)[cy, cx]
        rot = rng.uniform(0, 2 * math.pi, (ny, nx)).astype(np.float32)[cy, cx]
        size = period * rng.uniform(0.30, 0.40, (ny, nx)).astype(np.float32)[cy, cx]
        ly = (y % period) - period / 2 - off_y
        lx = (x % period) - period / 2 - off_x
        rho = np.sqrt(lx * lx + ly * ly)
        theta = np.arctan2(ly, lx)
        # |cos(2.5 t)| has five round lobes: rounder petals than a plain rose curve.
        petals = rho < size * (0.35 + 0.65 * np.abs(np.cos(2.5 * (theta - rot))))
        centre = rho < size * 0.22
        fabric = paint(petals, second)
        heart = (250, 250, 245) if base.mean() > 200 and base[2] < 100 else (240, 200, 60)
        fabric = paint(centre, heart)
    return np.array(fabric, dtype=np.float32)  # writable copy for the shading steps


@functools.cache
def _grid():
    import numpy as np

    w, h = IMAGE_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False  # shared between articles
    return yy, xx


def _render_article(
    path: Path, type_name: str, pattern: str, colour: _Colour, seed: int, index: int
) -> None:
    """Draw one packshot and save it as a JPEG."""
    import numpy as np
    from PIL import Image

    # One stream per article: the picture does not depend on the order they are drawn in.
    rng = np.random.default_rng([seed, 1, index])
    w, h = IMAGE_SIZE
    yy, xx = _grid()
    alpha, detail, trim = _silhouette(type_name, rng)
    base = np.clip(np.asarray(colour.rgb, dtype=np.float32) + rng.normal(0, 6, 3), 0, 255)
    second = _contrast_colour(colour, rng)
    fabric = _pattern_image(pattern, type_name, base, second, rng, yy, xx)
    # Soft light from the upper left so the garment reads as a volume, not a sticker.
    shade = 1.0 - 0.10 * ((xx / w - 0.35) ** 2 + 0.5 * (yy / h - 0.3) ** 2)
    fabric *= shade[..., None]
    fabric *= (1.0 - 0.45 * detail)[..., None]
    if trim is not None:
        fabric = fabric * (1 - trim[..., None]) + 236.0 * trim[..., None]
    # Darken the outline so white garments still separate from the light background.
    edge = np.zeros_like(alpha)
    edge[:, 1:] += np.abs(np.diff(alpha, axis=1))
    edge[1:, :] += np.abs(np.diff(alpha, axis=0))
    fabric *= (1.0 - 0.35 * np.clip(edge, 0, 1))[..., None]
    # Grain: luminance noise only, a third of the cost of per-channel noise.
    fabric += 3.0 * rng.standard_normal((h, w, 1), dtype=np.float32)
    bg = np.asarray(_BACKGROUND, dtype=np.float32)
    a = np.clip(alpha + edge * 0.5, 0, 1)[..., None]
    img = fabric * a + bg * (1 - a)
    pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, format="JPEG", quality=JPEG_QUALITY)


# --------------------------------------------------------------------------- text


def _word(
    rng,
    true: str,
    options: Sequence[str],
    vocab: Mapping[str, Sequence[str]],
    p_true: float,
    p_wrong: float,
) -> str | None:
    """The attribute's word with p_true, a wrong attribute's word with p_wrong, else None."""
    u = rng.random()
    if u < p_true:
        words = vocab[true]
    elif u < p_true + p_wrong:
        wrong = [o for o in options if o != true]
        words = vocab[wrong[int(rng.integers(len(wrong)))]]
    else:
        return None
    return words[int(rng.integers(len(words)))]


def _pick(rng, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


_COLOUR_VOCAB = {c.name: c.words for c in _COLOURS}
_COLOUR_NAMES = tuple(c.name for c in _COLOURS)


def _title_and_desc(rng, t: _Type, pattern: str, colour: _Colour) -> tuple[str, str]:
    """Noisy product name and description that mention the attributes only some of the time."""
    # Per-field rates chosen so that over title+description the pattern word shows up for
    # ~60% of articles, the colour word for ~50% and a wrong word for ~10%.
    noun = _pick(rng, t.nouns)
    material = _pick(rng, t.materials)
    fit = _pick(rng, _FITS)
    parts = []
    if rng.random() < 0.25:
        parts.append(_pick(rng, _MODEL_NAMES))
    if rng.random() < 0.3 and t.group.startswith("Garment"):
        parts.append(fit)
    cw = _word(rng, colour.name, _COLOUR_NAMES, _COLOUR_VOCAB, 0.30, 0.05)
    pw = _word(rng, pattern, _PATTERNS, _PATTERN_WORDS, 0.40, 0.06)
    parts += [x for x in (cw, pw) if x]
    if rng.random() < 0.35:
        parts.append(material.split()[-1] if len(material.split()) > 1 else material)
    parts.append(noun)
    title = " ".join(parts)
    title = title[0].upper() + title[1:]

    if rng.random() < 0.15:
        return title, ""
    feats = rng.choice(len(t.features), size=2, replace=False)
    lead = f"{fit} {noun}" if t.group.startswith("Garment") else noun
    sentences = [
        f"{lead[0].upper()}{lead[1:]} in {material} with {t.features[feats[0]]} "
        f"and {t.features[feats[1]]}."
    ]
    pw = _word(rng, pattern, _PATTERNS, _PATTERN_WORDS, 0.45, 0.06)
    if pw:
        sentences.append(f"{pw[0].upper()}{pw[1:]} design.")
    cw = _word(rng, colour.name, _COLOUR_NAMES, _COLOUR_VOCAB, 0.35, 0.05)
    if cw:
        sentences.append(f"Colour: {cw}.")
    if rng.random() < 0.3:
        sentences.append(_pick(rng, _CARE_NOTES))
    order = [sentences[0]] + [sentences[i] for i in rng.permutation(range(1, len(sentences)))]
    return title, " ".join(order)


# --------------------------------------------------------------------------- catalogue


def _add_months(start: dt.date, months: int) -> dt.date:
    y, m = divmod(start.month - 1 + months, 12)
    year, month = start.year + y, m + 1
    return dt.date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def _build_articles(rng, n_products: int, n_days: int) -> dict[str, Any]:
    """Draw the assortment: ids, types, divisions, attributes, prices and release days."""
    import numpy as np

    # Several colourways share a product code, like H&M's articles of one product.
    sizes: list[int] = []
    while sum(sizes) < n_products:
        sizes.append(int(rng.choice([1, 2, 3, 4], p=[0.45, 0.30, 0.15, 0.10])))
    sizes[-1] -= sum(sizes) - n_products
    n_codes = len(sizes)
    codes = np.sort(rng.choice(np.arange(108775, 959999), size=n_codes, replace=False))
    # Newer products get higher codes, as in the real catalogue; a third is on sale at start.
    at_start = rng.random(n_codes) < 0.33
    release_code = np.where(at_start, 0, rng.integers(1, max(2, n_days - 30), n_codes))
    release_code = np.sort(release_code)
    release_code[0] = 0  # something must be on sale on day one, even for tiny catalogues

    shares = np.asarray(_TYPE_SHARES) / sum(_TYPE_SHARES)
    colour_w = np.asarray([c.weight for c in _COLOURS])
    kids_boost = np.asarray([1, 1, 1, 1, 1, 2.5, 2.5, 1, 1, 2])  # pink/yellow/light blue
    mens_cut = np.asarray([1, 1, 1, 1, 1, 0.1, 0.4, 1, 1, 1])
    rows: list[dict[str, Any]] = []
    for ci, (code, size) in enumerate(zip(codes, sizes, strict=True)):
        ti = int(rng.choice(len(_TYPES), p=shares))
        t = _TYPES[ti]
        dw = np.asarray(t.division_weights)
        division = _DIVISION_NAMES[int(rng.choice(len(dw), p=dw / dw.sum()))]
        pw = np.asarray(t.pattern_weights)
        pattern = _PATTERNS[int(rng.choice(len(pw), p=pw / pw.sum()))]
        cw = colour_w * (kids_boost if division == "Baby/Children" else 1)
        cw = cw * (mens_cut if division == "Menswear" else 1)
        colours = rng.choice(len(_COLOURS), size=size, replace=False, p=cw / cw.sum())
        shelf = float(rng.choice(t.prices))
        popularity = rng.normal(0.0, 1.0)  # product-level appeal, shared by colourways
        suffix = int(rng.integers(1, 20))
        for k in range(size):
            colour = _COLOURS[int(colours[k])]
            title, desc = _title_and_desc(rng, t, pattern, colour)
            rows.append({
                "article_id": f"{int(code):07d}{suffix:03d}",
                "code": int(code), "type": ti, "division": division, "pattern": pattern,
                "colour": int(colours[k]), "price": shelf / _PRICE_SCALE,
                "release": int(release_code[ci]),
                "pop": popularity + float(rng.normal(0.0, 0.35)),
                "title": title, "desc": desc,
            })  # fmt: skip
            suffix += int(rng.integers(1, 6))
    return {"rows": rows, "n_codes": n_codes}


def _article_record(row: dict[str, Any], missing: dict[str, bool]) -> list[str]:
    """One articles.csv line; blanked labels take their id column with them."""
    t = _TYPES[row["type"]]
    colour = _COLOURS[row["colour"]]
    gno, _, iname, sprefix = _DIVISIONS[row["division"]]
    div_i = _DIVISION_NAMES.index(row["division"])
    ggno, ggname = t.garment_group
    if row["division"] == "Baby/Children" and t.name in ("Dress", "Skirt"):
        ggno, ggname = "1018", "Dresses/Skirts girls"
    rec = {
        "article_id": row["article_id"],
        "product_code": row["article_id"][:7],
        "prod_name": row["title"],
        "product_type_no": t.no,
        "product_type_name": t.name,
        "product_group_name": t.group,
        "graphical_appearance_no": _PATTERN_NO[row["pattern"]],
        "graphical_appearance_name": row["pattern"],
        "colour_group_code": colour.code,
        "colour_group_name": colour.name,
        "perceived_colour_value_id": _COLOUR_VALUE_IDS[colour.value],
        "perceived_colour_value_name": colour.value,
        "perceived_colour_master_id": _COLOUR_MASTER_IDS[colour.master],
        "perceived_colour_master_name": colour.master,
        "department_no": str(1200 + 300 * div_i + 11 * row["type"]),
        "department_name": f"{sprefix} {t.garment_group[1]}",
        "index_code": _DIVISIONS[row["division"]][1],
        "index_name": iname,
        "index_group_no": gno,
        "index_group_name": row["division"],
        "section_no": str(10 + 12 * div_i + (row["type"] % 4)),
        "section_name": f"{sprefix} {('Everyday', 'Trend', 'Basics', 'Premium')[row['type'] % 4]}",
        "garment_group_no": ggno,
        "garment_group_name": ggname,
        "detail_desc": row["desc"],
    }
    for attr, companion in LABEL_COMPANIONS.items():
        if missing[attr]:
            rec[attr] = ""
            rec[companion] = ""
    return [rec[c] for c in ARTICLE_COLUMNS]


# --------------------------------------------------------------------------- customers


def _build_customers(rng, n_customers: int, seed: int) -> dict[str, Any]:
    """Customers with latent tastes over types, colours, patterns, divisions and price."""
    import numpy as np

    n = n_customers
    ids = [hashlib.sha256(f"atelier-demo:{seed}:customer:{i}".encode()).hexdigest()
           for i in range(n)]  # fmt: skip
    div_pref = rng.dirichlet(np.full(len(_DIVISIONS), 0.3), n)
    primary = div_pref.argmax(axis=1)
    # Age follows the division a customer shops most: Divided skews young, kids' parents 25-45.
    age_mu = np.asarray([38, 22, 36, 34, 30])[primary]
    age_sd = np.asarray([12, 5, 12, 6, 10])[primary]
    age = np.clip(np.rint(rng.normal(age_mu, age_sd)), 16, 80).astype(int)
    tastes = {
        "division": div_pref,
        "type": rng.dirichlet(np.full(len(_TYPES), 0.9), n),
        "colour": rng.dirichlet(np.full(len(_COLOURS), 0.6), n),
        "pattern": rng.dirichlet(np.full(len(_PATTERNS), 0.8), n),
        "price_sens": rng.lognormal(0.0, 0.5, n),
        "novelty": rng.uniform(0.5, 2.5, n),
        "online": rng.beta(1.5, 2.0, n),
    }
    fn = rng.random(n) < 0.35
    active = fn & (rng.random(n) < 0.95)
    status = rng.choice(["ACTIVE", "PRE-CREATE", "LEFT CLUB"], n, p=[0.92, 0.07, 0.01])
    news = np.where(fn, rng.choice(["Regularly", "Monthly"], n, p=[0.97, 0.03]), "NONE")
    n_postal = max(1, n // 3)  # households and neighbours share a postal code
    postal = rng.integers(0, n_postal, n)
    records = [
        [
            ids[i], "1.0" if fn[i] else "", "1.0" if active[i] else "", str(status[i]),
            str(news[i]), str(int(age[i])),
            hashlib.sha256(f"atelier-demo:{seed}:postal:{int(postal[i])}".encode()).hexdigest(),
        ]
        for i in range(n)
    ]  # fmt: skip
    return {"ids": ids, "tastes": tastes, "records": records}


def _build_transactions(
    rng, articles: list[dict[str, Any]], tastes: dict[str, Any], n_days: int
) -> list[tuple[int, int, int, float, int]]:
    """Purchases as (day, customer, article, price, channel), sorted by day."""
    import numpy as np

    n_c = len(tastes["novelty"])
    t_idx = np.asarray([a["type"] for a in articles])
    c_idx = np.asarray([a["colour"] for a in articles])
    p_idx = np.asarray([_PATTERNS.index(a["pattern"]) for a in articles])
    d_idx = np.asarray([_DIVISION_NAMES.index(a["division"]) for a in articles])
    price = np.asarray([a["price"] for a in articles])
    release = np.asarray([a["release"] for a in articles])
    pop = np.asarray([a["pop"] for a in articles])

    def lg(p):
        # Floor so a dispreferred attribute is rare, not impossible.
        return np.log(np.maximum(p, 0.01))

    # Customer x article affinity from the latent tastes; float32 keeps it small.
    base = (
        1.0 * lg(tastes["division"])[:, d_idx]
        + 1.0 * lg(tastes["type"])[:, t_idx]
        + 1.2 * lg(tastes["colour"])[:, c_idx]
        + 1.0 * lg(tastes["pattern"])[:, p_idx]
        + 1.3 * pop[None, :]
        - tastes["price_sens"][:, None] * (price[None, :] / 0.05)
    ).astype(np.float32)

    # Heavy-tailed activity: a few customers visit very often.
    visits = np.clip(np.rint(rng.lognormal(np.log(13.0), 0.8, n_c)), 3, 250).astype(int)
    joined = np.where(rng.random(n_c) < 0.75, 0, rng.integers(0, n_days // 2, n_c))
    out_day, out_cust, out_art, out_price, out_chan = [], [], [], [], []
    for c in range(n_c):
        days = np.sort(rng.integers(joined[c], n_days, visits[c]))
        per_visit = 1 + rng.poisson(1.6, visits[c])
        day = np.repeat(days, per_visit)
        age = (day[:, None] - release[None, :]).astype(np.float32)
        shelf_age = np.maximum(age, 0)
        # New arrivals get a boost that fades over ~6 weeks; old stock slowly loses appeal.
        logits = (
            base[c][None, :]
            + np.float32(tastes["novelty"][c]) * np.exp(shelf_age / np.float32(-45.0))
            - shelf_age * np.float32(0.6 / 365.0)
        )
        weight = np.where(age < 0, np.float32(0), np.exp(logits - logits.max()))  # unreleased: 0
        # Inverse-CDF draw of one article per purchase from softmax(logits).
        cdf = np.cumsum(weight, axis=1)
        # u stays strictly below the total, so the first cdf > u is a released article.
        u = rng.random(len(day), dtype=np.float32) * (cdf[:, -1] * np.float32(0.9999))
        pick = (cdf <= u[:, None]).sum(axis=1)
        # Same article twice in one basket (sizes, gifts) happens in H&M's data.
        dup = rng.random(len(pick)) < 0.03
        pick = np.concatenate([pick, pick[dup]])
        day = np.concatenate([day, day[dup]])
        paid = price[pick]
        on_sale = ((day - release[pick]) > 90) & (rng.random(len(pick)) < 0.35)
        paid = np.where(on_sale, paid * rng.choice([0.6, 0.7, 0.8], len(pick)), paid)
        chan = np.where(rng.random(len(pick)) < tastes["online"][c], 2, 1)
        out_day.append(day)
        out_cust.append(np.full(len(pick), c))
        out_art.append(pick)
        out_price.append(paid)
        out_chan.append(chan)
    day = np.concatenate(out_day)
    cust = np.concatenate(out_cust)
    art = np.concatenate(out_art)
    paid = np.concatenate(out_price)
    chan = np.concatenate(out_chan)
    order = np.lexsort((art, cust, day))  # by day, then customer, then article
    return [(int(day[i]), int(cust[i]), int(art[i]), float(paid[i]), int(chan[i])) for i in order]


# --------------------------------------------------------------------------- entry point


def _write_csv(path: Path, header: Sequence[str], rows) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


_IMAGE_NAME = re.compile(r"^\d{10}\.jpg$")


def generate_demo(
    out_dir: Path,
    seed: int = 0,
    *,
    n_products: int = 2400,
    n_customers: int = 600,
    start: str = "2019-01-01",
    months: int = 14,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write a synthetic H&M-layout catalogue into `out_dir` and return a summary.

    `n_products` counts articles (rows of articles.csv, one image each). The summary holds the
    counts (products, product_codes, customers, purchases, types, images), first/last purchase
    date and the missing-label fraction per target attribute.
    """
    import numpy as np

    if n_products < 1 or n_customers < 1 or months < 1:
        raise ValueError("n_products, n_customers and months must be positive")
    say = progress or (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = dt.date.fromisoformat(start)
    n_days = (_add_months(first, months) - first).days
    # Independent streams per stage: changing one stage's draws leaves the others' intact.
    rng_cat = np.random.default_rng([seed, 0])
    rng_cust = np.random.default_rng([seed, 2])
    rng_tx = np.random.default_rng([seed, 3])
    rng_miss = np.random.default_rng([seed, 4])

    say(f"catalogue: {n_products} articles")
    cat = _build_articles(rng_cat, n_products, n_days)
    rows = cat["rows"]
    missing = _missing_labels(rng_miss, len(rows))
    _write_articles(out, rows, missing)

    say(f"customers: {n_customers}")
    cust = _build_customers(rng_cust, n_customers, seed)
    _write_csv(out / "customers.csv", CUSTOMER_COLUMNS, cust["records"])

    say("transactions")
    tx = _build_transactions(rng_tx, rows, cust["tastes"], n_days)
    dates = [(first + dt.timedelta(days=d)).isoformat() for d in range(n_days)]
    _write_transactions(out, tx, dates, cust["ids"], rows)
    say(f"transactions: {len(tx)} purchases")

    _write_images(out, rows, seed, say)
    return {
        "out_dir": str(out),
        "seed": seed,
        "products": len(rows),
        "product_codes": cat["n_codes"],
        "customers": n_customers,
        "purchases": len(tx),
        "types": len({r["type"] for r in rows}),
        "images": len(rows),
        "first_date": dates[tx[0][0]] if tx else None,
        "last_date": dates[tx[-1][0]] if tx else None,
        "products_at_start": sum(1 for r in rows if r["release"] == 0),
        "missing_fraction": {a: float(missing[a].mean()) for a in TARGET_ATTRIBUTES},
    }


def _missing_labels(rng, n: int) -> dict[str, Any]:
    """Per target attribute, a bool mask (n,) of the articles whose label is blanked.

    A rate per attribute in `MISSING_RATE_RANGE`, blanked for exactly that share.
    """
    import numpy as np

    missing = {}
    for attr in TARGET_ATTRIBUTES:
        rate = rng.uniform(*MISSING_RATE_RANGE)
        blank = np.zeros(n, dtype=bool)
        blank[rng.permutation(n)[: round(rate * n)]] = True
        missing[attr] = blank
    return missing


def _write_articles(out: Path, rows: list[dict[str, Any]], missing: Mapping[str, Any]) -> None:
    _write_csv(
        out / "articles.csv",
        ARTICLE_COLUMNS,
        (_article_record(r, {a: bool(missing[a][i]) for a in TARGET_ATTRIBUTES})
         for i, r in enumerate(rows)),
    )  # fmt: skip


def _write_transactions(
    out: Path,
    tx: list[tuple[int, int, int, float, int]],
    dates: list[str],
    customer_ids: list[str],
    rows: list[dict[str, Any]],
) -> None:
    records = (
        (dates[d], customer_ids[c], rows[a]["article_id"], repr(p), str(ch))
        for d, c, a, p, ch in tx
    )
    _write_csv(out / "transactions_train.csv", TRANSACTION_COLUMNS, records)


def _write_images(
    out: Path, rows: list[dict[str, Any]], seed: int, say: Callable[[str], None]
) -> None:
    """One JPEG per article; images of a previous catalogue in `out` are removed."""
    n = len(rows)
    wanted = set()
    for i, r in enumerate(rows):
        path = image_path(out, r["article_id"])
        wanted.add(path)
        _render_article(path, _TYPES[r["type"]].name, r["pattern"], _COLOURS[r["colour"]],
                        seed, i)  # fmt: skip
        if (i + 1) % 400 == 0 or i + 1 == n:
            say(f"images: {i + 1}/{n}")
    # A rerun into the same folder must not leave a previous catalogue's images behind.
    for old in (out / "images").glob("*/*.jpg"):
        if _IMAGE_NAME.match(old.name) and old not in wanted:
            old.unlink()
