"""Prometheus metrics of one serving app, in its own `CollectorRegistry`.

A registry per app (not the process-wide default) so that several apps in one process — tests
build many — do not register the same names twice. `GET /metrics` renders it.

Beware: importing `feast.metrics` (Feast does on its first online read) sets
`PROMETHEUS_MULTIPROC_DIR` in the environment. When that happens before `prometheus_client` is
first imported, every metric of the process keeps its values in files under Feast's temporary
folder, and series with the same name and labels in two registries of one process share a value.
`atelier serve` imports this module before Feast is touched, so it counts in memory.

- `atelier_request_seconds` (histogram; endpoint = route template, method, status class): the
  buckets are fine below 20 ms, where the serving goal lies (p50 5 ms, p99 20 ms);
- `atelier_recommendation_fallbacks_total` (reason): popularity answers, by reason;
- `atelier_online_store_errors_total`: requests whose Feast read raised (or was skipped
  while the store is retried);
- `atelier_stale_online_vectors_total`: online vectors of another model version replaced by
  the state's (the online store lags the lake until materialisation);
- `atelier_model_info` (model_version) = 1 for the version served (0 for earlier ones),
  `atelier_candidate_products`;
- `atelier_reloads_total` (trigger, outcome): state rebuilds, `swapped` or `failed`.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR"
OUR_DIR = "ATELIER_SERVING_METRICS_DIR"  # set with MULTIPROCESS by `serve --workers`
BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    """The serving app's metrics; every method is thread-safe (prometheus_client's are)."""

    def __init__(self, fallback_reasons: tuple[str, ...] = ()) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # `atelier serve --workers` sets it (serving.workers); Feast may set its own otherwise
        # (see above), which is not ours to aggregate.
        ours = os.environ.get(OUR_DIR)
        self.multiprocess = bool(ours) and os.environ.get(MULTIPROCESS) == ours
        self.latency = Histogram(
            "atelier_request_seconds",
            "Request latency by endpoint (route template).",
            ["endpoint", "method", "status"],
            buckets=BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "atelier_recommendation_fallbacks",
            "Recommendations answered by popularity, by reason.",
            ["reason"],
            registry=r,
        )
        self.online_errors = Counter(
            "atelier_online_store_errors",
            "Requests whose online store read failed (or was skipped while it is retried).",
            registry=r,
        )
        self.stale_vectors = Counter(
            "atelier_stale_online_vectors",
            "Online item vectors of another model version, replaced by the served model's.",
            registry=r,
        )
        # Multi-process mode (`serve --workers`): a gauge is the live workers' maximum.
        self.model_info = Gauge(
            "atelier_model_info",
            "1 for the model version being served.",
            ["model_version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.candidates = Gauge(
            "atelier_candidate_products",
            "Products that may be recommended.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "atelier_reloads", "Serving state rebuilds.", ["trigger", "outcome"], registry=r
        )
        self._model: str | None = None
        # Every reason's series exists from the start (at 0 in memory), so that a rate over it
        # is defined before the first fallback; in multi-process mode it starts from the value
        # the shared file holds, so differences between two scrapes stay right.
        for reason in fallback_reasons:
            self.fallbacks.labels(reason)

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.latency.labels(endpoint, method, f"{status // 100}xx").observe(seconds)

    def fallback(self, reason: str) -> None:
        self.fallbacks.labels(reason).inc()
        if reason == "online_store_unavailable":
            self.online_errors.inc()

    def serving(self, model_version: str, candidates: int) -> None:
        """The served model changed: its series goes to 1, the previous one's to 0 (set, not
        removed: removal is unsupported in multi-process mode, see the module docstring)."""
        if self._model is not None and self._model != model_version:
            self.model_info.labels(self._model).set(0)
        self.model_info.labels(model_version).set(1)
        self._model = model_version
        self.candidates.set(candidates)

    def reload(self, trigger: str, outcome: str) -> None:
        self.reloads.labels(trigger, outcome).inc()

    def render(self) -> bytes:
        """The exposition text: this registry's, or in multi-process mode (`serve --workers`,
        MULTIPROCESS set) every worker's series summed from the shared folder."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone)
        return generate_latest(everyone)

    def close(self) -> None:
        """This process stops serving: its live gauges leave the sums."""
        if self.multiprocess:
            import os

            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
