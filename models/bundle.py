"""The bundle protocol both models follow (`AttributeBundle`, `RecommenderBundle`).

A bundle is a folder: `model.keras` beside `bundle.json` (everything else, plain JSON, with a
format version). In MLflow it is a pyfunc whose artifact `bundle` is that folder, logged with
the `models` and `atelier` packages as code paths and pinned pip requirements, so it loads from
the registry in a process that has neither installed. A Spark worker loads a bundle once
(`worker_bundle`). mlflow is imported only by the functions that need it: workers load bundles
without it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.models.model import ModelInfo

MODEL_FILE = "model.keras"
BUNDLE_FILE = "bundle.json"
BUNDLE_ARTIFACT = "bundle"
_REPO = Path(__file__).resolve().parents[1]
_CODE_PACKAGES = ("models", "atelier")
_REQUIREMENTS = ("mlflow", "tensorflow", "keras", "pandas", "numpy")

B = TypeVar("B")


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


# -- the folder ------------------------------------------------------------------------------
def json_default(value):
    """numpy scalars and arrays as plain JSON; TypeError for anything else."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON serializable")


def save_state(
    directory, state: dict, save_model: Callable[[Path], Any], default=json_default
) -> Path:
    """Write `bundle.json` (`state`) and, through `save_model`, `model.keras` into `directory`
    (created); returns its path. ValueError when `state` is not plain JSON."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(state, indent=1, ensure_ascii=False, default=default)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bundle metadata must be plain JSON: {error}") from error
    save_model(directory / MODEL_FILE)
    (directory / BUNDLE_FILE).write_text(text, encoding="utf-8")
    return directory


def load_state(directory, kind: str, format_version: int, advice: str = "") -> dict:
    """`bundle.json` of a `kind` bundle folder written by `save_state`. FileNotFoundError when a
    file is missing; ValueError (with `advice`) for another format version."""
    directory = Path(directory)
    missing = [f for f in (MODEL_FILE, BUNDLE_FILE) if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not {_a(kind)} bundle: no {missing!r}")
    state = json.loads((directory / BUNDLE_FILE).read_text(encoding="utf-8"))
    if state.get("format") != format_version:
        raise ValueError(
            f"bundle format {state.get('format')!r} is not the supported {format_version}{advice}"
        )
    return state


# -- MLflow ----------------------------------------------------------------------------------
class BundlePyfunc:
    """Mixin of the models' pyfuncs (with `mlflow.pyfunc.PythonModel`): loads `bundle_class`
    from the artifact `bundle`; the subclass says how to predict."""

    bundle_class: type

    def load_context(self, context):
        self.bundle = self.bundle_class.load(context.artifacts[BUNDLE_ARTIFACT])


def log_model(
    bundle, pyfunc: BundlePyfunc, name: str = "model", registered_model_name: str | None = None
) -> ModelInfo:
    """Log `bundle` wrapped in `pyfunc` as model `name` in the active MLflow run; returns its
    ModelInfo. With `registered_model_name` a new version of that registered model too."""
    import mlflow
    import mlflow.pyfunc

    cls = pyfunc.bundle_class
    if not isinstance(bundle, cls):
        raise ValueError(f"bundle must be {_a(cls.__name__)}, got {type(bundle).__name__}")
    if mlflow.active_run() is None:
        raise RuntimeError(f"log_{cls.KIND}_model needs an active MLflow run (mlflow.start_run())")
    with tempfile.TemporaryDirectory(prefix=f"atelier-{cls.KIND}-") as tmp:
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
            python_model=pyfunc,
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
            code_paths=code_paths,
            pip_requirements=_pip_requirements(),
            registered_model_name=registered_model_name,
        )


def load_bundle(model_uri: str, bundle_class: type[B]) -> B:
    """The `bundle_class` bundle inside a logged or registered pyfunc of that model.

    `model_uri`: any MLflow model URI (`runs:/<id>/model`, `models:/<name>@champion`,
    `models:/<name>/<version>`, `models:/m-<id>`). Downloads the model and loads its bundle
    without the pyfunc wrapper, for callers that need arrays.
    """
    import mlflow
    from mlflow.models import Model

    kind = bundle_class.KIND  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix=f"atelier-{kind}-") as tmp:
        # The whole model folder (bundle, code, MLmodel: small): sub-paths of `models:/` URIs
        # are not resolved the same way by every MLflow artifact repository.
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        flavor = Model.load(local / "MLmodel").flavors.get("python_function", {})
        artifact = flavor.get("artifacts", {}).get(BUNDLE_ARTIFACT)
        if artifact is None:
            raise ValueError(f"{model_uri!r} is not {_a(kind)} pyfunc: it has no 'bundle'")
        return bundle_class.load(local / artifact["path"])  # type: ignore[attr-defined]


def _pip_requirements() -> list[str]:
    requirements = []
    for package in _REQUIREMENTS:
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            requirements.append(package)
    return requirements


# -- Spark workers ---------------------------------------------------------------------------
# In this (installed) module, so a reused Python worker loads a bundle once, whichever job
# scores with it; only the latest bundle is kept (each run saves its own folder).
_WORKER_BUNDLES: dict[str, Any] = {}


def worker_bundle(directory: str, load: Callable[[str], B]) -> B:
    """This worker process's bundle saved in `directory`, `load`ed on first use."""
    if directory not in _WORKER_BUNDLES:
        _WORKER_BUNDLES.clear()
        _WORKER_BUNDLES[directory] = load(directory)
    return _WORKER_BUNDLES[directory]
