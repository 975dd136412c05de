"""The fleet table and device liveness: who is live, who is silent, judged per device.

The edge writes a device's status row (``scope_status``) whenever something about it changed, with
the wall-clock time it wrote it; a device that stops gets one more row (rate 0) and then none. So
the age of the row is "how long since the edge last had news of it" in wall time, and a device is
silent when that exceeds ``k`` of its own reporting intervals, learned from its stored readings.

>>> import sqlite3
>>> conn = sqlite3.connect(":memory:")
>>> from edgeloop.adapters.store import SCHEMA
>>> _ = conn.executescript(SCHEMA)
>>> _ = conn.execute(
...     "INSERT INTO scope_status VALUES ('dev-1','voc_ppb',100.0,50,2.0,3.0,5.0,4.0,9.0,'voc_ppb:v1',"
...     "'healthy',1000.0)")
>>> fleet(conn, "voc_ppb", now=1005.0, silent_after=30.0)[["device", "status", "rmse_ratio"]]
  device   status  rmse_ratio
0  dev-1  healthy         0.6
>>> fleet(conn, "voc_ppb", now=1031.0, silent_after=30.0)["status"].tolist()
['silent']
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from edgeloop.adapters.store import StoreConnection
from edgeloop.dashboard.queries import _frame, _to_time

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
INTERVAL_SQL = "SELECT ts FROM samples WHERE target = ? AND device = ? ORDER BY ts DESC LIMIT ?"


def reporting_interval(conn: StoreConnection, target: str, device: str, *, gaps: int = 32) -> float | None:
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

    >>> import sqlite3
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
        self, conn: StoreConnection, target: str, devices: list[str], now: float
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
    conn: StoreConnection,
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
