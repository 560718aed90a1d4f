"""Pure scoring for serving: candidates, customer vectors, masks, exact top-k, explanations.

numpy only, no I/O: `serving.state` loads the arrays, `serving.predictor` feeds them requests.

- `Candidates`: the products that may be recommended (for sale, with a vector of the serving
  model), their (n, d) float32 item vectors in the model's layout (`models.ranking`: "dot", or
  "dot+bias" with the item's bias last) and the row of each product id. A zero vector means
  the model cannot represent the product (`cf`, never bought in training): it is never scored
  for a customer and never anyone's similar product. Similarity is the cosine of the match
  coordinates only: a bias says how popular a product is, not what it looks like.
- A customer's vector comes from `models.ranking` (`recent_items`, `customer_vector`), the rule
  training and evaluation use; its dot product with an item vector is the score in both layouts.
- Masks are boolean (n,) arrays, True = may be returned. Exclusions (purchased products) and
  attribute filters are applied before ranking, so a request gets k items whenever k allowed
  items exist, and fewer only when fewer do.
- `top_k` (`models.ranking`, the rule evaluation uses too) is exact: a partition finds the k-th
  best score, then ties at the cut-off and in the order go to the lower row (rows follow
  product id order), so equal inputs give equal lists.
- `AttributeTable` holds every product's attribute values (known label or predicted) as integer
  codes; its first rows are the candidates' rows, so a mask over its rows is a mask over the
  candidates without a join.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from models.ranking import DOT, check_layout, match_part, top_k

# The attribute model groups values too rare to learn into this class: sharing it is no reason.
GROUPED_VALUE = "other"


class UnknownAttributeError(ValueError):
    """A filter names an attribute the catalogue does not have."""


@dataclass(frozen=True, eq=False)
class Candidates:
    """Products that may be recommended: `vectors[i]` is `product_ids[i]`'s item vector."""

    product_ids: tuple[str, ...]
    vectors: np.ndarray  # (n, d) float32, d = k (+ 1 bias with "dot+bias")
    index: Mapping[str, int]
    # (n, k) float32 unit rows of the match coordinates; zeros where `usable` is False or the
    # match part is zero (such a product has no likeness to anything).
    unit: np.ndarray
    usable: np.ndarray  # (n,) bool: a non-zero, finite (full) vector
    layout: str = DOT

    @classmethod
    def build(cls, product_ids: Sequence[str], vectors, layout: str = DOT) -> Candidates:
        """From ids and an (n, d) array in `layout` (copied to read-only float32); ids must be
        unique."""
        check_layout(layout)
        ids = tuple(str(p) for p in product_ids)
        vectors = np.array(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise ValueError(
                f"vectors must be ({len(ids)}, k), one row per product id, got {vectors.shape!r}"
            )
        if layout != DOT and vectors.shape[1] < 2:
            raise ValueError(
                f"{layout!r} vectors need k >= 1 match coordinates and the bias, got "
                f"{vectors.shape[1]} column(s)"
            )
        index = {p: i for i, p in enumerate(ids)}
        if len(index) != len(ids):
            seen: set[str] = set()
            dupes = sorted({p for p in ids if p in seen or seen.add(p)})
            raise ValueError(f"candidate product ids must be unique, repeated: {dupes[:5]!r}")
        norms = np.linalg.norm(vectors, axis=1)
        usable = np.isfinite(norms) & (norms > 0)
        match = match_part(vectors, layout)
        match_norms = np.linalg.norm(match, axis=1)
        alike = usable & (match_norms > 0)
        unit = np.zeros_like(match)
        unit[alike] = match[alike] / match_norms[alike, None]
        for array in (vectors, unit, usable):
            array.flags.writeable = False
        return cls(ids, vectors, index, unit, usable, layout)

    def __len__(self) -> int:
        return len(self.product_ids)

    @property
    def k(self) -> int:
        """Width d of the item vectors (the bias included) and of a customer vector."""
        return int(self.vectors.shape[1])


def scores(candidates: Candidates, customer: np.ndarray) -> np.ndarray:
    """(n,) float32 dot products of the customer vector (d,) with every candidate (match + bias
    with "dot+bias": the customer vector ends with 1); -inf for a candidate the model cannot
    represent."""
    customer = np.asarray(customer, np.float32)
    if customer.shape != (candidates.k,):
        raise ValueError(f"customer vector must have shape ({candidates.k},), got {customer.shape}")
    out = candidates.vectors @ customer
    out[~candidates.usable] = -np.inf
    return out


def exclusion_mask(candidates: Candidates, excluded: Sequence[str]) -> np.ndarray:
    """(n,) True except at the rows of the `excluded` product ids (unknown ids are ignored)."""
    mask = np.ones(len(candidates), bool)
    rows = [candidates.index[p] for p in excluded if p in candidates.index]
    mask[rows] = False
    return mask


def popularity_scores(candidates: Candidates, bought: Sequence[str]) -> np.ndarray:
    """(n,) float32 count of each candidate in `bought` (product ids, one per purchase)."""
    counts = np.zeros(len(candidates), np.float32)
    rows = np.fromiter(
        (candidates.index.get(str(p), -1) for p in bought), dtype=np.int64, count=len(bought)
    )
    rows = rows[rows >= 0]
    np.add.at(counts, rows, 1.0)
    counts.flags.writeable = False
    return counts


def similar(candidates: Candidates, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosine similarities of the match coordinates) of the up to `k` candidates nearest
    to candidate `row`, best first; the seed and products without a (non-zero) match part left
    out (such a seed has none)."""
    if not 0 <= row < len(candidates):
        raise ValueError(f"row must be in [0, {len(candidates)}), got {row!r}")
    alike = candidates.unit.any(axis=1)  # usable, with a non-zero match part
    if not alike[row]:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    similarity = candidates.unit @ candidates.unit[row]
    allowed = alike.copy()
    allowed[row] = False
    best = top_k(similarity, k, allowed)
    return best, similarity[best]


@dataclass(frozen=True, eq=False)
class AttributeTable:
    """Every product's attribute values as codes: `codes[r, j]` indexes `vocab[j]` (-1: none).

    Rows [0, n_candidates) are the candidates' rows in their order; products without a vector
    follow (their attributes still explain a history and answer `/attributes`).
    """

    product_ids: tuple[str, ...]
    index: Mapping[str, int]
    names: tuple[str, ...]
    vocab: tuple[tuple[str, ...], ...]
    codes: np.ndarray  # (rows, attributes) int32
    confidence: np.ndarray  # (rows, attributes) float32, NaN where no value
    predicted: np.ndarray  # (rows, attributes) bool: the model's value, not a known label

    @classmethod
    def from_rows(
        cls,
        order: Sequence[str],
        product_id: Sequence[str],
        attribute: Sequence[str],
        value: Sequence[str],
        confidence: Sequence[float],
        predicted: Sequence[bool],
    ) -> AttributeTable:
        """From long rows (one per product and attribute, `predicted_attributes`); `order`:
        the candidates' product ids, which take the first rows."""
        pid = np.asarray([str(p) for p in product_id], dtype=object)
        attr = np.asarray([str(a) for a in attribute], dtype=object)
        val = np.asarray([str(v) for v in value], dtype=object)
        conf = np.asarray(confidence, dtype=np.float32)
        pred = np.asarray(predicted, dtype=bool)
        if not len(pid) == len(attr) == len(val) == len(conf) == len(pred):
            raise ValueError(
                "attribute rows must have equal lengths, got "
                f"{[len(pid), len(attr), len(val), len(conf), len(pred)]}"
            )
        head = [str(p) for p in order]
        ids = head + sorted(set(pid.tolist()) - set(head))
        index = {p: i for i, p in enumerate(ids)}
        rows = np.fromiter((index[p] for p in pid), dtype=np.int64, count=len(pid))
        names = tuple(sorted(set(attr.tolist())))
        codes = np.full((len(ids), len(names)), -1, np.int32)
        confidences = np.full((len(ids), len(names)), np.nan, np.float32)
        predicted_ = np.zeros((len(ids), len(names)), bool)
        vocab = []
        for j, name in enumerate(names):
            sel = attr == name
            values, inverse = np.unique(val[sel].astype(str), return_inverse=True)
            vocab.append(tuple(values.tolist()))
            codes[rows[sel], j] = inverse
            confidences[rows[sel], j] = conf[sel]
            predicted_[rows[sel], j] = pred[sel]
        for array in (codes, confidences, predicted_):
            array.flags.writeable = False
        return cls(tuple(ids), index, names, tuple(vocab), codes, confidences, predicted_)

    def of(self, product_id: str) -> list[dict]:
        """[{attribute, value, source, confidence}] of one product (sorted by attribute); []
        when it has none."""
        row = self.index.get(str(product_id))
        if row is None:
            return []
        out = []
        for j, name in enumerate(self.names):
            code = int(self.codes[row, j])
            if code >= 0:
                out.append(
                    {
                        "attribute": name,
                        "value": self.vocab[j][code],
                        "source": "predicted" if self.predicted[row, j] else "label",
                        "confidence": float(self.confidence[row, j]),
                    }
                )
        return out


def filter_mask(
    attributes: AttributeTable, n: int, filters: Mapping[str, Sequence[str]]
) -> np.ndarray:
    """(n,) True where a candidate's value of every filtered attribute (known or predicted) is
    one of the listed values; all True without filters. UnknownAttributeError for an attribute
    the table lacks, ValueError for an empty value list."""
    mask = np.ones(n, bool)
    for name, wanted in filters.items():
        if name not in attributes.names:
            raise UnknownAttributeError(
                f"unknown filter attribute {name!r}; known: {list(attributes.names)}"
            )
        if not wanted:
            raise ValueError(f"filter {name!r} lists no values; give at least one")
        j = attributes.names.index(name)
        vocab = attributes.vocab[j]
        codes = [vocab.index(v) for v in set(map(str, wanted)) if v in vocab]
        column = attributes.codes[:n, j]
        mask &= np.isin(column, np.asarray(codes, np.int32)) if codes else False
    return mask


def explain(
    attributes: AttributeTable,
    item_rows: Sequence[int],
    history: Sequence[str],
    skip_values: Collection[str] = (GROUPED_VALUE,),
) -> list[list[dict]]:
    """For each item (a row of `attributes`), the attribute values it shares with the distinct
    products of `history`: [{attribute, value, count, predicted, text}], most shared first
    (then by attribute name); `text` reads "Stripe, like 3 items you bought". `predicted`: the
    item's value is the model's, not a known label. Values in `skip_values` explain nothing
    (default: the attribute model's group of rare values)."""
    seen = {p for p in dict.fromkeys(str(p) for p in history) if p in attributes.index}
    hist_rows = np.asarray([attributes.index[p] for p in seen], np.int64)
    hist_codes = attributes.codes[hist_rows]  # (h, attributes)
    counts = [
        np.bincount(hist_codes[:, j][hist_codes[:, j] >= 0], minlength=len(vocab))
        for j, vocab in enumerate(attributes.vocab)
    ]
    out = []
    for row in item_rows:
        shared = []
        for j, name in enumerate(attributes.names):
            code = int(attributes.codes[row, j])
            if code < 0 or counts[j][code] == 0:
                continue
            value, n = attributes.vocab[j][code], int(counts[j][code])
            if value in skip_values:
                continue
            shared.append(
                {
                    "attribute": name,
                    "value": value,
                    "count": n,
                    "predicted": bool(attributes.predicted[row, j]),
                    "text": f"{value}, like {n} item{'s' if n != 1 else ''} you bought",
                }
            )
        shared.sort(key=lambda e: (-e["count"], e["attribute"]))
        out.append(shared)
    return out
