"""Similar products: top-n cosine neighbours in item-vector space, and the Figure 7 grid.

Pure numpy (matplotlib and Pillow only inside `plot_similar_grid`). The vectors are the item
tower's (`RecommenderBundle.item_vectors`, the `item_vectors` table); cosine similarity ignores
their length, which in the dot-product space carries popularity rather than likeness.

A zero vector has no direction: the model cannot represent that product (in `cf`, a product
never bought in training). It is never anyone's neighbour, and as a seed it has none.
Neighbours exclude the seed itself; ties (equal to 12 decimals) go to the product listed first.

Figure 7 of the paper shows, for the most popular, the median and the least popular product,
its nearest neighbours under each variant: `figure7` picks the seeds (`popularity_seeds`) and
their neighbours, `plot_similar_grid` draws them from the products' main images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from atelier.figures import png_figure
from models.ranking import top_k

SEED_LABELS = ("most popular", "median popularity", "least popular")
THUMBNAIL = 128  # pixels, the longer side of each image in the grid


def unit_rows(vectors) -> np.ndarray:
    """(n, k) float64 rows scaled to unit length; zero (or non-finite) rows become zeros."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (products, k), got shape {vectors.shape!r}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    usable = np.isfinite(norms) & (norms > 0)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=usable)


def cosine_neighbours(vectors, row: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(rows, similarities) of the up to `n` products most cosine-similar to product `row`,
    best first; the seed and zero vectors are left out (a zero seed has none)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    unit = unit_rows(vectors)
    if isinstance(row, bool) or not isinstance(row, int | np.integer) or not 0 <= row < len(unit):
        raise ValueError(f"row must be an index in [0, {len(unit)}), got {row!r}")
    if not unit[row].any():
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    # Rounded, so that directions equal up to float error (p and 3p) tie as they should.
    similarity = np.round(unit @ unit[row], 12)
    similarity[~unit.any(axis=1)] = -np.inf
    similarity[row] = -np.inf
    best = top_k(similarity, n)  # -inf (zero vectors, the seed) never ranks
    return best, similarity[best]


def similar_products(
    product_ids: Sequence, vectors, product_id, n: int = 10
) -> list[tuple[str, float]]:
    """[(product id, cosine similarity)] of the `n` nearest neighbours of `product_id` among
    the products `product_ids` (row i of `vectors` is product_ids[i]), best first."""
    ids = [str(p) for p in product_ids]
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise ValueError(
            f"vectors must be ({len(ids)}, k), one row per product id, got {vectors.shape!r}"
        )
    try:
        row = ids.index(str(product_id))
    except ValueError:
        raise ValueError(f"product {product_id!r} has no item vector") from None
    rows, sims = cosine_neighbours(vectors, row, n)
    return [(ids[r], float(s)) for r, s in zip(rows, sims)]


def similar_by_variant(
    variants: Mapping[str, tuple[Sequence, np.ndarray]], product_id, n: int = 10
) -> dict[str, list[tuple[str, float]]]:
    """variant → `similar_products` of `product_id` under that variant's vectors.

    `variants`: variant → (product ids, (n, k) vectors). A variant without a vector for the
    product gets [] (like a variant that cannot represent it)."""
    out = {}
    for variant, (ids, vectors) in variants.items():
        if str(product_id) not in {str(p) for p in ids}:
            out[variant] = []
            continue
        out[variant] = similar_products(ids, vectors, product_id, n)
    return out


def popularity_seeds(popularity: Mapping, candidates: Sequence | None = None) -> dict[str, str]:
    """The Figure 7 seeds: {"most popular", "median popularity", "least popular"} → product.

    `popularity`: product → interactions (e.g. in the training window; a product missing from
    it counts 0). `candidates`: the products to choose from (default the keys of
    `popularity`). They are ranked by popularity, highest first, ties by product id; the seeds
    are the first, the middle (position len // 2) and the last of that ranking.
    """
    ids = sorted({str(p) for p in (popularity if candidates is None else candidates)})
    if not ids:
        raise ValueError("popularity_seeds needs at least one candidate product, got none")
    counts = {str(p): float(c) for p, c in popularity.items()}
    ranked = sorted(ids, key=lambda p: (-counts.get(p, 0.0), p))
    picks = (ranked[0], ranked[len(ranked) // 2], ranked[-1])
    return dict(zip(SEED_LABELS, picks))


def figure7(
    variants: Mapping[str, tuple[Sequence, np.ndarray]], popularity: Mapping, n: int = 5
) -> tuple[dict[str, str], dict[str, dict[str, list[tuple[str, float]]]]]:
    """(seeds, neighbours) for `plot_similar_grid`: seeds among the products every variant
    has a vector for, neighbours[variant][seed] = `similar_products` of the seed."""
    if not variants:
        raise ValueError("figure7 needs at least one variant's vectors, got none")
    common = set.intersection(*({str(p) for p in ids} for ids, _ in variants.values()))
    seeds = popularity_seeds(popularity, sorted(common))
    neighbours = {
        variant: {seed: similar_products(ids, vectors, seed, n) for seed in seeds.values()}
        for variant, (ids, vectors) in variants.items()
    }
    return seeds, neighbours


def main_image_paths(rows: Sequence[Mapping]) -> dict[str, str]:
    """product → path of its main image from `product_images` rows (product_id, shot, path):
    the lowest shot of each product (0, the packshot, when there is one)."""
    best: dict[str, tuple[int, str]] = {}
    for r in rows:
        pid, shot = str(r["product_id"]), int(r["shot"])
        if pid not in best or shot < best[pid][0]:
            best[pid] = (shot, str(r["path"]))
    return {p: path for p, (_, path) in sorted(best.items())}


def _thumbnail(path) -> np.ndarray | None:
    """The image at `path` as an RGB array at most THUMBNAIL pixels a side, or None."""
    if not path:
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            return np.asarray(image)
    except (OSError, ValueError):
        return None


def plot_similar_grid(
    seeds: Mapping[str, str] | Sequence[str],
    neighbours: Mapping[str, Mapping[str, Sequence]],
    image_paths: Mapping[str, str],
    path,
    n: int | None = None,
) -> Path:
    """Figure 7 as a PNG at `path`: one row per (seed, variant), the seed's image first, then
    its neighbours under that variant, best first. Returns the path.

    `seeds`: label → product (e.g. `popularity_seeds`) or a list of products (labelled by
    id). `neighbours`: variant → seed → neighbour ids or (id, similarity) pairs (the
    similarity is printed under the image). `image_paths`: product → image file (see
    `main_image_paths`); a product without a readable image gets a grey tile with its id.
    `n`: columns of neighbours (default the longest list).
    """
    if not isinstance(seeds, Mapping):
        seeds = {str(s): str(s) for s in seeds}
    if not seeds or not neighbours:
        raise ValueError(
            f"plot_similar_grid needs seeds and variants, got {len(seeds)} seeds and "
            f"{len(neighbours)} variants"
        )
    lists = {
        (variant, seed): [(e, None) if isinstance(e, str) else (str(e[0]), e[1]) for e in items]
        for variant, by_seed in neighbours.items()
        for seed, items in by_seed.items()
    }
    width = n if n is not None else max((len(v) for v in lists.values()), default=0)
    if isinstance(width, bool) or not isinstance(width, int) or width < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    rows = [(label, seed, variant) for label, seed in seeds.items() for variant in neighbours]

    cache: dict[str, np.ndarray | None] = {}

    def draw(ax, pid: str, caption: str) -> None:
        if pid not in cache:
            cache[pid] = _thumbnail(image_paths.get(pid))
        image = cache[pid]
        if image is None:
            ax.set_facecolor("0.85")
            ax.text(0.5, 0.5, pid, ha="center", va="center", fontsize=6, transform=ax.transAxes)
        else:
            ax.imshow(image)
        ax.set_xlabel(caption, fontsize=6)

    with png_figure(
        path,
        len(rows),
        width + 1,
        figsize=(1.6 * (width + 1), 1.9 * len(rows)),
        squeeze=False,
    ) as (fig, axes):
        for i, (label, seed, variant) in enumerate(rows):
            for ax in axes[i]:
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
            draw(axes[i, 0], seed, seed)
            axes[i, 0].set_ylabel(f"{label}\n{variant}", fontsize=7)
            found = lists.get((variant, seed), [])[:width]
            for j, (pid, sim) in enumerate(found):
                draw(axes[i, j + 1], pid, pid if sim is None else f"{pid}\n{sim:.3f}")
            if not found and width:
                axes[i, 1].text(
                    0.5,
                    0.5,
                    "no neighbours\n(no vector)",
                    ha="center",
                    va="center",
                    fontsize=7,
                    transform=axes[i, 1].transAxes,
                )
        fig.suptitle("Similar products by variant (seed, then nearest neighbours)", fontsize=9)
    return Path(path)
