"""Scoring recommendations the way the paper's Table 3 does (pure numpy; scipy if installed).

precision@k and recall@k are computed per customer and averaged over the customers who bought
something in the test period (and have a training history: see `data.test_set`). Cold-start
products are those never interacted with in the training window; their breakdown keeps the
ranking over all products and restricts the relevant sets to cold-start products. `table3`
assembles N runs per variant into the `recommender.json` shape of ARCHITECTURE.md, with paired
t-tests between variants.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from models.recommender.items import utc_timestamp
from training.recommender.data import events

VARIANTS = ("popularity", "cf", "content", "hybrid")
# Table 3's evaluation modes: the paper's (every product may be recommended, repeats included)
# and new-to-customer (a customer's own purchases are excluded: discovery, not rebuying).
MODES = ("all_products", "new_to_customer")


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


class AtK(NamedTuple):
    """precision@k / recall@k: the means over customers, then per-customer values (aligned with
    `customers`)."""

    precision: float
    recall: float
    precision_per_customer: np.ndarray
    recall_per_customer: np.ndarray
    customers: np.ndarray
    k: int

    @property
    def hits(self) -> int:
        """Recommended products bought, summed over the scored customers."""
        return int(round(float(np.sum(self.precision_per_customer)) * self.k))

    def as_dict(self) -> dict:
        """`{"precision_at_K", "recall_at_K", "customers", "hits"}`: one run's entry for
        `table3`."""
        return {
            f"precision_at_{self.k}": self.precision,
            f"recall_at_{self.k}": self.recall,
            "customers": int(self.customers.size),
            "hits": self.hits,
        }


def precision_recall_at_k(
    recommended: Mapping[object, Sequence], relevant: Mapping[object, Iterable], k: int = 10
) -> AtK:
    """Mean precision@k and recall@k over the customers of `relevant` with a non-empty set.

    `recommended`: customer → ranked product ids (best first); `relevant`: customer → products
    bought in the test period. For customer u with top-k list R (the first k entries; a product
    repeated in them counts once) and relevant set T: hits = |set(R) ∩ T|, precision = hits / k
    (k even when fewer than k are recommended), recall = hits / |T|. Customers recommended to but
    absent from `relevant` are not scored; a scored customer missing from `recommended` is an
    error. Customers are scored in sorted order.
    """
    k = _check_k(k)
    scored = sorted(c for c, items in relevant.items() if len(set(items)) > 0)
    if not scored:
        raise ValueError("relevant has no customer with a relevant product: nothing to score")
    missing = [c for c in scored if c not in recommended]
    if missing:
        raise ValueError(
            f"{len(missing)} customers with relevant products have no recommendations, "
            f"e.g. {missing[:5]!r}"
        )
    precision = np.empty(len(scored))
    recall = np.empty(len(scored))
    for i, customer in enumerate(scored):
        truth = set(relevant[customer])
        hits = len(set(list(recommended[customer])[:k]) & truth)
        precision[i] = hits / k
        recall[i] = hits / len(truth)
    return AtK(
        precision=float(precision.mean()),
        recall=float(recall.mean()),
        precision_per_customer=precision,
        recall_per_customer=recall,
        customers=np.asarray(scored, dtype=object),
        k=k,
    )


def cold_start_products(
    interactions: pd.DataFrame, train_end, catalogue: Iterable | None = None, train_start=None
) -> frozenset:
    """Products never interacted with in the training window `(train_start, train_end]`.

    With `catalogue` (all product ids, e.g. the `products` table), it is the catalogue minus the
    products seen in the window; without it, the products that appear in `interactions` only
    outside the window (in practice: first bought in the test period). Either way a product the
    CF embedding has no trained row for, which only the content path can score.
    """
    end = utc_timestamp(train_end, "train_end")
    seen = set(events(interactions, end, train_start)["product_id"])
    universe = set(interactions["product_id"]) if catalogue is None else set(catalogue)
    return frozenset(universe - seen)


def cold_start_metrics(
    recommended: Mapping[object, Sequence],
    relevant: Mapping[object, Iterable],
    cold_products: Iterable,
    k: int = 10,
    among_cold_only: bool = False,
) -> AtK:
    """precision@k / recall@k on cold-start products.

    Definition: each customer's relevant set is limited to `cold_products`, and customers left
    with none are not scored. The recommended list is the top-k over ALL products (the same list
    as the main metrics), so this measures how many cold-start purchases a variant puts in its
    regular top k. With `among_cold_only=True` the ranked list is first filtered to cold-start
    products (how well cold-start products are ranked among themselves) instead.
    """
    cold = set(cold_products)
    restricted = {c: set(items) & cold for c, items in relevant.items()}
    restricted = {c: items for c, items in restricted.items() if items}
    if not restricted:
        raise ValueError("no customer bought a cold-start product in the test period")
    if among_cold_only:
        recommended = {
            c: [p for p in recommended[c] if p in cold] for c in restricted if c in recommended
        }
    return precision_recall_at_k(recommended, restricted, k)


# -- significance -------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for aa in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _paired_t_numpy(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided paired t-test without scipy: (t, p). Zero spread: t = ±inf, p = 0 (nan, nan
    when the differences are all zero), as scipy.stats.ttest_rel."""
    d = a - b
    n = d.size
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return (math.nan, math.nan) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / (sd / math.sqrt(n))
    df = n - 1.0
    return t, _betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_test(a_runs, b_runs) -> dict:
    """Two-sided paired t-test of a metric over matched runs of two variants (run i of `a` with
    run i of `b`): `{"t", "p_value", "mean_diff", "n"}`, mean_diff = mean(a - b). Uses
    scipy.stats.ttest_rel when scipy is installed, else an equivalent numpy implementation."""
    a = np.asarray(a_runs, dtype=np.float64)
    b = np.asarray(b_runs, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"paired runs must be 1-D of equal length, got {a.shape!r} and {b.shape!r}"
        )
    if a.size < 2:
        raise ValueError(f"a paired t-test needs at least 2 runs, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"runs must be finite, got {a.tolist()!r} and {b.tolist()!r}")
    # Differences equal up to float rounding (e.g. 0.1 - 0.05 vs 0.15 - 0.1) have no spread:
    # round them so a constant difference gives an undefined t, not t = 1e16.
    diff = np.round(a - b, 12)
    if np.all(diff == diff[0]):  # as scipy: t = ±inf, p = 0; all zero: both nan
        mean = float(diff[0])
        t, p = (math.nan, math.nan) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
        return {"t": t, "p_value": p, "mean_diff": mean, "n": int(a.size)}
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy is installed in the dev environment
        t, p = _paired_t_numpy(a, b)
    else:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            result = stats.ttest_rel(a, b)
        t, p = float(result.statistic), float(result.pvalue)
    return {"t": t, "p_value": p, "mean_diff": float((a - b).mean()), "n": int(a.size)}


# -- Table 3 ------------------------------------------------------------------------------


def _metric_keys(k: int) -> tuple[str, str]:
    return f"precision_at_{k}", f"recall_at_{k}"


def _runs(per_variant: Mapping[str, Sequence], k: int, where: str) -> dict[str, dict]:
    """variant → {"precision_at_k": array, "recall_at_k": array} in canonical variant order."""
    keys = _metric_keys(k)
    order = [v for v in VARIANTS if v in per_variant] + [
        v for v in per_variant if v not in VARIANTS
    ]
    out = {}
    for variant in order:
        runs = [r.as_dict() if isinstance(r, AtK) else r for r in per_variant[variant]]
        if not runs:
            raise ValueError(f"{where}[{variant!r}] has no runs")
        for i, run in enumerate(runs):
            absent = [key for key in keys if key not in run]
            if absent:
                raise ValueError(
                    f"{where}[{variant!r}][{i}] lacks {absent!r} (has {sorted(run)!r})"
                )
        out[variant] = {key: np.array([float(r[key]) for r in runs]) for key in keys}
        for extra in ("hits", "customers"):
            if all(extra in r for r in runs):
                out[variant][extra] = np.array([int(r[extra]) for r in runs])
    return out


def _summary(values: Mapping[str, np.ndarray]) -> dict:
    out: dict = {}
    metrics = {key: runs for key, runs in values.items() if key not in ("hits", "customers")}
    for key, runs in metrics.items():
        out[key] = float(runs.mean())
    for key, runs in metrics.items():
        out[f"{key}_std"] = float(runs.std(ddof=1)) if runs.size > 1 else 0.0
    out["runs"] = int(next(iter(metrics.values())).size)
    if "hits" in values:  # per-run counts beside the means: a mean of 3 hits is noise
        out["hits_per_run"] = [int(h) for h in values["hits"]]
    if "customers" in values:
        out["customers"] = int(values["customers"][0])
    return out


def _finite_or_none(value: float):
    return value if math.isfinite(value) else None


def _significance(runs: Mapping[str, dict], k: int) -> dict:
    names = list(runs)
    out = {}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = runs[second], runs[first]
            na = next(iter(a.values())).size
            nb = next(iter(b.values())).size
            if na == 1 and nb == 1:
                continue
            if na != nb and 1 not in (na, nb):
                raise ValueError(
                    f"{second!r} has {na} runs and {first!r} {nb}: paired runs must match"
                )
            n = max(na, nb)
            tests = {}
            for key in _metric_keys(k):
                test = paired_test(np.resize(a[key], n), np.resize(b[key], n))
                tests[key] = {
                    "t": _finite_or_none(test["t"]),
                    "p_value": _finite_or_none(test["p_value"]),
                    "mean_diff": test["mean_diff"],
                    "n": test["n"],
                }
            out[f"{second}_vs_{first}"] = tests
    return out


def table3(
    runs: Mapping[str, Sequence], cold_start: Mapping[str, Sequence] | None = None, k: int = 10
) -> dict:
    """The `recommender.json` report of N runs per variant.

    `runs` (and `cold_start`): variant → per-run metrics, each an `AtK` or a mapping with
    `precision_at_{k}` and `recall_at_{k}`. Returns `{"variants": {name: {"precision_at_10",
    "recall_at_10", "precision_at_10_std", "recall_at_10_std", "runs"}}, "cold_start": {same},
    "significance": {"B_vs_A": {"precision_at_10": {"t", "p_value", "mean_diff", "n"},
    "recall_at_10": {...}}}}`. Variants are ordered popularity, cf, content, hybrid, then the
    others as given. std is the sample std (ddof 1), 0 for one run. Significance: paired t-tests
    for every pair (B later in that order, mean_diff = B − A) on the main metrics; a one-run
    variant (deterministic, e.g. popularity) is repeated to match the other's runs, and a pair
    of one-run variants is skipped. An undefined t or p (identical runs) is null.
    """
    k = _check_k(k)
    if not runs:
        raise ValueError("runs must hold at least one variant, got {}")
    main = _runs(runs, k, "runs")
    cold = _runs(cold_start, k, "cold_start") if cold_start else {}
    return {
        "variants": {name: _summary(values) for name, values in main.items()},
        "cold_start": {name: _summary(values) for name, values in cold.items()},
        "significance": _significance(main, k),
    }


def _cell(summary: Mapping, key: str) -> str:
    mean = summary[key]
    if summary.get("runs", 1) > 1:
        return f"{mean:.5f} ± {summary[f'{key}_std']:.5f}"
    return f"{mean:.5f}"


def _p(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def markdown_table(report: Mapping, k: int = 10) -> str:
    """Table 3 as Markdown from a `table3` report: the variants, the cold-start breakdown (when
    present) and the paired tests."""
    precision, recall = _metric_keys(k)
    header = [
        f"| variant | runs | precision@{k} | recall@{k} | hits per run | customers |",
        "|---|---:|---:|---:|---|---:|",
    ]

    def hits(m: Mapping) -> str:
        runs = m.get("hits_per_run")
        if not runs:
            return "–"
        if len(set(runs)) == 1:
            return str(runs[0])
        return f"{min(runs)}–{max(runs)} (mean {np.mean(runs):.1f})"

    def rows(section: Mapping) -> list[str]:
        return [
            f"| {name} | {m['runs']} | {_cell(m, precision)} | {_cell(m, recall)} "
            f"| {hits(m)} | {m.get('customers', '–')} |"
            for name, m in section.items()
        ]

    lines = header + rows(report["variants"])
    if report.get("cold_start"):
        lines += ["", "Cold-start products (never bought in training):", "", *header]
        lines += rows(report["cold_start"])
    if report.get("significance"):
        lines += [
            "",
            "Paired t-tests (two-sided):",
            "",
            "| comparison | metric | mean diff | t | p |",
            "|---|---|---:|---:|---:|",
        ]
        for pair, tests in report["significance"].items():
            for metric, test in tests.items():
                t = "–" if test["t"] is None else f"{test['t']:.3f}"
                lines.append(
                    f"| {pair.replace('_vs_', ' vs ')} | {metric.replace('_at_', '@')} "
                    f"| {test['mean_diff']:+.5f} | {t} | {_p(test['p_value'])} |"
                )
    return "\n".join(lines) + "\n"
