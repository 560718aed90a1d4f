"""`atelier evaluate attributes`: a registered attribute model scored on a new catalogue.

Orchestration across stages (ingest, embed and colour jobs into a scratch workdir, then the
training package's scoring), so it lives in the CLI layer: stages never call each other.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from atelier.settings import EmbedSettings, Settings
from training.attributes.pipeline import (
    catalogue_frame,
    flat_metrics,
    report,
    score_bundle,
    write_report,
)

log = logging.getLogger("atelier.attributes")


def evaluate_attributes(
    settings: Settings,
    source_dir: Path,
    layout: str,
    report_dir: Path,
    model_uri: str | None = None,
    progress: Callable[[str], None] | None = None,
    weights: str | None = None,
) -> dict:
    """Score a registered model (default: the champion) on the labelled catalogue in
    `source_dir`: ingest and embed it in a scratch workdir, predict, compare with its labels.

    Only the catalogue is needed (products and images; customers and purchases may be absent).
    Images are embedded with the weights the model was trained on, as its bundle records them;
    `weights` (a file, `--weights`) must be those. Raises WeightsMismatch before anything is
    ingested when they cannot be found."""
    import mlflow

    from atelier import registry
    from models.attributes.pyfunc import load_bundle
    from spark_jobs.colour import run_colour
    from spark_jobs.embed import run_embed
    from spark_jobs.ingest import run_ingest

    say = progress or log.info
    name = settings.mlflow.attributes_model
    registry.configure(settings)
    model_uri = model_uri or registry.champion_uri(name)
    bundle = load_bundle(model_uri)
    embed = bundle_embed_settings(bundle.metadata, settings.embed, weights)
    _check_colour_descriptor(bundle)
    key = hashlib.sha256(f"{layout}:{Path(source_dir).resolve()}".encode()).hexdigest()[:10]
    scratch = settings.model_copy(
        update={"workdir": settings.workdir / "scratch" / f"evaluate-{key}", "embed": embed}
    )
    say(f"evaluating {model_uri} on {source_dir} ({layout}); scratch workdir {scratch.workdir}")
    run_ingest(scratch, layout, Path(source_dir))
    run_embed(scratch)
    if bundle.config.colour_dim > 0:
        run_colour(scratch)
    frame, wide = catalogue_frame(scratch)
    embedded_with = sorted(_weights(scratch))
    trained_on = bundle.metadata.get("embedding_weights", [])
    if trained_on and embedded_with and embedded_with != sorted(trained_on):
        raise ValueError(
            f"image embeddings of the catalogue ({embedded_with}) differ from the model's "
            f"({trained_on}): evaluate with the same embed settings the model was trained with"
        )
    metrics, pairs, coverage, confidence = score_bundle(bundle, frame, wide)
    if not metrics:
        raise ValueError(f"no attribute of the model is labelled in {source_dir}: {coverage!r}")
    result = report(metrics, {})
    result["coverage"] = coverage
    result["confidence"] = confidence
    result["model_uri"] = model_uri
    result["catalogue"] = {"source": str(source_dir), "layout": layout, "products": len(frame)}
    result["embedding_weights"] = embedded_with
    write_report(report_dir, result, pairs, {a: s.classes for a, s in bundle.attributes.items()})
    mlflow.set_experiment(settings.mlflow.experiment)
    with mlflow.start_run(run_name="evaluate-attributes"):
        mlflow.set_tags(
            {
                "stage": "evaluate-attributes",
                "model_uri": model_uri,
                "catalogue": str(source_dir),
                "layout": layout,
            }
        )
        mlflow.log_metrics(flat_metrics(result))
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
    return result


def _weights(settings: Settings) -> list[str]:
    from atelier.lake import Lake

    lake = Lake(settings)
    if not lake.exists("image_embeddings"):
        return []
    return list(set(lake.read_pandas("image_embeddings", ["weights"])["weights"]))


def _check_colour_descriptor(bundle) -> None:
    """ValueError when the model read colour descriptors of another version than this code
    computes: the catalogue's would mean something else."""
    from atelier.colour import DESCRIPTOR_VERSION

    trained_on = bundle.metadata.get("colour_descriptor_version")
    if bundle.config.colour_dim > 0 and trained_on and trained_on != DESCRIPTOR_VERSION:
        raise ValueError(
            f"the model was trained on colour descriptors {trained_on!r}, this atelier computes "
            f"{DESCRIPTOR_VERSION!r}: evaluate with the atelier version it was trained with, or "
            "retrain it"
        )


class WeightsMismatch(ValueError):
    """The catalogue cannot be embedded with the weights the model was trained on."""


def bundle_embed_settings(
    metadata: dict, embed: EmbedSettings, override: str | None = None
) -> EmbedSettings:
    """`embed` set to reproduce the model's image embeddings on another catalogue.

    metadata: the bundle's; `embedding_weights` holds the ids its training embeddings carried
    (`file:<sha12>`, `imagenet`, `random:<seed>`), `embedding_weights_source` the weights
    setting then. `random:<seed>` -> those random weights; `imagenet` -> Keras' cached file;
    `file:<sha12>` -> the recorded file, else `embed.weights`, whichever has that hash.
    `override` (a file the user names) is used instead but must have the model's id. Raises
    WeightsMismatch naming the id needed and how to provide it.
    """
    from spark_jobs.embed import WeightsUnavailable, resolve_weights

    ids = sorted(set(metadata.get("embedding_weights") or []))
    if len(ids) > 1:
        raise WeightsMismatch(
            f"the model was trained on image embeddings of several weights {ids}: "
            "its image features cannot be reproduced on another catalogue"
        )
    need = ids[0] if ids else None
    seed = int(need.split(":", 1)[1]) if need and need.startswith("random:") else None
    if override is not None:
        candidates = [override]
    elif need is None:  # a bundle without the record: the current settings, as before
        return embed
    elif seed is not None:
        candidates = ["random"]
    elif need == "imagenet":
        candidates = ["imagenet"]
    else:
        source = metadata.get("embedding_weights_source")
        candidates = [c for c in dict.fromkeys([source, embed.weights]) if c]
        candidates = [c for c in candidates if c not in ("imagenet", "random")]
    problems = []
    for candidate in candidates:
        update = {"weights": candidate, "allow_random_weights": False}
        if seed is not None:
            update["random_seed"] = seed
        trial = embed.model_copy(update=update)
        try:
            got = resolve_weights(trial).id
        except WeightsUnavailable as e:
            problems.append(str(e).split("\n")[0])
            continue
        if need is None or got == need:
            return trial
        problems.append(f"{candidate} is {got}")
    if need is None:
        raise WeightsMismatch(f"--weights: {problems[0]}")
    if seed is not None:
        how = "leave out --weights: the seeded random weights are rebuilt from the seed"
    elif need == "imagenet":
        how = "put Keras' ImageNet file in its cache (~/.keras/models/) and leave out --weights"
    else:
        how = "pass that weights file with --weights PATH (or ATELIER_EMBED__WEIGHTS=PATH)"
    recorded = metadata.get("embedding_weights_source")
    raise WeightsMismatch(
        f"the model was trained on image embeddings from weights {need}"
        + (f" (recorded source: {recorded})" if recorded else "")
        + f", which are not available here: {'; '.join(problems) or 'no weights file known'}."
        f" To evaluate it, {how}; nothing was embedded."
    )
