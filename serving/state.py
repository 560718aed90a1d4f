"""What a serving process holds: one immutable `ServingState`, swapped whole by `StateHolder`.

A state is built in one go from the registries and the lake, then never changes:

- the model: the `champion` alias of `settings.mlflow.recommender_model`, read once and pinned
  to its version ("atelier-recommender/3"), and what its training run's params say about
  scoring (`model_params`, one read of the run): `layout` of its item vectors
  (`vector_layout`; "dot" for a model trained before the bias), `n_recent` (distinct history
  products averaged into a customer's vector: `recommender.n_recent`, `recommender.n_inputs`
  of older runs, else the settings') and `blend_rule` (`recommender.blend_rule`, None when the
  run calibrated none: blend requests are then refused);
- the candidates: the lake's `item_vectors` rows computed by that version, for products of the
  catalogue (`products`), in product id order. Rows of another model version (the vectors of a
  newly promoted champion not computed yet) are never mixed in: building fails instead, and the
  previous state keeps serving;
- the attributes: `predicted_attributes` (known label or predicted value, confidence); until
  an attribute model has filled it, the known labels of `product_labels` alone (confidence 1),
  so that a catalogue without an attribute model is served, with filters on what is known;
- popularity: purchases per product in the last `settings.recommender.popularity_days` of the
  lake's `interactions` (up to its latest purchase: the catalogues are historical), the same
  ranking as the recommender's popularity baseline;
- `sources`: the Delta version of each lake table read, and `online`: the Feast online store.

`StateHolder` builds a new state fully, then swaps the reference under a lock; a request reads
`holder.state` once at its start and uses that object to the end, so a swap never fails or
mixes a request. Reloads come from `POST /admin/reload` or from a poll thread that rebuilds
when the champion's version or a source table's Delta version changed: products whose vectors
`atelier predict item-vectors` writes become recommendable at the next poll.

The online store (`OnlineFeatures`) is one Feast `FeatureStore` per state. Any exception from
Feast, or a read that misses its deadline, becomes `OnlineStoreError` (the predictor falls back
to popularity) and opens a breaker: requests fail fast for `retry_seconds`, then one probes. A
store that raised is dropped and rebuilt by the probe, because a failed sqlite connection never
recovers by itself (its schema cache stays stale) and a rebuilt one does.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from models.blend import BlendRule
from models.ranking import DOT, LAYOUTS
from models.recommender.bundle import N_RECENT
from serving.scoring import AttributeTable, Candidates, popularity_scores

if TYPE_CHECKING:  # pragma: no cover
    from atelier.settings import Settings

log = logging.getLogger("atelier.serving")

# Lake tables a state is built from; a new Delta version of any of them triggers a poll reload.
SOURCES = (
    "products",
    "product_tombstones",
    "item_vectors",
    "predicted_attributes",
    "product_labels",
    "interactions",
)
# Params of the champion's training run (training.recommender.pipeline logs them).
LAYOUT_PARAM = "vector_layout"
N_RECENT_PARAMS = ("recommender.n_recent", "recommender.n_inputs")  # n_inputs: older runs
BLEND_PARAM = "recommender.blend_rule"


class StateError(RuntimeError):
    """A state cannot be built (no champion, no vectors of it); the message says what to run."""


class OnlineStoreError(RuntimeError):
    """The Feast online store failed or is being retried; the message quotes the cause."""


class OnlineFeatures:
    """Feast online lookups for serving: customer histories and item vectors.

    One `FeatureStore` (built by `factory`, default `atelier.feast_store.feature_store`) for
    every request. Every read has a deadline (`timeout_s`): a store that does not answer in
    time (Redis down: redis-py retries with back-off for seconds) or raises trips a breaker,
    and requests fail fast to popularity for `retry_seconds`; then one request probes while the
    others keep failing fast. An error (not a timeout) also drops the store, rebuilt by the
    next probe, because a failed sqlite connection never recovers by itself.
    """

    def __init__(
        self,
        settings: Settings,
        retry_seconds: float = 5.0,
        factory: Callable[[Settings], Any] | None = None,
        timeout_s: float = 1.0,
    ):
        from concurrent.futures import ThreadPoolExecutor

        if factory is None:
            from atelier.feast_store import online_store as factory
        self._settings = settings
        self._factory = factory
        self.retry_seconds = float(retry_seconds)
        self.timeout_s = float(timeout_s)
        self._store: Any = None
        self._failed_at: float | None = None
        self._cause = ""
        self._lock = threading.Lock()
        self._opening = False
        self._probing = False
        # Reads run here so that a request can stop waiting for one; a read stuck in a dead
        # backend's retries holds a worker, not the request.
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="atelier-online")

    def warm_up(self) -> None:
        """Open the store and its connection now (the first request would otherwise pay for
        it); a failure is logged, not raised: serving starts on popularity."""
        try:
            self.history("__warm_up__")
        except OnlineStoreError as e:
            log.warning("online store not available at start: %s", e)

    def history(self, customer_id: str) -> list[str] | None:
        """The customer's recent products, most recent first (`customer_history:history`);
        None when the online store does not know the customer."""
        out = self._read(["customer_history:history"], [{"customer_id": str(customer_id)}])
        value = out["history"][0]
        return None if value is None else [str(p) for p in value]

    def vectors(self, product_ids: Sequence[str]) -> dict[str, tuple[list[float], str]]:
        """{product id: (vector, model_version)} of the products the online store holds
        (`item_vectors:vector`, `item_vectors:model_version`)."""
        ids = list(dict.fromkeys(str(p) for p in product_ids))
        if not ids:
            return {}
        out = self._read(
            ["item_vectors:vector", "item_vectors:model_version"],
            [{"product_id": p} for p in ids],
        )
        return {
            p: (v, str(m))
            for p, v, m in zip(ids, out["vector"], out["model_version"])
            if v is not None and m is not None
        }

    def _read(self, refs: list[str], rows: list[dict]) -> dict[str, list]:
        from concurrent.futures import TimeoutError as Timeout

        store = self._admit()
        future = self._pool.submit(
            lambda: store.get_online_features(features=refs, entity_rows=rows).to_dict()
        )
        try:
            out = future.result(timeout=self.timeout_s)
        except Timeout:
            self._trip(store, f"no answer in {self.timeout_s:g} s", drop=False)
            raise OnlineStoreError(f"online store read timed out ({self.timeout_s:g} s)") from None
        except Exception as e:  # any Feast or backend error: the caller falls back
            self._trip(store, f"{type(e).__name__}: {e}", drop=True)
            raise OnlineStoreError(f"online store read failed: {type(e).__name__}: {e}") from e
        with self._lock:
            self._failed_at, self._probing = None, False
        return out

    def _admit(self):
        """The store for this request, or OnlineStoreError at once: the breaker is open, or
        another request is probing or opening the store."""
        with self._lock:
            if self._failed_at is not None:
                waited = time.monotonic() - self._failed_at
                if waited < self.retry_seconds:
                    raise OnlineStoreError(
                        f"online store unavailable ({self._cause}); next try in "
                        f"{self.retry_seconds - waited:.1f} s"
                    )
                if self._probing:
                    raise OnlineStoreError("online store is being retried by another request")
                self._probing = True
            store = self._store
        if store is not None:
            return store
        try:
            return self._open()
        except OnlineStoreError:
            with self._lock:
                self._probing = False
            raise

    def _open(self):
        """The store, opened by one request at a time: while it opens (a Feast registry load,
        seconds under load), other requests fail fast instead of queueing behind it."""
        with self._lock:
            if self._store is not None:
                return self._store
            if self._opening:
                raise OnlineStoreError("online store is being opened by another request")
            self._opening = True
        try:
            store = self._factory(self._settings)
        except Exception as e:
            with self._lock:
                self._opening = False
                self._failed_at, self._cause = time.monotonic(), f"{type(e).__name__}: {e}"
            raise OnlineStoreError(f"cannot open the online store: {self._cause}") from e
        with self._lock:
            self._store, self._opening = store, False
        return store

    def _trip(self, store, cause: str, drop: bool) -> None:
        with self._lock:
            self._failed_at, self._cause, self._probing = time.monotonic(), cause, False
            if drop and self._store is store:
                self._store = None


@dataclass(frozen=True, eq=False)
class ServingState:
    """Everything one request needs, immutable; see the module docstring for the sources."""

    model_version: str
    n_recent: int
    layout: str  # of the item vectors, `models.ranking.LAYOUTS`
    blend_rule: BlendRule | None  # None: the model has none, blend requests are refused
    candidates: Candidates
    attributes: AttributeTable
    popularity: np.ndarray  # (n,) float32 purchases per candidate in the popularity window
    catalogue: frozenset[str]
    sources: Mapping[str, int | None]
    online: OnlineFeatures
    built_at: str

    @property
    def fingerprint(self) -> tuple:
        """What a poll compares: the model version and the source tables' Delta versions."""
        return (self.model_version, tuple(sorted(self.sources.items())))


def champion(settings: Settings) -> tuple[str, str | None]:
    """("<model>/<version>", run id) of the recommender's `champion` alias, read once.

    StateError when the model or the alias does not exist.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from atelier.registry import CHAMPION

    name = settings.mlflow.recommender_model
    # A client bound to these URIs, not mlflow's process-wide ones: a test process may serve
    # several workdirs.
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        raise StateError(
            f"no {CHAMPION!r} version of {name!r} in {settings.registry_uri}: {e.message} "
            f"(train and promote it: atelier train recommender; atelier promote {name})"
        ) from None
    return f"{name}/{version.version}", version.run_id


def fingerprint(settings: Settings) -> tuple:
    """The current `ServingState.fingerprint` of the registry and the lake (cheap: no reads
    beyond the alias and the Delta logs)."""
    from atelier.lake import Lake

    lake = Lake(settings)
    model_version, _ = champion(settings)
    return (model_version, tuple(sorted((t, lake.version(t)) for t in SOURCES)))


def build_state(
    settings: Settings,
    online: OnlineFeatures | None = None,
    now: datetime | None = None,
) -> ServingState:
    """A complete state from the registry and the lake (see the module docstring).

    online: the online store to use (default a new `OnlineFeatures`, warmed up). StateError
    when there is no champion or the lake holds none of its item vectors.
    """
    from atelier.lake import Lake

    lake = Lake(settings)
    model_version, run_id = champion(settings)
    # The model's own history length: a run without it predates the setting and was trained
    # with the then fixed N_RECENT, never with whatever this server's settings say now.
    layout, n_recent, blend_rule = model_params(
        _run_params(settings, run_id, model_version), N_RECENT
    )
    # Versions first: a table written while we read shows up as a change at the next poll.
    sources = {t: lake.version(t) for t in SOURCES}

    # Tombstoned products (removed from their source) stay in `products` for their purchases,
    # but are no longer recommendable.
    gone = set(map(str, lake.read_arrow("product_tombstones", ["product_id"])[0].to_pylist()))
    listed = map(str, lake.read_arrow("products", ["product_id"])[0].to_pylist())
    catalogue = frozenset(p for p in listed if p not in gone)
    candidates = _candidates(lake, catalogue, model_version, layout)
    attributes = _attribute_table(lake, candidates)
    popularity = popularity_scores(
        candidates, _recent_purchases(lake, settings.recommender.popularity_days)
    )

    if online is None:
        online = OnlineFeatures(settings, timeout_s=settings.serving.online_timeout_s)
        online.warm_up()
    state = ServingState(
        model_version=model_version,
        n_recent=n_recent,
        layout=layout,
        blend_rule=blend_rule,
        candidates=candidates,
        attributes=attributes,
        popularity=popularity,
        catalogue=catalogue,
        sources=sources,
        online=online,
        built_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
    )
    _log_state(state)
    return state


def _candidates(lake, catalogue: frozenset[str], model_version: str, layout: str) -> Candidates:
    """The `item_vectors` of `model_version` for the products of `catalogue`, in product id
    order. StateError when there are none or they do not fit `layout`."""
    vectors = lake.read_pandas("item_vectors", ["product_id", "vector", "model_version"])
    mine = vectors[vectors["model_version"] == model_version]
    mine = mine[mine["product_id"].isin(catalogue)].sort_values("product_id")
    if mine.empty:
        held = vectors["model_version"].value_counts().to_dict()
        raise StateError(
            f"the lake's item_vectors table holds no vectors of {model_version} "
            f"(it holds {held or 'none'}): run `atelier predict item-vectors` and "
            "`atelier materialize`"
        )
    try:
        return Candidates.build(
            mine["product_id"].tolist(),
            np.stack([np.asarray(v, np.float32) for v in mine["vector"]]),
            layout,
        )
    except ValueError as e:  # vectors that do not fit the layout the run declares
        raise StateError(f"the item vectors of {model_version} cannot be served: {e}") from None


def _attribute_table(lake, candidates: Candidates) -> AttributeTable:
    """The candidates' attribute values (see `_attribute_rows`)."""
    rows = _attribute_rows(lake)
    return AttributeTable.from_rows(
        candidates.product_ids,
        rows["product_id"].tolist(),
        rows["attribute"].tolist(),
        rows["value"].tolist(),
        rows["confidence"].to_numpy(np.float32),
        (rows["source"] == "predicted").to_numpy(bool),
    )


def _log_state(state: ServingState) -> None:
    log.info(
        "serving state: %s (%s, n_recent %d, %s), %d candidates (d=%d), %d attributes, "
        "lake versions %s",
        state.model_version,
        state.layout,
        state.n_recent,
        "blend rule" if state.blend_rule is not None else "no blend rule",
        len(state.candidates),
        state.candidates.k,
        len(state.attributes.names),
        state.sources,
    )


def _attribute_rows(lake):
    """product_id, attribute, value, confidence, source: `predicted_attributes`, else the known
    labels (source "label", confidence 1), else none."""
    import pandas as pd

    columns = ["product_id", "attribute", "value", "confidence", "source"]
    if lake.exists("predicted_attributes"):
        rows = lake.read_pandas("predicted_attributes", columns)
        # A prediction below its attribute's minimum confidence leaves the gap empty.
        return rows[rows["source"] != "below_confidence"].reset_index(drop=True)
    log.warning(
        "no predicted_attributes table: serving the known labels only (`atelier train "
        "attributes`, `atelier predict attributes` and a reload fill in the rest)"
    )
    if not lake.exists("product_labels"):
        return pd.DataFrame(
            {c: pd.Series(dtype=float if c == "confidence" else object) for c in columns}
        )
    labels = lake.read_pandas("product_labels", ["product_id", "attribute", "value"])
    return labels.assign(confidence=1.0, source="label")


def _run_params(settings: Settings, run_id: str | None, model_version: str) -> Mapping[str, str]:
    """The params of the model version's training run ({} for a version without a run).
    StateError when the run cannot be read: its layout decides how every customer is scored,
    and guessing it would serve wrong rankings without an error."""
    if not run_id:
        log.warning("%s has no training run: scoring with the defaults", model_version)
        return {}
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        run = MlflowClient(settings.tracking_uri, settings.registry_uri).get_run(run_id)
    except MlflowException as e:
        raise StateError(
            f"cannot read the training run {run_id} of {model_version}: {e.message}"
        ) from None
    return dict(run.data.params)


def model_params(
    params: Mapping[str, str], default_n_recent: int
) -> tuple[str, int, BlendRule | None]:
    """(layout, n_recent, blend rule) from a training run's params (see the module docstring).

    A missing layout is "dot" (runs from before the bias); an unknown one is a StateError.
    n_recent: the first readable integer >= 1 of `N_RECENT_PARAMS`, else `default_n_recent`.
    A missing or unreadable blend rule is None, with a warning.
    """
    layout = params.get(LAYOUT_PARAM, DOT)
    if layout not in LAYOUTS:
        raise StateError(
            f"the training run's {LAYOUT_PARAM} is {layout!r}; this server scores {LAYOUTS!r}"
        )
    n_recent = default_n_recent
    for name in N_RECENT_PARAMS:
        value = params.get(name)
        if value is None:
            continue
        try:
            parsed = int(value)
        except ValueError:
            parsed = 0
        if parsed >= 1:
            n_recent = parsed
            break
        log.warning("ignoring the training run's %s=%r: not an integer >= 1", name, value)
    blend_rule = None
    raw = params.get(BLEND_PARAM)
    if raw is None:
        log.warning(
            "the training run has no %s: blend requests are refused (retrain with "
            "recommender.blend true)",
            BLEND_PARAM,
        )
    else:
        try:
            blend_rule = BlendRule.from_dict(json.loads(raw))
        except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
            log.warning("ignoring the training run's %s %r: %s", BLEND_PARAM, raw[:200], e)
    return layout, n_recent, blend_rule


def _recent_purchases(lake, days: int) -> list[str]:
    """Product ids of the purchases in the last `days` days up to the latest one."""
    import pyarrow.compute as pc

    table = lake.read_arrow("interactions", ["product_id", "timestamp"])
    if table.num_rows == 0:
        return []
    last = pc.max(table["timestamp"]).as_py()
    start = last - timedelta(days=days)
    recent = table.filter(pc.greater(table["timestamp"], start))
    return recent["product_id"].to_pylist()


SwapListener = Callable[[ServingState, "ServingState | None", str], None]
FailureListener = Callable[[Exception, str], None]


class StateHolder:
    """The current `ServingState`, swapped atomically; None until the first build succeeds.

    `reload` builds outside the swap lock (requests keep the old state meanwhile) and one at a
    time, then runs the `warmers` on the new state before it is swapped in (so neither `/ready`
    nor a reload hands requests a cold state). Listeners hear of every swap (new, previous,
    trigger) and every failed build.
    """

    def __init__(
        self,
        settings: Settings,
        builder: Callable[[Settings], ServingState] = build_state,
    ):
        self.settings = settings
        self._builder = builder
        self._state: ServingState | None = None
        self._swap_lock = threading.Lock()
        self._build_lock = threading.Lock()
        self.error: str | None = None
        self.on_swap: list[SwapListener] = []
        self.on_failure: list[FailureListener] = []
        self.warmers: list[Callable[[ServingState], None]] = []
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def state(self) -> ServingState | None:
        return self._state

    def reload(self, trigger: str = "admin") -> tuple[ServingState, ServingState | None]:
        """Build a new state and swap it in; returns (new, previous). A failed build raises and
        leaves the current state serving."""
        with self._build_lock:
            try:
                new = self._builder(self.settings)
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
                for listener in self.on_failure:
                    listener(e, trigger)
                raise
            for warm in self.warmers:
                try:
                    warm(new)
                except Exception as e:  # the state built; a cold start beats no state
                    log.warning("warm-up failed, serving the new state cold: %s", e)
            with self._swap_lock:
                previous, self._state = self._state, new
            self.error = None
        for listener in self.on_swap:
            listener(new, previous, trigger)
        return new, previous

    def refresh_if_changed(self) -> bool:
        """Reload when the champion or a source table changed since the current state (or
        there is none yet) and no reload is running; True when it swapped."""
        if self._build_lock.locked():  # a reload is under way; it reads the latest anyway
            return False
        current = self._state
        if current is not None and fingerprint(self.settings) == current.fingerprint:
            return False
        self.reload("poll")
        return True

    def start_polling(self, seconds: float) -> None:
        """Call `refresh_if_changed` every `seconds` in a daemon thread (errors are logged)."""
        if seconds <= 0:
            raise ValueError(f"poll interval must be > 0 seconds, got {seconds!r}")
        if self._poller is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(seconds):
                try:
                    self.refresh_if_changed()
                except Exception as e:  # keep polling: the next change may build fine
                    log.warning("poll reload failed, still serving the current state: %s", e)

        self._poller = threading.Thread(target=loop, name="atelier-serving-poll", daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None
