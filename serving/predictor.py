"""One request against one `ServingState`: online lookups, then the pure scoring.

`recommend` reads the customer's recent products (`customer_history:history`) from the Feast
online store, chooses the `n_recent` most recent distinct ones the model has a vector for
(`models.ranking.recent_items`, the rule of training and evaluation), reads their item vectors
(`item_vectors:vector`) and ranks the candidates by the customer vector of the model's layout
(`models.ranking.customer_vector`). An online vector of another model version than the state's
(the online store lags until `atelier materialize` runs after a new champion) is replaced by
the state's own vector of that product, so one request never mixes two models' spaces;
`Recommendation.stale_vectors` counts such replacements. A chosen product missing online (its
vector not materialised yet) gets the state's vector too, so the customer is represented by
the same products as in evaluation.

Fallbacks, flagged in `Recommendation.fallback`, rank by popularity with the same exclusions
and filters:
- `unknown_customer`: the online store has no history for the customer;
- `empty_history`: the history is empty;
- `no_history_vectors`: none of the history's products has a vector of the model;
- `online_store_unavailable`: Feast raised (logged as a warning; never an error response).

Modes (`Recommendation.mode`):
- `all_products`: any candidate may be recommended (the paper's protocol);
- `new_to_customer` (`exclude_purchased`): the products of the online history (the last
  `product_features.history_length` purchases, what serving knows of the customer) are dropped;
- `blend`: the customer's likely rebuys mixed with the model's new-to-customer products by the
  model's `BlendRule` (`models.blend.blend`, calibrated on the validation window); only when
  the model ranks: a fallback ranks popularity over all products.
Filters apply in every mode, to rebuys as to new products. Filters and the blend rule are
checked before any lookup, so a bad request is rejected even when the store is down.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from models import ranking as model_ranking
from models.blend import blend as blend_lists
from serving import scoring
from serving.state import OnlineStoreError, ServingState

log = logging.getLogger("atelier.serving")

FALLBACKS = ("unknown_customer", "empty_history", "no_history_vectors", "online_store_unavailable")
MODES = ("all_products", "new_to_customer", "blend")


class UnknownProductError(KeyError):
    """The product is not in the catalogue (or has no vector, for `similar`)."""

    def __str__(self) -> str:  # KeyError quotes its argument; the message reads better bare
        return str(self.args[0])


class NoBlendRuleError(ValueError):
    """A blend was asked of a model whose training calibrated no blend rule."""


@dataclass(frozen=True)
class Recommendation:
    """Ranked items ({product_id, score, rank[, explanation]}) and how they were ranked."""

    model_version: str
    fallback: str | None
    items: list[dict]
    stale_vectors: int = 0
    history: list[str] = field(default_factory=list)
    mode: str = "all_products"  # one of MODES


def recommend(
    state: ServingState,
    customer_id: str,
    k: int = 10,
    exclude_purchased: bool = False,
    filters: Mapping[str, Sequence[str]] | None = None,
    explain: bool = False,
    blend: bool = False,
) -> Recommendation:
    """Top-k for a customer (modes: see the module docstring); score = customer vector . item
    vector, also for the rebuys of a blend, or the purchase count in the popularity window for
    a fallback. UnknownAttributeError / ValueError for bad filters, ValueError for a blend that
    excludes purchases, NoBlendRuleError for a blend of a model without a rule."""
    if blend and exclude_purchased:
        raise ValueError(
            "blend mixes the customer's likely rebuys in: it cannot exclude purchased products "
            "(send exclude_purchased false, or leave it out)"
        )
    if blend and state.blend_rule is None:
        raise NoBlendRuleError(
            f"model {state.model_version} has no blend rule: retrain with recommender.blend true"
        )
    n = len(state.candidates)
    allowed = scoring.filter_mask(state.attributes, n, filters or {})
    fallback: str | None = None
    history: list[str] = []
    customer = None
    stale = 0
    try:
        found = state.online.history(customer_id)
        if found is None:
            fallback = "unknown_customer"
        elif not found:
            fallback = "empty_history"
        else:
            history = found
            customer, stale = _customer_vector(state, history)
            if customer is None:
                fallback = "no_history_vectors"
    except OnlineStoreError as e:
        log.warning("customer %r: popularity fallback, %s", customer_id, e)
        fallback = "online_store_unavailable"

    if customer is not None:
        ranking = scoring.scores(state.candidates, customer)
    else:
        ranking = state.popularity
    if blend and customer is not None:
        rows, mode = _blend_rows(state, ranking, allowed, history, k), "blend"
    else:
        if exclude_purchased and history:
            allowed &= scoring.exclusion_mask(state.candidates, history)
        rows = model_ranking.top_k(ranking, k, allowed)
        mode = "new_to_customer" if exclude_purchased else "all_products"
    items = [
        {"product_id": state.candidates.product_ids[r], "score": float(ranking[r]), "rank": i}
        for i, r in enumerate(rows, 1)
    ]
    if explain:
        for item, shared in zip(items, scoring.explain(state.attributes, rows, history)):
            item["explanation"] = shared
    return Recommendation(
        state.model_version, fallback, items, stale_vectors=stale, history=history, mode=mode
    )


def _customer_vector(state: ServingState, history: list[str]) -> tuple[np.ndarray | None, int]:
    """(customer vector or None, stale online vectors replaced) of the `n_recent` most recent
    distinct history products the model has a vector for.

    Exactly those products are read online (one read: an online read costs per product, a
    20-item history read whole took 0.8 ms of CPU, its first 5 products 0.3 ms, on H&M with
    sqlite). A vector missing online or of another model version is the state's own."""
    chosen = model_ranking.recent_items(history, state.n_recent, known=state.candidates.index)
    if not chosen:
        return None, 0
    online = state.online.vectors(chosen)
    vectors, stale = [], 0
    for product in chosen:
        vector, version = online.get(product, (None, None))
        if vector is None or version != state.model_version:
            # Only another version counts as stale (the metric's meaning); a missing one is a
            # product materialisation has not reached yet.
            if vector is not None:
                stale += 1
            vector = state.candidates.vectors[state.candidates.index[product]]
        vectors.append(vector)
    return model_ranking.customer_vector(vectors, state.layout), stale


def _blend_rows(
    state: ServingState, ranking: np.ndarray, allowed: np.ndarray, history: list[str], k: int
) -> np.ndarray:
    """Candidate rows of the blend of the customer's rebuys and the model's new-to-customer
    list (`ranking`: the model's scores), both within `allowed` (the filters)."""
    candidates, rule = state.candidates, state.blend_rule
    new_allowed = allowed & scoring.exclusion_mask(candidates, history)
    best = model_ranking.top_k(ranking, max(k, rule.k), new_allowed)
    new = [candidates.product_ids[r] for r in best]
    # A rebuy is offered like any product: a candidate that passes the filters and has a score.
    offered = allowed & np.isfinite(ranking)
    rebuys = [p for p in history if p in candidates.index and offered[candidates.index[p]]]
    chosen = blend_lists(new, rebuys, rule, k)
    # The rule rates the first rule.k ranks only: a longer list goes on with the model's order.
    taken = set(chosen)
    chosen += [p for p in new if p not in taken][: k - len(chosen)]
    return np.asarray([candidates.index[p] for p in chosen], np.int64)


def warm_up(state: ServingState, rounds: int = 20) -> None:
    """Run every request path on a new state before it serves.

    The first calls pay for lazy imports, the online store's connection and its caches, and
    numpy's first kernels: right after `/ready` answered, the first 30 s at 200 req/s had a
    p99 of 120 ms against 17.8 ms once warm. Unknown customers take the online-store read and
    the fallback; a few candidates' histories take the scoring, filter and explanation paths.
    """
    ids = state.candidates.product_ids
    for i in range(rounds):
        recommend(state, f"__warm_up_{i}__", k=10)
        if not ids:
            continue
        history = [ids[(i + j) % len(ids)] for j in range(state.n_recent)]
        customer, _ = _customer_vector(state, history)
        if customer is not None:
            ranking = scoring.scores(state.candidates, customer)
            everything = scoring.filter_mask(state.attributes, len(ids), {})
            rows = model_ranking.top_k(ranking, 10, everything)
            scoring.explain(state.attributes, rows, history)
        similar(state, ids[i % len(ids)], k=10)
        attributes(state, ids[i % len(ids)])


def similar(state: ServingState, product_id: str, k: int = 10) -> list[dict]:
    """[{product_id, score (cosine), rank}] of the k nearest candidates; UnknownProductError
    when the product is not in the catalogue or has no vector of the model."""
    row = state.candidates.index.get(str(product_id))
    if row is None:
        if str(product_id) in state.catalogue:
            raise UnknownProductError(
                f"product {product_id!r} has no item vector of {state.model_version}"
            )
        raise UnknownProductError(f"unknown product {product_id!r}")
    rows, sims = scoring.similar(state.candidates, row, k)
    return [
        {"product_id": state.candidates.product_ids[r], "score": float(s), "rank": i}
        for i, (r, s) in enumerate(zip(rows, sims), 1)
    ]


def attributes(state: ServingState, product_id: str) -> list[dict]:
    """[{attribute, value, source, confidence}] of a catalogue product (known labels have
    confidence 1.0); UnknownProductError outside the catalogue."""
    pid = str(product_id)
    if pid not in state.catalogue and pid not in state.attributes.index:
        raise UnknownProductError(f"unknown product {product_id!r}")
    return state.attributes.of(pid)
