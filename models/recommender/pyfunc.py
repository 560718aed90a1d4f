"""The recommender bundle as an MLflow pyfunc: what the registry holds as `atelier-recommender`.

The pyfunc takes the raw content columns of products as Feast returns them for the
`recommender_v1` product refs, plus `product_id` (and `first_seen`, `attribute_vector` when
available), and returns DataFrame(product_id, vector): the item vector of every product, a
never-bought one included (from its content; zeros for `cf`). The frame → blocks conversion is
`features.content_blocks`, the one training used. `as_of` (when recency is measured) comes
from `params={"as_of": ...}` when the caller's pyfunc passes params through, else from an
`as_of`/`event_timestamp` column, else now. Logged without a signature (list columns), with
the `training` and `atelier` packages as code paths, like the attribute pyfunc. Spark jobs and
evaluation that want arrays use `load_bundle`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlflow.pyfunc
import pandas as pd

from models.bundle import BundlePyfunc, log_model
from models.bundle import load_bundle as _load_bundle
from models.recommender.bundle import RecommenderBundle

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.models.model import ModelInfo


class RecommenderPyfunc(BundlePyfunc, mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of a `RecommenderBundle` stored as the artifact `bundle`."""

    bundle_class = RecommenderBundle

    def predict(self, context, model_input: pd.DataFrame, params=None):
        """model_input: products' content columns → DataFrame(product_id, vector)."""
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return self.bundle.predict(model_input, as_of=(params or {}).get("as_of"))


def log_recommender_model(
    bundle: RecommenderBundle, name: str = "model", registered_model_name: str | None = None
) -> ModelInfo:
    """Log `bundle` as a pyfunc model `name` in the active MLflow run; returns its ModelInfo.

    With `registered_model_name` a new version of that registered model is created too (the
    pipeline registers through `atelier.registry.register` instead, for the metric tags).
    """
    return log_model(bundle, RecommenderPyfunc(), name, registered_model_name)


def load_bundle(model_uri: str) -> RecommenderBundle:
    """The `RecommenderBundle` inside a logged or registered recommender pyfunc (any URI)."""
    return _load_bundle(model_uri, RecommenderBundle)
