"""Every SQL query the dashboard runs: pure functions of a SQLite connection, returning DataFrames.

Each query reads only the columns and rows its view shows and walks an index of the store:

========================  ==========================================================================
view                      query and index
========================  ==========================================================================
fleet                     ``scope_status`` (one row per device and target: small, scanned)
device intervals          ``samples`` newest 33 rows per device: ``samples_scope_ts`` (cached 30 s)
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
>>> fleet(conn, "voc_ppb", now=1005.0, silent_after=30.0)[["device", "status", "rmse_ratio"]]
  device   status  rmse_ratio
0  dev-1  healthy         0.6
>>> fleet(conn, "voc_ppb", now=1031.0, silent_after=30.0)["status"].tolist()
['silent']
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from edgeloop.adapters.store import connect
from edgeloop.telemetry.schema import EVENT_KINDS, PERSISTENCE_VERSION

# Statuses as the edge writes them, plus ``silent`` which only the dashboard derives.
EDGE_STATUSES = ("healthy", "drifting", "retraining", "probation", "rolled_back")
STATUSES = (*EDGE_STATUSES, "silent")
# Sort order of the fleet table: what needs a look first.
STATUS_SEVERITY = {
    "drifting": 0,
    "rolled_back": 1,
    "silent": 2,
    "retraining": 3,
    "probation": 4,
    "healthy": 5,
}

FLEET_SQL = (
    "SELECT device, last_seen, count, rate, rmse, threshold, model, status, updated FROM scope_status"
    " WHERE target = ?"
)
DEVICE_STATUS_SQL = (
    "SELECT count, persistence_rmse, mean_rmse FROM scope_status WHERE device = ? AND target = ?"
)
SERIES_SQL = (
    "SELECT ts, value, forecast, persistence, model FROM samples"
    " WHERE target = ? AND device = ? ORDER BY ts DESC LIMIT ?"
)
INTERVAL_SQL = "SELECT ts FROM samples WHERE target = ? AND device = ? ORDER BY ts DESC LIMIT ?"
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


def open_store(path: Path | str) -> sqlite3.Connection | None:
    """A read-only connection to the store, or ``None`` while the file does not exist yet.

    The dashboard never creates the store: an empty state explains that no edge has written yet.
    """
    path = Path(path)
    if not path.is_file():
        return None
    return connect(path, readonly=True)


_TEXT_COLUMNS = frozenset(
    {"device", "target", "model", "status", "kind", "scope", "reason", "version", "previous_version",
     "metrics", "label", "formulation", "trigger", "decision", "mlflow_run_id"}
)  # fmt: skip


def _frame(conn: sqlite3.Connection, sql: str, params: Any = ()) -> pd.DataFrame:
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
def targets(conn: sqlite3.Connection) -> list[str]:
    """Targets that have a status row, in name order."""
    return [r[0] for r in conn.execute("SELECT DISTINCT target FROM scope_status ORDER BY target")]


def has_samples(conn: sqlite3.Connection) -> bool:
    """Whether any reading was stored (reads one row, never counts)."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM samples)").fetchone()[0] == 1


def reporting_interval(conn: sqlite3.Connection, target: str, device: str, *, gaps: int = 32) -> float | None:
    """The device's usual gap between readings: the median of its newest ``gaps`` gaps, in reading
    time (a seek of ``samples_scope_ts``, ``gaps + 1`` rows); ``None`` before two distinct readings.

    The median ignores a single long pause (a restart) and a burst of catch-up readings alike.
    """
    ts = [r[0] for r in conn.execute(INTERVAL_SQL, (target, device, gaps + 1))]
    diffs = [a - b for a, b in itertools.pairwise(ts) if a > b]
    return float(statistics.median(diffs)) if diffs else None


class IntervalCache:
    """Each device's learned reporting interval, re-read from the store at most every ``ttl`` seconds:
    an interval changes slowly, and a fleet of thousands would otherwise cost a seek per device per
    refresh. One per browser session.

    >>> conn = sqlite3.connect(":memory:")
    >>> _ = conn.execute("CREATE TABLE samples (target, device, ts)")
    >>> _ = conn.executemany("INSERT INTO samples VALUES ('t', 'a', ?)", [(10.0 * i,) for i in range(5)])
    >>> cache = IntervalCache()
    >>> cache.intervals(conn, "t", ["a", "b"], now=0.0)
    {'a': 10.0, 'b': None}
    """

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._known: dict[tuple[str, str], tuple[float | None, float]] = {}

    def intervals(
        self, conn: sqlite3.Connection, target: str, devices: list[str], now: float
    ) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for device in devices:
            known = self._known.get((target, device))
            if known is None or known[0] is None or now - known[1] > self.ttl:
                known = (reporting_interval(conn, target, device), now)
                self._known[(target, device)] = known
            out[device] = known[0]
        return out


def fleet(
    conn: sqlite3.Connection,
    target: str,
    *,
    now: float,
    silent_after: float = 5.0,
    k: float = 3.0,
    intervals: Mapping[str, float | None] | None = None,
) -> pd.DataFrame:
    """One row per device of ``target``, the most urgent first, with the derived ``silent`` status.

    A device is silent when nothing about it reached the store for ``k`` of its own reporting
    intervals, and never sooner than ``silent_after`` seconds (the edge writes status rows every
    ``edge.status_interval``, so a fast device cannot be judged finer than that). Both sides are wall
    time: ``age_s`` is wall seconds since the edge last wrote the device's status row, which it does
    whenever a reading arrives. ``interval_s`` is the larger of the median gap between its readings
    (reading time, from ``intervals`` or the store) and one over its wall-clock rate: in an
    accelerated replay the reading-time gap is the longer one, so a replayed device is never called
    silent too early, only late.
    """
    df = _frame(conn, FLEET_SQL, (target,))
    if df.empty:
        return df.assign(
            age_s=pd.Series(dtype=float), rmse_ratio=pd.Series(dtype=float), interval_s=pd.Series(dtype=float)
        )
    devices = df["device"].tolist()
    if intervals is None:
        intervals = {d: reporting_interval(conn, target, d) for d in devices}
    learned = pd.Series([intervals.get(d) for d in devices], index=df.index, dtype="float64")
    by_rate = 1.0 / df["rate"].where(df["rate"] > 0)
    df["interval_s"] = pd.concat([learned, by_rate], axis=1).max(axis=1)
    df["age_s"] = (now - df["updated"]).clip(lower=0)
    df["silent_after_s"] = (k * df["interval_s"]).clip(lower=silent_after).fillna(silent_after)
    df["status"] = df["status"].where(df["age_s"] <= df["silent_after_s"], "silent").fillna("healthy")
    # A slow device's last status row often says rate 0 (no reading in that second): its pace is the
    # truer rate while it is live.
    live = df["status"] != "silent"
    df["rate"] = df["rate"].where(~live | (df["rate"] > 0), 1.0 / df["interval_s"])
    df["rmse_ratio"] = df["rmse"] / df["threshold"].where(df["threshold"] > 0)
    df["last_seen"] = _to_time(df["last_seen"])
    df["severity"] = df["status"].map(STATUS_SEVERITY).fillna(len(STATUS_SEVERITY))
    df = df.sort_values(["severity", "device"], kind="stable").drop(columns=["severity", "updated", "count"])
    return df.reset_index(drop=True)


def device_status(conn: sqlite3.Connection, target: str, device: str) -> dict[str, Any]:
    """The device view's extra figures: readings so far and the naive baselines (one primary-key row)."""
    cur = conn.execute(DEVICE_STATUS_SQL, (device, target))
    row = cur.fetchone()
    names = [d[0] for d in cur.description]
    return dict(zip(names, row, strict=True)) if row else dict.fromkeys(names)


@dataclass(frozen=True)
class FleetSummary:
    """The figures above the fleet table."""

    devices: int
    msgs_per_s: float
    drifting: int
    silent: int
    attention: int  # drifting, rolled back or silent

    @classmethod
    def of(cls, df: pd.DataFrame) -> FleetSummary:
        if df.empty:
            return cls(0, 0.0, 0, 0, 0)
        status = df["status"]
        live = status != "silent"
        return cls(
            devices=int(df["device"].nunique()),
            msgs_per_s=float(df.loc[live, "rate"].fillna(0).sum()),
            drifting=int((status == "drifting").sum()),
            silent=int((~live).sum()),
            attention=int(status.isin(["drifting", "rolled_back", "silent"]).sum()),
        )


def filter_fleet(df: pd.DataFrame, *, statuses: list[str] | None = None, search: str = "") -> pd.DataFrame:
    """Rows whose status is one of ``statuses`` (all when empty) and whose device contains ``search``.

    >>> df = pd.DataFrame({"device": ["dev-001", "pump-7"], "status": ["healthy", "silent"]})
    >>> filter_fleet(df, search="PUMP")["device"].tolist()
    ['pump-7']
    >>> filter_fleet(df, statuses=["healthy"])["device"].tolist()
    ['dev-001']
    """
    mask = pd.Series(True, index=df.index)
    if statuses:
        mask &= df["status"].isin(statuses)
    if search.strip():
        mask &= df["device"].str.contains(search.strip(), case=False, regex=False)
    return df[mask].reset_index(drop=True)


# -- device view ---------------------------------------------------------------------------------
def device_series(
    conn: sqlite3.Connection, target: str, device: str, *, points: int = 500, window: int = 100
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
    conn: sqlite3.Connection,
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
    df.insert(1, "time", _to_time(df["ts"]))
    return df


def recent_device_events(
    conn: sqlite3.Connection, target: str, device: str, *, limit: int = 20
) -> pd.DataFrame:
    """The newest events of the device's scope and the fleet scope, newest first, at any time."""
    df = _frame(conn, RECENT_DEVICE_EVENTS_SQL, (scope_name(target, device), scope_name(target), limit))
    return _event_frame(df)


# -- models --------------------------------------------------------------------------------------
def _target_scope_clause(target: str) -> tuple[str, tuple[str, ...]]:
    # A range on the primary key instead of LIKE: index-friendly, and '_' in names is no wildcard.
    # '@' < 'A', so every "target@device" sorts in ["target@", "target" + chr(ord("@") + 1)).
    return "(scope = ? OR (scope >= ? AND scope < ?))", (target, f"{target}@", f"{target}A")


def model_scopes(conn: sqlite3.Connection, target: str) -> list[str]:
    """Scopes of ``target`` that have at least one trained version, the fleet scope first."""
    clause, args = _target_scope_clause(target)
    sql = f"SELECT DISTINCT scope FROM model_versions WHERE {clause} ORDER BY scope"
    return [r[0] for r in conn.execute(sql, args)]


def model_versions(
    conn: sqlite3.Connection,
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


def _event_frame(df: pd.DataFrame) -> pd.DataFrame:
    df.insert(0, "time", _to_time(df["ts"]))
    df["metrics"] = df["metrics"].map(_format_metrics)
    return df.drop(columns=["ts"])


def events(
    conn: sqlite3.Connection,
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
def query_plan(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> str:
    """SQLite's plan for ``sql``, one step per line (what the benchmark and tests check)."""
    return "\n".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))


def is_persistence(model: str | None) -> bool:
    """Whether a serving version is the no-model fallback.

    >>> is_persistence("persistence"), is_persistence("voc_ppb:v3"), is_persistence(None)
    (True, False, True)
    """
    return model is None or model == PERSISTENCE_VERSION
