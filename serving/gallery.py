"""The web gallery: server-rendered pages over the serving state (`gallery_router()`).

    GET /ui/                        a few customers (longest histories) and the popular products
    GET /ui/customers/{id}          the customer's purchases beside their recommendations
    GET /ui/products/{id}           a product, its attributes and its similar products
    GET /images/{product_id}?shot=  the product's image file (shot 0, the main one, by default)

Pages answer from the same state object and the same calls as the JSON API
(`predictor.recommend` with k=12 and explanations, `predictor.similar`, `predictor.attributes`),
so a page shows what `POST /recommendations` returns; every page names the model version.
Attribute chips show a known label filled and a predicted value outlined with its confidence.

What the state does not hold (product names and types, image paths, the customers with the
longest histories) is read from the lake once per state (`Catalogue`) and dropped with it, so
a reload that brings new products brings their names and images too. `/images` serves only
the paths of the lake's `product_images` table: the URL names a product and a shot, never a
path, and a product or shot without a row is 404.

Templates are Jinja2 (`serving/templates/`, autoescaped); the CSS is inlined; no JavaScript.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import TYPE_CHECKING
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.templating import Jinja2Templates

from models.ranking import top_k
from serving import predictor
from serving.state import ServingState

if TYPE_CHECKING:  # pragma: no cover
    from atelier.settings import Settings

TEMPLATES = FilePath(__file__).parent / "templates"
RECOMMENDATIONS = 12  # cards on a customer page
SIMILAR = 12  # cards on a product page
INDEX_CUSTOMERS = 8
INDEX_PRODUCTS = 12

FALLBACK_TEXT = {
    "unknown_customer": "the online store does not know this customer",
    "empty_history": "this customer has no purchases yet",
    "no_history_vectors": "the model has no vector for any of this customer's purchases",
    "online_store_unavailable": "the online store is unavailable",
}


@dataclass(frozen=True)
class Product:
    """What a card shows of a product besides its attributes."""

    product_id: str
    name: str
    type: str
    brand: str
    division: str


class Catalogue:
    """The lake's view a page needs beyond the serving state, read once per state.

    products: product id → `Product`; images: product id → {shot: absolute path} (the rows
    of `product_images`, the only files `/images` serves). `top_customers` is read on first
    use (only the index needs it).
    """

    def __init__(
        self,
        settings: Settings,
        products: dict[str, Product],
        images: dict[str, dict[int, str]],
    ):
        self.settings = settings
        self.products = products
        self.images = images
        self._top: list[tuple[str, int]] | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings) -> Catalogue:
        """Read `products` and `product_images` from the lake."""
        from atelier.lake import Lake

        lake = Lake(settings)
        table = lake.read_arrow("products", ["product_id", "title", "type", "brand", "division"])
        products = {
            str(r["product_id"]): Product(
                product_id=str(r["product_id"]),
                name=r["title"] or str(r["product_id"]),
                type=r["type"] or "",
                brand=r["brand"] or "",
                division=r["division"] or "",
            )
            for r in table.to_pylist()
        }
        images: dict[str, dict[int, str]] = {}
        shots = lake.read_arrow("product_images", ["product_id", "shot", "path"])
        for pid, shot, path in zip(
            shots["product_id"].to_pylist(), shots["shot"].to_pylist(), shots["path"].to_pylist()
        ):
            images.setdefault(str(pid), {})[int(shot)] = str(path)
        return cls(settings, products, images)

    def image_path(self, product_id: str, shot: int | None = None) -> str | None:
        """The file of `shot` (default: the lowest shot, 0 being the main image); None when
        the table lists none."""
        shots = self.images.get(product_id)
        if not shots:
            return None
        return shots.get(shot) if shot is not None else shots[min(shots)]

    def top_customers(self, n: int = INDEX_CUSTOMERS) -> list[tuple[str, int]]:
        """[(customer id, distinct products)] of the `n` longest histories, longest first
        (ties by customer id), from each customer's latest `customer_history` row: what
        materialisation put online. Read once (a full scan of the table)."""
        with self._lock:
            if self._top is None:
                from atelier.lake import Lake

                frame = Lake(self.settings).read_pandas(
                    "customer_history",
                    ["customer_id", "history", "event_timestamp", "created_timestamp"],
                )
                latest = frame.sort_values(
                    ["customer_id", "event_timestamp", "created_timestamp"]
                ).drop_duplicates("customer_id", keep="last")
                distinct = [len(set(h)) for h in latest["history"]]
                self._top = sorted(
                    zip(latest["customer_id"].astype(str), distinct),
                    key=lambda cn: (-cn[1], cn[0]),
                )[:INDEX_CUSTOMERS]
        return self._top[:n]


class _Catalogues:
    """One `Catalogue` per serving state, loaded on first use, dropped with the state."""

    def __init__(self, loader=Catalogue.load):
        self._loader = loader
        self._by_state: weakref.WeakKeyDictionary[ServingState, Catalogue] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def get(self, settings: Settings, state: ServingState) -> Catalogue:
        found = self._by_state.get(state)
        if found is not None:
            return found
        with self._lock:  # one load per state, however many requests wait for it
            found = self._by_state.get(state)
            if found is None:
                found = self._by_state[state] = self._loader(settings)
            return found


# -- view models -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Chip:
    attribute: str
    label: str  # "graphical appearance"
    value: str
    predicted: bool
    confidence: float
    shared: bool  # the value is one the customer's purchases share (an explanation)

    @property
    def title(self) -> str:
        how = f"predicted, {self.confidence:.0%} confidence" if self.predicted else "known label"
        return f"{self.label}: {self.value} ({how})"


@dataclass(frozen=True)
class Card:
    product_id: str
    name: str
    type: str
    image: str | None  # URL of the main image, None when the product has none
    chips: list[Chip]
    score: float | None = None
    rank: int | None = None
    reasons: tuple[str, ...] = ()


def _label(attribute: str) -> str:
    words = attribute.removesuffix("_name").replace("_", " ")
    return words[:1].upper() + words[1:]


def _card(
    state: ServingState,
    catalogue: Catalogue,
    product_id: str,
    item: dict | None = None,
) -> Card:
    product = catalogue.products.get(product_id)
    explanation = (item or {}).get("explanation") or []
    shared = {(e["attribute"], e["value"]) for e in explanation}
    chips = [
        Chip(
            attribute=a["attribute"],
            label=_label(a["attribute"]),
            value=a["value"],
            predicted=a["source"] == "predicted",
            confidence=a["confidence"],
            shared=(a["attribute"], a["value"]) in shared,
        )
        for a in state.attributes.of(product_id)
    ]
    return Card(
        product_id=product_id,
        name=product.name if product else product_id,
        type=product.type if product else "",
        image=f"/images/{quote(product_id, safe='')}" if catalogue.image_path(product_id) else None,
        chips=chips,
        score=item["score"] if item else None,
        rank=item["rank"] if item else None,
        reasons=tuple(e["text"] for e in explanation),
    )


# -- router ----------------------------------------------------------------------------------
def gallery_router() -> APIRouter:
    """The gallery's routes; they read the app's `StateHolder` (`app.state.holder`) and, when
    present, count fallbacks in its `ServingMetrics` (`app.state.metrics`). Long by design:
    the page routes, each a short closure rendering one template."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["segment"] = lambda value: quote(str(value), safe="")  # one URL path segment
    templates = Jinja2Templates(env=env)
    catalogues = _Catalogues()
    router = APIRouter(include_in_schema=False)

    def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def loaded(request: Request) -> tuple[ServingState, Catalogue] | HTMLResponse:
        holder = request.app.state.holder
        state = holder.state
        if state is None:
            why = f"load failed: {holder.error}" if holder.error else "loading the model"
            return page(request, "message.html", 503, title="Not ready", message=why, model=None)
        request.state.model_version = state.model_version
        return state, catalogues.get(holder.settings, state)

    @router.get("/ui")
    def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @router.get("/ui/", response_class=HTMLResponse)
    def index(request: Request):
        found = loaded(request)
        if isinstance(found, HTMLResponse):
            return found
        state, catalogue = found
        rows = top_k(state.popularity, INDEX_PRODUCTS)
        popular = [
            _card(state, catalogue, state.candidates.product_ids[r], None)
            for r in rows
            if state.popularity[r] > 0
        ]
        return page(
            request,
            "index.html",
            model=state.model_version,
            customers=catalogue.top_customers(),
            popular=popular,
            products=len(state.candidates),
        )

    @router.get("/ui/customers/{customer_id}", response_class=HTMLResponse)
    def customer(request: Request, customer_id: str = Path(min_length=1, max_length=256)):
        found = loaded(request)
        if isinstance(found, HTMLResponse):
            return found
        state, catalogue = found
        # The API's default mode, so that the page shows what POST /recommendations returns.
        exclude = request.app.state.holder.settings.recommender.exclude_seen
        rec = predictor.recommend(
            state, customer_id, k=RECOMMENDATIONS, exclude_purchased=exclude, explain=True
        )
        request.state.fallback = rec.fallback
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            if rec.fallback:
                metrics.fallback(rec.fallback)
            if rec.stale_vectors:
                metrics.stale_vectors.inc(rec.stale_vectors)
        purchases = [_card(state, catalogue, p) for p in dict.fromkeys(rec.history)]
        recommended = [_card(state, catalogue, i["product_id"], i) for i in rec.items]
        return page(
            request,
            "customer.html",
            model=state.model_version,
            customer_id=customer_id,
            fallback=rec.fallback,
            fallback_text=FALLBACK_TEXT.get(rec.fallback or "", rec.fallback),
            purchases=purchases,
            recommended=recommended,
        )

    @router.get("/ui/products/{product_id}", response_class=HTMLResponse)
    def product(request: Request, product_id: str = Path(min_length=1, max_length=256)):
        found = loaded(request)
        if isinstance(found, HTMLResponse):
            return found
        state, catalogue = found
        try:
            predictor.attributes(state, product_id)
        except predictor.UnknownProductError as e:
            return page(
                request,
                "message.html",
                404,
                title="Unknown product",
                message=str(e),
                model=state.model_version,
            )
        try:
            items = predictor.similar(state, product_id, SIMILAR)
            no_similar = None
        except predictor.UnknownProductError as e:  # in the catalogue, without a vector
            items, no_similar = [], str(e)
        main = _card(state, catalogue, product_id)
        info = catalogue.products.get(product_id)
        return page(
            request,
            "product.html",
            model=state.model_version,
            product=main,
            info=info,
            shots=sorted(catalogue.images.get(product_id, {})),
            similar=[_card(state, catalogue, i["product_id"], i) for i in items],
            no_similar=no_similar,
        )

    @router.get("/images/{product_id}")
    def image(
        request: Request,
        product_id: str = Path(min_length=1, max_length=256),
        shot: int | None = Query(None, ge=0, description="Shot number; default the main one."),
    ) -> FileResponse:
        found = loaded(request)
        if isinstance(found, HTMLResponse):
            raise HTTPException(503, detail="not ready")
        _, catalogue = found
        path = catalogue.image_path(product_id, shot)
        if path is None:
            which = f"shot {shot} of " if shot is not None else ""
            raise HTTPException(404, detail=f"no image for {which}product {product_id!r}")
        if not FilePath(path).is_file():  # listed, but moved or deleted since ingestion
            raise HTTPException(404, detail=f"image file of product {product_id!r} is missing")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    return router
