"""Report figures: matplotlib, headless, written as PNG files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def png_figure(path, *args, **kwargs) -> Iterator[tuple[Any, Any]]:
    """(figure, axes) of `plt.subplots(*args, **kwargs)` to draw on in the block; after it the
    figure is laid out and written to `path` as a 100-dpi PNG (folders created). The figure is
    closed either way."""
    import matplotlib

    matplotlib.use("Agg")  # no display: reports are written on servers and in CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
