"""The attribute bundle as an MLflow pyfunc: what the registry holds as `atelier-attributes`.

The pyfunc takes the bundle's input frame (one row per product, see `AttributeBundle.encode`) and
returns `AttributeBundle.predict`'s long frame. It is logged without a signature: the input has
list columns (shots, token ids) and alternative column forms that an MLflow schema cannot state,
and schema enforcement would reject or coerce them. The `training` and `atelier` packages travel
as code paths, so the model loads from the registry in a process that has neither installed.
Spark jobs and evaluation that want arrays rather than the long frame use `load_bundle`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlflow.pyfunc
import pandas as pd

from models.attributes.bundle import AttributeBundle
from models.bundle import BundlePyfunc, log_model
from models.bundle import load_bundle as _load_bundle

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.models.model import ModelInfo


class AttributePyfunc(BundlePyfunc, mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of an `AttributeBundle` stored as the artifact `bundle`."""

    bundle_class = AttributeBundle

    def predict(self, context, model_input: pd.DataFrame, params=None):
        """model_input: a pandas DataFrame of products -> `AttributeBundle.predict` frame."""
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return self.bundle.predict(model_input)


def log_attribute_model(
    bundle: AttributeBundle, name: str = "model", registered_model_name: str | None = None
) -> ModelInfo:
    """Log `bundle` as a pyfunc model `name` in the active MLflow run; returns its ModelInfo.

    With `registered_model_name` a new version of that registered model is created too.
    """
    return log_model(bundle, AttributePyfunc(), name, registered_model_name)


def load_bundle(model_uri: str) -> AttributeBundle:
    """The `AttributeBundle` inside a logged or registered attribute pyfunc (any model URI)."""
    return _load_bundle(model_uri, AttributeBundle)
