"""How the paper trains with missing labels, and the label hygiene before it (pure numpy, seeded).

Every attribute has its own dataset: the products labelled for it. Training visits attributes in
random order (`round_robin`) and each visit draws a mini-batch from that attribute's dataset
(`MiniBatchSampler`), so a product missing a label for an attribute never reaches that head,
while its other labels still train the shared layers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

MISSING = -1  # label of a product not labelled for an attribute


def round_robin(
    attribute_sizes: Mapping[str, int],
    steps: int,
    seed: int | None,
    weights: Mapping[str, int] | None = None,
) -> list[str]:
    """The attribute trained at each of `steps` steps.

    Steps come in cycles; each cycle is a fresh random permutation of the attributes, so over
    every full cycle each attribute is visited exactly once (`weights[a]` times when given:
    integer visits per cycle), in an order that changes from cycle to cycle. The last cycle may be
    cut short. Attributes with an empty dataset (`attribute_sizes[a] == 0`) are skipped: there is
    nothing to draw. Same seed → same schedule.
    """
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not attribute_sizes:
        raise ValueError(
            f"attribute_sizes must name at least one attribute, got {attribute_sizes!r}"
        )
    for attribute, size in attribute_sizes.items():
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
            raise ValueError(f"size of {attribute!r} must be a non-negative integer, got {size!r}")
    visits = {a: 1 for a in attribute_sizes}
    if weights is not None:
        unknown = sorted(set(weights) - set(attribute_sizes))
        if unknown:
            raise ValueError(f"weights name attributes without a dataset size: {unknown!r}")
        for attribute, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int | np.integer) or w < 0:
                raise ValueError(f"weight of {attribute!r} must be a non-negative int, got {w!r}")
            visits[attribute] = int(w)
    cycle = [a for a in attribute_sizes if attribute_sizes[a] > 0 for _ in range(visits[a])]
    if not cycle:
        raise ValueError(
            f"no attribute has both labelled products and a positive weight: sizes "
            f"{dict(attribute_sizes)!r}, weights {weights!r}"
        )
    rng = np.random.default_rng(seed)
    schedule: list[str] = []
    while len(schedule) < steps:
        schedule.extend(cycle[i] for i in rng.permutation(len(cycle)))
    return schedule[:steps]


class MiniBatchSampler:
    """Endless random mini-batches of row indices from one attribute's dataset.

    `labels` is the attribute's label column over all products, `missing` (default -1) marking
    the unlabelled ones; they are never drawn. Each epoch is a fresh permutation of the labelled
    rows cut into batches of `batch_size`; the last batch of an epoch may be smaller, so every
    labelled product is seen exactly once per epoch.
    """

    def __init__(
        self, labels, batch_size: int = 64, seed: int | None = None, missing: int = MISSING
    ):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {labels.shape!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        labelled = labels != missing
        if labels.dtype.kind == "f":
            labelled &= ~np.isnan(labels)
        self.indices = np.flatnonzero(labelled)
        if self.indices.size == 0:
            raise ValueError(f"no labelled products: every label is {missing!r}")
        self.batch_size = batch_size
        self.epoch = 0
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(self.indices)
        self._position = 0

    @property
    def size(self) -> int:
        """Number of labelled products (the attribute's dataset)."""
        return int(self.indices.size)

    def next(self) -> np.ndarray:
        """Row indices of the next mini-batch (int64, at most `batch_size` of them)."""
        if self._position >= self._order.size:
            self.epoch += 1
            self._order = self._rng.permutation(self.indices)
            self._position = 0
        batch = self._order[self._position : self._position + self.batch_size]
        self._position += batch.size
        return batch

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return self.next()


def loss_weights_from_frequencies(labels, n_classes: int, missing: int = MISSING) -> np.ndarray:
    """Inverse-frequency class weights (n_classes,) for one attribute's labels.

    Weight of class c ∝ 1 / count(c), scaled so the mean weight over the labelled products is 1:
    the weighted loss then has the unweighted loss's scale, so plain SGD's constant learning rate
    keeps its meaning. Classes absent from `labels` get weight 0 (no sample carries them).
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    labels = np.asarray(labels)
    labels = labels[labels != missing].astype(np.int64)
    if labels.size == 0:
        raise ValueError(f"no labelled products: every label is {missing!r}")
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.size:
        raise ValueError(f"labels must be in [0, {n_classes}), got {int(bad[0])!r}")
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = 1.0 / counts[present]
    # With w_c = 1 / n_c every present class carries total weight 1, k in all over n samples:
    # scaling by n / k makes the mean over samples exactly 1.
    return weights * labels.size / present.sum()


def applicability(
    types,
    attributes_labelled: Mapping[str, Iterable[bool]],
    min_fraction: float,
) -> dict[str, set]:
    """Per attribute, the product types it applies to.

    An attribute applies to a type when at least `min_fraction` of that type's products are
    labelled for it (`attributes_labelled[a]` is a boolean per product, aligned with `types`).
    The paper decides applicability with heuristics; here it is learned from the labels, so e.g.
    "neckline" is not trained or predicted for shoes. Types are returned as they appear in `types`.
    """
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, int | float):
        raise ValueError(f"min_fraction must be a number in (0, 1], got {min_fraction!r}")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
    types = np.asarray(types)
    if types.ndim != 1:
        raise ValueError(f"types must be one-dimensional, got shape {types.shape!r}")
    values, inverse = np.unique(types, return_inverse=True)
    per_type = np.bincount(inverse, minlength=values.size)
    result: dict[str, set] = {}
    for attribute, labelled in attributes_labelled.items():
        labelled = np.asarray(labelled)
        if labelled.dtype != bool or labelled.shape != types.shape:
            raise ValueError(
                f"labelled mask of {attribute!r} must be bool with shape {types.shape!r}, got "
                f"{labelled.dtype} {labelled.shape!r}"
            )
        hits = np.bincount(inverse, weights=labelled, minlength=values.size)
        keep = hits >= min_fraction * per_type
        result[attribute] = {v.item() if hasattr(v, "item") else v for v in values[keep]}
    return result


@dataclass
class GroupingReport:
    """What `group_rare_values` did: counts of values kept, grouped into `other`, and dropped."""

    min_count: int
    other: str
    kept: dict[Hashable, int] = field(default_factory=dict)
    grouped: dict[Hashable, int] = field(default_factory=dict)
    dropped: dict[Hashable, int] = field(default_factory=dict)

    @property
    def other_count(self) -> int:
        """Samples labelled `other` after grouping (a frequent `other` value included)."""
        return self.kept.get(self.other, 0) + sum(self.grouped.values())


def group_rare_values(
    values: Iterable[Hashable], min_count: int, other: str = "other"
) -> tuple[dict[Hashable, Hashable | None], GroupingReport]:
    """Group an attribute's values seen fewer than `min_count` times into `other`.

    The paper predicts only values with at least 500 samples. Rare values are pooled into
    `other` when the pool reaches `min_count`; otherwise the pool is too rare to predict too and
    its values are dropped (mapped to None, i.e. unlabelled). A value already equal to `other`
    joins the pool when rare and stays as it is when frequent (then the rare values join it).
    None in `values` means unlabelled and is ignored. Returns (value → new value or None, report).
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
    counts = Counter(v for v in values if v is not None)
    report = GroupingReport(min_count=min_count, other=other)
    rare = {v: n for v, n in counts.items() if n < min_count}
    kept = {v: n for v, n in counts.items() if n >= min_count}
    pooled = sum(rare.values()) + kept.get(other, 0)
    mapping: dict[Hashable, Hashable | None] = {v: v for v in kept}
    if rare and pooled >= min_count:
        mapping.update({v: other for v in rare})
        report.grouped = {v: rare[v] for v in sorted(rare, key=str)}
    else:
        mapping.update({v: None for v in rare})
        report.dropped = {v: rare[v] for v in sorted(rare, key=str)}
    report.kept = {v: kept[v] for v in sorted(kept, key=str)}
    return mapping, report
