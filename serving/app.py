"""The recommendation API: `create_app(settings)` → a FastAPI app (OpenAPI docs at `/docs`).

    GET  /health                        the process answers
    GET  /ready                         200 with the model version once a state is loaded, else 503
    POST /recommendations               top-k for a customer (filters, modes, explanations)
    GET  /products/{id}/similar?k=10    nearest products by cosine of item vectors
    GET  /products/{id}/attributes      known and predicted attributes with confidence
    POST /admin/reload                  rebuild the state (new champion, new vectors) and swap it:
                                        bearer `serving.admin_token` (none: loopback only),
                                        at most one per `serving.reload_min_interval_s` (429)
    GET  /metrics                       Prometheus text (see `serving.metrics`)

Every handler reads the current state once (`holder.state`) and answers from that object, so a
reload that swaps the state mid-request never fails it. Every response carrying products
carries the `model_version` that ranked them. Errors: a malformed body or out-of-range k is
422 (FastAPI's validation, naming the field), an unknown filter attribute 422 naming the known
ones, a blend the model has no rule for (or that excludes purchases) 422, an unknown product
404, no state loaded yet 503; the online store failing is not an error (popularity, flagged
`fallback`). A request without `exclude_purchased` gets the mode of the setting
`recommender.exclude_seen` (default false: all products), the one evaluation reports.

Handlers are plain `def`: Feast reads block, so they run in the server's thread pool. One JSON
line per request goes to the `atelier.serving.access` logger (method, path, status,
latency_ms, model_version, fallback); `configure_access_log` makes it print bare JSON.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import threading
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from serving import predictor
from serving.gallery import gallery_router
from serving.metrics import CONTENT_TYPE, ServingMetrics
from serving.scoring import UnknownAttributeError
from serving.state import ServingState, StateHolder

if TYPE_CHECKING:  # pragma: no cover
    from atelier.settings import Settings
    from serving.workers import ReloadBroadcast

log = logging.getLogger("atelier.serving")
access_log = logging.getLogger("atelier.serving.access")


# -- schemas ---------------------------------------------------------------------------------
class RecommendationRequest(BaseModel):
    """What to recommend to whom."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=256, examples=["0000a1b2"])
    k: int = Field(10, ge=1, le=100, description="Number of products, 1 to 100.")
    exclude_purchased: bool | None = Field(
        None,
        description="Leave out the products of the customer's recent history (mode "
        "new_to_customer). Default: the server's setting `recommender.exclude_seen` (false: "
        "all products may be recommended, the paper's protocol); false with `blend`.",
    )
    blend: bool = Field(
        False,
        description="Mix the customer's likely rebuys with new products by the rule "
        "calibrated on the validation window (mode blend); 422 when the model has no rule or "
        "`exclude_purchased` is true.",
    )
    filters: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Attribute → accepted values (known or predicted); several attributes: "
        "all must match.",
        examples=[{"graphical_appearance_name": ["Stripe"]}],
    )
    explain: bool = Field(
        False, description="Add the attribute values each item shares with the history."
    )


class Explanation(BaseModel):
    attribute: str
    value: str
    count: int = Field(description="Distinct products of the history with this value.")
    predicted: bool = Field(description="The item's value is predicted, not a known label.")
    text: str = Field(examples=["Stripe, like 3 items you bought"])


class Item(BaseModel):
    product_id: str
    score: float = Field(
        description="Dot product with the customer's vector (in a blend too, where the rule, "
        "not the score, sets the order); cosine for similar products; purchases in the "
        "popularity window for a fallback."
    )
    rank: int
    explanation: list[Explanation] | None = None


Fallback = Literal[
    "unknown_customer", "empty_history", "no_history_vectors", "online_store_unavailable"
]
Mode = Literal["all_products", "new_to_customer", "blend"]


class RecommendationResponse(BaseModel):
    customer_id: str
    model_version: str
    fallback: Fallback | None = Field(
        description="Why popularity ranked the items; null when the model did."
    )
    mode: Mode = Field(
        description="all_products: any product may be recommended; new_to_customer: the "
        "customer's history left out; blend: likely rebuys mixed with new products (a "
        "fallback never blends)."
    )
    items: list[Item]


class SimilarResponse(BaseModel):
    product_id: str
    model_version: str
    items: list[Item]


class Attribute(BaseModel):
    attribute: str
    value: str
    source: Literal["label", "predicted"]
    confidence: float = Field(description="1.0 for a known label.")


class AttributesResponse(BaseModel):
    product_id: str
    attributes: list[Attribute]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    model_version: str
    products: int
    built_at: str
    sources: dict[str, int | None]
    pid: int  # which server process answered (`serve --workers`)


class ReloadResponse(BaseModel):
    model_version: str
    previous: str | None
    products: int


class ErrorResponse(BaseModel):
    detail: str


# -- app -------------------------------------------------------------------------------------
def create_app(
    settings: Settings,
    state_holder: StateHolder | None = None,
    poll_seconds: float | None = None,
    broadcast: ReloadBroadcast | None = None,
) -> FastAPI:
    """The API over `state_holder` (default: a new one for `settings`).

    Long by design: the route table, each route a short closure over the holder and metrics
    (FastAPI's idiom); the logic lives in `serving.predictor` and `serving.scoring`.

    On start-up a holder without a state loads one in a background thread (`/health` answers
    at once, `/ready` says 503 until it is loaded); with `poll_seconds` the holder rebuilds
    whenever the champion or a source table changed; with `broadcast` (`atelier serve
    --workers`) an admin reload reaches the other workers too.
    """
    holder = state_holder or StateHolder(settings)
    exclude_default = settings.recommender.exclude_seen
    metrics = ServingMetrics(fallback_reasons=predictor.FALLBACKS)
    holder.on_swap.append(lambda new, _prev, trigger: _swapped(metrics, new, trigger))
    holder.on_failure.append(lambda _e, trigger: metrics.reload(trigger, "failed"))
    if predictor.warm_up not in holder.warmers:
        holder.warmers.append(predictor.warm_up)
    if holder.state is not None:
        metrics.serving(holder.state.model_version, len(holder.state.candidates))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if holder.state is None:
            threading.Thread(
                target=_initial_load, args=(holder,), name="atelier-serving-load", daemon=True
            ).start()
        if poll_seconds:
            holder.start_polling(poll_seconds)
        if broadcast is not None:
            broadcast.watch(holder)
        try:
            yield
        finally:
            holder.stop_polling()
            if broadcast is not None:
                broadcast.stop()
            metrics.close()

    app = FastAPI(
        title="atelier recommendations",
        summary="Hybrid recommender over Feast online features; the MLflow champion.",
        version="1",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.metrics = metrics
    app.add_middleware(_Observe, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler, with the body escaped to ASCII: the errors echo the input, and
        # a lone surrogate in it (JSON "\ud800", which the body parser accepts) cannot be
        # encoded as UTF-8, which turned the 422 into a 500.
        return _AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    not_found = {404: {"model": ErrorResponse}}
    not_ready = {503: {"model": ErrorResponse, "description": "No state loaded yet."}}

    def current() -> ServingState:
        state = holder.state
        if state is None:
            raise HTTPException(503, detail=f"not ready: {holder.error or 'loading the model'}")
        return state

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str | int]:
        """The process is alive (says nothing about the model); `pid`: which server process
        answered (`serve --workers`)."""
        return {"status": "ok", "pid": os.getpid()}

    @app.get(
        "/ready",
        tags=["ops"],
        response_model=ReadyResponse,
        responses={503: {"model": ErrorResponse, "description": "Loading, or the load failed."}},
    )
    def ready(request: Request):
        """200 with the model version once the model and the candidates are loaded."""
        state = holder.state
        if state is None:
            detail = f"load failed: {holder.error}" if holder.error else "loading"
            return JSONResponse({"detail": detail}, status_code=503)
        request.state.model_version = state.model_version
        return ReadyResponse(
            status="ready",
            model_version=state.model_version,
            products=len(state.candidates),
            built_at=state.built_at,
            sources=dict(state.sources),
            pid=os.getpid(),
        )

    @app.post(
        "/recommendations",
        tags=["recommendations"],
        response_model=RecommendationResponse,
        response_model_exclude_unset=True,
        responses={**not_ready},
    )
    def recommendations(body: RecommendationRequest, request: Request):
        """The customer's top-k products, or popularity when the model cannot rank for them
        (`fallback` says why); `mode` says which products could be."""
        state = current()
        request.state.model_version = state.model_version
        exclude = body.exclude_purchased
        if exclude is None:  # a blend brings purchases back by definition
            exclude = False if body.blend else exclude_default
        try:
            rec = predictor.recommend(
                state,
                body.customer_id,
                k=body.k,
                exclude_purchased=exclude,
                filters=body.filters,
                explain=body.explain,
                blend=body.blend,
            )
        except (UnknownAttributeError, ValueError) as e:
            raise HTTPException(422, detail=str(e)) from None
        request.state.fallback = rec.fallback
        if rec.fallback:
            metrics.fallback(rec.fallback)
        if rec.stale_vectors:
            metrics.stale_vectors.inc(rec.stale_vectors)
        return RecommendationResponse.model_validate(
            {
                "customer_id": body.customer_id,
                "model_version": rec.model_version,
                "fallback": rec.fallback,
                "mode": rec.mode,
                "items": rec.items,
            }
        )

    @app.get(
        "/products/{product_id}/similar",
        tags=["products"],
        response_model=SimilarResponse,
        response_model_exclude_unset=True,
        responses={**not_found, **not_ready},
    )
    def similar(
        request: Request,
        product_id: str = Path(min_length=1, max_length=256),
        k: int = Query(10, ge=1, le=100, description="Number of products, 1 to 100."),
    ):
        """The k products nearest to this one (cosine of item vectors), itself left out."""
        state = current()
        request.state.model_version = state.model_version
        try:
            items = predictor.similar(state, product_id, k)
        except predictor.UnknownProductError as e:
            raise HTTPException(404, detail=str(e)) from None
        return SimilarResponse.model_validate(
            {"product_id": product_id, "model_version": state.model_version, "items": items}
        )

    @app.get(
        "/products/{product_id}/attributes",
        tags=["products"],
        response_model=AttributesResponse,
        responses={**not_found, **not_ready},
    )
    def product_attributes(product_id: str = Path(min_length=1, max_length=256)):
        """Every attribute of the product: known labels and the model's predictions, with
        confidence."""
        state = current()
        try:
            found = predictor.attributes(state, product_id)
        except predictor.UnknownProductError as e:
            raise HTTPException(404, detail=str(e)) from None
        return AttributesResponse(product_id=product_id, attributes=found)

    cooldown = _Cooldown(settings.serving.reload_min_interval_s)

    @app.post(
        "/admin/reload",
        tags=["ops"],
        response_model=ReloadResponse,
        responses={
            401: {"model": ErrorResponse, "description": "Missing or wrong admin token."},
            403: {"model": ErrorResponse, "description": "No token set: loopback clients only."},
            429: {"model": ErrorResponse, "description": "Reloaded too recently (Retry-After)."},
            503: {"model": ErrorResponse, "description": "The rebuild failed."},
        },
    )
    def reload(request: Request):
        """Rebuild the state from the registry and the lake, then swap it in atomically (a
        failed rebuild keeps the current state serving)."""
        _check_admin(request, settings.serving.admin_token)
        wait = cooldown.take()
        if wait:
            raise HTTPException(
                429,
                detail=f"reloaded less than {cooldown.seconds:g} s ago: retry in {wait:.1f} s",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        try:
            new, previous = holder.reload("admin")
        except Exception as e:
            serving = holder.state.model_version if holder.state else "nothing"
            log.warning("reload failed, still serving %s: %s", serving, e)
            return JSONResponse(
                {"detail": f"reload failed, still serving {serving}: {type(e).__name__}: {e}"},
                status_code=503,
            )
        if broadcast is not None:  # the other workers reload too (serving.workers)
            broadcast.announce(new.model_version)
        request.state.model_version = new.model_version
        return ReloadResponse(
            model_version=new.model_version,
            previous=previous.model_version if previous else None,
            products=len(new.candidates),
        )

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(gallery_router())
    return app


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped (lone surrogates included)."""

    def render(self, content) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _check_admin(request: Request, token) -> None:
    """Admin calls need the bearer token when one is set, else a loopback client."""
    if token is not None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token.get_secret_value()}".encode()):
            raise HTTPException(
                401,
                detail="admin endpoints need 'Authorization: Bearer <serving.admin_token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
    elif request.client is None or request.client.host not in LOOPBACK:
        raise HTTPException(
            403,
            detail="admin endpoints answer loopback clients only unless serving.admin_token "
            "(ATELIER_SERVING__ADMIN_TOKEN) is set",
        )


class _Cooldown:
    """At most one event per `seconds`: `take()` is 0 when it may happen (and records it),
    else the seconds left to wait."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._last = -math.inf
        self._lock = threading.Lock()

    def take(self) -> float:
        with self._lock:
            now = time.monotonic()
            wait = self._last + self.seconds - now
            if wait > 0:
                return wait
            self._last = now
            return 0.0


def _swapped(metrics: ServingMetrics, state: ServingState, trigger: str) -> None:
    metrics.serving(state.model_version, len(state.candidates))
    metrics.reload(trigger, "swapped")


def _initial_load(holder: StateHolder) -> None:
    try:
        holder.reload("start")
    except Exception as e:  # /ready reports it; /admin/reload or the poll may succeed later
        log.error("cannot load the serving state: %s", e)


class _Observe:
    """ASGI middleware: latency histogram per route template and one JSON log line per
    request. Plain ASGI (not BaseHTTPMiddleware): it adds no task or stream per request."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        notes = scope.setdefault("state", {})

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - start
            # The route template keeps the label set small; FastAPI's own pages (/docs,
            # /openapi.json) carry no route and are few, a 404 may be any path.
            route = getattr(scope.get("route"), "path", None)
            endpoint = route or ("unmatched" if status == 404 else scope["path"])
            self.metrics.observe(endpoint, scope["method"], status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    json.dumps(
                        {
                            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status,
                            "latency_ms": round(seconds * 1000, 3),
                            "model_version": notes.get("model_version"),
                            "fallback": notes.get("fallback"),
                        }
                    )
                )


def configure_access_log() -> None:
    """Print the access logger's records as bare JSON lines on stderr (one per request)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.handlers[:] = [handler]
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
