"""The colour_features gate: the contract's suite plus the colour list checks (length, [0, 1],
finite, palette shares summing to 1), as the job and the materialisation run it."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from atelier.colour import COLOUR_DIM, DESCRIPTOR_VERSION, PALETTE
from atelier.contracts import contract
from expectations.gate import validate_table
from expectations.suites import ListCheck, gate_checks, with_list_checks

pytestmark = pytest.mark.data

T0 = datetime(2020, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 25, tzinfo=UTC)
P = len(PALETTE)


def _vector(top: int, share: float = 0.7) -> list[float]:
    """Palette shares `share` on colour `top`, the rest spread evenly; summaries 0.5."""
    v = np.full(COLOUR_DIM, 0.5)
    v[:P] = (1.0 - share) / (P - 1)
    v[top] = share
    return v.tolist()


def _rows(vectors, fractions=None, products=None):
    n = len(vectors)
    return pa.table(
        {
            "product_id": products or [f"p{i}" for i in range(n)],
            "shot": [0] * n,
            "content_hash": ["h"] * n,
            "descriptor_version": [DESCRIPTOR_VERSION] * n,
            "colour": vectors,
            "foreground_fraction": fractions or [0.3] * n,
            "mask": ["background"] * n,
            "event_timestamp": [T0] * n,
            "created_timestamp": [NOW] * n,
        }
    ).cast(contract("colour_features").schema())


def _validate(settings, table, n_products: int = 6):
    return validate_table(
        settings,
        "colour_features",
        table,
        row_count_band=(1, 10),
        reference_values={"product_id": [f"p{i}" for i in range(n_products)]},
        now=NOW,
        list_checks=gate_checks(settings, "colour_features"),
    )


def test_the_checks_cover_length_range_finiteness_and_the_palette_total(settings):
    assert gate_checks(settings, "colour_features") == {
        "colour": ListCheck(
            length=COLOUR_DIM, min=0.0, max=1.0, finite=True, total=1.0, total_over=P
        )
    }


def test_total_over_sums_the_head_of_each_row_only():
    import pandas as pd

    frame = pd.DataFrame({"v": [[0.25, 0.75, 9.0], [0.5, 0.25, 0.0], []]})
    out = with_list_checks(frame, {"v": ListCheck(total=1.0, total_over=2)})
    assert out["v__total_error"].tolist()[:2] == [0.0, 0.25]
    assert out["v__total_error"].isna().tolist()[2]  # empty rows: its length is what fails


def test_good_descriptors_pass(settings):
    r = _validate(settings, _rows([_vector(0), _vector(8, 1.0), _vector(18, 0.43)]))
    assert r.success, r.failures


def test_each_broken_rule_fails_with_its_column_named(settings):
    short = _vector(0)[:-1]
    above = _vector(1)
    above[P] = 1.5  # a summary outside [0, 1]
    nan = _vector(2)
    nan[P + 1] = float("nan")
    loose = _vector(3)
    loose[3] -= 0.2  # shares sum to 0.8
    table = _rows(
        [_vector(0), short, above, nan, loose, _vector(5)],
        fractions=[0.3, 0.3, 0.3, 0.3, 0.3, 1.2],
        products=["p0", "p1", "p2", "p3", "p4", "stranger"],
    )
    r = _validate(settings, table)
    assert not r.success
    text = "\n".join(r.failures)
    assert "colour__length" in text and f"e.g. [{COLOUR_DIM - 1}]" in text
    assert "colour__max" in text and "e.g. [1.5]" in text
    assert "colour__non_finite" in text
    assert "colour__total_error" in text
    assert "foreground_fraction" in text and "1.2" in text
    assert "'stranger'" in text and "missing from products.product_id" in text
