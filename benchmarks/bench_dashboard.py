"""How long one dashboard refresh takes on a big store, per view, and what the index buys.

    python benchmarks/bench_dashboard.py --rows 1000000 --devices 100 [--reps 20] [--json out.json]

Fills a temporary store (the real schema, via Store) with ``--rows`` sample rows spread over
``--devices`` devices, interleaved in time as an edge writes them, plus a status row per device,
events and model versions; then runs each view's queries exactly as the dashboard does (a fresh
read-only connection, the functions of ``edgeloop.dashboard.queries``, their pandas work) ``--reps``
times after one warm-up, and prints median and p95 per view. In the same run it times the device
chart's query with and without the ``samples_scope_ts`` index (``NOT INDEXED``: a full scan), so the
index's effect is visible. Target: a full refresh (all four views) under 1 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeloop.adapters.store import Store
from edgeloop.dashboard import fleetdata as fd
from edgeloop.dashboard import lineage as lin
from edgeloop.dashboard import queries as q
from edgeloop.dashboard import series as sr

TARGET = "voc_ppb"
CHUNK = 100_000


def _sample_chunks(rows: int, devices: int, t0: float, seed: int) -> Iterator[list[tuple[Any, ...]]]:
    """Rows in arrival order (all devices at t, then t+1, ...), ``CHUNK`` at a time."""
    rng = np.random.default_rng(seed)
    names = np.array([f"dev-{i:03d}" for i in range(devices)], dtype=object)
    steps = -(-rows // devices)
    level = 150 + 5 * np.arange(devices)
    last = level.astype(float)
    done = 0
    step = 0
    while done < rows:
        n_steps = min(max(CHUNK // devices, 1), steps - step)
        k = np.arange(step, step + n_steps)
        # shape (steps, devices): a daily-ish wave per device plus noise
        wave = 30 * np.sin(2 * np.pi * k[:, None] / 3600 + np.arange(devices)[None, :])
        value = level[None, :] + wave + rng.normal(0, 4, (n_steps, devices))
        prev = np.vstack([last[None, :], value[:-1]])
        last = value[-1]
        forecast = value + rng.normal(0, 3, value.shape)
        ts = np.repeat(t0 + k.astype(float), devices)
        take = min(value.size, rows - done)
        cols = (
            np.tile(names, n_steps)[:take].tolist(),
            ts[:take].tolist(),
            np.repeat(k, devices)[:take].tolist(),
            value.ravel()[:take].tolist(),
            forecast.ravel()[:take].tolist(),
            prev.ravel()[:take].tolist(),
            (forecast.ravel()[:take] + 0.5).tolist(),
        )
        yield [
            (dev, TARGET, t, s, v, f, p, pr, "voc_ppb:v3")
            for dev, t, s, v, f, p, pr in zip(*cols, strict=True)
        ]
        done += take
        step += n_steps


def fill(path: Path, rows: int, devices: int, seed: int = 0) -> dict[str, Any]:
    """Write the benchmark store; returns what was written and how long it took."""
    Store(path).close()  # the real schema and pragmas
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # a throwaway file: skip fsyncs while filling
    start = time.perf_counter()
    now = time.time()
    t0 = now - rows / devices
    with conn:
        # Building the samples indexes once after the insert is faster than updating them per row.
        conn.execute("DROP INDEX samples_scope_ts")
        conn.execute("DROP INDEX samples_ts")
        for chunk in _sample_chunks(rows, devices, t0, seed):
            conn.executemany(
                "INSERT INTO samples (device, target, ts, seq, value, forecast, persistence, prediction,"
                " model) VALUES (?,?,?,?,?,?,?,?,?)",
                chunk,
            )
        conn.execute("CREATE INDEX samples_scope_ts ON samples (target, device, ts)")
        conn.execute("CREATE INDEX samples_ts ON samples (ts)")
        rng = np.random.default_rng(seed + 1)
        statuses = ["healthy"] * 6 + ["drifting", "retraining", "probation", "rolled_back"]
        conn.executemany(
            "INSERT OR REPLACE INTO scope_status VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (f"dev-{i:03d}", TARGET, now, rows // devices, 1.0, float(rng.uniform(2, 20)), 12.0, 5.5,
                 21.0, "voc_ppb:v3" if i % 3 else f"voc_ppb@dev-{i:03d}:v2", statuses[i % len(statuses)],
                 now - (600 if i % 25 == 0 else 0))
                for i in range(devices)
            ],
        )  # fmt: skip
        kinds = [
            "drift_detected",
            "retrain_requested",
            "retrain_started",
            "retrain_finished",
            "model_promoted",
        ]
        events = [
            (t0 + float(rng.uniform(0, now - t0)), kinds[j % len(kinds)], f"{TARGET}@dev-{i:03d}", "bench",
             f"{TARGET}@dev-{i:03d}:v{j // 5 + 1}", None, orjson.dumps({"rmse": 14.2}).decode())
            for i in range(devices) for j in range(20)
        ]  # fmt: skip
        conn.executemany(
            "INSERT INTO events (ts, kind, scope, reason, version, previous_version, metrics)"
            " VALUES (?,?,?,?,?,?,?)",
            events,
        )
        scopes = [TARGET, *[f"{TARGET}@dev-{i:03d}" for i in range(devices)]]
        conn.executemany(
            "INSERT INTO model_versions (scope, version, label, created, val_rmse, champion_rmse,"
            " persistence_rmse, mean_rmse, window_start, window_end, n_samples, decision, reason,"
            " mlflow_run_id)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (s, v, f"{s}:v{v}", t0 + v * 1000.0, 3.0, 3.2, 5.5, 21.0, t0, t0 + v * 1000.0, 4000,
                 "champion" if v == 5 else "retired", "bench", f"{abs(hash((s, v))):032x}")
                for s in scopes for v in range(1, 6)
            ],
        )  # fmt: skip
    conn.close()
    return {
        "rows": rows,
        "devices": devices,
        "events": len(events),
        "model_versions": 5 * len(scopes),
        "fill_s": time.perf_counter() - start,
        "db_mb": sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6,
    }


# -- the views, as the app runs them (one fresh read-only connection per refresh) ---------------------
def view_fleet(path: Path, device: str, points: int) -> int:
    conn = q.open_store(path)
    assert conn is not None
    try:
        df = fd.fleet(conn, TARGET, now=time.time(), silent_after=30.0)
        fd.FleetSummary.of(df)
        return len(fd.filter_fleet(df, statuses=[], search=""))
    finally:
        conn.close()


def _device(path: Path, device: str, points: int, choice: str) -> int:
    conn = q.open_store(path)
    assert conn is not None
    try:
        fd.fleet(conn, TARGET, now=time.time(), silent_after=30.0)  # the device picker
        q.device_status(conn, TARGET, device)
        window = sr.window_for(conn, TARGET, device, choice, points=points)
        assert window is not None
        series = sr.range_series(conn, TARGET, device, window, rolling=100)
        q.device_events(conn, TARGET, device, start_ts=window.start, end_ts=window.end)
        q.recent_device_events(conn, TARGET, device)
        q.model_scopes(conn, TARGET)
        return len(series)
    finally:
        conn.close()


def view_device(path: Path, device: str, points: int) -> int:
    """The device tab as it opens: the newest readings back to the last drift or model event."""
    return _device(path, device, points, sr.AUTO)


def view_device_all(path: Path, device: str, points: int) -> int:
    """The device tab with the range "all": every stored reading of the device, as bucket means."""
    return _device(path, device, points, "all")


def view_models(path: Path, device: str, points: int) -> int:
    conn = q.open_store(path)
    assert conn is not None
    try:
        scopes = q.model_scopes(conn, TARGET)
        versions = q.model_versions(conn, TARGET)
        table = lin.lineage(
            versions, lin.pointers(path.parent / "models", scopes), lin.lineage_events(conn, scopes),
            lin.serving(conn, TARGET),
        )  # fmt: skip
        return len(table)
    finally:
        conn.close()


def view_events(path: Path, device: str, points: int) -> int:
    conn = q.open_store(path)
    assert conn is not None
    try:
        return len(q.events(conn, limit=500)) + len(q.events(conn, kinds=["drift_detected"], limit=500))
    finally:
        conn.close()


def _raw_series(sql: str) -> Callable[[Path, str, int], int]:
    def run(path: Path, device: str, points: int) -> int:
        conn = q.open_store(path)
        assert conn is not None
        try:
            return len(conn.execute(sql, (TARGET, device, points)).fetchall())
        finally:
            conn.close()

    return run


VIEWS: dict[str, Callable[[Path, str, int], int]] = {
    "fleet": view_fleet,
    "device": view_device,
    "models": view_models,
    "events": view_events,
}


def charts(path: Path, device: str, points: int) -> int:
    """The device tab's two Altair specs, built and validated as ``st.altair_chart`` needs them."""
    from edgeloop.dashboard import charts

    conn = q.open_store(path)
    assert conn is not None
    try:
        window = sr.window_for(conn, TARGET, device, sr.AUTO, points=points)
        assert window is not None
        series = sr.range_series(conn, TARGET, device, window, rolling=100)
        markers = q.device_events(conn, TARGET, device, start_ts=window.start, end_ts=window.end)
    finally:
        conn.close()
    charts.forecast_chart(series, markers, TARGET).to_dict()
    charts.rmse_chart(series, markers, 12.0, 21.0).to_dict()
    return 2


def _timed(
    fn: Callable[[Path, str, int], int], path: Path, device: str, points: int, reps: int
) -> dict[str, Any]:
    fn(path, device, points)  # warm-up: page cache, imports
    times, out = [], 0
    for _ in range(reps):
        start = time.perf_counter()
        out = fn(path, device, points)
        times.append(time.perf_counter() - start)
    times.sort()
    return {
        "median_ms": statistics.median(times) * 1e3,
        "p95_ms": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))] * 1e3,
        "rows": out,
    }


def machine() -> dict[str, Any]:
    import pandas
    import streamlit

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "pandas": pandas.__version__,
        "streamlit": streamlit.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--points", type=int, default=500, help="readings in the device chart")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        path = Path(tmp) / "edgeloop.db"
        filled = fill(path, args.rows, args.devices)
        print(
            f"store: {filled['rows']:,} samples, {filled['devices']} devices, {filled['events']:,} events, "
            f"{filled['model_versions']} model versions; filled in {filled['fill_s']:.1f} s, "
            f"{filled['db_mb']:.0f} MB"
        )
        device = f"dev-{args.devices // 2:03d}"
        results: dict[str, dict[str, Any]] = {}
        for name, fn in VIEWS.items():
            results[name] = _timed(fn, path, device, args.points, args.reps)

        def full(p: Path, d: str, n: int) -> int:
            return sum(fn(p, d, n) for fn in VIEWS.values())

        results["full refresh (all 4 views)"] = _timed(full, path, device, args.points, args.reps)
        results["device, range 'all' (bucket means)"] = _timed(
            view_device_all, path, device, args.points, args.reps
        )
        results["device charts (series + Altair specs)"] = _timed(
            charts, path, device, args.points, args.reps
        )
        results["device query, index"] = _timed(
            _raw_series(q.SERIES_SQL), path, device, args.points, args.reps
        )
        results["device query, NOT INDEXED (baseline)"] = _timed(
            _raw_series(q.SERIES_SQL_NO_INDEX), path, device, args.points, args.reps
        )
        conn = q.open_store(path)
        assert conn is not None
        plans = {
            "index": q.query_plan(conn, q.SERIES_SQL, (TARGET, device, args.points)),
            "NOT INDEXED": q.query_plan(conn, q.SERIES_SQL_NO_INDEX, (TARGET, device, args.points)),
        }
        conn.close()

    print(
        f"\n{args.reps} repetitions after one warm-up; device view of {device}, last {args.points} readings\n"
    )
    width = max(len(k) for k in results)
    print(f"{'view':<{width}}  {'median ms':>10}  {'p95 ms':>10}  {'out':>7}")
    print("-" * (width + 33))
    for name, r in results.items():
        print(f"{name:<{width}}  {r['median_ms']:>10.2f}  {r['p95_ms']:>10.2f}  {r['rows']:>7}")
    speedup = (
        results["device query, NOT INDEXED (baseline)"]["median_ms"]
        / results["device query, index"]["median_ms"]
    )
    full_ms = results["full refresh (all 4 views)"]["median_ms"]
    print(f"\nthe index makes the device query {speedup:,.0f}x faster")
    print(f"full refresh median {full_ms:.0f} ms: {'within' if full_ms < 1000 else 'OVER'} the 1 s target")
    for name, plan in plans.items():
        print(f"plan ({name}): {plan.replace(chr(10), ' | ')}")
    if args.json is not None:
        args.json.write_bytes(
            orjson.dumps(
                {"machine": info, "store": filled, "reps": args.reps, "results": results, "plans": plans},
                option=orjson.OPT_INDENT_2,
            )
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
