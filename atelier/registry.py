"""MLflow tracking set-up, model registration and champion/challenger promotion.

    register(settings, uri, name, "mean_weighted_f1", 0.61)   # new version, alias "challenger"
    promote(settings, name)                                    # alias "champion" moves if better
    atelier promote atelier-attributes [--force]               # the same from the CLI

Registry aliases only (`champion`, `challenger`); MLflow stages are deprecated and never used.
A version carries the metric it was registered with as tags (`metric_name`, `metric_value`,
`greater_is_better`), so promotion compares versions without reading their runs. Every
decision, refusals and no-ops included, is recorded three ways: a run in the experiment
`atelier-promotions`, tags on the challenger version, and a JSON line appended to
`<workdir>/reports/promotions.jsonl`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities.model_registry import ModelVersion

    from atelier.settings import Settings

log = logging.getLogger("atelier.registry")

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTIONS_EXPERIMENT = "atelier-promotions"
PROMOTIONS_FILE = "promotions.jsonl"

# Version tags written by `register` and read by `promote`.
TAG_METRIC = "metric_name"
TAG_VALUE = "metric_value"
TAG_GREATER = "greater_is_better"
# What the metric was measured on (e.g. the recommender's test period "2020-05-31..2020-06-30"):
# two versions tagged with different evaluations have incomparable metrics.
TAG_EVALUATION = "evaluation"


class RegistryError(ValueError):
    """The registry cannot answer: unknown model, or no version holds the asked alias."""


@dataclass
class Decision:
    """One promotion decision. Versions are registry version numbers; values the tagged metric."""

    model: str
    challenger: int | None
    champion_before: int | None
    champion_after: int | None
    promoted: bool
    forced: bool
    reason: str
    metric_name: str | None
    challenger_value: float | None
    champion_value: float | None
    greater_is_better: bool = True
    # "promoted", "refused" or "already_champion".
    outcome: str = ""
    run_id: str | None = None
    decided_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def configure(settings: Settings) -> None:
    """Point MLflow at the settings' tracking and registry stores and make the run experiment
    (`settings.mlflow.experiment`) and `atelier-promotions` exist; then select the former.

    Embedded default: sqlite under `<workdir>/mlflow`, artifacts in `settings.artifacts_dir`
    (one folder per experiment). With a tracking server its own artifact root is used. Safe to
    call any number of times, from several processes.
    """
    _connect(settings)
    mlflow.set_experiment(settings.mlflow.experiment)


def _connect(settings: Settings) -> MlflowClient:
    """Set the URIs and make both experiments exist, without touching the active experiment or
    run (register/promote may be called inside a caller's run)."""
    embedded = not settings.mlflow.tracking_uri
    if embedded:
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    for name in (settings.mlflow.experiment, PROMOTIONS_EXPERIMENT):
        _ensure_experiment(client, name, settings if embedded else None)
    return client


def _ensure_experiment(client: MlflowClient, name: str, settings: Settings | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = (settings.artifacts_dir / name).as_uri() if settings is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as e:  # another process created it in between
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        log.debug("experiment %s created concurrently: %s", name, e)
        return exp.experiment_id


def _client(settings: Settings | None) -> MlflowClient:
    return _connect(settings) if settings is not None else MlflowClient()


def register(
    settings: Settings,
    model_uri: str,
    name: str,
    metric_name: str,
    metric_value: float,
    greater_is_better: bool = True,
    tags: dict[str, Any] | None = None,
) -> int:
    """Register `model_uri` (e.g. a `ModelInfo.model_uri`) as a new version of `name`, tag it
    with the metric promotion compares, point the `challenger` alias at it; return the version."""
    value = float(metric_value)
    if not math.isfinite(value):
        raise ValueError(f"metric {metric_name}={metric_value!r} is not a finite number")
    if not metric_name:
        raise ValueError("metric_name must be a non-empty string")
    client = _client(settings)
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    all_tags.update(
        {
            TAG_METRIC: metric_name,
            TAG_VALUE: repr(value),
            TAG_GREATER: str(bool(greater_is_better)).lower(),
        }
    )
    mv = mlflow.register_model(model_uri, name, tags=all_tags)
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info(
        "registered %s version %s (%s=%s) as %s", name, mv.version, metric_name, value, CHALLENGER
    )
    return int(mv.version)


def _aliases(client: MlflowClient, name: str) -> dict[str, int]:
    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        known = sorted(m.name for m in client.search_registered_models())
        raise RegistryError(
            f"no registered model {name!r} (registered: {', '.join(known) or 'none'})"
        ) from None
    return {alias: int(version) for alias, version in model.aliases.items()}


def _alias_uri(name: str, alias: str, settings: Settings | None) -> str:
    client = _client(settings)
    if alias not in _aliases(client, name):
        raise RegistryError(f"model {name!r} has no {alias!r} version")
    return f"models:/{name}@{alias}"


def champion_uri(name: str, settings: Settings | None = None) -> str:
    """`models:/<name>@champion`; RegistryError when the model or its champion does not exist.
    With `settings` MLflow is configured first, else the current tracking set-up is used."""
    return _alias_uri(name, CHAMPION, settings)


def challenger_uri(name: str, settings: Settings | None = None) -> str:
    """`models:/<name>@challenger`, checked like `champion_uri`."""
    return _alias_uri(name, CHALLENGER, settings)


def _metric(mv: ModelVersion) -> tuple[str | None, float | None, bool]:
    tags = mv.tags or {}
    value = tags.get(TAG_VALUE)
    greater = tags.get(TAG_GREATER, "true").lower() != "false"
    return tags.get(TAG_METRIC), (float(value) if value is not None else None), greater


def promote(settings: Settings, name: str, force: bool = False) -> Decision:
    """Move `champion` to the `challenger` version when its metric beats the champion's, when
    there is no champion yet, or when forced; otherwise leave it. Equal values do not promote,
    nor do values measured on different evaluations (`TAG_EVALUATION` tags that differ).

    RegistryError when the model is unknown or has no challenger. The decision is returned and
    logged (promotions run, challenger version tags, reports/promotions.jsonl).
    """
    client = _client(settings)
    aliases = _aliases(client, name)
    if CHALLENGER not in aliases:
        raise RegistryError(
            f"model {name!r} has no {CHALLENGER!r} version to promote (register one first)"
        )
    challenger = client.get_model_version(name, str(aliases[CHALLENGER]))
    champion_before = aliases.get(CHAMPION)
    metric_name, new, greater = _metric(challenger)
    old = None
    old_metric = None
    new_eval = challenger.tags.get(TAG_EVALUATION)
    old_eval = None
    if champion_before is not None:
        champion = client.get_model_version(name, str(champion_before))
        old_metric, old, _ = _metric(champion)
        old_eval = champion.tags.get(TAG_EVALUATION)

    cv = int(challenger.version)
    promoted, reason = _decide(
        cv,
        champion_before,
        force,
        greater,
        (metric_name, new, new_eval),
        (old_metric, old, old_eval),
    )
    if champion_before == cv:
        outcome = "already_champion"
    else:
        outcome = "promoted" if promoted else "refused"
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, str(cv))
    decision = Decision(
        model=name,
        challenger=cv,
        champion_before=champion_before,
        champion_after=cv if promoted else champion_before,
        promoted=promoted,
        forced=bool(force),
        reason=reason,
        metric_name=metric_name,
        challenger_value=new,
        champion_value=old,
        greater_is_better=greater,
        outcome=outcome,
        decided_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    _record(settings, client, decision)
    log.info("promotion of %s: %s", name, reason)
    return decision


def _decide(
    cv: int, champion_before, force: bool, greater: bool, challenger: tuple, champion: tuple
):
    """(promote?, why) for challenger version `cv`; `challenger` and `champion` are
    (metric name, value, evaluation tag), `greater` whether higher is better. Pure: the rules
    of `promote`."""
    metric_name, new, new_eval = challenger
    old_metric, old, old_eval = champion
    if champion_before == cv:
        return False, f"version {cv} is already the champion"
    if champion_before is None:
        return True, f"no champion yet: version {cv} ({_fmt(metric_name, new)}) becomes champion"
    if force:
        return True, (
            f"forced: version {cv} ({_fmt(metric_name, new)}) replaces champion version "
            f"{champion_before} ({_fmt(old_metric, old)}) without comparing"
        )
    if new is None or old is None or metric_name != old_metric:
        return False, (
            f"cannot compare challenger version {cv} ({_fmt(metric_name, new)}) with champion "
            f"version {champion_before} ({_fmt(old_metric, old)}); use --force to promote anyway"
        )
    if new_eval and old_eval and new_eval != old_eval:
        return False, (
            f"cannot compare challenger version {cv} ({_fmt(metric_name, new)} on {new_eval}) "
            f"with champion version {champion_before} ({_fmt(old_metric, old)} on {old_eval}): "
            "the metrics come from different evaluations; compare both on one period (atelier "
            "evaluate recommender) and use --force to promote"
        )
    better = new > old if greater else new < old
    word = "higher" if greater else "lower"
    if better:
        return True, (
            f"challenger version {cv} beats champion version {champion_before}: "
            f"{metric_name} {new:.6g} vs {old:.6g} ({word} is better)"
        )
    return False, (
        f"challenger version {cv} does not beat champion version {champion_before}: "
        f"{metric_name} {new:.6g} vs {old:.6g} ({word} is better); champion kept"
    )


def _record(settings: Settings, client, decision: Decision) -> None:
    """The decision as an MLflow run, tags on the challenger version and a JSON line in
    reports/promotions.jsonl."""
    decision.run_id = _log_run(client, decision)
    for key, value in (
        ("promotion_decision", decision.outcome),
        ("promotion_reason", decision.reason),
        ("promotion_forced", str(decision.forced).lower()),
        ("promotion_run_id", decision.run_id),
        ("promotion_at", decision.decided_at),
    ):
        client.set_model_version_tag(decision.model, str(decision.challenger), key, value)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    with (settings.reports_dir / PROMOTIONS_FILE).open("a", encoding="utf-8") as f:
        f.write(decision.to_json() + "\n")


def _fmt(metric: str | None, value: float | None) -> str:
    if value is None:
        return f"{metric or 'metric'} unknown"
    return f"{metric}={value:.6g}"


def _log_run(client: MlflowClient, d: Decision) -> str:
    """One run per decision in `atelier-promotions`; through the client, so an active run of
    the caller (a training run) is neither ended nor written to."""
    exp = client.get_experiment_by_name(PROMOTIONS_EXPERIMENT)
    run = client.create_run(
        exp.experiment_id,
        run_name=f"{d.model}-v{d.challenger}-{d.outcome}",
        tags={
            "model": d.model,
            "outcome": d.outcome,
            "promoted": str(d.promoted).lower(),
            "forced": str(d.forced).lower(),
            "reason": d.reason,
            "mlflow.note.content": d.reason,
        },
    )
    params = {
        "model": d.model,
        "challenger_version": d.challenger,
        "champion_before": d.champion_before,
        "champion_after": d.champion_after,
        "metric_name": d.metric_name,
        "greater_is_better": d.greater_is_better,
        "promoted": d.promoted,
        "forced": d.forced,
        "outcome": d.outcome,
    }
    ts = int(datetime.now(UTC).timestamp() * 1000)
    metrics = [
        Metric(key, value, ts, 0)
        for key, value in (
            ("challenger_value", d.challenger_value),
            ("champion_value", d.champion_value),
            ("promoted", float(d.promoted)),
        )
        if value is not None
    ]
    client.log_batch(
        run.info.run_id,
        metrics=metrics,
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def latest_decision(settings: Settings, name: str) -> dict[str, Any] | None:
    """The last decision recorded for `name` in reports/promotions.jsonl, or None."""
    path = settings.reports_dir / PROMOTIONS_FILE
    if not path.is_file():
        return None
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("model") == name:
                last = row
    return last


def format_decision(d: Decision) -> str:
    """Two lines for the terminal: the outcome with the alias move, then the reason."""
    if d.outcome == "already_champion":
        head = f"{d.model}: version {d.challenger} is already champion (nothing to do)"
    elif d.promoted:
        before = f"version {d.champion_before}" if d.champion_before is not None else "none"
        head = f"{d.model}: PROMOTED version {d.challenger} to champion (was {before})" + (
            " [forced]" if d.forced else ""
        )
    else:
        head = (
            f"{d.model}: REFUSED version {d.challenger}; champion stays version {d.champion_before}"
        )
    return f"{head}\n  {d.reason}"
