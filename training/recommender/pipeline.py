"""`atelier train recommender` and `atelier evaluate recommender`: the stage functions.

Training follows the paper's Section 3 protocol on the lake's interactions, made leak-free: the
model is frozen at `train_end`; every purchase up to it (the `rolling` scheme, or the paper's
positives of the last month: `recommender.scheme`) is a training example whose features are read
as of its own cut-off (`data.training_examples`, `timeline.SalesTimeline`); content comes from
Feast (`recommender_v1`). A time-based validation window, `(train_end − validation_days,
train_end]`, validates a model trained on the examples before it: it chooses the epoch (early
stopping on its WMRB loss; the benchmark also chooses hyper-parameters with it), measures
validation precision@10 and calibrates the blend; the model is then refit on every example up
to `train_end` with that many epochs. The test period `(train_end, train_end + test_days]` is
touched once, by the final models: Table 3 in two modes — all products (the paper's protocol,
with a "buy it again" row and the blend) and new to customer (each customer's purchases
excluded) — with per-run hit counts, cold-start rows, paired t-tests, and diagnostics
(distinct products recommended, mean pairwise cosine of customer vectors). Each learned variant
(`cf`, `content`, `hybrid`) is trained `runs` times with seeds `settings.seed + run`.
The report (recommender.json / .md / .png) and everything else goes to MLflow; the `hybrid` run
with the lowest validation loss is registered as `settings.mlflow.recommender_model` and becomes
`challenger`, with its test precision@10 (all products) as the metric promotion compares.

With `train_end` at or after the last interaction there is no test period ("train to
deploy"): the same training and validation run on all history, the challenger is registered
with its validation precision@10 and `atelier evaluate recommender` scores it on later purchases.

Recommendable products are every catalogue product with content: the layouts give no launch
date, and filtering by first sale would let the test period's purchases choose the catalogue.
A product never bought up to `train_end` has no CF row: a cold-start product, reached only by
the content path.

Evaluation scores the registered model(s) on a later period given as an H&M-layout
`transactions_train.csv`: histories and content come from the lake up to the file's first day.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from atelier.figures import png_figure
from atelier.locks import locked
from models.recommender.items import utc_timestamp
from training.recommender.baselines import (
    buy_again_recommendations,
    popularity_recommendations,
    popularity_recommender,
    without_seen,
)
from training.recommender.data import (
    COLUMNS,
    customer_histories,
    events,
    split_by_time,
    test_set,
    training_examples,
)
from training.recommender.evaluation import (
    MODES,
    VARIANTS,
    AtK,
    cold_start_metrics,
    cold_start_products,
    markdown_table,
    precision_recall_at_k,
    table3,
)

if TYPE_CHECKING:  # pragma: no cover
    from atelier.settings import Settings
    from models.recommender.features import ContentFeatures

log = logging.getLogger("atelier.recommender")

K = 10
METRIC = f"precision_at_{K}"
RECALL = f"recall_at_{K}"
LEARNED = ("cf", "content", "hybrid")
REGISTERED_VARIANT = "hybrid"
VECTOR_LAYOUT = "dot+bias"  # model.VECTOR_LAYOUT (kept Keras-free here); serving reads the param
BLEND_PARAM = "recommender.blend_rule"
REPORT_JSON, REPORT_MD, REPORT_PNG = "recommender.json", "recommender.md", "recommender.png"
FIGURE7 = "figure7.png"


# -- inputs --------------------------------------------------------------------------------


def check_variants(variants: Iterable[str]) -> tuple[str, ...]:
    """`variants` (names or one comma-separated string) in canonical order, checked."""
    if isinstance(variants, str):
        variants = [v for v in variants.split(",")]
    names = [str(v).strip() for v in variants if str(v).strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"variants must be among {list(VARIANTS)!r}, got {list(variants)!r}")
    return tuple(v for v in VARIANTS if v in names)


def read_interactions(settings: Settings) -> pd.DataFrame:
    """The lake's interactions (customer_id, product_id, timestamp UTC)."""
    from atelier.lake import Lake

    lake = Lake(settings)
    if not lake.exists("interactions"):
        raise ValueError(
            f"the lake at {settings.lake_dir} has no interactions: ingest a source with "
            "purchases first (atelier ingest hm DIR)"
        )
    frame = lake.read_pandas("interactions", list(COLUMNS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def default_train_end(interactions: pd.DataFrame, test_days: int) -> pd.Timestamp:
    """`test_days` before the day of the lake's last interaction (midnight UTC), so the test
    period is the last `test_days` days the lake holds."""
    if interactions.empty:
        raise ValueError("there are no interactions to choose a train_end from")
    last = pd.to_datetime(interactions["timestamp"], utc=True).max().normalize()
    return last - pd.Timedelta(days=test_days)


def recommendable_products(settings: Settings) -> np.ndarray:
    """Every catalogue product (sorted ids). Not filtered by first sale: that date is only
    known from purchases, and a filter by it would let later purchases choose the catalogue."""
    from atelier.lake import Lake

    products = Lake(settings).read_pandas("products", ["product_id"])
    return np.asarray(sorted(set(products["product_id"])), dtype=object)


def read_transactions(path: Path, layouts_dir: Path | None = None) -> tuple[pd.DataFrame, int]:
    """An H&M-layout `transactions_train.csv` → (interactions frame, rows skipped).

    Columns come from the `hm` layout (customer, article, day); ids stay strings (article ids
    keep their leading zero); a row with a missing id or an unparseable day is skipped.
    """
    from atelier.layout import load_layout

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no interactions file at {str(path)!r}")
    m = load_layout("hm", layouts_dir).interactions
    columns = [m.customer, m.product, m.timestamp]
    header = list(pd.read_csv(path, nrows=0).columns)
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(
            f"{path.name} is not in the H&M transactions layout: it lacks {missing!r} "
            f"(has {header!r})"
        )
    raw = pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False)
    frame = pd.DataFrame(
        {
            "customer_id": raw[m.customer].str.strip(),
            "product_id": raw[m.product].str.strip(),
            "timestamp": pd.to_datetime(raw[m.timestamp], utc=True, errors="coerce"),
        }
    )
    good = (frame["customer_id"] != "") & (frame["product_id"] != "") & frame["timestamp"].notna()
    return frame[good.to_numpy()].reset_index(drop=True), int((~good).sum())


# -- scoring -------------------------------------------------------------------------------


def score(
    recommended: Mapping, relevant: Mapping, cold: frozenset, k: int = K
) -> tuple[AtK, AtK | None]:
    """(main, cold-start) precision/recall@k; cold-start is None when nobody bought a
    cold-start product in the test period."""
    main = precision_recall_at_k(recommended, relevant, k)
    has_cold = any(set(items) & cold for items in relevant.values())
    return main, cold_start_metrics(recommended, relevant, cold, k) if has_cold else None


def _cold_runs(cold: dict[str, list]) -> dict[str, list] | None:
    """The cold-start runs for `table3`, or None when nobody bought a cold-start product."""
    if not cold or any(r is None for runs in cold.values() for r in runs):
        return None
    return cold


# -- report --------------------------------------------------------------------------------


def summary_markdown(report: Mapping) -> str:
    """Table 3 in both modes with the period, diagnostics, validation, training and the
    registered model, as Markdown."""
    lines = ["# Recommender (Table 3)", ""]
    lines += _period_lines(report.get("period", {}))
    if report.get("variants"):
        lines += ["## All products (the paper's protocol)", "", markdown_table(report, K)]
    if report.get("new_to_customer", {}).get("variants"):
        lines += [
            "## New to customer (each customer's own purchases excluded)",
            "",
            markdown_table(report["new_to_customer"], K),
        ]
    lines += _diversity_lines(report.get("diagnostics") or {})
    lines += _validation_lines(report.get("validation"))
    lines += _training_lines(report.get("training"))
    model = report.get("model")
    if model:
        value = model.get(METRIC)
        lines.append(
            f"Registered {model['name']} version {model['version']} ({model['variant']}, run "
            f"{model['run']}, {METRIC} {'–' if value is None else f'{value:.5f}'} on "
            f"{model.get('evaluation')}) as challenger."
        )
    for label, info in report.get("models", {}).items():
        lines.append(f"- {label}: {info['model_uri']} (trained up to {info.get('train_end')})")
    return "\n".join(lines).rstrip() + "\n"


def _period_lines(period: Mapping) -> list[str]:
    if "history_end" in period:  # an evaluation on a later period
        return [
            f"Histories up to {_day(period['history_end'])}; tested on the purchases of "
            f"{_day(period['test_start'])} to {_day(period['test_end'])}; precision/recall@{K} "
            "averaged over the customers with a history.",
            "",
        ]
    if period.get("deploy"):
        return [
            f"Trained to deploy on every interaction up to {_day(period['train_end'])}: no test "
            "period, no Table 3. Validation window "
            f"{_day(period['validation_start'])}..{_day(period['train_end'])}; score the "
            "registered model on later purchases with `atelier evaluate recommender`.",
            "",
        ]
    if period:
        return [
            f"Trained on the interactions up to {_day(period['train_end'])} (inclusive; "
            f"validation window from {_day(period['validation_start'])}); tested on the "
            f"purchases after it up to {_day(period['test_end'])}; precision/recall@{K} "
            "averaged over the customers with a history.",
            "",
        ]
    return []


def _diversity_lines(diag: Mapping) -> list[str]:
    if not any(diag.values()):
        return []
    lines = [
        "## Diversity",
        "",
        "| mode | variant | distinct products in top-10s (mean over runs) | customer-vector "
        "cosine |",
        "|---|---|---:|---:|",
    ]
    for mode, by_variant in diag.items():
        for variant, d in by_variant.items():
            cosine = d.get("customer_cosine")
            lines.append(
                f"| {mode} | {variant} | {d['distinct_products']:.1f} | "
                f"{'–' if cosine is None else f'{cosine:.3f}'} |"
            )
    return [*lines, ""]


def _validation_lines(validation: Mapping | None) -> list[str]:
    if not validation:
        return []
    lines = [
        "## Validation window (model selection; the test period is not used)",
        "",
        f"| variant | runs | WMRB loss | {METRIC} all products | {METRIC} new to customer |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant, v in validation.items():
        cells = [v.get("loss"), v.get(f"all_products.{METRIC}"), v.get(f"new_to_customer.{METRIC}")]
        text = ["–" if c is None else f"{c:.5f}" for c in cells]
        lines.append(f"| {variant} | {v['runs']} | " + " | ".join(text) + " |")
    return [*lines, ""]


def _training_lines(training: Mapping | None) -> list[str]:
    if not training:
        return []
    lines = [
        "## Training",
        "",
        "| variant | runs | epochs (mean) | best epoch (mean) | seconds/epoch | train loss drop |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant, info in training.items():
        lines.append(
            f"| {variant} | {info['runs']} | {info['epochs']:.1f} | {info['best_epoch']:.1f} "
            f"| {info['seconds_per_epoch']:.3f} | {info.get('train_loss_drop', 0):.1%} |"
        )
    return [*lines, ""]


def _day(value) -> str:
    return str(value)[:10] if value is not None else "?"


def plot_report(report: Mapping, path) -> Path:
    """Bars of precision@10 and recall@10 per variant (± std over runs), and the cold-start
    breakdown when there is one; writes a PNG."""
    sections = [("all products", report["variants"])]
    if report.get("cold_start"):
        sections.append(("cold-start products", report["cold_start"]))
    size = (6 * len(sections), 4)
    with png_figure(path, 1, len(sections), figsize=size, squeeze=False) as (fig, axes):
        for ax, (title, section) in zip(axes[0], sections):
            names = list(section)
            x = np.arange(len(names))
            for j, (key, label) in enumerate(((METRIC, f"precision@{K}"), (RECALL, f"recall@{K}"))):
                means = [section[n][key] for n in names]
                errors = [section[n].get(f"{key}_std", 0.0) for n in names]
                ax.bar(x + (j - 0.5) * 0.38, means, 0.38, yerr=errors, capsize=3, label=label)
            ax.set_xticks(x, names)
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize="small")
    return Path(path)


def similar_figure(
    settings: Settings,
    models: Mapping[str, object],
    features: ContentFeatures,
    interactions: pd.DataFrame,
    end,
    start,
    catalogue: Sequence,
    path,
    n: int = 5,
) -> dict:
    """Figure 7 at `path`: the most, median and least popular product of the training window
    (among the recommendable ones every variant can represent) and their `n` nearest
    neighbours under each trained variant (`models`: variant → TrainedRecommender). Returns the
    seeds and neighbours (JSON-safe) for the report."""
    from atelier.lake import Lake
    from models.recommender.similar import figure7, main_image_paths, plot_similar_grid
    from training.recommender.trainer import product_vectors

    rows = features.rows(np.asarray(list(catalogue), dtype=object))
    ids = [features.product_ids[r] for r in rows]
    variants = {}
    for variant, trained in models.items():
        # Likeness is in the match coordinates; the bias (last) says how much anyone buys it.
        vectors = product_vectors(trained, features)[rows][:, :-1]
        # A zero vector (cf: never bought) has no neighbours; keep such products out of the
        # seeds so every row of the grid shows the same seed under each variant.
        keep = np.linalg.norm(vectors, axis=1) > 0
        variants[variant] = ([p for p, k in zip(ids, keep) if k], vectors[keep])
    counts = events(interactions, end, start)["product_id"].value_counts()
    seeds, neighbours = figure7(variants, counts.to_dict(), n=n)
    wanted = set(seeds.values()) | {
        p for by_seed in neighbours.values() for items in by_seed.values() for p, _ in items
    }
    images = Lake(settings).read_pandas("product_images", ["product_id", "shot", "path"])
    images = images[images["product_id"].isin(wanted)]
    plot_similar_grid(seeds, neighbours, main_image_paths(images.to_dict("records")), path, n)
    return {
        "seeds": seeds,
        "neighbours": {
            v: {s: [[p, round(float(c), 4)] for p, c in items] for s, items in by_seed.items()}
            for v, by_seed in neighbours.items()
        },
    }


def write_report(out_dir: Path, report: Mapping) -> list[Path]:
    """recommender.json, recommender.md and recommender.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2, default=str))
    (out_dir / REPORT_MD).write_text(summary_markdown(report))
    plot_report(report, out_dir / REPORT_PNG)
    return [out_dir / REPORT_JSON, out_dir / REPORT_MD, out_dir / REPORT_PNG]


def flat_metrics(report: Mapping) -> dict[str, float]:
    """MLflow metrics of a report: `<variant>.<metric>`, `cold_start.<variant>.<metric>`, the
    same under `new_to_customer.`, and `diversity.<mode>.<variant>.distinct_products`."""
    out = {}
    sections = [(report, "")]
    if report.get("new_to_customer"):
        sections.append((report["new_to_customer"], "new_to_customer."))
    for part, top in sections:
        for section, prefix in (("variants", ""), ("cold_start", "cold_start.")):
            for variant, values in part.get(section, {}).items():
                for key, value in values.items():
                    if isinstance(value, int | float) and key != "runs" and math.isfinite(value):
                        out[f"{top}{prefix}{variant}.{key}"] = float(value)
    for mode, by_variant in (report.get("diagnostics") or {}).items():
        for variant, d in by_variant.items():
            if d.get("distinct_products") is not None:
                out[f"diversity.{mode}.{variant}.distinct_products"] = float(d["distinct_products"])
    return out


# -- training ------------------------------------------------------------------------------


def _config(settings: Settings, features: ContentFeatures, variant: str, seed: int):
    cfg = settings.recommender
    return features.recommender_config(
        variant,
        n_items=1,  # the trainer sets the size of its CF index
        k=cfg.k,
        hidden_units=tuple(cfg.hidden_units),
        dropout=cfg.dropout,
        n_negatives=cfg.n_negatives,
        negatives=cfg.negatives,
        optimizer=cfg.optimizer,
        learning_rate=cfg.learning_rate,
        l2=cfg.l2,
        seed=seed,
    )


@dataclass
class Period:
    """One scored period: customers' histories up to `end` (customer → every product bought,
    most recent first), `relevant` (customer → products bought in `(end, stop]`), the content
    `features` as of `end`, the `catalogue` that may be recommended and its `cold` products
    (never bought up to `end`)."""

    end: pd.Timestamp
    stop: pd.Timestamp
    histories: dict
    relevant: dict
    features: ContentFeatures
    catalogue: np.ndarray
    cold: frozenset


@dataclass
class Split:
    """What one `train_end` needs: the examples (all, and the selection part before the
    validation window), the validation and test periods, content and the sales timeline."""

    interactions: pd.DataFrame
    end: pd.Timestamp
    start: pd.Timestamp | None
    boundary: pd.Timestamp
    deploy: bool
    features: ContentFeatures
    timeline: object
    examples: object
    fit_examples: object
    validation_examples: object
    validation: Period | None
    test: Period | None


def _period(interactions, end, stop, start, features, catalogue) -> Period | None:
    relevant = test_set(interactions, end, stop, train_start=start)
    if not relevant:
        return None
    histories = customer_histories(interactions, end, relevant)
    cold = cold_start_products(interactions, end, catalogue=catalogue, train_start=start)
    return Period(end, stop, histories, relevant, features, catalogue, cold)


@dataclass(frozen=True)
class _Window:
    """The times of one `train_end`: `end`, the training window's `start` (None: all
    history), the validation `boundary`, the test period's end and whether there is none
    (`deploy`)."""

    end: pd.Timestamp
    start: pd.Timestamp | None
    boundary: pd.Timestamp
    test_end: pd.Timestamp
    deploy: bool


def _window(cfg, interactions: pd.DataFrame, train_end) -> _Window:
    """The `_Window` of `train_end` (None: `default_train_end`) on `interactions`."""
    last = interactions["timestamp"].max()
    end = (
        default_train_end(interactions, cfg.test_days)
        if train_end is None
        else utc_timestamp(train_end, "train_end")
    )
    return _Window(
        end=end,
        start=None if cfg.train_days is None else end - pd.Timedelta(days=cfg.train_days),
        boundary=end - pd.Timedelta(days=cfg.validation_days),
        test_end=end + pd.Timedelta(days=cfg.test_days),
        deploy=bool(last <= end),
    )


def _split_examples(cfg, interactions: pd.DataFrame, window: _Window, known) -> tuple:
    """(every example up to train_end, the examples before the validation boundary, the
    validation window's examples: every purchase in it, the rolling scheme whatever
    `cfg.scheme`)."""
    examples = partial(
        training_examples,
        interactions,
        positive_days=cfg.positive_days,
        n_recent=cfg.n_recent,
        min_history=cfg.min_history,
        train_start=window.start,
        known=known,
    )
    end, start, boundary = window.end, window.start, window.boundary
    every = examples(end, scheme=cfg.scheme)
    if len(every) == 0:
        raise ValueError(
            f"no training examples up to {end}: no purchase with {cfg.min_history} earlier "
            f"distinct product(s) of the same customer ({cfg.scheme} scheme)"
        )
    rolling = every if cfg.scheme == "rolling" else examples(end, scheme="rolling")
    _, after = split_by_time(rolling, boundary)
    validation_examples = rolling.subset(after)
    fit = (
        examples(boundary, scheme=cfg.scheme)
        if start is None or boundary > start
        else every.subset([])
    )
    return every, fit, validation_examples


def _test_period(interactions, window: _Window, features, catalogue) -> Period:
    """The test period `(train_end, test_end]`; an error when nobody with a history bought in
    it."""
    end, test_end = window.end, window.test_end
    test = _period(interactions, end, test_end, window.start, features, catalogue)
    if test is None:
        times = interactions["timestamp"]
        raise ValueError(
            f"no customer with a history bought anything in the test period ({end}, "
            f"{test_end}]: the lake's interactions run from {times.min()} to {times.max()}; "
            "choose another train_end (or one at or after the last interaction to train "
            "for deployment)"
        )
    return test


def prepare_split(settings: Settings, train_end=None, interactions=None, features=None) -> Split:
    """The examples, periods and features of one `train_end` (see `Split`).

    `train_end` at or after the lake's last interaction means "train to deploy": no test
    period. The validation window is `(train_end - validation_days, train_end]`: its purchases
    validate a model trained on the examples before it. Features: static content from Feast
    (`recommender_v1`) as of the end of the test period (a product launched in it has content
    but no sales: cold start), popularity and recency as of `train_end`; training examples read
    the latter from the sales timeline at their own cut-offs.
    """
    from models.recommender.features import load_content_features, with_dynamic
    from training.recommender.timeline import SalesTimeline

    cfg = settings.recommender
    if interactions is None:
        interactions = read_interactions(settings)
    window = _window(cfg, interactions, train_end)
    end, start, boundary = window.end, window.start, window.boundary
    if features is None:
        content_as_of = end if window.deploy else window.test_end
        features = load_content_features(settings, end, content_as_of=content_as_of)
    catalogue = np.asarray(features.product_ids, dtype=object)
    past = events(interactions, end, start)  # the timeline never holds a sale after train_end
    timeline = SalesTimeline(
        past, features.product_ids, settings.product_features.popularity_windows_days
    )
    every, fit, validation_examples = _split_examples(cfg, interactions, window, features.index)
    validation = None
    if len(validation_examples) and len(fit):
        validation = _period(
            interactions,
            boundary,
            end,
            start,
            with_dynamic(features, timeline, boundary),
            catalogue,
        )
    test = None
    if not window.deploy:
        test = _test_period(interactions, window, features, catalogue)
    return Split(
        interactions,
        end,
        start,
        boundary,
        window.deploy,
        features,
        timeline,
        every,
        fit,
        validation_examples,
        validation,
        test,
    )


def _mode_lists(model, period: Period, k: int = K) -> tuple[dict, dict, np.ndarray]:
    """({mode: customer → top-k}, the customers' vectors' diagnostics inputs, item vectors)."""
    from training.recommender.trainer import product_vectors, recommend_for

    vectors = product_vectors(model, period.features)
    lists = {
        mode: recommend_for(
            model,
            period.features,
            period.histories,
            k=k,
            exclude_seen=mode == "new_to_customer",
            candidates=period.catalogue,
            vectors=vectors,
        )
        for mode in MODES
    }
    return lists, vectors


def diagnostics(model, period: Period, lists: Mapping, vectors: np.ndarray) -> dict:
    """Per mode: distinct products across every customer's top-k; the mean pairwise cosine of
    the customers' vectors (match part; near 1 = everyone gets the same list)."""
    from models.ranking import match_part, mean_pairwise_cosine
    from training.recommender.trainer import customer_matrix

    _, matrix = customer_matrix(vectors, period.features, period.histories, model.n_recent)
    cosine = mean_pairwise_cosine(match_part(matrix, "dot+bias"))
    return {
        mode: {"distinct_products": distinct_products(recs), "customer_cosine": cosine}
        for mode, recs in lists.items()
    }


def distinct_products(recommended: Mapping) -> int:
    """Distinct products across every customer's list."""
    return len({p for items in recommended.values() for p in items})


def _validation_scores(model, period: Period) -> tuple[dict, dict]:
    """({mode: precision@10}, {mode: customer → top-10}) of `model` on `period`."""
    lists, _ = _mode_lists(model, period)
    scores = {m: precision_recall_at_k(lists[m], period.relevant, K).precision for m in lists}
    return scores, lists


def fit_variant(settings: Settings, split: Split, variant: str, seed: int, say) -> dict:
    """Train one variant with one seed: select the epoch on the validation window, refit on
    everything up to train_end with that many epochs (`recommender.refit`). Returns
    {"model", "selection", "validation": {mode: precision@10}, "new_lists" (validation
    new-to-customer lists of the selection model, for the blend)}."""
    from training.recommender.trainer import train_recommender_model

    cfg = settings.recommender
    config = _config(settings, split.features, variant, seed)
    common = dict(
        batch_size=cfg.batch_size,
        seed=seed,
        n_recent=cfg.n_recent,
        progress=say,
    )
    out: dict = {"validation": {}, "new_lists": None}
    if split.validation is not None:
        selection = train_recommender_model(
            split.fit_examples,
            split.features,
            config,
            split.timeline,
            validation=split.validation_examples,
            epochs=cfg.epochs,
            patience=cfg.patience,
            **common,
        )
        out["validation"], lists = _validation_scores(selection, split.validation)
        out["new_lists"] = lists["new_to_customer"]
        epochs = max(selection.best_epoch, 1)
        model = selection
        if cfg.refit:
            say(f"refit on every example up to {split.end.date()}: {epochs} epochs")
            model = train_recommender_model(
                split.examples, split.features, config, split.timeline, epochs=epochs, **common
            )
        out["selection"] = selection
    else:  # too little data for a validation window: fixed epochs, nothing selected
        model = train_recommender_model(
            split.examples, split.features, config, split.timeline, epochs=cfg.epochs, **common
        )
        out["selection"] = model
    out["model"] = model
    return out


# Settings whose change rebuilds the training examples (the rest only retrain).
EXAMPLE_SETTINGS = ("scheme", "positive_days", "n_recent", "min_history", "validation_days")


def tune_recommender(
    settings: Settings,
    split: Split,
    grid: Sequence[Mapping],
    variant: str = REGISTERED_VARIANT,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Choose `recommender` settings on the validation window only (the test period is never
    read): each grid point (a dict of `RecommenderSettings` overrides) trains `variant` once
    (seed `settings.seed`) on the examples before the window, early-stopped on its loss, and
    is scored by validation precision@10, the mean of the two modes. Returns {"points": [...],
    "best": overrides of the highest score (ties: the lower validation loss)}."""
    say = progress or log.info
    if not grid:
        raise ValueError("the tuning grid is empty")
    points = []
    for i, overrides in enumerate(grid):
        tuned = settings.model_copy(
            update={"recommender": settings.recommender.model_copy(update=dict(overrides))}
        )
        here = split
        if any(k in overrides for k in EXAMPLE_SETTINGS):
            here = prepare_split(tuned, split.end, split.interactions, split.features)
        if here.validation is None:
            raise ValueError("no validation window to tune on (too little history before it)")
        point = _grid_point(tuned, here, variant, overrides)
        points.append(point)
        say(
            f"grid {i + 1}/{len(grid)} {dict(overrides)}: validation {METRIC} all "
            f"{point[f'all_products.{METRIC}']:.5f}, new "
            f"{point[f'new_to_customer.{METRIC}']:.5f}, best epoch "
            f"{point['best_epoch']}, {point['seconds']}s"
        )
    best = max(points, key=lambda p: (p["score"], -p["validation_loss"]))
    reference = _popularity_reference(split, settings.recommender.popularity_days)
    say(
        f"validation popularity: {METRIC} all {reference['all_products']:.5f}, new "
        f"{reference['new_to_customer']:.5f}"
    )
    return {
        "points": points,
        "best": best["overrides"],
        "variant": variant,
        "popularity": reference,
    }


def _grid_point(tuned: Settings, split: Split, variant: str, overrides: Mapping) -> dict:
    """Train `variant` with the `tuned` settings on the examples before the validation
    window (early-stopped on its loss) and score it there: one point of the tuning grid."""
    from training.recommender.trainer import train_recommender_model

    cfg = tuned.recommender
    t0 = time.perf_counter()
    model = train_recommender_model(
        split.fit_examples,
        split.features,
        _config(tuned, split.features, variant, tuned.seed),
        split.timeline,
        validation=split.validation_examples,
        epochs=cfg.epochs,
        patience=cfg.patience,
        batch_size=cfg.batch_size,
        seed=tuned.seed,
        n_recent=cfg.n_recent,
        progress=lambda _line: None,
    )
    scores, _ = _validation_scores(model, split.validation)
    return {
        "overrides": dict(overrides),
        "validation_loss": model.best_validation_loss,
        "best_epoch": model.best_epoch,
        **{f"{m}.{METRIC}": v for m, v in scores.items()},
        "score": float(np.mean(list(scores.values()))),
        "examples": len(split.fit_examples),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _popularity_reference(split: Split, popularity_days: int) -> dict[str, float]:
    """The level to beat on the validation window: precision@10 in both modes of the
    popularity of the `popularity_days` before it."""
    val = split.validation
    ranking = popularity_recommender(split.interactions, val.end, popularity_days)
    return {
        "all_products": precision_recall_at_k(
            popularity_recommendations(ranking[:K], val.relevant, K), val.relevant, K
        ).precision,
        "new_to_customer": precision_recall_at_k(
            without_seen(ranking, val.histories, K), val.relevant, K
        ).precision,
    }


@dataclass
class _Tally:
    """What a training run measures, by mode and variant: the per-run `AtK`s (main and
    cold-start), list diagnostics, validation and training figures."""

    runs: dict = field(default_factory=lambda: {m: {} for m in MODES})
    cold: dict = field(default_factory=lambda: {m: {} for m in MODES})
    diag: dict = field(default_factory=lambda: {m: {} for m in MODES})
    validation: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def record(self, mode: str, variant: str, main, cold_at, diagnosis=None) -> None:
        self.runs[mode].setdefault(variant, []).append(main)
        self.cold[mode].setdefault(variant, []).append(cold_at)
        if diagnosis is not None:
            self.diag[mode].setdefault(variant, []).append(diagnosis)

    def lists(self, mode: str, variant: str, recs: Mapping, relevant, cold) -> None:
        """Score the lists `recs` of a variant without model diagnostics (a baseline)."""
        diagnosis = {"distinct_products": distinct_products(recs), "customer_cosine": None}
        self.record(mode, variant, *score(recs, relevant, cold), diagnosis)

    def report(self, split: Split) -> dict:
        return _report(split, self.runs, self.cold, self.diag, self.validation, self.training)


@locked("train-recommender")
def train_recommender(
    settings: Settings,
    train_end: date | datetime | str | None = None,
    variants: Iterable[str] = VARIANTS,
    runs: int | None = None,
    report_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    split: Split | None = None,
) -> dict:
    """Train, evaluate (Table 3 in both modes), log and register the recommender; returns a
    summary dict (run_id, model_version, report_dir, report, and `runs` / `cold_runs`: mode →
    variant → the per-run `AtK`s, for tables that add peers).

    `train_end`: end of the training window, inclusive (a date is its midnight UTC, which
    keeps that day's H&M purchases in training); default `default_train_end`. The test period
    is `(train_end, train_end + settings.recommender.test_days]`; with `train_end` at or after
    the last interaction there is none ("train to deploy": the model trains on all history,
    is selected on the validation window, and is registered with its validation metrics; score
    it later with `atelier evaluate recommender`). `runs`: default the setting. `split`: a
    `prepare_split` of the same settings and train_end, to reuse (the benchmark does).
    """
    import mlflow

    from atelier import registry
    from training.attributes.pipeline import git_commit

    cfg = settings.recommender
    say = progress or log.info
    t0 = time.perf_counter()
    variants = check_variants(variants)
    runs = cfg.runs if runs is None else runs
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    learned = [v for v in variants if v in LEARNED]
    split = split if split is not None else prepare_split(settings, train_end)
    _describe_split(split, cfg, say)
    tally = _Tally()
    commit = git_commit()
    params = _run_params(settings, split, variants, runs, commit)
    registry.configure(settings)
    with mlflow.start_run(run_name="recommender") as run:
        mlflow.set_tags(
            {
                "git_commit": commit,
                "feature_service": cfg.feature_service,
                "stage": "train-recommender",
            }
        )
        mlflow.log_params(params)
        if split.test is not None:
            _baselines(split, cfg, tally, say)
        best, first_runs = _learned_runs(settings, split, learned, runs, tally, say)
        report = tally.report(split)
        report.update(
            feature_service=cfg.feature_service, git_commit=commit, device=params["device"]
        )
        version = None
        if best is not None:
            version = _register(settings, split, report, best, commit, run.info.run_id)
        report_dir = Path(report_dir or settings.reports_dir / "recommender")
        if first_runs and split.test is not None:
            _figure7(settings, split, first_runs, report, report_dir, say)
        write_report(report_dir, report)
        mlflow.log_metrics(flat_metrics(report))
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
    if version is not None:
        say(
            f"registered {settings.mlflow.recommender_model} version {version} as challenger "
            f"(run {best[1] + 1}, lowest validation loss)"
        )
    say(f"recommender done in {time.perf_counter() - t0:.0f}s; report in {report_dir}")
    return {
        "run_id": run.info.run_id,
        "model_version": version,
        "report_dir": str(report_dir),
        "report": report,
        "runs": tally.runs,
        "cold_runs": tally.cold,
    }


def _describe_split(split: Split, cfg, say) -> None:
    end, test = split.end, split.test
    if split.deploy:
        say(
            f"train_end {end.date()} is at or after the last interaction: training to deploy on "
            "all history; no test period, so no Table 3 (score the registered model later with "
            "`atelier evaluate recommender`)"
        )
    else:
        say(
            f"train_end {end.date()}, test period to {test.stop.date()}: {len(test.relevant)} "
            f"test customers, {len(test.catalogue)} recommendable products "
            f"({len(test.cold)} never bought)"
        )
    say(
        f"{len(split.examples)} training examples ({cfg.scheme}); validation window "
        f"{split.boundary.date()}..{end.date()}: {len(split.validation_examples)} examples, "
        f"{len(split.fit_examples)} before it"
    )


def _run_params(settings: Settings, split: Split, variants, runs: int, commit: str) -> dict:
    """The MLflow params of a training run: window, settings, content blocks, provenance."""
    from training.attributes.pipeline import device

    cfg, test = settings.recommender, split.test
    return {
        "feature_service": cfg.feature_service,
        "train_start": str(split.start) if split.start is not None else "all",
        "train_end": str(split.end),
        "test_end": str(test.stop) if test else "none (deploy)",
        "validation_start": str(split.boundary),
        "variants": ",".join(variants),
        "runs": runs,
        "seed": settings.seed,
        "device": device(),
        "git_commit": commit,
        "vector_layout": VECTOR_LAYOUT,
        "training_examples": len(split.examples),
        "test_customers": len(test.relevant) if test else 0,
        "recommendable_products": len(split.features),
        **{f"recommender.{k}": v for k, v in cfg.model_dump().items()},
        "content_blocks": json.dumps(split.features.block_dims, sort_keys=True),
        "attribute_model_versions": ",".join(split.features.attribute_model_versions) or "none",
    }


def _baselines(split: Split, cfg, tally: _Tally, say) -> None:
    """Popularity in both modes and "buy it again" (all products) on the test period."""
    test = split.test
    ranking = popularity_recommender(split.interactions, split.end, cfg.popularity_days)
    for mode in MODES:
        if mode == "all_products":
            recs = popularity_recommendations(ranking[:K], test.relevant, K)
        else:
            recs = without_seen(ranking, test.histories, K)
        tally.lists(mode, "popularity", recs, test.relevant, test.cold)
    tally.lists(
        "all_products",
        "buy_again",
        buy_again_recommendations(test.histories, K),
        test.relevant,
        test.cold,
    )
    say(
        f"popularity: {METRIC} {tally.runs['all_products']['popularity'][0].precision:.4f}; "
        f"buy again: {tally.runs['all_products']['buy_again'][0].precision:.4f}"
    )


def _learned_runs(settings: Settings, split: Split, learned, runs: int, tally: _Tally, say):
    """Every seeded run of every learned variant: (best, first_runs). best = (validation loss,
    run, fitted, test precision, blend rule) of the registered variant's run with the lowest
    validation loss; first_runs: variant → its run-0 model (Figure 7)."""
    best = None
    first_runs: dict[str, object] = {}
    for r in range(runs if learned else 0):
        for variant in learned:

            def tell(message: str, variant=variant, r=r) -> None:
                say(f"{variant} run {r + 1}/{runs}: {message}")

            fitted = fit_variant(settings, split, variant, settings.seed + r, tell)
            _log_training(fitted, variant, r, tally)
            rule = _blend_rule(settings, split, variant, fitted)
            precision = None
            if split.test is not None:
                precision = _test_run(fitted["model"], split.test, variant, r, rule, tally, tell)
            chosen_by = fitted["selection"].best_validation_loss
            if variant == REGISTERED_VARIANT and (best is None or chosen_by < best[0]):
                best = (chosen_by, r, fitted, precision, rule)
            if r == 0:
                first_runs[variant] = fitted["model"]
    return best, first_runs


def _log_training(fitted: dict, variant: str, r: int, tally: _Tally) -> None:
    """Epochs, losses and validation figures of one run: into the tally and MLflow."""
    import mlflow

    model, selection = fitted["model"], fitted["selection"]
    info = tally.training.setdefault(
        variant, {"epochs": [], "best_epoch": [], "seconds_per_epoch": [], "loss_drop": []}
    )
    info["epochs"].append(selection.epochs)
    info["best_epoch"].append(selection.best_epoch)
    info["seconds_per_epoch"].append(model.seconds_per_epoch)
    losses = model.history["train_loss"]
    info["loss_drop"].append(1.0 - losses[-1] / losses[0] if losses[0] else 0.0)
    for e, (train_loss, val_loss) in enumerate(
        zip(selection.history["train_loss"], selection.history["val_loss"]), 1
    ):
        values = {f"{variant}.run{r}.train_loss": train_loss}
        if math.isfinite(val_loss):
            values[f"{variant}.run{r}.val_loss"] = val_loss
        mlflow.log_metrics(values, step=e)
    val = tally.validation.setdefault(variant, {"loss": [], **{m: [] for m in MODES}})
    val["loss"].append(selection.best_validation_loss)
    for mode, value in fitted["validation"].items():
        val[mode].append(value)


def _blend_rule(settings: Settings, split: Split, variant: str, fitted: dict):
    """The rebuy/new blend calibrated on the validation window (registered variant only)."""
    from models.blend import fit_blend

    if variant != REGISTERED_VARIANT or not settings.recommender.blend or not fitted["new_lists"]:
        return None
    return fit_blend(fitted["new_lists"], split.validation.histories, split.validation.relevant, K)


def _test_run(model, test: Period, variant: str, r: int, rule, tally: _Tally, tell) -> float:
    """Score one trained run on the test period in both modes (and its blend); its
    all-products precision."""
    import mlflow

    from models.blend import blend

    lists, vectors = _mode_lists(model, test)
    diagnosed = diagnostics(model, test, lists, vectors)
    for mode in MODES:
        tally.record(mode, variant, *score(lists[mode], test.relevant, test.cold), diagnosed[mode])
    precision = tally.runs["all_products"][variant][-1].precision
    if rule is not None:
        mixed = {
            c: blend(lists["new_to_customer"][c], test.histories[c], rule, K)
            for c in test.histories
        }
        tally.lists("all_products", "blend", mixed, test.relevant, test.cold)
    new = tally.runs["new_to_customer"][variant][-1].precision
    tell(f"test {METRIC}: all products {precision:.4f}, new to customer {new:.4f}")
    mlflow.log_metrics(
        {f"{variant}.run{r}.{METRIC}": precision, f"{variant}.run{r}.new_to_customer.{METRIC}": new}
    )
    return precision


def _figure7(settings, split: Split, first_runs, report: dict, report_dir: Path, say) -> None:
    try:
        report["similar"] = similar_figure(
            settings,
            first_runs,
            split.features,
            split.interactions,
            split.end,
            split.start,
            split.test.catalogue,
            report_dir / FIGURE7,
        )
        say(f"Figure 7 (similar products by variant): {report_dir / FIGURE7}")
    except ValueError as e:  # e.g. no product every variant can represent
        log.warning("no Figure 7: %s", e)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def _report(split: Split, runs_by, cold_by, diag, validation, training) -> dict:
    """The recommender.json report: Table 3 of the paper's protocol at the top level (all
    products), `new_to_customer` beside it, diagnostics, validation and training summaries."""
    cfg_period = {
        "train_start": str(split.start) if split.start is not None else None,
        "train_end": str(split.end),
        "validation_start": str(split.boundary),
        "test_end": str(split.test.stop) if split.test else None,
        "lake_last_interaction": str(split.interactions["timestamp"].max()),
        "deploy": split.deploy,
    }
    if split.test is not None and runs_by["all_products"]:
        report = table3(runs_by["all_products"], _cold_runs(cold_by["all_products"]), K)
        report["new_to_customer"] = table3(
            runs_by["new_to_customer"], _cold_runs(cold_by["new_to_customer"]), K
        )
    else:
        report = {"variants": {}, "cold_start": {}, "significance": {}}
    report["period"] = cfg_period
    test = split.test
    report["data"] = {
        "interactions": len(split.interactions),
        "training_examples": len(split.examples),
        "validation_examples": len(split.validation_examples),
        "examples_before_validation": len(split.fit_examples),
        "recommendable_products": len(split.features),
        "test_customers": len(test.relevant) if test else 0,
        "test_purchases": int(sum(len(v) for v in test.relevant.values())) if test else 0,
        "cold_start_products": len(test.cold) if test else 0,
        "cold_start_purchases": (
            int(sum(len(set(v) & test.cold) for v in test.relevant.values())) if test else 0
        ),
    }
    report["diagnostics"] = {
        mode: {
            variant: {
                "distinct_products": _mean([d["distinct_products"] for d in entries]),
                "distinct_products_runs": [d["distinct_products"] for d in entries],
                "customer_cosine": _mean([d["customer_cosine"] for d in entries]),
            }
            for variant, entries in by_variant.items()
        }
        for mode, by_variant in diag.items()
    }
    report["validation"] = {
        variant: {
            "loss": _mean(v["loss"]),
            **{f"{mode}.{METRIC}": _mean(v[mode]) for mode in MODES},
            "runs": len(v["loss"]),
        }
        for variant, v in validation.items()
    }
    report["training"] = {
        variant: {
            "runs": len(info["epochs"]),
            "epochs": float(np.mean(info["epochs"])),
            "best_epoch": float(np.mean(info["best_epoch"])),
            "seconds_per_epoch": float(np.mean(info["seconds_per_epoch"])),
            "seconds_per_epoch_runs": [round(s, 4) for s in info["seconds_per_epoch"]],
            "train_loss_drop": float(np.mean(info["loss_drop"])),
        }
        for variant, info in training.items()
    }
    return report


def _register(settings: Settings, split: Split, report: dict, best, commit: str, run_id: str):
    """Register the chosen hybrid run as challenger; its metric: test precision@10 (all
    products), or the validation one when training to deploy."""
    import mlflow

    from atelier import registry
    from models.recommender.bundle import RecommenderBundle
    from models.recommender.features import FEATURE_SERVICE
    from models.recommender.pyfunc import log_recommender_model

    cfg = settings.recommender
    validation_loss, r, fitted, precision, rule = best
    if split.test is not None:
        value, evaluation = precision, f"{split.end.date()}..{split.test.stop.date()}"
    else:
        value = fitted["validation"].get("all_products")
        evaluation = f"validation:{split.boundary.date()}..{split.end.date()}"
    metadata = {
        "train_start": report["period"]["train_start"],
        "train_end": str(split.end),
        "test_end": report["period"]["test_end"],
        "evaluation": evaluation,
        METRIC: value,
        "validation": fitted["validation"],
        "run": r,
        "selected_by": "validation_loss",
        "validation_loss": validation_loss if math.isfinite(validation_loss) else None,
        "seed": settings.seed + r,
        "feature_service": FEATURE_SERVICE,
        "attribute_model_versions": list(split.features.attribute_model_versions),
        "feature_refs": list(split.features.feature_refs),
        "git_commit": commit,
        "run_id": run_id,
        "n_recent": cfg.n_recent,
        "layout": VECTOR_LAYOUT,
        "blend": rule.to_dict() if rule is not None else None,
    }
    bundle = RecommenderBundle.from_trained(fitted["model"], split.features, metadata)
    model_info = log_recommender_model(bundle, name="model")
    if rule is not None:
        mlflow.log_param(BLEND_PARAM, json.dumps(rule.to_dict()))
    version = registry.register(
        settings,
        model_info.model_uri,
        settings.mlflow.recommender_model,
        METRIC,
        value if value is not None else 0.0,
        tags={
            "feature_service": cfg.feature_service,
            "git_commit": commit,
            "variant": REGISTERED_VARIANT,
            # Promotion compares precision@10: meaningful on the same evaluation only.
            "evaluation": evaluation,
        },
    )
    report["model"] = {
        "name": settings.mlflow.recommender_model,
        "version": version,
        "variant": REGISTERED_VARIANT,
        "run": r,
        "selected_by": "validation_loss",
        "validation_loss": metadata["validation_loss"],
        METRIC: value,
        "evaluation": evaluation,
        "model_uri": model_info.model_uri,
        "blend": metadata["blend"],
    }
    if value is not None:
        mlflow.log_metric(METRIC, value)
    return version


# -- evaluation on a later period ----------------------------------------------------------


def selection_loss(trained) -> float:
    """The loss a run is chosen by: its lowest finite validation loss (inf without one, e.g.
    too few customers to hold out; the earliest such run is then kept)."""
    finite = [v for v in trained.history.get("val_loss", []) if math.isfinite(v)]
    return min(finite) if finite else math.inf


def registered_models(settings: Settings, model_uri: str | None = None) -> list[tuple[str, str]]:
    """[(role, model URI)]: `model_uri` alone ("given"), else the champion and the challenger
    of `settings.mlflow.recommender_model` (the challenger only when it is another version).
    RegistryError when there is neither."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from atelier import registry

    if model_uri:
        return [("given", model_uri)]
    name = settings.mlflow.recommender_model
    registry.configure(settings)
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    out, versions = [], set()
    for role, alias in (("champion", registry.CHAMPION), ("challenger", registry.CHALLENGER)):
        try:
            version = client.get_model_version_by_alias(name, alias).version
        except MlflowException:  # no such model or alias
            continue
        if version not in versions:
            versions.add(version)
            out.append((role, f"models:/{name}/{version}"))
    if not out:
        raise registry.RegistryError(
            f"model {name!r} has no champion or challenger: train one with "
            "`atelier train recommender`"
        )
    return out


def evaluate_recommender(
    settings: Settings,
    interactions_file: Path,
    report_dir: Path,
    model_uri: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Score the registered recommender(s) on the purchases of `interactions_file` (H&M
    `transactions_train.csv` layout): the period is the file's first to last day; customers'
    histories and products' content come from the lake strictly before the first day (content
    as of the last day, so products launched in the period can be scored). Cold-start products
    here: never bought in the lake before the period. Writes the train report's shape in both
    modes (popularity from the lake's last `popularity_days` before the period, "buy it again",
    and the blend of a model that carries a blend rule; one run each) and logs an
    `evaluate-recommender` MLflow run. Returns the report."""
    from atelier import registry

    say = progress or log.info
    registry.configure(settings)  # a given models:/ URI resolves in this workdir's registry
    models = registered_models(settings, model_uri)
    ev = _evaluation_period(settings, interactions_file, say)
    tally = _Tally()
    ranking = popularity_recommender(ev.history, ev.cut, settings.recommender.popularity_days)
    tally.lists(
        "all_products",
        "popularity",
        popularity_recommendations(ranking[:K], ev.relevant, K),
        ev.relevant,
        ev.cold,
    )
    tally.lists(
        "new_to_customer",
        "popularity",
        without_seen(ranking, ev.histories, K),
        ev.relevant,
        ev.cold,
    )
    tally.lists(
        "all_products",
        "buy_again",
        buy_again_recommendations(ev.histories, K),
        ev.relevant,
        ev.cold,
    )
    described = {}
    for role, uri in models:
        label, about = _score_registered(uri, role, ev, tally, described, say)
        described[label] = about
    report = _evaluation_report(tally, ev, interactions_file)
    report["models"] = described
    write_report(report_dir, report)
    _log_evaluation(settings, report, report_dir, interactions_file, models, ev)
    return report


@dataclass
class _EvaluationPeriod:
    """The purchases of an evaluation file and what the lake knew before them."""

    period: pd.DataFrame
    skipped: int
    first: pd.Timestamp
    last: pd.Timestamp
    cut: pd.Timestamp
    history: pd.DataFrame
    relevant: dict
    histories: dict
    features: object
    catalogue: np.ndarray
    unknown: set
    cold: set


def _evaluation_period(settings: Settings, interactions_file: Path, say) -> _EvaluationPeriod:
    from models.recommender.features import load_content_features

    period, skipped = read_transactions(interactions_file, settings.layouts_dir)
    if period.empty:
        raise ValueError(f"{interactions_file} holds no usable purchase ({skipped} rows skipped)")
    first, last = period["timestamp"].min(), period["timestamp"].max()
    cut = first - pd.Timedelta(microseconds=1)
    history = events(read_interactions(settings), cut)
    if history.empty:
        raise ValueError(f"the lake has no interaction before {first}: no history to score from")
    combined = pd.concat([history, period[list(COLUMNS)]], ignore_index=True)
    relevant = test_set(combined, cut, last)
    if not relevant:
        raise ValueError(
            f"no customer of {interactions_file} has a history in the lake before {first}"
        )
    features = load_content_features(settings, cut, content_as_of=last)
    catalogue = np.asarray(features.product_ids, dtype=object)
    known, bought = set(catalogue), set(period["product_id"])
    say(
        f"period {first.date()}..{last.date()}: {len(relevant)} customers with a history, "
        f"{len(bought - known)} purchased products unknown to the lake"
    )
    return _EvaluationPeriod(
        period=period,
        skipped=skipped,
        first=first,
        last=last,
        cut=cut,
        history=history,
        relevant=relevant,
        histories=customer_histories(history, cut, relevant),
        features=features,
        catalogue=catalogue,
        unknown=bought - known,
        cold=cold_start_products(combined, cut, catalogue=known | bought),
    )


def _score_registered(uri: str, role: str, ev: _EvaluationPeriod, tally, described, say):
    """Score one registered model in both modes (and its blend): (label, description)."""
    from models.blend import BlendRule, blend
    from models.recommender.pyfunc import load_bundle

    bundle = load_bundle(uri)
    label = bundle.variant
    if label in described:  # the challenger beside a champion of the same variant
        label = f"{bundle.variant}_{role}"
    scored = Period(
        ev.cut,
        ev.last,
        ev.histories,
        ev.relevant,
        bundle.conform(ev.features),
        ev.catalogue,
        ev.cold,
    )
    lists, vectors = _mode_lists(bundle, scored)
    found = diagnostics(bundle, scored, lists, vectors)
    for mode in MODES:
        tally.record(mode, label, *score(lists[mode], ev.relevant, ev.cold), found[mode])
    rule = bundle.metadata.get("blend")
    if rule:
        rule = BlendRule.from_dict(rule)
        mixed = {
            c: blend(lists["new_to_customer"][c], ev.histories[c], rule, K) for c in ev.histories
        }
        name = f"blend_{label}" if label != bundle.variant else "blend"
        tally.lists("all_products", name, mixed, ev.relevant, ev.cold)
    train_end = bundle.metadata.get("train_end")
    purchases = [p for items in ev.relevant.values() for p in items]
    main, new = tally.runs["all_products"][label][0], tally.runs["new_to_customer"][label][0]
    say(
        f"{label} ({uri}): {METRIC} all products {main.precision:.4f}, new to customer "
        f"{new.precision:.4f}"
    )
    return label, {
        "role": role,
        "model_uri": uri,
        "variant": bundle.variant,
        "train_end": train_end,
        "registered_" + METRIC: bundle.metadata.get(METRIC),
        "registered_evaluation": bundle.metadata.get("evaluation"),
        "purchases_outside_cf_index": int((~bundle.knows(purchases)).sum()),
        "period_overlaps_training": bool(
            train_end is not None and ev.first <= utc_timestamp(train_end, "train_end")
        ),
    }


def _evaluation_report(tally, ev: _EvaluationPeriod, interactions_file: Path) -> dict:
    report = table3(tally.runs["all_products"], _cold_runs(tally.cold["all_products"]), K)
    report["new_to_customer"] = table3(
        tally.runs["new_to_customer"], _cold_runs(tally.cold["new_to_customer"]), K
    )
    report["diagnostics"] = {
        mode: {
            v: {
                "distinct_products": e[0]["distinct_products"],
                "customer_cosine": e[0]["customer_cosine"],
            }
            for v, e in by.items()
        }
        for mode, by in tally.diag.items()
    }
    report["period"] = {
        "history_end": str(ev.cut),
        "test_start": str(ev.first),
        "test_end": str(ev.last),
    }
    relevant = ev.relevant
    report["data"] = {
        "interactions_file": str(interactions_file),
        "rows": len(ev.period),
        "rows_skipped": ev.skipped,
        "test_customers": len(relevant),
        "test_purchases": int(sum(len(v) for v in relevant.values())),
        "products_without_features": len(ev.unknown),
        "recommendable_products": len(ev.catalogue),
        "cold_start_purchases": int(sum(len(set(v) & ev.cold) for v in relevant.values())),
    }
    return report


def _log_evaluation(settings, report, report_dir, interactions_file, models, ev) -> None:
    import mlflow

    mlflow.set_experiment(settings.mlflow.experiment)
    with mlflow.start_run(run_name="evaluate-recommender"):
        mlflow.set_tags(
            {
                "stage": "evaluate-recommender",
                "interactions_file": str(interactions_file),
                "models": ",".join(uri for _, uri in models),
                "evaluation": f"{ev.first.date()}..{ev.last.date()}",
            }
        )
        mlflow.log_metrics(flat_metrics(report))
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
