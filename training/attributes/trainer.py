"""The paper's training loop: round robin over attributes, one plain-SGD step per visit.

Pure in-memory work on a `TrainingSet` and `LabelPlan` (no Feast, no MLflow): the pipeline in
`training.attributes.pipeline` feeds it and logs what it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from models.attributes.model import AttributeModelConfig, build_attribute_model
from training.attributes.data import LabelPlan, TrainingSet
from training.attributes.evaluation import attribute_metrics
from training.attributes.schedule import (
    MISSING,
    MiniBatchSampler,
    loss_weights_from_frequencies,
    round_robin,
)

log = logging.getLogger("atelier.attributes")

# Learning curves score at most this many training products per attribute: enough for a
# stable weighted F1, cheap enough to measure often.
CURVE_TRAIN_SAMPLE = 2000


@dataclass
class TrainResult:
    """A trained model and how training went."""

    model: object
    config: AttributeModelConfig
    steps: int
    seconds: float
    curves: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    visits: dict[str, int] = field(default_factory=dict)
    final_loss: dict[str, float] = field(default_factory=dict)
    # Checkpoint selection on the validation split (never the test): the step whose weights
    # were kept, its mean validation weighted F1, and the step each head stopped training at.
    best_step: int | None = None
    best_validation_f1: float | None = None
    stopped: dict[str, int] = field(default_factory=dict)
    validation_f1: dict[str, float] = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")


def model_config(
    ts: TrainingSet, plan: LabelPlan, sizes: dict, **switches: bool
) -> AttributeModelConfig:
    """The network's config for this data: index sizes from the bundle's lookups, one head per
    planned attribute, layer sizes from settings, ablation switches (use_image/text/metadata)."""

    def index_size(column: str) -> int:
        return max([0, *ts.categories.get(column, {}).values()]) + 1

    return AttributeModelConfig(
        vocab_size=max([1, *ts.vocabulary.values()]) + 1,
        sequence_length=ts.sequence_length,
        n_types=index_size("type"),
        n_brands=index_size("brand"),
        n_divisions=index_size("division"),
        heads={a: len(c) for a, c in plan.classes.items()},
        image_dim=int(ts.inputs["image"].shape[-1]),
        colour_dim=int(ts.inputs["colour"].shape[-1]) if "colour" in ts.inputs else 0,
        **sizes,
        **switches,
    )


def predict_classes(model, inputs: dict[str, np.ndarray], batch_size: int = 1024) -> dict:
    """Arg-max class id per attribute head: dict attribute → (n,) int64."""
    from models.attributes.model import predict_proba

    return {a: p.argmax(axis=1) for a, p in predict_proba(model, inputs, batch_size).items()}


def evaluate(model, ts: TrainingSet, plan: LabelPlan) -> tuple[dict[str, dict], dict]:
    """Table 2 metrics on the test split: ({attribute: metrics}, {attribute: (y_true, y_pred)})."""
    rows = np.flatnonzero(np.any([plan.test[a] >= 0 for a in plan.classes], axis=0))
    predicted = predict_classes(model, ts.rows(rows))
    metrics, pairs = {}, {}
    for attribute, classes in plan.classes.items():
        y_true = plan.test[attribute][rows]
        keep = y_true != MISSING
        if not keep.any():
            continue
        y_pred = predicted[attribute][keep]
        metrics[attribute] = attribute_metrics(
            y_true[keep], y_pred, len(classes), train_labels=plan.train[attribute]
        )
        pairs[attribute] = (y_true[keep], y_pred)
    return metrics, pairs


def _weighted_f1(model, ts: TrainingSet, labels: dict[str, np.ndarray], rows_by_attr) -> dict:
    from sklearn.metrics import f1_score

    rows = np.unique(np.concatenate(list(rows_by_attr.values())))
    if rows.size == 0:
        return {}
    predicted = predict_classes(model, ts.rows(rows))
    position = {r: i for i, r in enumerate(rows)}
    out = {}
    for attribute, attr_rows in rows_by_attr.items():
        if attr_rows.size == 0:
            continue
        idx = [position[r] for r in attr_rows]
        out[attribute] = float(
            f1_score(
                labels[attribute][attr_rows],
                predicted[attribute][idx],
                average="weighted",
                zero_division=0,
            )
        )
    return out


def train_model(
    ts: TrainingSet,
    plan: LabelPlan,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    sizes: dict,
    loss_weights: bool = False,
    eval_every: int | None = None,
    patience: int = 0,
    weight_decay: float = 0.0,
    curves: bool = True,
    progress: Callable[[str], None] | None = None,
    **switches: bool,
) -> TrainResult:
    """Train a fresh network for at most `steps` round-robin steps; seeded, so reruns are
    identical.

    Every `eval_every` steps (and at the end) each head's weighted F1 on the validation split is
    measured (`plan.validation`; the test split is never looked at): the weights with the best
    mean validation F1 are kept, and a head that has not improved for `patience` measurements
    stops being trained (0: never; training ends when every head has stopped). With `curves`
    the train F1 is recorded beside the validation F1 for the learning curves.
    `eval_every=None` trains all `steps` and keeps the last weights.
    """
    from training.attributes.train_step import make_train_step
    from training.seeding import seed_everything

    seed_everything(seed)
    config = model_config(ts, plan, sizes, **switches)
    model = build_attribute_model(config)
    step = make_train_step(model, learning_rate, weight_decay)
    samplers = {
        a: MiniBatchSampler(plan.train[a], batch_size, seed=seed + i)
        for i, a in enumerate(plan.classes)
    }
    class_weights = _class_weights(plan) if loss_weights else None
    visits = _Visits(ts, plan, step, samplers, class_weights)
    schedule = round_robin({a: s.size for a, s in samplers.items()}, steps, seed)
    result = TrainResult(model=model, config=config, steps=steps, seconds=0.0)
    say = progress or log.info
    selection = _Selection(ts, plan, result, seed, patience, curves, say)
    t0 = time.perf_counter()
    done = _run_schedule(schedule, visits, selection, steps, eval_every, say, t0)
    # Training speed excludes the time spent measuring curves.
    result.seconds = time.perf_counter() - t0 - selection.seconds
    result.steps = done
    selection.restore_best()
    result.visits = visits.counts
    result.final_loss = {a: float(np.mean(v[-20:])) for a, v in visits.losses.items() if v}
    return result


def _class_weights(plan: LabelPlan) -> dict[str, np.ndarray]:
    """Per attribute, the loss weight of each class from its training frequencies."""
    return {
        a: loss_weights_from_frequencies(plan.train[a], len(classes)).astype(np.float32)
        for a, classes in plan.classes.items()
    }


class _Visits:
    """The training steps of the round robin: each visit to an attribute draws its next
    mini-batch and takes one step on it; the losses and visit counts are kept per attribute."""

    def __init__(self, ts, plan, step, samplers: dict, class_weights: dict | None):
        self.ts, self.plan, self.step = ts, plan, step
        self.samplers, self.class_weights = samplers, class_weights
        self.counts = dict.fromkeys(plan.classes, 0)
        self.losses: dict[str, list[float]] = {a: [] for a in plan.classes}

    def visit(self, attribute: str) -> None:
        rows = self.samplers[attribute].next()
        labels = self.plan.train[attribute][rows]
        weights = None
        if self.class_weights is not None:
            weights = self.class_weights[attribute][labels]
        self.losses[attribute].append(self.step(attribute, self.ts.rows(rows), labels, weights))
        self.counts[attribute] += 1

    def progress(self, i: int, steps: int, elapsed: float) -> str:
        """The progress line at step i: share done, speed and each head's recent loss."""
        recent = {a: np.mean(v[-20:]) for a, v in self.losses.items() if v}
        return (
            f"step {i}/{steps} ({100 * i / steps:.0f}%), {i / max(elapsed, 1e-9):.1f} steps/s, "
            + "loss "
            + ", ".join(f"{a} {v:.3f}" for a, v in recent.items())
        )


def _run_schedule(
    schedule, visits: _Visits, selection: _Selection, steps: int, eval_every, say, t0: float
) -> int:
    """Visit the heads in `schedule` order (an early-stopped head's turn is skipped), measure
    on the validation split every `eval_every` steps and once more at the end, report progress
    about ten times. Returns the number of steps taken."""
    selecting = bool(eval_every) and selection.can_select
    report_every = max(1, steps // 10)
    i = measured = 0
    for attribute in schedule:
        if attribute not in selection.active:
            continue  # an early-stopped head's turn is skipped, not counted as a step
        i += 1
        visits.visit(attribute)
        if selecting and i % eval_every == 0:
            selection.measure(i)
            measured = i
        if i % report_every == 0:
            say(visits.progress(i, steps, time.perf_counter() - t0 - selection.seconds))
        if not selection.active:
            say(f"step {i}: every head has stopped")
            break
    if selecting and measured != i:
        selection.measure(i)
    return i


class _Selection:
    """Validation measurements during training: learning curves, the best checkpoint (mean
    validation weighted F1) and per-head early stopping after `patience` measurements."""

    def __init__(self, ts, plan, result: TrainResult, seed: int, patience: int, curves: bool, say):
        self.ts, self.plan, self.result = ts, plan, result
        self.patience, self.curves, self.say = patience, curves, say
        attributes = list(plan.classes)
        rng = np.random.default_rng(seed)
        self.curve_train = {}
        for a in attributes:
            labelled = np.flatnonzero(plan.train[a] >= 0)
            if labelled.size > CURVE_TRAIN_SAMPLE:
                labelled = np.sort(rng.choice(labelled, CURVE_TRAIN_SAMPLE, replace=False))
            self.curve_train[a] = labelled
        self.validation = plan.validation or {}
        self.curve_val = {
            a: np.flatnonzero(self.validation[a] >= 0) for a in attributes if a in self.validation
        }
        self.can_select = any(r.size for r in self.curve_val.values())
        self.best_head = dict.fromkeys(attributes, -1.0)
        self.since_best = dict.fromkeys(attributes, 0)
        self.active = set(attributes)
        self.best_weights = None
        self.seconds = 0.0  # spent measuring, left out of the training speed

    def measure(self, i: int) -> None:
        """Validation F1 at step i: curves, the best checkpoint, per-head early stopping."""
        e0 = time.perf_counter()
        model, result = self.result.model, self.result
        val_f1 = _weighted_f1(model, self.ts, self.validation, self.curve_val)
        train_f1 = (
            _weighted_f1(model, self.ts, self.plan.train, self.curve_train) if self.curves else {}
        )
        for a in self.plan.classes:
            if a in val_f1:
                result.curves.setdefault(a, []).append((i, train_f1.get(a, np.nan), val_f1[a]))
        mean_f1 = float(np.mean(list(val_f1.values())))
        if result.best_validation_f1 is None or mean_f1 > result.best_validation_f1:
            result.best_validation_f1, result.best_step = mean_f1, i
            result.validation_f1 = dict(val_f1)
            self.best_weights = model.get_weights()
        for a in sorted(self.active):
            if a not in val_f1:
                continue
            if val_f1[a] > self.best_head[a] + 1e-4:
                self.best_head[a], self.since_best[a] = val_f1[a], 0
            else:
                self.since_best[a] += 1
            if self.patience and self.since_best[a] >= self.patience:
                self.active.discard(a)
                result.stopped[a] = i
                self.say(f"step {i}: {a} stops (best validation F1 {self.best_head[a]:.3f})")
        self.seconds += time.perf_counter() - e0

    def restore_best(self) -> None:
        if self.best_weights is not None:
            self.result.model.set_weights(self.best_weights)
            self.say(
                f"kept the weights of step {self.result.best_step} (mean validation weighted F1 "
                f"{self.result.best_validation_f1:.3f})"
            )
