"""Feast for atelier: the store of the configured profile, apply, lookups.

Materialisation (gated by the suites) is the job `spark_jobs.materialize`.

Profiles (`settings.feast.profile`), one definition set (`feature_repo/definitions.py`):
- `embedded` (`feature_repo/feature_store.yaml`): duckdb offline store over the lake's Delta
  tables, sqlite online store `<workdir>/feast/online.db` (or `settings.feast.online_sqlite`),
  file registry `<workdir>/feast/registry.db`;
- `scale` (`feature_repo/feature_store.scale.yaml`): Spark offline store (`SparkSource`, Delta
  table format), Redis online store (`settings.feast.redis`), SQL registry
  (`settings.feast.registry_url`); Spark master, jars and conf come from `settings.spark`.
  Without delta-spark's jars (`lake_views`), sources are temp views of the tables' published
  snapshots, read by the executors: `feature_store` registers them in the job's Spark session
  (the session Feast's Spark store uses), as of that moment. The `feast` CLI does not, so with
  that profile materialise with `atelier materialize` (`feast apply` reads no data and works).

The yaml files are templates using `${ATELIER_WORKDIR}`, `${ATELIER_FEAST__REDIS}` and
`${ATELIER_FEAST__REGISTRY_URL}`, the variables Settings itself reads. Here they are filled from
the Settings object (`feast_env`) without touching `os.environ`: a process may use several
workdirs (tests do). `write_repo` writes each workdir's own feature repository for the `feast`
CLI (`feast -c <workdir>/feast/repo apply`).

The duckdb store reads Delta with DuckDB's `delta` extension, which cannot be downloaded here:
`feature_store` points the extension directory of ibis' default DuckDB connection (the one the
store uses) at the copy shipped by the PyPI package `duckdb-ext-delta`.

Feast is imported inside the functions: `atelier --help` must stay instant.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atelier.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

log = logging.getLogger(__name__)

FEATURE_REPO = Path(__file__).resolve().parents[1] / "feature_repo"
PROFILE_YAML = {"embedded": "feature_store.yaml", "scale": "feature_store.scale.yaml"}
# Lake feature table -> the feature view that serves it (see feature_repo/definitions.py).
VIEWS = {
    "image_embeddings": "image_embedding",
    "colour_features": "colour_features",
    "text_features": "text_features",
    "product_features": "product_features",
    "customer_history": "customer_history",
    "attribute_vectors": "predicted_attributes",
    "item_vectors": "item_vectors",
}
MAIN_SHOT = 0  # feature_repo.definitions.MAIN_SHOT; repeated to keep feast out of this import
EMBEDDING_DIM = 512
DEFAULT_ONLINE_FEATURES = "attributes_v1"
STATE_FILE = "materialized.json"

_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


# -- configuration ---------------------------------------------------------------------------
def feast_env(settings: Settings) -> dict[str, str]:
    """The variables the feature repository reads (yaml and definitions), from `settings`."""
    return {
        "ATELIER_WORKDIR": str(settings.workdir),
        "ATELIER_FEAST__PROFILE": settings.feast.profile,
        "ATELIER_FEAST__REDIS": settings.feast.redis,
        "ATELIER_FEAST__REGISTRY_URL": settings.feast.registry_url,
    }


def repo_config(settings: Settings, overrides: Mapping[str, Any] | None = None) -> RepoConfig:
    """The profile's feature_store.yaml, variables filled from `settings`, as a RepoConfig.

    overrides: merged into the yaml (nested dicts merge; a section naming another `type` replaces
    the yaml's), e.g. `{"online_store": {"type":
    "redis", "connection_string": "127.0.0.1:6390"}}` to use Redis with the embedded profile.
    """
    from feast.repo_config import RepoConfig

    raw = _merge(_raw_config(settings, feast_env(settings)), overrides or {})
    config = RepoConfig(**raw)
    config.repo_path = FEATURE_REPO
    return config


def _raw_config(settings: Settings, values: Mapping[str, str], environ: bool = True) -> dict:
    """The profile's yaml as a dict, `values` filled in (then, with `environ`, the process
    environment), the settings' Spark and sqlite parts added."""
    import yaml

    profile = settings.feast.profile
    path = FEATURE_REPO / PROFILE_YAML[profile]
    raw = yaml.safe_load(_expand(path.read_text(), values, environ))
    raw["project"] = settings.feast.project
    if profile == "embedded" and settings.feast.online_sqlite:
        raw["online_store"]["path"] = str(Path(settings.feast.online_sqlite).expanduser().resolve())
    if profile == "scale":
        conf = raw["offline_store"].setdefault("spark_conf", {})
        if lake_views(settings):  # no Delta extension to load
            for key in ("spark.sql.extensions", "spark.sql.catalog.spark_catalog"):
                conf.pop(key, None)
        conf["spark.master"] = settings.spark.master
        if settings.spark.packages:
            conf["spark.jars.packages"] = ",".join(settings.spark.packages)
        if settings.spark.jars:
            conf["spark.jars"] = ",".join(settings.spark.jars)
        conf.update(settings.spark.conf)
    return raw


def feature_store(
    settings: Settings, overrides: Mapping[str, Any] | None = None, offline: bool = True
) -> FeatureStore:
    """A FeatureStore for `settings` (profile, workdir, Redis/registry URLs); see `repo_config`.
    `offline=False`: the store is only read online (the scale profile's lake views, which
    need a Spark session, are not registered)."""
    from feast import FeatureStore

    config = repo_config(settings, overrides)
    if config.registry.registry_type == "file":
        settings.feast_dir.mkdir(parents=True, exist_ok=True)
    if config.offline_store.type == "duckdb":
        ensure_duckdb_delta()
    if offline and config.offline_store.type == "spark" and lake_views(settings):
        register_lake_views(settings)
    return FeatureStore(repo_path=str(FEATURE_REPO), config=config)


def online_store(settings: Settings) -> FeatureStore:
    """A FeatureStore for online reads only (serving, lookups): no Spark session, no views."""
    return feature_store(settings, offline=False)


def lake_views(settings: Settings) -> bool:
    """Whether the scale profile's sources are temp views of the lake (no delta-spark jars)."""
    return settings.feast.profile == "scale" and not (
        settings.spark.jars or settings.spark.packages
    )


def register_lake_views(settings: Settings) -> list[str]:
    """Register `atelier_<table>` temp views of every published feature table's snapshot in
    the job's Spark session (the one Feast's Spark offline store picks up); the tables."""
    from atelier.lake import Lake
    from atelier.spark import get_spark
    from feature_repo.definitions import view_name

    lake = Lake(settings, get_spark(settings))
    done = []
    for table in VIEWS:
        if lake.exists(table):
            lake.read_spark(table).createOrReplaceTempView(view_name(table))
            done.append(table)
    log.info("Spark temp views of the lake's snapshots: %s", ", ".join(done) or "none")
    return done


def ensure_duckdb_delta() -> Path:
    """Make ibis' default DuckDB connection load `delta` from the duckdb-ext-delta package.

    Feast's duckdb store calls `ibis.read_delta`, which INSTALLs (downloads) the extension when
    DuckDB does not find it in its extension directory. Returns that directory.
    """
    import importlib.metadata

    import duckdb

    try:
        import ibis
    except ImportError:
        raise RuntimeError(
            "Feast's duckdb offline store needs ibis: pip install 'ibis-framework[duckdb]' "
            "(the feast[duckdb] extra)"
        ) from None
    try:
        root = Path(
            importlib.metadata.distribution("duckdb-ext-delta").locate_file("duckdb_ext/extensions")
        )
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            "the duckdb offline store needs the PyPI package duckdb-ext-delta (DuckDB's delta "
            "extension, which cannot be downloaded at run time): pip install duckdb-ext-delta"
        ) from None
    found = sorted(root.glob(f"v{duckdb.__version__}/*/delta.duckdb_extension"))
    if not found:
        raise RuntimeError(
            f"no delta extension for duckdb {duckdb.__version__} under {root}; "
            "duckdb-ext-delta pins the duckdb version it ships the extension for"
        )
    con = ibis.get_backend()
    con.raw_sql(f"SET extension_directory = '{root}'")
    con.raw_sql("SET autoinstall_known_extensions = false")
    con.raw_sql("LOAD delta")
    return root


# -- the workdir's feature repository ---------------------------------------------------------
# Filled from Settings when the repo is written; the others (the Redis and registry URLs, which
# may hold credentials) stay `${VAR}` for Feast to expand from the environment at run time.
_FILLED = ("ATELIER_WORKDIR", "ATELIER_FEAST__PROFILE")
_DEFINITIONS = """\
\"\"\"Feast objects of the atelier workdir {workdir} ({profile} profile).

Written by atelier (`atelier feast-repo`, and every apply); regenerated, do not edit: the
definitions live in the atelier package's feature_repo/definitions.py.
\"\"\"

from pathlib import Path

from feature_repo.definitions import build

globals().update(build(Path({lake!r}), {profile!r}, lake_views={lake_views!r}))
"""


def write_repo(settings: Settings) -> Path:
    """Write `<workdir>/feast/repo` (feature_store.yaml + definitions.py) for `settings`: the
    folder where the `feast` CLI works on this workdir (`feast -c <repo> apply`), with no
    environment variable to set. Returns its path. Idempotent."""
    import yaml

    repo = settings.feast_dir / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    env = feast_env(settings)
    raw = _raw_config(settings, {k: env[k] for k in _FILLED}, environ=False)
    files = {
        "feature_store.yaml": "# Written by atelier for this workdir; regenerated, do not edit.\n"
        + yaml.safe_dump(raw, sort_keys=False),
        "definitions.py": _DEFINITIONS.format(
            workdir=settings.workdir,
            lake=str(settings.lake_dir),
            profile=settings.feast.profile,
            lake_views=lake_views(settings),
        ),
    }
    for name, text in files.items():
        path = repo / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    return repo


# -- apply -----------------------------------------------------------------------------------
def definitions(settings: Settings) -> dict[str, Any]:
    """The repository's Feast objects for `settings` (sources under `settings.lake_dir`)."""
    from feature_repo.definitions import build

    return build(settings.lake_dir, settings.feast.profile, lake_views(settings))


def apply(settings: Settings, store: FeatureStore | None = None) -> dict[str, list[str]]:
    """`feast apply`, programmatic: register the definitions, delete registered objects that
    are no longer defined, create the online tables. Returns {"changed": [...], "deleted": [...]}
    (names of objects added or updated, and removed).
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource
    from feast.diff.property_diff import TransitionType
    from feast.diff.registry_diff import diff_between
    from feast.repo_contents import RepoContents
    from feast.repo_operations import extract_objects_for_apply_delete

    store = store or feature_store(settings)
    write_repo(settings)  # the feast CLI's view of this workdir stays in step
    objects = list(definitions(settings).values())
    repo = RepoContents(
        projects=[],
        data_sources=[o for o in objects if isinstance(o, DataSource)],
        feature_views=[o for o in objects if isinstance(o, FeatureView)],
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        entities=[o for o in objects if isinstance(o, Entity)],
        feature_services=[o for o in objects if isinstance(o, FeatureService)],
        permissions=[],
    )
    diff = diff_between(store.registry, store.project, repo)
    _, to_delete, _, _ = extract_objects_for_apply_delete(store.project, store.registry, repo)
    # Every object, not only the changed ones: apply also creates the online tables, and the
    # online store may be new while the registry is not (another sqlite file, a Redis).
    store.apply(objects, objects_to_delete=to_delete, partial=False)
    changed = {
        d.name
        for d in diff.feast_object_diffs
        if d.transition_type in (TransitionType.CREATE, TransitionType.UPDATE)
    }
    return {"changed": sorted(changed), "deleted": sorted({o.name for o in to_delete})}


# -- lookups ---------------------------------------------------------------------------------
def online_features(
    settings: Settings,
    product_ids: Sequence[str],
    features: str | Sequence[str] | None = None,
    store: FeatureStore | None = None,
) -> dict[str, list]:
    """Online values for products: {name: [value per product]} (plus the key columns).

    features: a feature service name (default `attributes_v1`) or refs "view:feature". The
    image embedding and colour are the main shot's (shot 0). Unknown products get None values.
    """
    store = store or online_store(settings)
    refs = _feature_arg(store, features or DEFAULT_ONLINE_FEATURES)
    rows = [{"product_id": str(p)} for p in product_ids]
    if _needs_shot(store, refs):
        for row in rows:
            row["shot"] = MAIN_SHOT
    return store.get_online_features(features=refs, entity_rows=rows).to_dict()


def historical_features(
    settings: Settings,
    entity_df: pd.DataFrame,
    features: str | Sequence[str] = "attributes_v1",
    store: FeatureStore | None = None,
    full_feature_names: bool = False,
) -> pd.DataFrame:
    """Point-in-time correct training frame: `entity_df` (keys + `event_timestamp`, UTC)
    joined with each feature's latest value whose event time is <= the row's and within the
    view's TTL. A `shot` column (0, the main image) is added when a view keyed by shot (image
    embedding, colour) is used.
    """
    store = store or feature_store(settings)
    refs = _feature_arg(store, features)
    if "shot" not in entity_df.columns and _needs_shot(store, refs):
        entity_df = entity_df.assign(shot=MAIN_SHOT)
    job = store.get_historical_features(
        entity_df=entity_df, features=refs, full_feature_names=full_feature_names
    )
    return job.to_df()


# -- helpers ---------------------------------------------------------------------------------
def _expand(text: str, values: Mapping[str, str], environ: bool = True) -> str:
    """`${VAR}`/`$VAR` from `values`, else (with `environ`) the process environment; unknown
    ones stay."""
    import os

    fallback = os.environ if environ else {}

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, fallback.get(name, m.group(0)))

    return _VAR.sub(sub, text)


def _merge(base: dict, extra: Mapping[str, Any]) -> dict:
    """`base` updated by `extra`; nested dicts merge unless `extra` names another store type."""
    out = dict(base)
    for k, v in extra.items():
        old = out.get(k)
        if (
            isinstance(v, Mapping)
            and isinstance(old, dict)
            and v.get("type", old.get("type")) == (old.get("type"))
        ):
            out[k] = _merge(old, v)
        else:
            out[k] = dict(v) if isinstance(v, Mapping) else v
    return out


def registered_view(store: FeatureStore, name: str):
    from feast.errors import FeatureViewNotFoundException

    try:
        return store.get_feature_view(name)
    except FeatureViewNotFoundException:
        raise RuntimeError(
            f"feature view {name!r} is not in the Feast registry: apply the definitions first "
            "(atelier.feast_store.apply, or `feast apply` in feature_repo/)"
        ) from None


def utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _feature_arg(store: FeatureStore, features: str | Sequence[str]):
    if isinstance(features, str):
        if ":" in features:
            return [features]
        return store.get_feature_service(features)
    return list(features)


# Views keyed by (product, shot): lookups without a shot get the main image's.
_SHOT_VIEWS = {VIEWS["image_embeddings"], VIEWS["colour_features"]}


def _needs_shot(store: FeatureStore, refs) -> bool:
    if isinstance(refs, list):
        return any(r.split(":", 1)[0] in _SHOT_VIEWS for r in refs)
    return any(p.name in _SHOT_VIEWS for p in refs.feature_view_projections)
