"""The attribute bundle as an MLflow pyfunc: what the registry holds as `atelier-attributes`.

The pyfunc takes the bundle's input frame (one row per product, see `AttributeBundle.encode`) and
returns `AttributeBundle.predict`'s long frame. It is logged without a signature: the input has
list columns (shots, token ids) and alternative column forms that an MLflow schema cannot state,
and schema enforcement would reject or coerce them. The `training` and `atelier` packages travel
as code paths, so the model loads from the registry in a process that has neither installed.
Spark jobs and evaluation that want arrays rather than the long frame use `load_bundle`.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import mlflow.pyfunc
import pandas as pd

from models.attributes.bundle import AttributeBundle

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

BUNDLE_ARTIFACT = "bundle"
_REPO = Path(__file__).resolve().parents[2]
_CODE_PACKAGES = ("models", "atelier")
_REQUIREMENTS = ("mlflow", "tensorflow", "keras", "pandas", "numpy")


class AttributePyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of an `AttributeBundle` stored as the artifact `bundle`."""

    def load_context(self, context):
        self.bundle = AttributeBundle.load(context.artifacts[BUNDLE_ARTIFACT])

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
    if not isinstance(bundle, AttributeBundle):
        raise ValueError(f"bundle must be an AttributeBundle, got {type(bundle).__name__}")
    if mlflow.active_run() is None:
        raise RuntimeError("log_attribute_model needs an active MLflow run (mlflow.start_run())")
    with tempfile.TemporaryDirectory(prefix="atelier-bundle-") as tmp:
        tmp = Path(tmp)
        bundle_dir = bundle.save(tmp / BUNDLE_ARTIFACT)
        code_paths = []
        for package in _CODE_PACKAGES:
            target = tmp / "code" / package
            shutil.copytree(
                _REPO / package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
            code_paths.append(str(target))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=AttributePyfunc(),
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
            code_paths=code_paths,
            pip_requirements=_pip_requirements(),
            registered_model_name=registered_model_name,
        )


def load_bundle(model_uri: str) -> AttributeBundle:
    """The `AttributeBundle` inside a logged or registered attribute pyfunc.

    `model_uri`: any MLflow model URI (`runs:/<id>/model`, `models:/<name>@champion`,
    `models:/<name>/<version>`, `models:/m-<id>`). Downloads the model and loads its bundle
    without the pyfunc wrapper, for callers that need probability arrays.
    """
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="atelier-bundle-") as tmp:
        # The whole model folder (bundle, code, MLmodel: small): sub-paths of `models:/` URIs
        # are not resolved the same way by every MLflow artifact repository.
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        flavor = Model.load(local / "MLmodel").flavors.get("python_function", {})
        artifact = flavor.get("artifacts", {}).get(BUNDLE_ARTIFACT)
        if artifact is None:
            raise ValueError(f"{model_uri!r} is not an attribute pyfunc: it has no 'bundle'")
        return AttributeBundle.load(local / artifact["path"])


def _pip_requirements() -> list[str]:
    requirements = []
    for package in _REQUIREMENTS:
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            requirements.append(package)
    return requirements
