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

import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import mlflow.pyfunc
import pandas as pd

from models.recommender.bundle import RecommenderBundle

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.models.model import ModelInfo

BUNDLE_ARTIFACT = "bundle"
_REPO = Path(__file__).resolve().parents[2]
_CODE_PACKAGES = ("models", "atelier")
_REQUIREMENTS = ("mlflow", "tensorflow", "keras", "pandas", "numpy")


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of a `RecommenderBundle` stored as the artifact `bundle`."""

    def load_context(self, context):
        self.bundle = RecommenderBundle.load(context.artifacts[BUNDLE_ARTIFACT])

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
    if not isinstance(bundle, RecommenderBundle):
        raise ValueError(f"bundle must be a RecommenderBundle, got {type(bundle).__name__}")
    if mlflow.active_run() is None:
        raise RuntimeError("log_recommender_model needs an active MLflow run (mlflow.start_run())")
    with tempfile.TemporaryDirectory(prefix="atelier-recommender-") as tmp:
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
            python_model=RecommenderPyfunc(),
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
            code_paths=code_paths,
            pip_requirements=_pip_requirements(),
            registered_model_name=registered_model_name,
        )


def load_bundle(model_uri: str) -> RecommenderBundle:
    """The `RecommenderBundle` inside a logged or registered recommender pyfunc.

    `model_uri`: any MLflow model URI (`runs:/<id>/model`, `models:/<name>@champion`,
    `models:/<name>/<version>`, `models:/m-<id>`).
    """
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="atelier-recommender-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        flavor = Model.load(local / "MLmodel").flavors.get("python_function", {})
        artifact = flavor.get("artifacts", {}).get(BUNDLE_ARTIFACT)
        if artifact is None:
            raise ValueError(f"{model_uri!r} is not a recommender pyfunc: it has no 'bundle'")
        return RecommenderBundle.load(local / artifact["path"])


def _pip_requirements() -> list[str]:
    requirements = []
    for package in _REQUIREMENTS:
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            requirements.append(package)
    return requirements
