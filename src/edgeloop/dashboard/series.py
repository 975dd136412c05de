"""The device chart's readings over a chosen time range, thinned to a bounded number of points.

Ranges are in reading time and end at the device's newest reading, so a replayed or simulated
stream shows its own hours. A range holding more readings than the chart draws is read as equal
time buckets (one ``GROUP BY`` over the ``samples_scope_ts`` range): each point is a bucket's mean
reading and forecast, and the rolling RMSEs are computed from each bucket's mean squared error, so
thinning never hides an error spike inside a bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from edgeloop.adapters.store import StoreConnection
from edgeloop.dashboard import fleetdata as fd
from edgeloop.dashboard import queries as q

# Label -> seconds of reading time (None: everything stored).
RANGES: dict[str, float | None] = {
    "15 min": 15 * 60.0,
    "1 h": 3600.0,
    "6 h": 6 * 3600.0,
    "1 day": 86400.0,
    "7 days": 7 * 86400.0,
    "all": None,
}
AUTO = "auto"  # the newest readings, reaching back to the last drift or model change
# A refresh reads at most about this many readings of one device (the bucket query scans its range):
# a long range of a fast device is shortened to its newest part, and the page says so.
MAX_SCAN = 500_000

NEWEST_SQL = "SELECT ts FROM samples WHERE target = ? AND device = ? ORDER BY ts {order} LIMIT 1"
COUNT_SQL = "SELECT COUNT(*) FROM samples WHERE target = ? AND device = ? AND ts >= ? AND ts <= ?"
RANGE_SQL = (
    "SELECT ts, value, forecast, persistence, model FROM samples"
    " WHERE target = ? AND device = ? AND ts >= ? AND ts <= ? ORDER BY ts"
)
BUCKET_SQL = (
    "SELECT MIN(ts) AS ts, AVG(value) AS value, AVG(forecast) AS forecast, AVG(persistence) AS persistence,"
    " MAX(model) AS model, AVG((value - forecast) * (value - forecast)) AS se_model,"
    " AVG((value - persistence) * (value - persistence)) AS se_persistence, COUNT(*) AS n,"
    " COUNT(forecast) AS n_model, COUNT(persistence) AS n_persistence"
    " FROM samples WHERE target = ? AND device = ? AND ts >= ? AND ts <= ?"
    " GROUP BY CAST((ts - ?) / ? AS INTEGER) ORDER BY ts"
)
LAST_EVENT_SQL = (
    "SELECT MAX(ts) FROM events WHERE scope IN (?, ?) AND kind IN "
    "('drift_detected', 'model_promoted', 'model_rolled_back', 'retrain_started', 'retrain_failed')"
)


@dataclass(frozen=True)
class Window:
    """What the chart shows: ``[start, end]`` in reading time, and how (``bucket_s`` > 0: thinned)."""

    start: float
    end: float
    readings: int
    bucket_s: float
    capped: bool = False


def span_of(conn: StoreConnection, target: str, device: str) -> tuple[float, float] | None:
    """The device's oldest and newest reading time (two index seeks), or ``None`` without readings."""
    args = (target, device)
    newest = conn.execute(NEWEST_SQL.format(order="DESC"), args).fetchone()
    if newest is None:
        return None
    oldest = conn.execute(NEWEST_SQL.format(order="ASC"), args).fetchone()
    return float(oldest[0]), float(newest[0])


def auto_start(conn: StoreConnection, target: str, device: str, *, points: int, end: float) -> float:
    """The start of the ``auto`` range: the newest ``points`` readings, or from a little before the
    device's last drift or model event when that is older, so its markers are in view."""
    row = conn.execute(q.SERIES_SQL, (target, device, points)).fetchall()
    start = float(row[-1][0]) if row else end
    last = conn.execute(LAST_EVENT_SQL, (q.scope_name(target, device), q.scope_name(target))).fetchone()[0]
    if last is not None and last < start:
        start = float(last) - 0.1 * max(end - float(last), 1.0)
    return start


def window_for(
    conn: StoreConnection, target: str, device: str, choice: str, *, points: int, max_scan: int = MAX_SCAN
) -> Window | None:
    """The time window of ``choice`` (a key of :data:`RANGES` or :data:`AUTO`), or ``None`` without data.

    A window that would hold more than about ``max_scan`` readings (judged by the device's median
    gap) keeps only its newest part (``capped``)."""
    span = span_of(conn, target, device)
    if span is None:
        return None
    oldest, end = span
    if choice == AUTO:
        start = auto_start(conn, target, device, points=points, end=end)
    else:
        seconds = RANGES.get(choice)
        start = oldest if seconds is None else max(oldest, end - seconds)
    interval = fd.reporting_interval(conn, target, device)
    capped = interval is not None and (end - start) / interval > max_scan
    if capped and interval is not None:
        start = end - max_scan * interval
    readings = int(conn.execute(COUNT_SQL, (target, device, start, end)).fetchone()[0])
    bucket = (end - start) / points if readings > points and end > start else 0.0
    return Window(start, end, readings, bucket, capped)


def range_series(
    conn: StoreConnection, target: str, device: str, window: Window, *, rolling: int = 100
) -> pd.DataFrame:
    """Readings of ``window`` oldest first with the columns of :func:`queries.device_series`, plus
    ``n`` (readings per point). ``rolling`` is the drift window in readings; for buckets it becomes
    as many buckets as hold about that many readings."""
    args = (target, device, window.start, window.end)
    if window.bucket_s <= 0:
        numeric = ["ts", "value", "forecast", "persistence"]
        df = pd.DataFrame(conn.execute(RANGE_SQL, args).fetchall(), columns=[*numeric, "model"])
        df[numeric] = df[numeric].astype(float)
        df["n"] = 1.0
        df["se_model"] = (df["value"] - df["forecast"]) ** 2
        df["se_persistence"] = (df["value"] - df["persistence"]) ** 2
        df["n_model"] = df["forecast"].notna().astype(float)
        df["n_persistence"] = df["persistence"].notna().astype(float)
        per_point = 1.0
    else:
        cur = conn.execute(BUCKET_SQL, (*args, window.start, window.bucket_s))
        df = pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
        numeric = [c for c in df.columns if c != "model"]
        df[numeric] = df[numeric].astype(float)
        per_point = max(float(df["n"].mean()), 1.0) if not df.empty else 1.0
    span = max(1, round(rolling / per_point))
    for col, se, n in (
        ("rolling_rmse", "se_model", "n_model"),
        ("rolling_persistence_rmse", "se_persistence", "n_persistence"),
    ):
        weight = df[n].where(df[se].notna(), 0.0)
        total = (df[se].fillna(0.0) * weight).rolling(span, min_periods=1).sum()
        count = weight.rolling(span, min_periods=1).sum()
        df[col] = (total / count.where(count >= min(2, span))) ** 0.5
    df.insert(1, "time", pd.to_datetime(df["ts"], unit="s"))
    return df.drop(columns=["se_model", "se_persistence", "n_model", "n_persistence"])
