"""The embedded store: SQLite in WAL mode, written in batches, read by the trainer and the dashboard.

Tables (one row per reading and target in ``samples``; everything else is small):

``samples``        device, target, ts, seq, value (the reading), forecast (what the serving model had
                   forecast for this reading), persistence (the previous reading: the naive forecast),
                   prediction (the forecast of the next reading made now), model (its version)
``events``         drift and model events (also published on MQTT)
``scope_status``   one row per device and target, upserted by the edge when it changed: last seen,
                   rate, rolling RMSE, threshold, baselines, serving version, status
``model_versions`` every trained version: scores, window, decision and reason, MLflow run id

Several processes share the file (edge, trainer, dashboard): WAL lets readers run beside the one
writer, and ``busy_timeout`` makes a second writer wait instead of failing.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class Store:
    """Reads and writes of the store; one instance per thread that uses it."""

    def __init__(self, path: Path | str, *, retention_rows: int = 2_000_000, readonly: bool = False) -> None:
        self.path = Path(path)
        self.retention_rows = retention_rows
        self.conn = connect(self.path, readonly=readonly)

    def close(self) -> None:
        self.conn.close()

    # -- writes -----------------------------------------------------------------------------------
    def write(
        self,
        samples: Sequence[SampleRow] = (),
        events: Sequence[Event] = (),
        status: Sequence[StatusRow] = (),
    ) -> None:
        """Write one batch in one transaction: all of it lands or none does."""
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
                    [
                        (
                            e.ts,
                            e.kind,
                            e.scope,
                            e.reason,
                            e.version,
                            e.previous_version,
                            orjson.dumps(e.metrics).decode(),
                        )
                        for e in events
                    ],
                )
            if status:
                self.conn.executemany(
                    "INSERT OR REPLACE INTO scope_status VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", status
                )

    def prune(self) -> int:
        """Delete the oldest samples beyond the retention bound; returns rows deleted."""
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
        values = [orjson.dumps(v).decode() if isinstance(v, dict | list) else v for v in fields.values()]
        with self.conn:
            self.conn.execute(f"INSERT OR REPLACE INTO model_versions ({cols}) VALUES ({marks})", values)

    def update_model_decision(self, scope: str, version: int, decision: str, reason: str) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE model_versions SET decision=?, reason=? WHERE scope=? AND version=?",
                (decision, reason, scope, version),
            )

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
                    "SELECT DISTINCT device FROM scope_status WHERE target=?", (target,)
                )
            ]
            or [
                r[0]
                for r in self.conn.execute("SELECT DISTINCT device FROM samples WHERE target=?", (target,))
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
