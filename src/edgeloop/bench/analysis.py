"""What a window's send and receive times say: loss, duplicates, rates, latency, backlog; the targets.

Pure functions of numpy arrays and plain dicts, so they are tested without a broker.

>>> p = percentiles_ms(np.array([0.001, 0.002, 0.003, 0.004]))
>>> p["p50"], p["max"]
(2.5, 4.0)
>>> rows = timeline(np.array([0.1, 0.5, 1.2]), np.array([0.010, 0.030, 0.020]), origin=0.0)
>>> rows
[[0.0, 2, 20.0, 30.0], [1.0, 1, 20.0, 20.0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeloop.bench.loadgen import SendLog


def percentiles_ms(latency_s: np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99/max of latencies (seconds in, milliseconds out; None when empty)."""
    if len(latency_s) == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(latency_s, [50, 95, 99]) * 1000.0
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(latency_s.max()) * 1000.0, 3),
    }


def timeline(sent_at: np.ndarray, latency: np.ndarray, origin: float, step: float = 1.0) -> list[list[float]]:
    """Per ``step`` seconds of send time: [start (s from ``origin``), messages, p50 ms, max ms]."""
    if len(sent_at) == 0:
        return []
    bucket = ((sent_at - origin) // step).astype(np.int64)
    rows = []
    for b in np.unique(bucket):
        lat = latency[bucket == b] * 1000.0
        rows.append(
            [
                round(float(b * step), 1),
                len(lat),
                round(float(np.median(lat)), 1),
                round(float(lat.max()), 1),
            ]
        )
    return rows


def analyze(
    sent: SendLog,
    ks: np.ndarray,
    ts: np.ndarray,
    *,
    between: tuple[float, float] | None = None,
    origin: float | None = None,
) -> dict[str, Any]:
    """Loss, duplicates, throughput and latency of the messages of ``sent`` (optionally only those
    sent in the monotonic interval ``between``), given every prediction's ``k`` and receive time.
    With ``origin``, also a per-second latency timeline of answered messages (send time from origin)."""
    sent_at = sent.sent_at
    lo, hi = 0, len(sent_at)
    if between is not None:
        lo, hi = (int(i) for i in np.searchsorted(sent_at, between))
    n = hi - lo
    first = sent.first + lo
    mine = (ks >= first) & (ks < first + n)
    k, t = ks[mine] - first, ts[mine]
    counts = np.bincount(k, minlength=n) if n else np.zeros(0, dtype=np.int64)
    answered = int(np.count_nonzero(counts))
    order = np.argsort(t, kind="stable")
    uniq, where = np.unique(k[order], return_index=True)
    first_t = t[order][where]
    latency = first_t - sent_at[lo:hi][uniq]
    start = float(sent_at[lo]) if n else sent.started
    end = float(sent_at[hi - 1]) if n else sent.ended
    span = (end - start) if between is not None else (sent.ended - sent.started)
    last_answer = float(first_t.max()) if answered else start
    # Backlog growth: median latency of the last quarter of the window minus that of the second quarter.
    growth = None
    if answered >= 8:
        sent_first = sent_at[lo:hi][uniq]
        q = (end - start) / 4
        second = latency[(sent_first >= start + q) & (sent_first < start + 2 * q)]
        last = latency[sent_first >= start + 3 * q]
        if len(second) and len(last):
            growth = round(float(np.median(last) - np.median(second)) * 1000.0, 3)
    extra: dict[str, Any] = {}
    if origin is not None:
        extra["timeline"] = timeline(sent_at[lo:hi][uniq], latency, origin)
    # Backlog at the end: messages of the window still unanswered when its last message was sent,
    # in seconds of load (a pipeline that keeps up holds only its batching delay in flight).
    pending = (n - answered) + int(np.count_nonzero(first_t > end))
    backlog_s = round(pending / (n / span), 3) if n and span > 0 else None
    return {
        "sent": n,
        "seconds": round(span, 3),
        "send_rate": round(n / span, 1) if span > 0 else 0.0,
        "answered": answered,
        "answer_rate": round(answered / (last_answer - start), 1) if last_answer > start else 0.0,
        "lost": n - answered,
        "duplicated": int((counts - 1).clip(min=0).sum()) if n else 0,
        "latency_ms": percentiles_ms(latency),
        "backlog_growth_ms": growth,
        "backlog_end_s": backlog_s,
        **extra,
    }


def passed(
    result: dict[str, Any], offered: float, *, max_growth_ms: float = 25.0, max_backlog_s: float = 0.5
) -> bool:
    """Sustained at ``offered``: all answered exactly once, the generator kept the rate, and the backlog
    neither grew during the window nor stood at more than ``max_backlog_s`` of load at its end."""
    growth, backlog = result["backlog_growth_ms"], result["backlog_end_s"]
    return (
        result["sent"] > 0
        and result["lost"] == 0
        and result["duplicated"] == 0
        and result["send_rate"] >= 0.97 * offered
        and growth is not None
        and growth <= max_growth_ms
        and backlog is not None
        and backlog <= max_backlog_s
    )


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value, the limit and whether it is met."""
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, higher_is_better: bool, note: str = "") -> None:
        met = None if value is None else (value >= limit if higher_is_better else value <= limit)
        targets.append({"target": name, "value": value, "limit": limit, "met": met, "note": note})

    for key, run in result.get("qos", {}).items():
        sustained = run.get("sustained_rate")
        ceiling = run.get("ceiling") or {}
        for kind in ("paho", "lean"):
            if kind in ceiling and "max" in run:
                limit = round(0.5 * ceiling[kind]["rate"], 1)
                add(f"QoS {key}: sustained >= 50% of {kind} do-nothing subscriber", sustained, limit, True)
        if key == "0" and "max" in run:
            add("QoS 0: sustained >= 20,000 msg/s", sustained, 20000.0, True)
        lat = run.get("latency")
        if lat is not None:
            p99 = lat["latency_ms"]["p99"]
            lossless = lat["lost"] == 0 and lat["duplicated"] == 0
            add(
                f"QoS {key}: p99 at {lat['offered_rate']:,.0f} msg/s <= 50 ms",
                p99 if lossless else None,
                50.0,
                False,
                "" if lossless else f"{lat['lost']} lost, {lat['duplicated']} duplicated",
            )
        for name in ("first_model", "retrain"):
            window = run.get(name)
            if not window or "lost" not in window:
                continue
            label = "first model swap" if name == "first_model" else "retrain + swap"
            add(f"QoS {key}, {label}: lost == 0", window["lost"], 0, False)
            add(f"QoS {key}, {label}: duplicated == 0", window["duplicated"], 0, False)
            add(f"QoS {key}, {label}: p99 <= 100 ms", window["latency_ms"]["p99"], 100.0, False)
        steady = "rss_steady_mb" in run
        rss = (run.get("rss_steady_mb") or (run.get("edge") or {}).get("rss_peak_mb") or {}).get("edge")
        devices = result.get("options", {}).get("devices")
        note = "main process, up to the end of the max window" if steady else "main process, whole run"
        add(
            f"QoS {key}: edge RSS <= 150 MB with {devices:,} devices",
            rss,
            150.0,
            False,
            note if devices == 1000 else "the target is stated for 1,000 devices",
        )
    if "nats" in result:
        from edgeloop.bench.nats_report import nats_targets

        targets.extend(nats_targets(result))
    return targets


def backlog_drain(sent: SendLog, ks: np.ndarray, ts: np.ndarray) -> dict[str, Any]:
    """An overload window's backlog: messages of ``sent`` unanswered when the generator stopped, how
    long after that the last one was answered, and the rate the backlog drained at.

    >>> sent = SendLog(first=0, sent_at=np.array([0.0, 0.5, 1.0, 1.5]), started=0.0, ended=2.0)
    >>> backlog_drain(sent, np.array([0, 1, 2, 3]), np.array([0.1, 1.9, 2.5, 3.0]))
    {'backlog_at_stop': 2, 'drain_s': 1.0, 'drain_rate': 2.0, 'answered_during_load_rate': 1.0}
    """
    n = sent.count
    mine = (ks >= sent.first) & (ks < sent.first + n)
    k, t = ks[mine] - sent.first, ts[mine]
    first_t = np.full(n, np.inf)
    np.minimum.at(first_t, k, t)
    answered = np.isfinite(first_t)
    during = int(np.count_nonzero(first_t <= sent.ended))
    backlog = n - during
    last = float(first_t[answered].max()) if answered.any() else sent.ended
    drain_s = max(0.0, last - sent.ended) if backlog else 0.0
    span = sent.ended - sent.started
    return {
        "backlog_at_stop": backlog,
        "drain_s": round(drain_s, 3),
        "drain_rate": round((backlog - int(np.count_nonzero(~answered))) / drain_s, 1)
        if drain_s > 0
        else None,
        "answered_during_load_rate": round(during / span, 1) if span > 0 else 0.0,
    }
