"""The store: every reading, event, status row and model version, read by the trainer and the dashboard.

Two implementations share one interface (:class:`BaseStore`), so callers never branch on the backend:
:class:`Store`, the embedded default (SQLite in WAL mode, one file in the data dir), and
:class:`~edgeloop.adapters.store_pg.PgStore` (PostgreSQL, ``store.url``), which several edges on
several hosts write at once. :func:`open_store` picks one from a path or a ``postgresql://`` URL.

Tables (one row per reading and target in ``samples``; everything else is small):

``samples``        device, target, ts, seq, value (the reading), forecast (what the serving model had
                   forecast for this reading), persistence (the previous reading: the naive forecast),
                   prediction (the forecast of the next reading made now), model (its version)
``events``         drift and model events (also published on MQTT)
``scope_status``   one row per device and target, upserted by the edge when it changed: last seen,
                   rate, rolling RMSE, threshold, baselines, serving version, status
``model_versions`` every trained version: scores, window, decision and reason, MLflow run id

Several processes share the SQLite file (edge, trainer, dashboard): WAL lets readers run beside the
one writer, and ``busy_timeout`` makes a second writer wait instead of failing.

Queries are written once, in SQLite's dialect with ``?`` placeholders; the PostgreSQL connection
translates the few spellings that differ (:func:`edgeloop.adapters.store_pg.pg_sql`).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import orjson

from edgeloop.engine.rows import SampleRow, StatusRow
from edgeloop.errors import StoreError
from edgeloop.telemetry.schema import Event

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    ts REAL NOT NULL,
    seq INTEGER,
    value REAL NOT NULL,
    forecast REAL,
    persistence REAL,
    prediction REAL,
    model TEXT
);
CREATE INDEX IF NOT EXISTS samples_scope_ts ON samples (target, device, ts);
CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    scope TEXT NOT NULL,
    reason TEXT,
    version TEXT,
    previous_version TEXT,
    metrics TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_scope_ts ON events (scope, ts);
CREATE TABLE IF NOT EXISTS scope_status (
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    last_seen REAL,
    count INTEGER,
    rate REAL,
    rmse REAL,
    threshold REAL,
    persistence_rmse REAL,
    mean_rmse REAL,
    model TEXT,
    status TEXT,
    updated REAL,
    PRIMARY KEY (device, target)
);
CREATE TABLE IF NOT EXISTS model_versions (
    scope TEXT NOT NULL,
    version INTEGER NOT NULL,
    label TEXT NOT NULL,
    created REAL NOT NULL,
    formulation TEXT,
    trigger TEXT,
    val_rmse REAL,
    champion_rmse REAL,
    persistence_rmse REAL,
    mean_rmse REAL,
    window_start REAL,
    window_end REAL,
    n_samples INTEGER,
    decision TEXT,
    reason TEXT,
    mlflow_run_id TEXT,
    path TEXT,
    candidates TEXT,
    PRIMARY KEY (scope, version)
);
"""


@dataclass(frozen=True)
class Series:
    """One device's recent readings of one target, oldest first."""

    device: str
    ts: np.ndarray
    values: np.ndarray


class Cursor(Protocol):
    """What the store's readers use of a DB-API cursor (sqlite3's and psycopg's both fit)."""

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class StoreConnection(Protocol):
    """A connection the dashboard's queries run on: ``sqlite3.Connection`` or :class:`PgConnection`.

    ``with conn:`` is one transaction, committed at the end or rolled back on an error.
    """

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


# What a failed read of either backend raises (PgConnection re-raises psycopg's errors as StoreError).
STORE_READ_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, StoreError)


def is_store_url(location: Path | str) -> bool:
    """Whether ``location`` names a PostgreSQL server rather than a SQLite file.

    >>> is_store_url("postgresql://edge@db:5432/edgeloop"), is_store_url("/var/lib/edgeloop/edgeloop.db")
    (True, False)
    """
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def describe(location: Path | str) -> str:
    """``location`` as it may be shown or logged: a URL without its password.

    >>> describe("postgresql://edge:s3cret@db.lan:5432/edgeloop"), describe(Path("/data/edgeloop.db"))
    ('postgresql://edge:***@db.lan:5432/edgeloop', '/data/edgeloop.db')
    """
    if not is_store_url(location):
        return str(location)
    parts = urlsplit(str(location))
    if parts.password is None:
        return str(location)
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def open_store(location: Path | str, *, retention_rows: int = 2_000_000, readonly: bool = False) -> BaseStore:
    """The store at ``location``: a SQLite file path or a ``postgresql://`` URL (``store.url``).

    Raises :class:`StoreError` with one line naming the store and what to check when it cannot be opened.
    """
    if is_store_url(location):
        from edgeloop.adapters.store_pg import PgStore  # psycopg is only imported when used

        return PgStore(str(location), retention_rows=retention_rows, readonly=readonly)
    return Store(location, retention_rows=retention_rows, readonly=readonly)


def store_exists(location: Path | str) -> bool:
    """Whether an edge has created the store yet (a server is asked when the store is opened)."""
    return is_store_url(location) or Path(location).exists()


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the store (creating the schema unless ``readonly``)."""
    path = Path(path)
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
        conn.execute("PRAGMA busy_timeout=30000")
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(
            f"cannot open store {path}: {exc}; check it is writable and has free space (store.path, data_dir)"
        ) from exc
    return conn


class BaseStore(ABC):
    """Reads and writes of the store; one instance per thread that uses it.

    The reads are shared SQL on :attr:`conn`; each backend writes in its own way (batched inserts on
    SQLite, ``COPY`` on PostgreSQL) and recovers from a failed write in its own way.
    """

    conn: StoreConnection
    retention_rows: int

    def close(self) -> None:
        self.conn.close()

    # -- writes -----------------------------------------------------------------------------------
    @abstractmethod
    def write(
        self,
        samples: Sequence[SampleRow] = (),
        events: Sequence[Event] = (),
        status: Sequence[StatusRow] = (),
    ) -> None:
        """Write one batch in one transaction: all of it lands or none does."""

    @abstractmethod
    def prune(self) -> int:
        """Delete the oldest samples beyond the retention bound; returns rows deleted."""

    @abstractmethod
    def record_model_version(self, **fields: Any) -> None:
        """Insert or replace one row of ``model_versions``."""

    @abstractmethod
    def recover(self) -> None:
        """Make the store usable again after a failed write (roll back, reconnect); never raises."""

    def update_model_decision(self, scope: str, version: int, decision: str, reason: str) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE model_versions SET decision=?, reason=? WHERE scope=? AND version=?",
                (decision, reason, scope, version),
            )

    @staticmethod
    def _event_rows(events: Sequence[Event]) -> list[tuple[Any, ...]]:
        return [
            (e.ts, e.kind, e.scope, e.reason, e.version, e.previous_version, orjson.dumps(e.metrics).decode())
            for e in events
        ]

    @staticmethod
    def _version_values(fields: dict[str, Any]) -> list[Any]:
        return [orjson.dumps(v).decode() if isinstance(v, dict | list) else v for v in fields.values()]

    # -- reads ------------------------------------------------------------------------------------
    def series(
        self,
        target: str,
        *,
        device: str | None = None,
        limit: int = 5000,
        since_ts: float | None = None,
    ) -> list[Series]:
        """The newest ``limit`` readings per device (all devices, or one), oldest first."""
        devices = (
            [device]
            if device is not None
            else [
                r[0]
                for r in self.conn.execute(
                    "SELECT DISTINCT device FROM scope_status WHERE target=? ORDER BY device", (target,)
                )
            ]
            or [
                r[0]
                for r in self.conn.execute(
                    "SELECT DISTINCT device FROM samples WHERE target=? ORDER BY device", (target,)
                )
            ]
        )
        out = []
        for dev in devices:
            rows = self.conn.execute(
                "SELECT ts, value FROM samples WHERE target=? AND device=? AND ts>=?"
                " ORDER BY ts DESC LIMIT ?",
                (target, dev, since_ts if since_ts is not None else -1.0, limit),
            ).fetchall()
            if rows:
                arr = np.asarray(rows[::-1], dtype=np.float64)
                out.append(Series(dev, arr[:, 0], arr[:, 1]))
        return out

    def count_samples(self, target: str, device: str | None = None) -> int:
        if device is None:
            row = self.conn.execute("SELECT count(*) FROM samples WHERE target=?", (target,)).fetchone()
        else:
            row = self.conn.execute(
                "SELECT count(*) FROM samples WHERE target=? AND device=?", (target, device)
            ).fetchone()
        return int(row[0])

    def events(self, *, since_ts: float = 0.0, scope: str | None = None, limit: int = 1000) -> list[Event]:
        sql = "SELECT kind, scope, ts, reason, metrics, version, previous_version FROM events WHERE ts>=?"
        args: list[Any] = [since_ts]
        if scope is not None:
            sql += " AND scope=?"
            args.append(scope)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [
            Event(
                kind=k,
                scope=s,
                ts=t,
                reason=r or "",
                metrics=orjson.loads(m or "{}"),
                version=v,
                previous_version=p,
            )
            for k, s, t, r, m, v, p in self.conn.execute(sql, args).fetchall()
        ][::-1]

    def model_versions(self, scope: str | None = None) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT * FROM model_versions" + (" WHERE scope=?" if scope else "") + " ORDER BY created",
            (scope,) if scope else (),
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class Store(BaseStore):
    """The embedded store: one SQLite file (``store.path``, default ``<data_dir>/edgeloop.db``)."""

    def __init__(self, path: Path | str, *, retention_rows: int = 2_000_000, readonly: bool = False) -> None:
        self.path = Path(path)
        self.retention_rows = retention_rows
        self.conn: sqlite3.Connection = connect(self.path, readonly=readonly)

    def write(
        self,
        samples: Sequence[SampleRow] = (),
        events: Sequence[Event] = (),
        status: Sequence[StatusRow] = (),
    ) -> None:
        with self.conn:
            if samples:
                self.conn.executemany(
                    "INSERT INTO samples (device, target, ts, seq, value, forecast, persistence, prediction,"
                    " model) VALUES (?,?,?,?,?,?,?,?,?)",
                    samples,
                )
            if events:
                self.conn.executemany(
                    "INSERT INTO events (ts, kind, scope, reason, version, previous_version, metrics)"
                    " VALUES (?,?,?,?,?,?,?)",
                    self._event_rows(events),
                )
            if status:
                self.conn.executemany(
                    "INSERT OR REPLACE INTO scope_status VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", status
                )

    def prune(self) -> int:
        row = self.conn.execute("SELECT max(id) FROM samples").fetchone()
        if not row or row[0] is None:
            return 0
        cutoff = int(row[0]) - self.retention_rows
        if cutoff <= 0:
            return 0
        with self.conn:
            cur = self.conn.execute("DELETE FROM samples WHERE id <= ?", (cutoff,))
        return cur.rowcount

    def record_model_version(self, **fields: Any) -> None:
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self.conn:
            self.conn.execute(
                f"INSERT OR REPLACE INTO model_versions ({cols}) VALUES ({marks})",
                self._version_values(fields),
            )

    def recover(self) -> None:
        # A failed commit can leave a transaction open; roll it back so the retry starts clean.
        with contextlib.suppress(sqlite3.Error):
            self.conn.rollback()
