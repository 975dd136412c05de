"""The MLflow side of a data dir and of a fleet: telemetry off, a movable embedded store, a server.

Embedded (the default, ``mlflow.tracking_uri`` unset): the tracking store is ``<data_dir>/mlflow.db``
and artifacts live in ``<data_dir>/mlartifacts``. MLflow records every artifact location as an
absolute path, so a data dir that was copied or moved would point at the old place (or nowhere).
:func:`rebase_artifacts` re-roots those locations at the data dir in use whenever edgeloop opens the
embedded store, which makes a data dir self-contained: copy it, and runs, artifacts and registered
versions open from the copy.

Fleet: one ``mlflow server`` with a PostgreSQL backend store and an artifact destination it serves
over HTTP (``mlflow-artifacts:/``), so trainers on any host log runs and models through
``mlflow.tracking_uri: http://host:5000`` without sharing a disk. :func:`server_command` builds the
command ``edgeloop mlflow`` runs.

MLflow's usage telemetry is off unless the operator sets ``MLFLOW_DISABLE_TELEMETRY=false``:
:func:`quiet_telemetry` sets it (and ``DO_NOT_TRACK``, which MLflow also honours) before MLflow is
imported, and the server inherits it, which also turns off the UI's telemetry.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import TypeVar

from edgeloop.adapters.store import describe

Env = TypeVar("Env", bound=MutableMapping[str, str])

ARTIFACTS_DIR = "mlartifacts"  # beside mlflow.db in the data dir
# Where MLflow keeps artifact locations (MLflow 2.x and 3.x schemas; absent tables are skipped).
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def quiet_telemetry(env: Env) -> Env:
    """Turn MLflow's usage telemetry off in ``env`` (``os.environ``, or a child's environment) unless
    the operator chose; returns ``env``.

    >>> quiet_telemetry({})
    {'MLFLOW_DISABLE_TELEMETRY': 'true', 'DO_NOT_TRACK': 'true'}
    >>> quiet_telemetry({"MLFLOW_DISABLE_TELEMETRY": "false"})
    {'MLFLOW_DISABLE_TELEMETRY': 'false'}
    """
    if "MLFLOW_DISABLE_TELEMETRY" not in env:
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env.setdefault("DO_NOT_TRACK", "true")
    return env


def _root_of(location: str) -> str | None:
    """The ``.../mlartifacts`` prefix of an artifact location, or ``None``.

    >>> _root_of("file:///old/data/mlartifacts/3f2a/artifacts"), _root_of("/old/data/mlartifacts")
    ('file:///old/data/mlartifacts', '/old/data/mlartifacts')
    >>> _root_of("mlflow-artifacts:/1/abc/artifacts") is None
    True
    """
    marker = f"/{ARTIFACTS_DIR}"
    at = location.rfind(marker)
    while at >= 0:
        end = at + len(marker)
        if end == len(location) or location[end] == "/":
            return location[:end]
        at = location.rfind(marker, 0, at)
    return None


def rebase_artifacts(db: Path, root: Path) -> int:
    """Point every artifact location in the embedded MLflow store ``db`` under ``root``; returns the
    number of rows changed (0 when the data dir has not moved, or ``db`` does not exist yet)."""
    if not db.is_file():
        return 0
    new_path = str(root.resolve())
    new_uri = root.resolve().as_uri()
    conn = sqlite3.connect(db, timeout=30)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return 0
        olds = {
            old
            for (loc,) in conn.execute("SELECT artifact_location FROM experiments")
            if loc and (old := _root_of(loc)) is not None and old not in (new_path, new_uri)
        }
        changed = 0
        with conn:
            for old in sorted(olds):
                new = new_uri if old.startswith("file:") else new_path
                for table, column in LOCATION_COLUMNS:
                    if table not in tables:
                        continue
                    cur = conn.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?)"
                        f" WHERE substr({column}, 1, ?) = ? AND (length({column}) = ? OR"
                        f" substr({column}, ?, 1) = '/')",
                        (new, len(old) + 1, len(old), old, len(old), len(old) + 1),
                    )
                    changed += cur.rowcount
        return changed
    finally:
        conn.close()


def embedded_db(tracking_uri: str) -> Path | None:
    """The SQLite file of a ``sqlite:///`` tracking URI, or ``None`` for a server or another database."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///"))


def backend_uri(uri: str) -> str:
    """A backend store URI as MLflow's SQLAlchemy needs it: PostgreSQL through psycopg 3 (installed
    with edgeloop), not the psycopg2 that a bare ``postgresql://`` would ask for.

    >>> backend_uri("postgresql://mlflow@db:5432/mlflow"), backend_uri("sqlite:////d/mlflow.db")
    ('postgresql+psycopg://mlflow@db:5432/mlflow', 'sqlite:////d/mlflow.db')
    """
    for scheme in ("postgresql://", "postgres://"):
        if uri.startswith(scheme):
            return "postgresql+psycopg://" + uri.removeprefix(scheme)
    return uri


def server_command(
    *,
    backend: str,
    artifacts: str,
    host: str,
    port: int,
    workers: int = 1,
    allowed_hosts: str | None = None,
) -> tuple[list[str], dict[str, str], str]:
    """The ``mlflow server`` command, its environment and a line saying what it serves (no secrets).

    An embedded SQLite backend keeps its artifacts as files that trainers on this host write directly
    (``--default-artifact-root``); any other backend serves them (``--artifacts-destination``), so
    trainers elsewhere write through the server.
    """
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri(backend),
        "--host", host, "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    db = embedded_db(backend)
    if db is not None:
        root = Path(artifacts)
        with contextlib.suppress(sqlite3.Error):
            rebase_artifacts(db, root)
        cmd += ["--default-artifact-root", root.resolve().as_uri()]
    else:
        dest = artifacts if "://" in artifacts else Path(artifacts).resolve().as_uri()
        cmd += ["--serve-artifacts", "--artifacts-destination", dest]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    # MLflow 3 otherwise starts a huey job consumer (GenAI jobs) beside the UI; edgeloop does not use it.
    env = quiet_telemetry({**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    what = f"tracking {describe(backend)}, artifacts {artifacts}"
    return cmd, env, what
