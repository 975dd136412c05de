"""Every SQL query the dashboard runs: pure functions of a SQLite connection, returning DataFrames.

Each query reads only the columns and rows its view shows and walks an index of the store:

========================  ==========================================================================
view                      query and index
========================  ==========================================================================
fleet                     ``scope_status`` (one row per device and target: small, scanned) and
                          ``samples`` newest 33 rows per device: ``samples_scope_ts`` (cached 30 s),
                          both in :mod:`edgeloop.dashboard.fleetdata`
device chart              ``samples`` newest N rows of one (target, device): ``samples_scope_ts``
device markers            ``events`` of the device's scopes in the chart's time span: ``events_scope_ts``
models                    ``model_versions`` (small; primary key ``(scope, version)``)
event log                 ``events`` newest first: ``events_ts``, stopping after ``limit`` matches
========================  ==========================================================================

Timestamps stay epoch seconds in SQL and become naive UTC datetimes here, so the views never convert.

>>> import sqlite3
>>> conn = sqlite3.connect(":memory:")
>>> from edgeloop.adapters.store import SCHEMA
>>> _ = conn.executescript(SCHEMA)
>>> _ = conn.execute(
...     "INSERT INTO scope_status VALUES ('dev-1','voc_ppb',100.0,50,2.0,3.0,5.0,4.0,9.0,'voc_ppb:v1',"
...     "'healthy',1000.0)")
>>> device_status(conn, "voc_ppb", "dev-1")
{'count': 50, 'persistence_rmse': 4.0, 'mean_rmse': 9.0}
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from edgeloop.adapters.store import StoreConnection, connect, is_store_url
from edgeloop.telemetry.schema import EVENT_KINDS, PERSISTENCE_VERSION

DEVICE_STATUS_SQL = (
    "SELECT count, persistence_rmse, mean_rmse FROM scope_status WHERE device = ? AND target = ?"
)
SERIES_SQL = (
    "SELECT ts, value, forecast, persistence, model FROM samples"
    " WHERE target = ? AND device = ? ORDER BY ts DESC LIMIT ?"
)
# The same query forced to scan the table: the benchmark's baseline for what the index buys.
SERIES_SQL_NO_INDEX = SERIES_SQL.replace("FROM samples", "FROM samples NOT INDEXED")
DEVICE_EVENTS_SQL = (
    "SELECT ts, kind, scope, reason, version, previous_version FROM events"
    " WHERE scope IN (?, ?) AND ts >= ? AND ts <= ? ORDER BY ts LIMIT ?"
)
RECENT_DEVICE_EVENTS_SQL = (
    "SELECT ts, kind, scope, reason, version, previous_version, metrics FROM events"
    " WHERE scope IN (?, ?) ORDER BY ts DESC LIMIT ?"
)
MODEL_COLUMNS = (
    "scope, version, label, created, formulation, trigger, val_rmse, champion_rmse, persistence_rmse,"
    " mean_rmse, window_start, window_end, n_samples, decision, reason, mlflow_run_id"
)

MARKER_KINDS = {
    "drift_detected": "drift",
    "retrain_requested": "retrain",
    "retrain_started": "retrain",
    "retrain_finished": "retrain",
    "retrain_failed": "retrain",
    "model_promoted": "promotion",
    "model_rejected": "rejection",
    "model_rolled_back": "rollback",
    "model_load_failed": "rollback",
}


def scope_name(target: str, device: str | None = None) -> str:
    """The scope of a fleet model (``voc_ppb``) or of a device-specific one (``voc_ppb@dev-001``).

    >>> scope_name("voc_ppb"), scope_name("voc_ppb", "dev-001")
    ('voc_ppb', 'voc_ppb@dev-001')
    """
    return target if device is None else f"{target}@{device}"


def mlflow_run_url(base_url: str, run_id: str | None) -> str | None:
    """The MLflow UI page of a run, or ``None`` without a run id.

    MLflow's UI routes ``#/runs/<run_id>`` to the run's page in whatever experiment holds it, so the
    link needs no experiment id.

    >>> mlflow_run_url("http://127.0.0.1:5000/", "abc123")
    'http://127.0.0.1:5000/#/runs/abc123'
    >>> mlflow_run_url("http://h:5000", None) is None
    True
    """
    if not run_id:
        return None
    return f"{base_url.rstrip('/')}/#/runs/{run_id}"


def open_store(location: Path | str) -> StoreConnection | None:
    """A read-only connection to the store (a SQLite file or a ``postgresql://`` URL), or ``None``
    while no edge has created it yet.

    The dashboard never creates the store: an empty state explains that no edge has written yet.
    """
    if is_store_url(location):
        from edgeloop.adapters.store_pg import open_reader

        return open_reader(str(location))
    path = Path(location)
    if not path.is_file():
        return None
    return connect(path, readonly=True)


_TEXT_COLUMNS = frozenset(
    {"device", "target", "model", "status", "kind", "scope", "reason", "version", "previous_version",
     "metrics", "label", "formulation", "trigger", "decision", "mlflow_run_id"}
)  # fmt: skip


def _frame(conn: StoreConnection, sql: str, params: Any = ()) -> pd.DataFrame:
    """Rows of ``sql`` as a DataFrame (without pandas' SQL layer: less overhead, sqlite3 errors).

    Every non-text column is float, so a column of NULLs is NaN, not ``None`` objects.
    """
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    df = pd.DataFrame(cur.fetchall(), columns=names)
    numeric = [n for n in names if n not in _TEXT_COLUMNS]
    df[numeric] = df[numeric].astype("float64")
    return df


def _to_time(seconds: pd.Series) -> pd.Series:
    # Naive datetimes that are UTC (columns say so): tz-aware ones make pyarrow warn under pandas 3.
    return pd.to_datetime(seconds, unit="s")


# -- fleet ---------------------------------------------------------------------------------------
def targets(conn: StoreConnection) -> list[str]:
    """Targets that have a status row, in name order."""
    return [r[0] for r in conn.execute("SELECT DISTINCT target FROM scope_status ORDER BY target")]


def has_samples(conn: StoreConnection) -> bool:
    """Whether any reading was stored (reads one row, never counts)."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM samples)").fetchone()[0] == 1


def device_status(conn: StoreConnection, target: str, device: str) -> dict[str, Any]:
    """The device view's extra figures: readings so far and the naive baselines (one primary-key row)."""
    cur = conn.execute(DEVICE_STATUS_SQL, (device, target))
    row = cur.fetchone()
    names = [d[0] for d in cur.description]
    return dict(zip(names, row, strict=True)) if row else dict.fromkeys(names)


# -- device view ---------------------------------------------------------------------------------
def device_series(
    conn: StoreConnection, target: str, device: str, *, points: int = 500, window: int = 100
) -> pd.DataFrame:
    """The newest ``points`` readings of one device, oldest first, with rolling RMSEs.

    ``rolling_rmse`` is the serving models' error over the last ``window`` scored forecasts (what the
    drift detector watches) and ``rolling_persistence_rmse`` the naive last-value forecast's, for
    context. ``window - 1`` extra rows are read so the first shown point already has a full window.
    """
    extra = max(window - 1, 0)
    rows = conn.execute(SERIES_SQL, (target, device, points + extra)).fetchall()
    df = pd.DataFrame(rows[::-1], columns=["ts", "value", "forecast", "persistence", "model"])
    if df.empty:
        return df.assign(
            time=pd.Series(dtype="datetime64[ns]"),
            rolling_rmse=pd.Series(dtype=float),
            rolling_persistence_rmse=pd.Series(dtype=float),
        )
    df[["value", "forecast", "persistence"]] = df[["value", "forecast", "persistence"]].astype(float)
    min_periods = max(2, min(window, 10))
    for col, src in (("rolling_rmse", "forecast"), ("rolling_persistence_rmse", "persistence")):
        sq = (df["value"] - df[src]) ** 2
        df[col] = sq.rolling(window, min_periods=min_periods).mean() ** 0.5
    df = df.iloc[-points:].reset_index(drop=True)
    df.insert(1, "time", _to_time(df["ts"]))
    return df


def device_events(
    conn: StoreConnection,
    target: str,
    device: str,
    *,
    start_ts: float,
    end_ts: float,
    limit: int = 200,
) -> pd.DataFrame:
    """Events of the device's own scope and of the fleet scope within ``[start_ts, end_ts]``.

    These are the chart's markers; ``marker`` groups the kinds (drift, retrain, promotion, ...).
    """
    df = _frame(
        conn, DEVICE_EVENTS_SQL, (scope_name(target, device), scope_name(target), start_ts, end_ts, limit)
    )
    df["marker"] = df["kind"].map(MARKER_KINDS).fillna("other")  # a kind newer than this dashboard
    df["reason"] = df["reason"].map(iso_epochs)
    df.insert(1, "time", _to_time(df["ts"]))
    return df


def recent_device_events(conn: StoreConnection, target: str, device: str, *, limit: int = 20) -> pd.DataFrame:
    """The newest events of the device's scope and the fleet scope, newest first, at any time."""
    df = _frame(conn, RECENT_DEVICE_EVENTS_SQL, (scope_name(target, device), scope_name(target), limit))
    return _event_frame(df)


# -- models --------------------------------------------------------------------------------------
def _target_scope_clause(target: str) -> tuple[str, tuple[str, ...]]:
    # A range on the primary key instead of LIKE: index-friendly, and '_' in names is no wildcard.
    # '@' < 'A', so every "target@device" sorts in ["target@", "target" + chr(ord("@") + 1)).
    return "(scope = ? OR (scope >= ? AND scope < ?))", (target, f"{target}@", f"{target}A")


def model_scopes(conn: StoreConnection, target: str) -> list[str]:
    """Scopes of ``target`` that have at least one trained version, the fleet scope first."""
    clause, args = _target_scope_clause(target)
    sql = f"SELECT DISTINCT scope FROM model_versions WHERE {clause} ORDER BY scope"
    return [r[0] for r in conn.execute(sql, args)]


def model_versions(
    conn: StoreConnection,
    target: str,
    *,
    scope: str | None = None,
    limit: int = 1000,
) -> pd.DataFrame:
    """Version history of one scope, or of every scope of ``target``; newest first.

    ``gain`` is the share by which the version beat the champion on the same holdout (negative: worse).
    """
    args: tuple[str, ...]
    if scope is not None:
        clause, args = "scope = ?", (scope,)
    else:
        clause, args = _target_scope_clause(target)
    df = _frame(
        conn,
        f"SELECT {MODEL_COLUMNS} FROM model_versions WHERE {clause} ORDER BY created DESC LIMIT ?",
        (*args, limit),
    )
    df["gain"] = (df["champion_rmse"] - df["val_rmse"]) / df["champion_rmse"].where(df["champion_rmse"] > 0)
    for col in ("created", "window_start", "window_end"):
        df[col] = _to_time(df[col])
    return df


# -- event log -----------------------------------------------------------------------------------
def _format_metrics(text: str | None) -> str:
    """``{"rmse": 12.345, "n": 3}`` as ``rmse=12.35 n=3``.

    >>> _format_metrics('{"rmse": 12.345, "n": 3, "x": null}')
    'rmse=12.35 n=3 x=-'
    """
    if not text:
        return ""
    try:
        data: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if not isinstance(data, dict):
        return str(data)
    parts = []
    for key, value in data.items():
        if isinstance(value, float):
            shown = f"{value:.4g}" if math.isfinite(value) else str(value)
        else:
            shown = "-" if value is None else str(value)
        parts.append(f"{key}={shown}")
    return " ".join(parts)


_EPOCH = re.compile(r"\b(1[0-9]{9})(\.[0-9]+)?\b")  # epoch seconds, 2001-2286


def iso_epochs(text: str | None) -> str | None:
    """``text`` with epoch-second timestamps written as UTC times (reasons from older edges).

    >>> iso_epochs("drift detected at ts 1700389100.0"), iso_epochs(None)
    ('drift detected at ts 2023-11-19 10:18:20Z', None)
    """
    if not text:
        return text
    return _EPOCH.sub(lambda m: f"{datetime.fromtimestamp(float(m.group(0)), UTC):%Y-%m-%d %H:%M:%S}Z", text)


def _event_frame(df: pd.DataFrame) -> pd.DataFrame:
    df.insert(0, "time", _to_time(df["ts"]))
    df["metrics"] = df["metrics"].map(_format_metrics)
    df["reason"] = df["reason"].map(iso_epochs)
    return df.drop(columns=["ts"])


def events(
    conn: StoreConnection,
    *,
    kinds: list[str] | None = None,
    scope_contains: str = "",
    limit: int = 500,
) -> pd.DataFrame:
    """The newest ``limit`` events, newest first, of the given kinds and with ``scope_contains`` in
    their scope (case-sensitive, like scope names). Walks ``events_ts`` backwards and stops at
    ``limit`` matches."""
    sql = "SELECT ts, kind, scope, reason, version, previous_version, metrics FROM events"
    where: list[str] = []
    args: list[Any] = []
    if kinds:
        unknown = set(kinds) - set(EVENT_KINDS)
        if unknown:
            raise ValueError(f"unknown event kinds {sorted(unknown)}")
        where.append(f"kind IN ({', '.join('?' for _ in kinds)})")
        args.extend(kinds)
    if scope_contains.strip():
        where.append("instr(scope, ?) > 0")
        args.append(scope_contains.strip())
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY ts DESC LIMIT ?"
    args.append(limit)
    return _event_frame(_frame(conn, sql, args))


# -- diagnostics ---------------------------------------------------------------------------------
def query_plan(conn: StoreConnection, sql: str, args: tuple[Any, ...] = ()) -> str:
    """SQLite's plan for ``sql``, one step per line (what the benchmark and tests check)."""
    return "\n".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))


def is_persistence(model: str | None) -> bool:
    """Whether a serving version is the no-model fallback.

    >>> is_persistence("persistence"), is_persistence("voc_ppb:v3"), is_persistence(None)
    (True, False, True)
    """
    return model is None or model == PERSISTENCE_VERSION
