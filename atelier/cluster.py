"""The scale profile on one machine: `atelier cluster up|down|status` (`make scale-up`).

Starts, on 127.0.0.1 only and under one folder (default `.cluster/`):
- a Spark standalone master and two workers (one core each), from the pyspark distribution;
- PostgreSQL (the Debian package's binaries) holding two databases: the Feast SQL registry
  (`feast`) and the MLflow backend store (`mlflow`);
- an MLflow tracking server on that store, serving artifacts from a local folder;
- Redis (Feast's online store).
and writes `<dir>/atelier.scale.yaml`, the settings that point atelier at them
(`ATELIER_CONFIG=.cluster/atelier.scale.yaml atelier ...`). The same settings point at real
clusters: only the URLs change.

PostgreSQL trusts local connections (a try-out on loopback, no passwords); as root it runs as
the `postgres` user, since the server refuses root. Every service logs to `<dir>/logs/` and
keeps its pid in `<dir>/pids/`; `down` stops them in reverse order (TERM, then KILL).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DIR = Path(".cluster")
# Ports away from the defaults, so a try-out does not collide with services already running.
PORTS = {
    "spark": 7078,
    "spark_ui": 8090,
    "postgres": 5433,
    "mlflow": 5001,
    "redis": 6381,
}
WORKERS = 2
WORKER_MEMORY = "2g"
USER = "atelier"
DATABASES = ("feast", "mlflow")


class ClusterError(RuntimeError):
    """A service that could not be started or found (the message says which and why)."""


@dataclass
class Service:
    """One long-running process: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None  # run as this user (PostgreSQL refuses root)
    stop_signal: int = signal.SIGTERM
    timeout_s: float = 90.0


def ports() -> dict[str, int]:
    """PORTS, each overridable as ATELIER_CLUSTER_<NAME>_PORT."""
    return {
        k: int(os.environ.get(f"ATELIER_CLUSTER_{k.upper()}_PORT", v)) for k, v in PORTS.items()
    }


def urls(p: dict[str, int] | None = None) -> dict[str, str]:
    """Where the services answer (what atelier.scale.yaml names)."""
    p = p or ports()
    return {
        "spark_master": f"spark://127.0.0.1:{p['spark']}",
        "spark_ui": f"http://127.0.0.1:{p['spark_ui']}",
        "feast_registry": f"postgresql+psycopg://{USER}@127.0.0.1:{p['postgres']}/feast",
        "mlflow_store": f"postgresql+psycopg://{USER}@127.0.0.1:{p['postgres']}/mlflow",
        "mlflow": f"http://127.0.0.1:{p['mlflow']}",
        "redis": f"127.0.0.1:{p['redis']}",
    }


def scale_settings(p: dict[str, int] | None = None) -> dict:
    """atelier settings for the local cluster (workdir left to the user)."""
    u = urls(p)
    return {
        "spark": {"master": u["spark_master"]},
        "feast": {"profile": "scale", "redis": u["redis"], "registry_url": u["feast_registry"]},
        "mlflow": {"tracking_uri": u["mlflow"], "registry_uri": u["mlflow"]},
    }


# ---------------------------------------------------------------------------------------------
# Up / down / status
# ---------------------------------------------------------------------------------------------
def up(directory: Path = DEFAULT_DIR, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Start every service not running yet (idempotent) and write the settings file; the URLs."""
    directory = directory.resolve()
    for sub in ("logs", "pids"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    p = ports()
    _prepare_postgres(directory, p, echo)
    for service in _services(directory, p):
        _start(directory, service, echo)
    _create_databases(directory, p, echo)
    _start(directory, _mlflow(directory, p), echo)
    settings = directory / "atelier.scale.yaml"
    import yaml

    settings.write_text(
        "# Written by `atelier cluster up`: atelier's settings for the local scale profile.\n"
        + yaml.safe_dump(scale_settings(p), sort_keys=True)
    )
    echo(f"settings: {settings} (ATELIER_CONFIG={settings})")
    return urls(p)


def down(directory: Path = DEFAULT_DIR, echo: Callable[[str], None] = print) -> list[str]:
    """Stop every service this folder started (newest first); the names stopped."""
    directory = directory.resolve()
    stopped = []
    pids = sorted((directory / "pids").glob("*.pid"), key=lambda f: f.stat().st_mtime, reverse=True)
    for pidfile in pids:
        name = pidfile.stem
        pid, sig = (int(v) for v in pidfile.read_text().split()[:2])
        if _alive(pid):
            _stop(pid, sig)
            stopped.append(name)
            echo(f"{name}: stopped (pid {pid})")
        pidfile.unlink()
    return stopped


def status(directory: Path = DEFAULT_DIR) -> dict[str, bool]:
    """Each started service's name -> whether its process is alive."""
    out = {}
    for pidfile in sorted((directory.resolve() / "pids").glob("*.pid")):
        out[pidfile.stem] = _alive(int(pidfile.read_text().split()[0]))
    return out


# ---------------------------------------------------------------------------------------------
# The services
# ---------------------------------------------------------------------------------------------
def _services(directory: Path, p: dict[str, int]) -> list[Service]:
    spark_home = _spark_home()
    spark_env = {
        "SPARK_HOME": spark_home,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(directory / "logs"),
        # Workers run Python tasks with this interpreter (the venv with atelier in it).
        "PYSPARK_PYTHON": sys.executable,
    }
    spark_class = str(Path(spark_home) / "bin" / "spark-class")
    master = urls(p)["spark_master"]
    services = [
        Service(
            "spark-master",
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(p["spark"]),
                "--webui-port",
                str(p["spark_ui"]),
            ],  # fmt: skip
            lambda: _port_open(p["spark"]),
            env=spark_env,
        )
    ]
    for n in range(1, WORKERS + 1):
        work = directory / f"spark-worker-{n}"
        services.append(
            Service(
                f"spark-worker-{n}",
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    "1",
                    "--memory",
                    WORKER_MEMORY,
                    "--work-dir",
                    str(work),
                    "--webui-port",
                    "0",
                    master,
                ],  # fmt: skip
                lambda n=n: _alive_workers(p) >= n,
                env=spark_env,
            )
        )
    services.append(
        Service(
            "postgres",
            [
                _pg_bin("postgres"),
                "-D",
                str(directory / "postgres" / "data"),
                "-h",
                "127.0.0.1",
                "-p",
                str(p["postgres"]),
                "-k",
                str(directory / "postgres" / "run"),
            ],  # fmt: skip
            lambda: _pg_ready(p),
            user=_pg_user(),
            stop_signal=signal.SIGINT,  # "fast" shutdown; TERM would wait for every client
        )
    )
    redis = shutil.which("redis-server")
    if redis is None:
        raise ClusterError("redis-server not found: apt-get install redis-server")
    (directory / "redis").mkdir(exist_ok=True)
    services.append(
        Service(
            "redis",
            [
                redis,
                "--bind",
                "127.0.0.1",
                "--port",
                str(p["redis"]),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory / "redis"),
            ],  # fmt: skip
            lambda: _port_open(p["redis"]),
        )
    )
    return services


def _mlflow(directory: Path, p: dict[str, int]) -> Service:
    artifacts = directory / "mlflow-artifacts"
    artifacts.mkdir(exist_ok=True)
    return Service(
        "mlflow",
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            urls(p)["mlflow_store"],
            "--artifacts-destination",
            str(artifacts),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(p["mlflow"]),
            "--workers",
            "1",
        ],  # fmt: skip
        lambda: _http_ok(f"{urls(p)['mlflow']}/health"),
        timeout_s=180.0,  # the first start creates the schema
    )


def _prepare_postgres(directory: Path, p: dict[str, int], echo) -> None:
    """initdb once (trust on loopback), owned by the user the server runs as."""
    root = directory / "postgres"
    data = root / "data"
    (root / "run").mkdir(parents=True, exist_ok=True)
    user = _pg_user()
    if user:
        shutil.chown(root, user)
        shutil.chown(root / "run", user)
    if (data / "PG_VERSION").exists():
        return
    echo("postgres: initdb")
    cmd = [_pg_bin("initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8"]
    _run_as(user, cmd, directory / "logs" / "initdb.log")


def _create_databases(directory: Path, p: dict[str, int], echo) -> None:
    import psycopg

    dsn = f"host=127.0.0.1 port={p['postgres']} user={USER} dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        for db in DATABASES:
            if db not in have:
                conn.execute(f'CREATE DATABASE "{db}"')
                echo(f"postgres: database {db} created")


def _start(directory: Path, s: Service, echo) -> None:
    pidfile = directory / "pids" / f"{s.name}.pid"
    if pidfile.exists() and _alive(int(pidfile.read_text().split()[0])):
        echo(f"{s.name}: already running")
        return
    log = (directory / "logs" / f"{s.name}.log").open("ab")
    argv = _as_user(s.user, s.argv)
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **s.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: `down` stops it and its children
        cwd=directory,
    )
    pidfile.write_text(f"{proc.pid} {int(s.stop_signal)}\n")
    deadline = time.monotonic() + s.timeout_s
    while not s.ready():
        if proc.poll() is not None:
            raise ClusterError(
                f"{s.name} exited with {proc.returncode}; see {directory / 'logs' / s.name}.log"
            )
        if time.monotonic() > deadline:
            raise ClusterError(f"{s.name} not ready after {s.timeout_s:.0f}s; see its log")
        time.sleep(0.5)
    echo(f"{s.name}: up (pid {proc.pid})")


def _stop(pid: int, sig: int, grace_s: float = 20.0) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _spark_home() -> str:
    from pyspark.find_spark_home import _find_spark_home

    return _find_spark_home()


def _pg_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else the Debian package's versioned folder."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise ClusterError(f"PostgreSQL's {name} not found: apt-get install postgresql")
    return found


def _pg_user() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user else argv


def _run_as(user: str | None, argv: list[str], log: Path) -> None:
    out = subprocess.run(_as_user(user, argv), capture_output=True, text=True)
    log.write_text(out.stdout + out.stderr)
    if out.returncode:
        raise ClusterError(f"{' '.join(argv[:1])} failed ({out.returncode}); see {log}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _alive_workers(p: dict[str, int]) -> int:
    try:
        with urllib.request.urlopen(f"{urls(p)['spark_ui']}/json/", timeout=2) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


def _pg_ready(p: dict[str, int]) -> bool:
    if not _port_open(p["postgres"]):
        return False
    try:
        import psycopg

        psycopg.connect(
            f"host=127.0.0.1 port={p['postgres']} user={USER} dbname=postgres", connect_timeout=2
        ).close()
        return True
    except Exception:  # noqa: BLE001 - "starting up" and friends: not ready yet
        return False
