"""Blend: a customer's likely rebuys mixed with the model's new products (beyond the paper).

Fashion customers rebuy (on H&M a customer's own 10 most recent purchases beat every learned
model on all-products precision@10), while the model is built to find products that are new to
the customer. `BlendRule` mixes the two lists by their hit rates measured on the validation
window, never on the test period:

- `new[q]`: the share of validation customers whose q-th new-to-customer recommendation was
  bought (q = 1..k);
- `repeat[r][m]`: the share of validation customers' r-th most recent distinct product that
  was bought again, for products bought once (m = 0) or more than once (m = 1).

Each rate is shrunk towards its list's overall rate (`PRIOR_WEIGHT` pseudo-observations) and
made non-increasing in rank, so the model's order and the recency order are kept. A customer's
blended list is the k candidates of both lists with the highest rates: how many rebuys it holds
depends on the customer (how long their history is, what they rebought), not on a fixed quota.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from models.ranking import recent_items

PRIOR_WEIGHT = 10.0


@dataclass(frozen=True)
class BlendRule:
    """Hit rates by rank: `new` (k,), `repeat` (k, 2); see the module docstring."""

    new: tuple[float, ...]
    repeat: tuple[tuple[float, float], ...]

    @property
    def k(self) -> int:
        return len(self.new)

    def to_dict(self) -> dict:
        return {"new": list(self.new), "repeat": [list(r) for r in self.repeat]}

    @classmethod
    def from_dict(cls, value: Mapping) -> BlendRule:
        try:
            new = tuple(float(x) for x in value["new"])
            repeat = tuple((float(a), float(b)) for a, b in value["repeat"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"a blend rule needs 'new' (k,) and 'repeat' (k, 2), got {value!r}"
            ) from e
        if not new or len(repeat) != len(new):
            raise ValueError(f"blend rule lists must both have k entries, got {value!r}")
        return cls(new, repeat)


def repeat_candidates(history: Sequence, k: int) -> list[tuple[object, int]]:
    """[(product, m)] of the `k` most recent distinct products of `history` (most recent
    first), m = 1 when the customer bought it more than once."""
    counts: dict = {}
    for product in history:
        counts[product] = counts.get(product, 0) + 1
    return [(p, int(counts[p] > 1)) for p in recent_items(history, k)]


def _shrunk_monotone(hits: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Rates (hits + w·overall) / (seen + w), then a running minimum along the first axis."""
    overall = hits.sum() / max(seen.sum(), 1.0)
    rates = (hits + PRIOR_WEIGHT * overall) / (seen + PRIOR_WEIGHT)
    return np.minimum.accumulate(rates, axis=0)


def fit_blend(
    new_lists: Mapping[object, Sequence],
    histories: Mapping[object, Sequence],
    relevant: Mapping[object, set],
    k: int = 10,
) -> BlendRule:
    """The rule from one validation period: `new_lists` customer → the model's
    new-to-customer list, `histories` customer → purchases before the period (most recent
    first), `relevant` customer → products bought in it. Customers absent from `relevant`
    bought nothing in the period and count as misses, as in evaluation."""
    new_hits, new_seen = np.zeros(k), np.zeros(k)
    rep_hits, rep_seen = np.zeros((k, 2)), np.zeros((k, 2))
    for customer, history in histories.items():
        bought = relevant.get(customer, set())
        for q, product in enumerate(list(new_lists.get(customer, []))[:k]):
            new_seen[q] += 1
            new_hits[q] += product in bought
        for r, (product, m) in enumerate(repeat_candidates(history, k)):
            rep_seen[r, m] += 1
            rep_hits[r, m] += product in bought
    new = _shrunk_monotone(new_hits, new_seen)
    repeat = np.stack([_shrunk_monotone(rep_hits[:, m], rep_seen[:, m]) for m in (0, 1)], axis=1)
    return BlendRule(tuple(new.tolist()), tuple(map(tuple, repeat.tolist())))


def blend(new_list: Sequence, history: Sequence, rule: BlendRule, k: int = 10) -> list:
    """The customer's k products with the highest rates among the rule's repeat candidates of
    `history` and `new_list` (the model's new-to-customer list, best first); ties go to the
    rebuy, then to the better rank."""
    scored = [
        (-rule.repeat[r][m], 0, r, p) for r, (p, m) in enumerate(repeat_candidates(history, rule.k))
    ]
    scored += [(-rule.new[q], 1, q, p) for q, p in enumerate(list(new_list)[: rule.k])]
    out, taken = [], set()
    for _, _, _, product in sorted(scored, key=lambda t: t[:3]):
        if product not in taken:
            taken.add(product)
            out.append(product)
        if len(out) == k:
            break
    return out
