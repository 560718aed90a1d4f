"""`atelier train recommender` and `atelier evaluate recommender`: the stage functions.

Training follows the paper's Section 3 protocol on the lake's interactions: the model is frozen
at `train_end`; training examples come from the window up to it (`data.training_examples`),
content features from Feast (`recommender_v1`) as of `train_end`; the test set is the purchases
of `(train_end, train_end + test_days]` by customers with a history. Each learned variant
(`cf`, `content`, `hybrid`) is trained `runs` times with seeds `settings.seed + run` (run i of
every variant shares its examples and validation split, so the runs are paired), scored by
precision/recall@10, with the cold-start breakdown, the popularity baseline and paired t-tests
(`evaluation.table3`). The report (recommender.json / .md / .png) and everything else goes to
MLflow; the `hybrid` run with the lowest validation loss (held-out customers of the training
window: chosen without looking at the test period) is registered as
`settings.mlflow.recommender_model` and becomes `challenger`, with its test precision@10 as the
metric promotion compares.

Recommendable products are the catalogue's products that exist by the end of the test period:
`first_seen` (the first sale: the only launch date the layouts give) unknown or not after
`test_end`. A product launched in the test period has content (read as of `test_end`,
`features.load_content_features`) but no sales before `train_end` and no CF row: a cold-start
product, reached only by the content path.

Evaluation scores the registered model(s) on a later period given as an H&M-layout
`transactions_train.csv`: histories and content come from the lake up to the file's first day.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from training.recommender.baselines import popularity_recommendations, popularity_recommender
from training.recommender.data import (
    COLUMNS,
    customer_histories,
    events,
    test_set,
    training_examples,
    utc_timestamp,
    window_products,
)
from training.recommender.evaluation import (
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
    from training.recommender.features import ContentFeatures

log = logging.getLogger("atelier.recommender")

K = 10
METRIC = f"precision_at_{K}"
RECALL = f"recall_at_{K}"
LEARNED = ("cf", "content", "hybrid")
REGISTERED_VARIANT = "hybrid"
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


def recommendable_products(settings: Settings, end) -> np.ndarray:
    """Catalogue products that exist by `end`: `first_seen` unknown or not after `end`."""
    from atelier.lake import Lake

    lake = Lake(settings)
    products = lake.read_pandas("products", ["product_id", "first_seen"])
    first = pd.to_datetime(products["first_seen"], utc=True)
    keep = first.isna() | (first <= utc_timestamp(end, "end"))
    return np.asarray(sorted(set(products.loc[keep.to_numpy(), "product_id"])), dtype=object)


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
    """Table 3 with the period, the training summary and the registered model, as Markdown."""
    period = report.get("period", {})
    lines = ["# Recommender (Table 3)", ""]
    if "history_end" in period:  # an evaluation on a later period
        lines += [
            f"Histories up to {_day(period['history_end'])}; tested on the purchases of "
            f"{_day(period['test_start'])} to {_day(period['test_end'])}; precision/recall@{K} "
            "averaged over the customers with a history.",
            "",
        ]
    elif period:
        lines += [
            f"Trained on the interactions up to {_day(period['train_end'])} (inclusive); tested "
            f"on the purchases after it up to {_day(period['test_end'])}; precision/recall@{K} "
            "averaged over the customers with a history.",
            "",
        ]
    lines.append(markdown_table(report, K))
    training = report.get("training")
    if training:
        lines += [
            "## Training",
            "",
            "| variant | runs | epochs (mean) | best epoch (mean) | seconds/epoch |",
            "|---|---:|---:|---:|---:|",
        ]
        for variant, info in training.items():
            lines.append(
                f"| {variant} | {info['runs']} | {info['epochs']:.1f} | {info['best_epoch']:.1f} "
                f"| {info['seconds_per_epoch']:.3f} |"
            )
        lines.append("")
    model = report.get("model")
    if model:
        lines.append(
            f"Registered {model['name']} version {model['version']} ({model['variant']}, run "
            f"{model['run']}, {METRIC} {model[METRIC]:.5f}) as challenger."
        )
    for label, info in report.get("models", {}).items():
        lines.append(f"- {label}: {info['model_uri']} (trained up to {info.get('train_end')})")
    return "\n".join(lines).rstrip() + "\n"


def _day(value) -> str:
    return str(value)[:10] if value is not None else "?"


def plot_report(report: Mapping, path) -> Path:
    """Bars of precision@10 and recall@10 per variant (± std over runs), and the cold-start
    breakdown when there is one; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = [("all products", report["variants"])]
    if report.get("cold_start"):
        sections.append(("cold-start products", report["cold_start"]))
    fig, axes = plt.subplots(1, len(sections), figsize=(6 * len(sections), 4), squeeze=False)
    try:
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
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


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
    from training.recommender.similar import figure7, main_image_paths, plot_similar_grid
    from training.recommender.trainer import product_vectors

    rows = features.rows(np.asarray(list(catalogue), dtype=object))
    ids = [features.product_ids[r] for r in rows]
    variants = {}
    for variant, trained in models.items():
        vectors = product_vectors(trained, features)[rows]
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
    """MLflow metrics of a report: `<variant>.<metric>`, `cold_start.<variant>.<metric>`."""
    out = {}
    for section, prefix in (("variants", ""), ("cold_start", "cold_start.")):
        for variant, values in report.get(section, {}).items():
            for key, value in values.items():
                if key != "runs" and value is not None and math.isfinite(value):
                    out[f"{prefix}{variant}.{key}"] = float(value)
    return out


# -- training ------------------------------------------------------------------------------


def _config(settings: Settings, features: ContentFeatures, variant: str, seed: int):
    cfg = settings.recommender
    return features.recommender_config(
        variant,
        n_items=1,  # the trainer sets the size of its CF index
        k=cfg.k,
        hidden_units=tuple(cfg.hidden_units),
        n_negatives=cfg.n_negatives,
        optimizer=cfg.optimizer,
        learning_rate=cfg.learning_rate,
        seed=seed,
    )


def train_recommender(
    settings: Settings,
    train_end: date | datetime | str | None = None,
    variants: Iterable[str] = VARIANTS,
    runs: int | None = None,
    report_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Train, evaluate (Table 3), log and register the recommender; returns a summary dict
    (run_id, model_version, report_dir, report).

    `train_end`: end of the training window, inclusive (a date is its midnight UTC, which
    keeps that day's H&M purchases in training); default `default_train_end`. The test period
    is `(train_end, train_end + settings.recommender.test_days]`. `runs`: default the setting.
    """
    import mlflow

    from training import registry
    from training.attributes.pipeline import device, git_commit
    from training.recommender.bundle import RecommenderBundle
    from training.recommender.features import FEATURE_SERVICE, load_content_features
    from training.recommender.pyfunc import log_recommender_model
    from training.recommender.trainer import recommend_for, train_recommender_model

    cfg = settings.recommender
    say = progress or log.info
    t0 = time.perf_counter()
    variants = check_variants(variants)
    runs = cfg.runs if runs is None else runs
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    learned = [v for v in variants if v in LEARNED]

    interactions = read_interactions(settings)
    end = (
        default_train_end(interactions, cfg.test_days)
        if train_end is None
        else utc_timestamp(train_end, "train_end")
    )
    test_end = end + pd.Timedelta(days=cfg.test_days)
    start = None if cfg.train_days is None else end - pd.Timedelta(days=cfg.train_days)
    relevant = test_set(interactions, end, test_end, train_start=start)
    if not relevant:
        times = interactions["timestamp"]
        raise ValueError(
            f"no customer with a history bought anything in the test period ({end}, {test_end}]:"
            f" the lake's interactions run from {times.min()} to {times.max()}; choose another "
            "train_end"
        )
    last = interactions["timestamp"].max()
    catalogue = recommendable_products(settings, test_end)
    histories = customer_histories(interactions, end, relevant, max_items=cfg.n_inputs)
    candidates = window_products(interactions, end, start)
    say(
        f"train_end {end.date()}, test period to {test_end.date()}: {len(relevant)} test "
        f"customers, {len(candidates)} products in the training window"
    )

    features = None
    if learned:
        features = load_content_features(settings, end, content_as_of=test_end)
        known = set(features.product_ids)
        catalogue = np.asarray([p for p in catalogue if p in known], dtype=object)
    cold = cold_start_products(interactions, end, catalogue=catalogue, train_start=start)

    runs_by_variant: dict[str, list] = {}
    cold_by_variant: dict[str, list] = {}
    training: dict[str, dict] = {}
    commit = git_commit()
    params = {
        "feature_service": cfg.feature_service,
        "train_start": str(start) if start is not None else "all",
        "train_end": str(end),
        "test_end": str(test_end),
        "variants": ",".join(variants),
        "runs": runs,
        "seed": settings.seed,
        "device": device(),
        "git_commit": commit,
        "test_customers": len(relevant),
        "window_products": len(candidates),
        "recommendable_products": len(catalogue),
        "cold_start_products": len(cold),
        **{f"recommender.{k}": v for k, v in cfg.model_dump().items()},
    }
    if features is not None:
        params["attribute_model_versions"] = ",".join(features.attribute_model_versions) or "none"
        params["content_blocks"] = json.dumps(features.block_dims, sort_keys=True)

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

        if "popularity" in variants:
            ranking = popularity_recommender(interactions, end, cfg.popularity_days, k=K)
            recs = popularity_recommendations(ranking, relevant, K)
            main, cold_at = score(recs, relevant, cold)
            runs_by_variant["popularity"] = [main]
            cold_by_variant["popularity"] = [cold_at]
            say(f"popularity: {METRIC} {main.precision:.4f}, {RECALL} {main.recall:.4f}")

        best = None  # (validation loss, run, trained, main)
        first_runs: dict[str, object] = {}  # variant → its first run's model, for Figure 7
        examples_per_run = []
        for r in range(runs if learned else 0):
            seed = settings.seed + r
            examples = training_examples(
                interactions,
                end,
                positive_days=cfg.positive_days,
                n_inputs=cfg.n_inputs,
                min_interactions=cfg.min_interactions,
                seed=seed,
                train_start=start,
            )
            if len(examples) == 0:
                raise ValueError(
                    f"no training examples up to {end}: no customer with >= "
                    f"{cfg.min_interactions} interactions bought in the last "
                    f"{cfg.positive_days} days with {cfg.n_inputs} earlier interactions"
                )
            examples_per_run.append(len(examples))
            for variant in learned:

                def tell(message: str, variant=variant, r=r) -> None:
                    say(f"{variant} run {r + 1}/{runs}: {message}")

                trained = train_recommender_model(
                    examples,
                    features,
                    _config(settings, features, variant, seed),
                    candidates=candidates,
                    epochs=cfg.epochs,
                    batch_size=cfg.batch_size,
                    patience=cfg.patience,
                    validation_fraction=cfg.validation_fraction,
                    seed=seed,
                    progress=tell,
                )
                recs = recommend_for(
                    trained,
                    features,
                    histories,
                    k=K,
                    exclude_seen=cfg.exclude_seen,
                    n_recent=cfg.n_inputs,
                    candidates=catalogue,
                )
                main, cold_at = score(recs, relevant, cold)
                runs_by_variant.setdefault(variant, []).append(main)
                cold_by_variant.setdefault(variant, []).append(cold_at)
                info = training.setdefault(
                    variant, {"epochs": [], "best_epoch": [], "seconds_per_epoch": []}
                )
                info["epochs"].append(trained.epochs)
                info["best_epoch"].append(trained.best_epoch)
                info["seconds_per_epoch"].append(trained.seconds_per_epoch)
                for e, (train_loss, val_loss) in enumerate(
                    zip(trained.history["train_loss"], trained.history["val_loss"]), 1
                ):
                    values = {f"{variant}.run{r}.train_loss": train_loss}
                    if math.isfinite(val_loss):
                        values[f"{variant}.run{r}.val_loss"] = val_loss
                    mlflow.log_metrics(values, step=e)
                mlflow.log_metrics(
                    {
                        f"{variant}.run{r}.{METRIC}": main.precision,
                        f"{variant}.run{r}.{RECALL}": main.recall,
                    }
                )
                tell(f"{METRIC} {main.precision:.4f}, {RECALL} {main.recall:.4f}")
                # Chosen by validation loss, never by the test period it is then scored on.
                chosen_by = selection_loss(trained)
                if variant == REGISTERED_VARIANT and (best is None or chosen_by < best[0]):
                    best = (chosen_by, r, trained, main)
                if r == 0:
                    first_runs[variant] = trained

        report = table3(runs_by_variant, _cold_runs(cold_by_variant), K)
        report["period"] = {
            "train_start": str(start) if start is not None else None,
            "train_end": str(end),
            "test_end": str(test_end),
            "lake_last_interaction": str(last),
            "test_period_complete": bool(last >= test_end),
        }
        report["data"] = {
            "interactions": len(interactions),
            "test_customers": len(relevant),
            "test_purchases": int(sum(len(v) for v in relevant.values())),
            "window_products": len(candidates),
            "recommendable_products": len(catalogue),
            "cold_start_products": len(cold),
            "cold_start_purchases": int(sum(len(set(v) & cold) for v in relevant.values())),
            "training_examples": examples_per_run,
        }
        report["training"] = {
            variant: {
                "runs": len(info["epochs"]),
                "epochs": float(np.mean(info["epochs"])),
                "best_epoch": float(np.mean(info["best_epoch"])),
                "seconds_per_epoch": float(np.mean(info["seconds_per_epoch"])),
                "seconds_per_epoch_runs": [round(s, 4) for s in info["seconds_per_epoch"]],
            }
            for variant, info in training.items()
        }
        report["feature_service"] = cfg.feature_service
        report["git_commit"] = commit
        report["device"] = params["device"]
        for variant, info in report["training"].items():
            mlflow.log_metric(f"{variant}.seconds_per_epoch", info["seconds_per_epoch"])

        version = None
        if best is not None:
            validation, r, trained, main = best
            precision = main.precision
            metadata = {
                "train_start": report["period"]["train_start"],
                "train_end": str(end),
                "test_end": str(test_end),
                METRIC: precision,
                RECALL: main.recall,
                "run": r,
                "selected_by": "validation_loss",
                "validation_loss": validation if math.isfinite(validation) else None,
                "seed": settings.seed + r,
                "feature_service": FEATURE_SERVICE,
                "attribute_model_versions": list(features.attribute_model_versions),
                "feature_refs": list(features.feature_refs),
                "git_commit": commit,
                "run_id": run.info.run_id,
                "n_recent": cfg.n_inputs,
            }
            bundle = RecommenderBundle.from_trained(trained, features, metadata)
            model_info = log_recommender_model(bundle, name="model")
            version = registry.register(
                settings,
                model_info.model_uri,
                settings.mlflow.recommender_model,
                METRIC,
                precision,
                tags={
                    "feature_service": cfg.feature_service,
                    "git_commit": commit,
                    "variant": REGISTERED_VARIANT,
                    # Promotion compares precision@10: meaningful on the same evaluation.
                    "evaluation": f"{end.date()}..{test_end.date()}",
                },
            )
            report["model"] = {
                "name": settings.mlflow.recommender_model,
                "version": version,
                "variant": REGISTERED_VARIANT,
                "run": r,
                "selected_by": "validation_loss",
                "validation_loss": validation if math.isfinite(validation) else None,
                METRIC: precision,
                "model_uri": model_info.model_uri,
            }
            mlflow.log_metric(METRIC, precision)
            mlflow.log_metric(RECALL, main.recall)
        report_dir = Path(report_dir or settings.reports_dir / "recommender")
        if first_runs:
            try:
                report["similar"] = similar_figure(
                    settings,
                    first_runs,
                    features,
                    interactions,
                    end,
                    start,
                    catalogue,
                    report_dir / FIGURE7,
                )
                say(f"Figure 7 (similar products by variant): {report_dir / FIGURE7}")
            except ValueError as e:  # e.g. no product every variant can represent
                log.warning("no Figure 7: %s", e)
        write_report(report_dir, report)
        mlflow.log_metrics(flat_metrics(report))
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
    if version is not None:
        say(
            f"registered {settings.mlflow.recommender_model} version {version} as challenger "
            f"(run {best[1] + 1}, lowest validation loss; {METRIC} {best[3].precision:.4f})"
        )
    say(f"recommender done in {time.perf_counter() - t0:.0f}s; report in {report_dir}")
    return {
        "run_id": run.info.run_id,
        "model_version": version,
        "report_dir": str(report_dir),
        "report": report,
    }


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

    from training import registry

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
    here: never bought in the lake before the period. Writes the train report's shape
    (popularity from the lake's last `popularity_days` before the period; one run each) and
    logs an `evaluate-recommender` MLflow run. Returns the report."""
    import mlflow

    from training.recommender.features import load_content_features
    from training.recommender.pyfunc import load_bundle
    from training.recommender.trainer import recommend_for

    cfg = settings.recommender
    say = progress or log.info
    models = registered_models(settings, model_uri)
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
    histories = customer_histories(history, cut, relevant, max_items=cfg.n_inputs)
    features = load_content_features(settings, cut, content_as_of=last)
    known = set(features.product_ids)
    catalogue = np.asarray(
        [p for p in recommendable_products(settings, last) if p in known], dtype=object
    )
    bought = set(period["product_id"])
    cold = cold_start_products(combined, cut, catalogue=known | bought)
    say(
        f"period {first.date()}..{last.date()}: {len(relevant)} customers with a history, "
        f"{len(bought - known)} purchased products unknown to the lake"
    )

    runs: dict[str, list] = {}
    cold_runs: dict[str, list] = {}
    ranking = popularity_recommender(history, cut, cfg.popularity_days, k=K)
    main, cold_at = score(popularity_recommendations(ranking, relevant, K), relevant, cold)
    runs["popularity"], cold_runs["popularity"] = [main], [cold_at]
    described = {}
    for role, uri in models:
        bundle = load_bundle(uri)
        label = bundle.variant
        if label in described:  # the challenger beside a champion of the same variant
            label = f"{bundle.variant}_{role}"
        recs = recommend_for(
            bundle,
            bundle.conform(features),
            histories,
            k=K,
            exclude_seen=cfg.exclude_seen,
            n_recent=int(bundle.metadata.get("n_recent", cfg.n_inputs)),
            candidates=catalogue,
        )
        main, cold_at = score(recs, relevant, cold)
        runs[label], cold_runs[label] = [main], [cold_at]
        train_end = bundle.metadata.get("train_end")
        purchases = [p for items in relevant.values() for p in items]
        described[label] = {
            "role": role,
            "model_uri": uri,
            "variant": bundle.variant,
            "train_end": train_end,
            "registered_" + METRIC: bundle.metadata.get(METRIC),
            "purchases_outside_cf_index": int((~bundle.knows(purchases)).sum()),
            "period_overlaps_training": bool(
                train_end is not None and first <= utc_timestamp(train_end, "train_end")
            ),
        }
        say(f"{label} ({uri}): {METRIC} {main.precision:.4f}, {RECALL} {main.recall:.4f}")

    report = table3(runs, _cold_runs(cold_runs), K)
    report["period"] = {
        "history_end": str(cut),
        "test_start": str(first),
        "test_end": str(last),
    }
    report["data"] = {
        "interactions_file": str(interactions_file),
        "rows": len(period),
        "rows_skipped": skipped,
        "test_customers": len(relevant),
        "test_purchases": int(sum(len(v) for v in relevant.values())),
        "products_without_features": len(bought - known),
        "recommendable_products": len(catalogue),
        "cold_start_purchases": int(sum(len(set(v) & cold) for v in relevant.values())),
    }
    report["models"] = described
    write_report(report_dir, report)
    mlflow.set_experiment(settings.mlflow.experiment)
    with mlflow.start_run(run_name="evaluate-recommender"):
        mlflow.set_tags(
            {
                "stage": "evaluate-recommender",
                "interactions_file": str(interactions_file),
                "models": ",".join(uri for _, uri in models),
            }
        )
        mlflow.log_metrics(flat_metrics(report))
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
    return report
