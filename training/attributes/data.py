"""Training data of the attribute model: features from Feast, labels from the lake.

`load_training_set` asks Feast's offline store for the attribute feature service (one entity
row per product shot, as of the training time) and joins the known labels. `prepare_labels` then
applies the paper's label hygiene on the training split only — hiding labels of complete
catalogues, learning applicability per type, grouping rare values — and encodes the labels as
class ids (-1 = missing). Both are deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from models.attributes.model import (
    BRAND_IDX,
    COLOUR,
    DIVISION_IDX,
    IMAGE,
    IMAGE_MASK,
    TOKEN_IDS,
    TYPE_IDX,
)
from training.attributes.schedule import MISSING, applicability, group_rare_values

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from atelier.settings import AttributeSettings, Settings

log = logging.getLogger("atelier.attributes")

IMAGE_DIM = 512
TFIDF_REF = "text_features:tfidf"


@dataclass
class TrainingSet:
    """Model inputs and raw labels of the labelled products (row i = product_ids[i]).

    `labels[a]` holds each product's value for attribute `a` as a string, None when unlabelled.
    `is_test` is the held-out split, fixed per product by a seeded hash of its id;
    `is_validation` the slice of the other products kept out of training to choose checkpoints
    (another seeded hash), never the test products.
    """

    product_ids: np.ndarray
    inputs: dict[str, np.ndarray]
    types: np.ndarray
    labels: dict[str, np.ndarray]
    is_test: np.ndarray
    tfidf: np.ndarray | None
    vocabulary: dict[str, int]
    vocab_version: str
    categories: dict[str, dict[str, int]]
    sequence_length: int
    max_shots: int
    embedding_weights: list[str] = field(default_factory=list)
    is_validation: np.ndarray | None = None
    # The colour descriptor version of the `colour` input (None without one).
    colour_version: str | None = None

    def __post_init__(self):
        if self.is_validation is None:
            self.is_validation = np.zeros(len(self.product_ids), bool)

    def __len__(self) -> int:
        return int(self.product_ids.size)

    def rows(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Model inputs of the rows selected by `mask` (bool or index array)."""
        return {k: v[mask] for k, v in self.inputs.items()}


@dataclass
class LabelPlan:
    """Encoded labels and what label hygiene did (see `prepare_labels`)."""

    classes: dict[str, list[str]]
    grouping: dict[str, dict[str, str | None]]
    applies_to: dict[str, list[str]]
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    report: dict
    # Labels of the validation products (never trained on): checkpoint and early-stop choices.
    validation: dict[str, np.ndarray] = field(default_factory=dict)


def held_out(product_ids, fraction: float, seed: int, salt: str = "") -> np.ndarray:
    """True for held-out products: a seeded hash of the id, so a product keeps its side of the
    split when the catalogue grows (and across runs). `salt` draws an independent split (the
    validation slice) from the same ids."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction!r}")
    out = np.empty(len(product_ids), dtype=bool)
    for i, pid in enumerate(product_ids):
        digest = hashlib.sha256(f"{salt}{seed}:{pid}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2**64 < fraction
    return out


def stack_shots(embeddings, max_shots: int, dim: int = IMAGE_DIM) -> tuple[np.ndarray, np.ndarray]:
    """Per-product lists of shot vectors → (n, shots, dim) float32 and a (n, shots) mask.

    shots = the longest list, capped at `max_shots`, at least 1; absent shots are zeros, mask 0.
    """
    n = len(embeddings)
    shots = max([1, *(min(len(e or ()), max_shots) for e in embeddings)])
    image = np.zeros((n, shots, dim), np.float32)
    mask = np.zeros((n, shots), np.float32)
    for i, vectors in enumerate(embeddings):
        for j, vector in enumerate(list(vectors or ())[:shots]):
            if vector is None:
                continue
            v = np.asarray(vector, np.float32)
            if v.shape != (dim,):
                raise ValueError(f"embedding {j} of row {i} must have {dim} values, got {v.shape}")
            image[i, j] = v
            mask[i, j] = 1.0
    return image, mask


def _int_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    return frame[name].fillna(0).astype(np.int64).to_numpy().astype(np.int32)


def _token_matrix(values, length: int) -> np.ndarray:
    out = np.zeros((len(values), length), np.int32)
    for i, ids in enumerate(values):
        if ids is None:
            continue
        ids = np.asarray(ids, np.int32)[:length]
        out[i, : ids.size] = ids
    return out


def load_training_set(
    settings: Settings, now: datetime | None = None, store=None, with_tfidf: bool = True
) -> TrainingSet:
    """Labelled products with the feature service's features (`attributes.feature_service`,
    default `attributes_v2`: v1 + colour) as of `now` (default: the current
    time) from Feast's offline store, plus TF-IDF for the baseline and the lake's vocabulary and
    category index (which the model bundle keeps)."""
    import pandas as pd

    from atelier.feast_store import feature_store, historical_features
    from atelier.lake import Lake

    cfg = settings.attributes
    now = now or datetime.now(UTC)
    lake = Lake(settings)
    labels, products = _labelled_products(lake)
    ids = products["product_id"].to_numpy(dtype=object)
    entity = _shot_entities(lake, ids, cfg.max_shots, now)
    store = store or feature_store(settings)
    log.info(
        "historical features %s for %d products (%d shots)",
        cfg.feature_service,
        len(ids),
        len(entity),
    )
    frame = historical_features(settings, entity, cfg.feature_service, store=store)
    frame = frame.sort_values(["product_id", "shot"])
    per_product = frame.groupby("product_id", sort=True)
    embeddings = per_product["embedding"].agg(list).reindex(ids)
    first = per_product.first().reindex(ids)
    image, mask = stack_shots(list(embeddings), cfg.max_shots)
    colour = _colour_shots(frame, per_product, ids, cfg.max_shots, image.shape[1])

    vocab_version, vocabulary = _vocabulary(lake)
    sequence_length = settings.text.sequence_length
    inputs = _model_inputs(image, mask, colour, first, sequence_length)
    tfidf = None
    if with_tfidf:
        at = entity["event_timestamp"].iloc[0]
        tfidf = _tfidf(settings, store, ids, at)

    label_arrays = _label_arrays(labels, ids)
    weights = sorted({w for w in frame.get("weights", pd.Series(dtype=object)).dropna()})
    is_test = held_out(ids, cfg.test_fraction, settings.seed)
    return TrainingSet(
        product_ids=ids,
        inputs=inputs,
        types=products["type"].astype(str).to_numpy(dtype=object),
        labels=label_arrays,
        is_test=is_test,
        is_validation=~is_test & held_out(ids, cfg.validation_fraction, settings.seed, "val:"),
        colour_version=_colour_version(lake) if COLOUR in inputs else None,
        tfidf=tfidf,
        vocabulary=vocabulary,
        vocab_version=vocab_version,
        categories=_categories(lake),
        sequence_length=sequence_length,
        max_shots=cfg.max_shots,
        embedding_weights=weights or _embedding_weights(lake),
    )


def _labelled_products(lake) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The lake's labels (long: product_id, attribute, value) and the labelled products
    (product_id, type), sorted by id."""
    labels = lake.read_pandas("product_labels")
    if labels.empty:
        raise ValueError("product_labels is empty: there is nothing to train on")
    products = lake.read_pandas("products", ["product_id", "type"])
    products = products[products["product_id"].isin(set(labels["product_id"]))]
    return labels, products.sort_values("product_id").reset_index(drop=True)


def _shot_entities(lake, ids, max_shots: int, now: datetime) -> pd.DataFrame:
    """Feast entity rows (product_id, shot, event_timestamp = `now`) of the products' shots
    below `max_shots`."""
    import pandas as pd

    images = lake.read_pandas("product_images", ["product_id", "shot"])
    images = images[images["product_id"].isin(set(ids)) & (images["shot"] < max_shots)]
    # One entity row per existing shot; a product without images still gets shot 0 (a null
    # embedding) so its text and metadata are there.
    shots = pd.concat(
        [images, pd.DataFrame({"product_id": ids, "shot": 0})], ignore_index=True
    ).drop_duplicates()
    entity = shots.assign(event_timestamp=pd.Timestamp(now).tz_convert("UTC"))
    entity["shot"] = entity["shot"].astype("int32")
    return entity


def _model_inputs(
    image: np.ndarray, mask: np.ndarray, colour, first: pd.DataFrame, sequence_length: int
) -> dict[str, np.ndarray]:
    """The network's inputs: the stacked shots (and colour, when there is one) plus the text
    and metadata of each product's `first` feature row."""
    inputs = {
        IMAGE: image,
        IMAGE_MASK: mask,
        TOKEN_IDS: _token_matrix(list(first["token_ids"]), sequence_length),
        TYPE_IDX: _int_column(first, "type_idx"),
        BRAND_IDX: _int_column(first, "brand_idx"),
        DIVISION_IDX: _int_column(first, "division_idx"),
    }
    if colour is not None:
        inputs[COLOUR] = colour
    return inputs


def _label_arrays(labels: pd.DataFrame, ids) -> dict[str, np.ndarray]:
    """attribute → each product's value as a string (None when unlabelled), rows as `ids`."""
    import pandas as pd

    wide = labels.pivot(index="product_id", columns="attribute", values="value").reindex(ids)
    return {
        a: np.array([None if pd.isna(v) else str(v) for v in wide[a]], dtype=object)
        for a in sorted(wide.columns)
    }


def _colour_shots(frame, per_product, ids, max_shots: int, n_shots: int):
    """(n, shots, dim) colour descriptors aligned with the image shots (same (product_id,
    shot) rows, order and cap), or None when the service has none."""
    if COLOUR not in frame.columns:
        return None
    per_shot = per_product[COLOUR].agg(list).reindex(ids)
    dims = {len(v) for vs in per_shot.dropna() for v in vs if v is not None}
    if len(dims) > 1:
        raise ValueError(f"colour descriptors of several lengths {sorted(dims)}: rerun colour")
    if not dims:
        return None
    colour, _ = stack_shots(list(per_shot), max_shots, dim=dims.pop())
    return colour[:, :n_shots]


def _tfidf(settings: Settings, store, ids, at) -> np.ndarray:
    """(n, tfidf_dim) TF-IDF of the products as of `at` (zeros for a product without text),
    for the TF-IDF + LR baseline."""
    import pandas as pd

    from atelier.feast_store import historical_features

    tf_entity = pd.DataFrame({"product_id": ids, "event_timestamp": at})
    tf = historical_features(settings, tf_entity, [TFIDF_REF], store=store)
    tf = tf.drop_duplicates("product_id").set_index("product_id").reindex(ids)
    dim = settings.text.tfidf_dim
    if not len(ids):
        return np.zeros((0, dim), np.float32)
    return np.stack(
        [np.zeros(dim, np.float32) if v is None else np.asarray(v, np.float32) for v in tf["tfidf"]]
    )


def _vocabulary(lake) -> tuple[str, dict[str, int]]:
    """The vocabulary version the text features were encoded with (the most used one)."""
    texts = lake.read_pandas("text_features", ["vocab_version"])
    if texts.empty:
        raise ValueError("text_features is empty: run `atelier features` first")
    version = texts["vocab_version"].value_counts().idxmax()
    vocab = lake.read_pandas("vocabulary", ["version", "token", "token_id"])
    vocab = vocab[vocab["version"] == version]
    return str(version), {str(t): int(i) for t, i in zip(vocab["token"], vocab["token_id"])}


def _categories(lake) -> dict[str, dict[str, int]]:
    index = lake.read_pandas("category_index")
    return {
        column: {str(v): int(i) for v, i in zip(group["value"], group["idx"])}
        for column, group in index.groupby("column")
    }


def _colour_version(lake) -> str:
    versions = sorted(
        set(lake.read_pandas("colour_features", ["descriptor_version"])["descriptor_version"])
    )
    if len(versions) != 1:
        raise ValueError(f"colour_features mixes descriptor versions {versions}: rerun colour")
    return str(versions[0])


def _embedding_weights(lake) -> list[str]:
    if not lake.exists("image_embeddings"):
        return []
    return sorted(set(lake.read_pandas("image_embeddings", ["weights"])["weights"]))


def labels_complete(labels: Mapping[str, np.ndarray], threshold: float = 0.99) -> bool:
    """True when (almost) every product is labelled for every attribute (e.g. fashion-small)."""
    return all(np.mean([v is not None for v in values]) >= threshold for values in labels.values())


def hide_labels(
    labels: Mapping[str, np.ndarray], rows: np.ndarray, fraction: float, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Copies of `labels` with `fraction` of each attribute's labelled `rows` set to None.

    Each attribute hides its own random subset (seeded per attribute), as real catalogues miss
    different attributes for different products. Returns (labels, hidden count per attribute).
    """
    out, hidden = {}, {}
    for k, (attribute, values) in enumerate(sorted(labels.items())):
        values = values.copy()
        candidates = np.flatnonzero(rows & np.array([v is not None for v in values], bool))
        rng = np.random.default_rng([seed, k])
        n_hide = int(round(fraction * candidates.size))
        values[rng.choice(candidates, size=n_hide, replace=False)] = None
        out[attribute], hidden[attribute] = values, n_hide
    return out, hidden


def prepare_labels(ts: TrainingSet, cfg: AttributeSettings, seed: int) -> LabelPlan:
    """Encode labels for training and testing after the paper's label hygiene.

    On the training split: labels of a complete catalogue are partly hidden (`hide_labels`
    setting); applicability per product type is learned; values with fewer than
    `min_value_count` samples are grouped into "other" or dropped. Test labels are never hidden;
    they go through the same grouping, and a test value the model cannot predict (unseen in
    training, or dropped) is left out of scoring and counted. Attributes left with fewer than two
    classes get no head. The report records every decision.
    """
    train_rows = ~ts.is_test & ~ts.is_validation
    report: dict = {
        "products": len(ts),
        "train_products": int(train_rows.sum()),
        "validation_products": int(ts.is_validation.sum()),
        "test_products": int(ts.is_test.sum()),
        "attributes": {},
        "skipped": {},
    }
    labels, hidden, hiding = _training_labels(ts, cfg, seed, train_rows)
    report.update(hiding)

    labelled_train = {a: train_rows & _labelled(labels[a]) for a in labels}
    applies = applicability(
        ts.types[train_rows],
        {a: m[train_rows] for a, m in labelled_train.items()},
        cfg.applicability_min_fraction,
    )
    plan = LabelPlan({}, {}, {}, {}, {}, report)
    for attribute in sorted(labels):
        types_ok = np.isin(ts.types, sorted(applies[attribute]))
        train_mask = labelled_train[attribute] & types_ok
        mapping, grouping = group_rare_values(
            labels[attribute][train_mask].tolist(), cfg.min_value_count
        )
        classes = sorted({v for v in mapping.values() if v is not None})
        info = {
            "train_labelled": int(train_mask.sum()),
            "hidden": int(hidden[attribute]),
            "applies_to": sorted(applies[attribute]),
            "grouped": grouping.grouped,
            "dropped": grouping.dropped,
        }
        if len(classes) < 2:
            report["skipped"][attribute] = (
                f"{len(classes)} class(es) with >= {cfg.min_value_count} training samples"
            )
            continue
        index = {c: i for i, c in enumerate(classes)}
        plan.train[attribute] = _encode(labels[attribute], train_mask, mapping, index)
        plan.test[attribute], plan.validation[attribute], counts = _held_out_labels(
            ts, attribute, types_ok, mapping, index
        )
        info.update(counts)
        info["train_samples"] = int((plan.train[attribute] >= 0).sum())
        info["test_samples"] = int((plan.test[attribute] >= 0).sum())
        plan.classes[attribute] = classes
        plan.grouping[attribute] = {str(k): v for k, v in mapping.items()}
        plan.applies_to[attribute] = sorted(applies[attribute])
        report["attributes"][attribute] = info
    if not plan.classes:
        raise ValueError(f"no attribute has two classes to learn: {report['skipped']!r}")
    return plan


def _labelled(values: np.ndarray) -> np.ndarray:
    """True where a product has a label."""
    return np.array([v is not None for v in values], bool)


def _training_labels(
    ts: TrainingSet, cfg: AttributeSettings, seed: int, train_rows: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, int], dict]:
    """The labels to train on: a complete catalogue's (or, with `hide_labels="always"`, any)
    training labels partly hidden. Returns (labels, hidden count per attribute, the report's
    `labels_complete` and `hidden_fraction`)."""
    complete = labels_complete(ts.labels)
    hide = cfg.hide_labels == "always" or (cfg.hide_labels == "auto" and complete)
    labels = dict(ts.labels)
    hidden = dict.fromkeys(labels, 0)
    if hide and cfg.hide_label_fraction > 0:
        labels, hidden = hide_labels(labels, train_rows, cfg.hide_label_fraction, seed)
    summary = {
        "labels_complete": complete,
        "hidden_fraction": cfg.hide_label_fraction if hide else 0.0,
    }
    return labels, hidden, summary


def _encode(values: np.ndarray, mask: np.ndarray, mapping: dict, index: dict) -> np.ndarray:
    """Class ids of `values` at `mask` after grouping (`mapping`); MISSING elsewhere and where
    the grouping drops the value."""
    out = np.full(values.size, MISSING, np.int64)
    for i in np.flatnonzero(mask):
        mapped = mapping.get(values[i])
        if mapped is not None:
            out[i] = index[mapped]
    return out


def _held_out_labels(
    ts: TrainingSet, attribute: str, types_ok: np.ndarray, mapping: dict, index: dict
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(test, validation) class ids of one attribute and their counts for the report. Both
    splits keep every label (never hidden) of the products whose type the attribute applies
    to; a test value the grouping cannot map is counted as unscorable."""
    values = ts.labels[attribute]
    test_mask = ts.is_test & types_ok & _labelled(values)
    test = _encode(values, test_mask, mapping, index)
    val_mask = ts.is_validation & types_ok & _labelled(values)
    validation = _encode(values, val_mask, mapping, index)
    counts = {
        "test_unscorable": int(test_mask.sum() - (test >= 0).sum()),
        "validation_samples": int((validation >= 0).sum()),
    }
    return test, validation, counts
