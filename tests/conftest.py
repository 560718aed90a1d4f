"""Shared fixtures: real data slices (read-only source, copies made by the tests), Spark, and
the real VGG16 weights for every test that embeds images."""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import sys
from pathlib import Path

# Before anything imports Feast: `feast.metrics` sets PROMETHEUS_MULTIPROC_DIR, and
# prometheus_client picks file-backed, process-shared values when it is first imported after
# that. `atelier serve` imports it first and counts in memory, each app on its own; so do the
# tests (several serving apps live in one test process).
import prometheus_client  # noqa: F401
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ATELIER_SHARED_DATA", REPO.parent / "shared" / "data"))


# The real ImageNet VGG16 no-top weights sit beside the repository where CI and the team check
# it out (../shared/models); users' checkouts lack them and the tests fall back to seeded random
# weights. ATELIER_TEST_VGG16_WEIGHTS names another copy, or "none" to test as users do.
VGG16_WEIGHTS = REPO.parent / "shared" / "models" / "vgg16_imagenet_notop.h5"
RANDOM_SEED = 20181


@functools.cache
def vgg16_weights_path() -> Path | None:
    """The real VGG16 weights file for tests, or None where it is absent."""
    override = os.environ.get("ATELIER_TEST_VGG16_WEIGHTS")
    if override and override.lower() == "none":
        return None
    if override:
        path = Path(override).expanduser().resolve()
        if not path.is_file():  # a typo must not silently test random weights instead
            raise FileNotFoundError(f"ATELIER_TEST_VGG16_WEIGHTS={override}: no such file")
        return path
    return VGG16_WEIGHTS.resolve() if VGG16_WEIGHTS.is_file() else None


def embed_settings(seed: int = RANDOM_SEED, **extra) -> dict:
    """`embed` settings for a test that embeds images: the real weights when present, else
    seeded random weights (recorded as `random:<seed>`). Named outright either way, so neither
    ATELIER_EMBED__WEIGHTS nor a Keras cache on the machine changes what a test embeds with."""
    path = vgg16_weights_path()
    if path is not None:
        return {"weights": str(path), "allow_random_weights": False, **extra}
    return {"weights": "random", "random_seed": seed, **extra}


@functools.cache
def embed_weights_id(seed: int = RANDOM_SEED) -> str:
    """The `weights` that image_embeddings records for `embed_settings(seed)`."""
    path = vgg16_weights_path()
    if path is None:
        return f"random:{seed}"
    return "file:" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def embed_env() -> dict[str, str]:
    """Environment for CLI and spark-submit runs that embed, as `embed_settings()`."""
    return {"ATELIER_EMBED__WEIGHTS": embed_settings()["weights"]}


@pytest.fixture(scope="session")
def vgg16_weights() -> Path | None:
    """The real VGG16 no-top weights file, or None (tests then use seeded random weights)."""
    return vgg16_weights_path()


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set ATELIER_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def hm_dir() -> Path:
    return _need(SHARED / "hm")


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    return _need(SHARED / "fashion-small")


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def make_hm_slice(src: Path, dst: Path, n_articles: int = 40) -> dict[str, int]:
    """Copy a consistent slice of the H&M layout: the first `n_articles` bought articles, their
    transactions and customers; images are symlinked to the read-only originals."""
    th, trows = read_csv(src / "transactions_train.csv")
    ah, arows = read_csv(src / "articles.csv")
    ch, crows = read_csv(src / "customers.csv")
    bought: list[str] = []
    for r in trows:
        if r[2] not in bought:
            bought.append(r[2])
        if len(bought) == n_articles:
            break
    keep = set(bought)
    trows = [r for r in trows if r[2] in keep]
    custs = {r[1] for r in trows}
    arows = [r for r in arows if r[0] in keep]
    crows = [r for r in crows if r[0] in custs]
    write_csv(dst / "articles.csv", ah, arows)
    write_csv(dst / "transactions_train.csv", th, trows)
    write_csv(dst / "customers.csv", ch, crows)
    for r in arows:
        img = src / "images" / r[0][:3] / f"{r[0]}.jpg"
        link = dst / "images" / r[0][:3] / f"{r[0]}.jpg"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(img)
    return {"products": len(arows), "interactions": len(trows), "customers": len(crows)}


def make_hm_catalogue(
    src: Path, dst: Path, n_articles: int, skip: set[str], types: set[str]
) -> list[str]:
    """A new catalogue as a user has it in the H&M layout: articles.csv and images only (no
    customers, no purchases), the first `n_articles` of `types` with an image, not in `skip`;
    images are symlinked. Returns the article ids."""
    ah, arows = read_csv(src / "articles.csv")
    kind = ah.index("product_type_name")
    picked = [
        r
        for r in arows
        if r[0] not in skip
        and r[kind] in types
        and (src / "images" / r[0][:3] / f"{r[0]}.jpg").is_file()
    ][:n_articles]
    write_csv(dst / "articles.csv", ah, picked)
    for r in picked:
        link = dst / "images" / r[0][:3] / f"{r[0]}.jpg"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(src / "images" / r[0][:3] / f"{r[0]}.jpg")
    return [r[0] for r in picked]


def make_fashion_slice(src: Path, dst: Path, rows: slice) -> int:
    """Copy the `rows` slice of Fashion Product Images' styles.csv (products with an image);
    images are symlinked to the read-only originals. Returns the number of products."""
    header, all_rows = read_csv(src / "styles.csv")
    picked = [r for r in all_rows if (src / "images" / f"{r[0]}.jpg").is_file()][rows]
    write_csv(dst / "styles.csv", header, picked)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for r in picked:
        (dst / "images" / f"{r[0]}.jpg").symlink_to(src / "images" / f"{r[0]}.jpg")
    return len(picked)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local SparkSession for the whole run (starting one costs seconds)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from atelier.settings import Settings
    from atelier.spark import get_spark

    settings = Settings(
        workdir=tmp_path_factory.mktemp("spark"),
        spark={"master": "local[2]", "shuffle_partitions": 4},
    )
    session = get_spark(settings)
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path):
    from atelier.settings import Settings

    return Settings(
        workdir=tmp_path / "work",
        image_check_partitions=2,
        spark={"master": "local[2]", "shuffle_partitions": 4},
        gate={"build_data_docs": False},
    )


# The small demo run shared by the demo test (its output) and the serving tests (its workdir,
# copied): one pipeline run instead of two.
DEMO_ENV = {
    "ATELIER_LOG_LEVEL": "WARNING",
    "ATELIER_GATE__BUILD_DATA_DOCS": "false",
    "ATELIER_ATTRIBUTES__STEPS": "600",
    # A small recommender keeps the run short; `make demo` uses the defaults.
    "ATELIER_RECOMMENDER__K": "16",
    "ATELIER_RECOMMENDER__EPOCHS": "4",
}
DEMO_ARGS = ("--products", "150", "--customers", "40", "--seed", "3")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`atelier demo` on a 150-product catalogue: (workdir, CompletedProcess, env)."""
    import subprocess

    workdir = tmp_path_factory.mktemp("demo") / "w"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, **DEMO_ENV, **embed_env())
    out = subprocess.run(
        [str(Path(sys.executable).parent / "atelier"), "--workdir", str(workdir), "demo",
         *DEMO_ARGS],
        capture_output=True, text=True, env=env, timeout=1500)
    return workdir, out, env


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory, request) -> Path:
    """A copy, for the test module, of the session's demo workdir (or of
    ATELIER_TEST_SERVING_WORKDIR): the serving tests change their copy, never the source."""
    import shutil

    dst = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "w"
    given = os.environ.get("ATELIER_TEST_SERVING_WORKDIR")
    if not given:
        source, out, _ = request.getfixturevalue("demo_run")
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        given = source
    shutil.copytree(given, dst, symlinks=True)
    return dst
