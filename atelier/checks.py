"""Argument checks shared by the models, training and the benchmarks."""

from __future__ import annotations

import math


def check_int(name: str, value, minimum: int, *, numpy_ints: bool = False) -> int:
    """`value` as an int >= `minimum`, else ValueError naming `name`. Bools are refused; numpy
    integers only with `numpy_ints` (a model config stays plain JSON)."""
    kinds: tuple[type, ...] = (int,)
    if numpy_ints:
        import numpy as np

        kinds = (int, np.integer)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive_number(value) -> bool:
    """True for a finite int or float above 0 (bools are not numbers here)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value > 0
    )
