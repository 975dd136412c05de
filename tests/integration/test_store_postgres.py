"""The PostgreSQL store on a real server: migrations, batched writes, retention, the same answers as
SQLite for the dashboard and the trainer, a clear refusal of a bad URL, and a writer that outlives its
connection being killed.

Every test works in a database of its own on the shared server (``tests/pgdb.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from tests.pgdb import throwaway_db

from edgeloop.adapters import pg_schema
from edgeloop.adapters.store import BaseStore, Store, open_store
from edgeloop.adapters.store_pg import PgStore
from edgeloop.adapters.writer import StoreWriter
from edgeloop.config import load_settings
from edgeloop.dashboard import fleetdata as fd
from edgeloop.dashboard import lineage as lin
from edgeloop.dashboard import queries as q
from edgeloop.dashboard import series as ser
from edgeloop.engine.rows import SampleRow, StatusRow
from edgeloop.errors import ConfigError, StoreError
from edgeloop.retrain.job import _series_for
from edgeloop.telemetry.schema import Event

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database of this test's own on the shared PostgreSQL."""
    with throwaway_db() as url:
        yield url


SRC = str(Path(__file__).resolve().parents[2] / "src")


def _wait_for(cond, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _samples(n: int, *, devices: int = 3, start: float = 1_700_000_000.0, seed: int = 7) -> list[SampleRow]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dev = f"dev-{i % devices:03d}"
        target = "voc_ppb" if i % 5 else "temp_c"
        value = float(100 + 10 * np.sin(i / 50) + rng.normal())
        forecast = None if i % 7 == 0 else (float("nan") if i % 97 == 0 else value + float(rng.normal()))
        rows.append(
            SampleRow(
                dev, target, start + i * 2.0, i, value, forecast, value - 0.5, value + 0.1, "voc_ppb:v1"
            )
        )
    return rows


def _events(start: float = 1_700_000_000.0) -> list[Event]:
    kinds = ["drift_detected", "retrain_started", "model_promoted", "model_rejected", "model_rolled_back"]
    out = []
    for i in range(40):
        scope = "voc_ppb" if i % 3 == 0 else f"voc_ppb@dev-{i % 3:03d}"
        out.append(
            Event(
                kinds[i % len(kinds)],
                scope,
                start + 50.0 * i,
                reason=f"step {i} at ts {start + i}",
                metrics={"rmse": 1.5 * i, "n": i},
                version=f"{scope}:v{i}",
                previous_version=f"{scope}:v{i - 1}",
            )
        )
    return out


def _status(now: float = 1_700_010_000.0) -> list[StatusRow]:
    return [
        StatusRow(f"dev-{d:03d}", "voc_ppb", now - d, 1000 + d, 0.5, 2.0 + d, 5.0, 3.0, 9.0, "voc_ppb:v1",
                  "healthy" if d else "drifting", now)
        for d in range(3)
    ]  # fmt: skip


def _fill(store: BaseStore) -> None:
    store.write(_samples(6000), _events(), _status())
    for version, scope in enumerate(["voc_ppb", "voc_ppb@dev-001", "voc_ppb@dev-002", "temp_c"], start=1):
        store.record_model_version(
            scope=scope, version=version, label=f"{scope}:v{version}", created=1_700_000_000.0 + version,
            formulation="lgbm", trigger="drift", val_rmse=1.0 + version, champion_rmse=2.0,
            persistence_rmse=3.0, mean_rmse=4.0, window_start=1.0, window_end=2.0, n_samples=500,
            decision="promoted", reason="better", mlflow_run_id=None, path=f"/m/{version}",
            candidates={"lgbm": 1.0 + version},
        )  # fmt: skip
    store.update_model_decision("voc_ppb@dev-001", 2, "rejected", "worse")


# -- schema ---------------------------------------------------------------------------------------
def test_migrations_run_once_and_reopening_applies_nothing(pg_url: str) -> None:
    PgStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert pg_schema.migrate(conn) == []
        rows = conn.execute("SELECT version FROM edgeloop_migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == [v for v, _, _ in pg_schema.MIGRATIONS]
        brin = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'samples_ts_brin'").fetchone()
        assert brin is not None and "brin" in brin[0]


def test_edges_opening_a_new_database_at_once_migrate_it_exactly_once(pg_url: str, tmp_path: Path) -> None:
    # Four processes released together on a file's appearance: each opens (and so migrates) the store.
    go = tmp_path / "go"
    code = (
        "import sys, time, pathlib\n"
        "from edgeloop.adapters.store import open_store\n"
        "go = pathlib.Path(sys.argv[2])\n"
        "while not go.exists(): time.sleep(0.001)\n"
        "open_store(sys.argv[1]).close()\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, pg_url, str(go)], env=env, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    time.sleep(2.0)  # the interpreters start; then all are let go at once
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    with psycopg.connect(pg_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM edgeloop_migrations ORDER BY version")]
    assert versions == [v for v, _, _ in pg_schema.MIGRATIONS]


def test_a_database_migrated_by_a_newer_edgeloop_is_refused(pg_url: str) -> None:
    PgStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO edgeloop_migrations VALUES (9999, 'from the future', 0)")
    with pytest.raises(StoreError, match="newer than this edgeloop"):
        PgStore(pg_url)


# -- writes and retention ---------------------------------------------------------------------------
def test_writer_commits_every_row_in_batches_and_status_upserts(pg_url: str) -> None:
    writer = StoreWriter(pg_url, retention_rows=1_000_000, flush_interval=0.05)
    rows = _samples(20_000)
    for i in range(0, len(rows), 500):
        writer.put(rows[i : i + 500], status=_status(now=1_700_010_000.0 + i))
    writer.put(events=_events())
    _wait_for(lambda: writer.rows_written == len(rows) and writer.buffered == 0, what="all rows written")
    writer.close()
    assert writer.errors == 0
    store = open_store(pg_url, readonly=True)
    try:
        assert store.count_samples("voc_ppb") + store.count_samples("temp_c") == len(rows)
        assert len(store.events(limit=1000)) == len(_events())
        status = store.conn.execute("SELECT device, updated FROM scope_status ORDER BY device").fetchall()
        assert status == [(f"dev-{d:03d}", 1_700_010_000.0 + 19_500) for d in range(3)]  # the newest won
        # NaN forecasts are NULL, as SQLite stores them
        nans = store.conn.execute("SELECT count(*) FROM samples WHERE forecast = 'NaN'").fetchone()[0]
        assert nans == 0
    finally:
        store.close()


def test_retention_keeps_the_newest_rows_like_sqlite(pg_url: str, tmp_path: Path) -> None:
    kept = {}
    for name, store in (("pg", open_store(pg_url, retention_rows=1000)),
                        ("sqlite", Store(tmp_path / "s.db", retention_rows=1000))):  # fmt: skip
        try:
            store.write(_samples(2500, devices=1))
            store.write(_samples(500, devices=1, start=1_800_000_000.0, seed=8))
            assert store.prune() == 2000
            assert store.prune() == 0
            kept[name] = store.series("voc_ppb", limit=10_000)[0].ts
        finally:
            store.close()
    assert len(kept["pg"]) == 800  # 1000 newest rows, 4 of 5 of them voc_ppb
    np.testing.assert_array_equal(kept["pg"], kept["sqlite"])


# -- the same answers as SQLite -------------------------------------------------------------------
@pytest.fixture
def both(pg_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    stores = {"pg": open_store(pg_url), "sqlite": Store(tmp_path / "s.db")}
    for store in stores.values():
        _fill(store)
    conns = {"pg": q.open_store(pg_url), "sqlite": q.open_store(tmp_path / "s.db")}
    yield stores, conns
    for store in stores.values():
        store.close()
    for conn in conns.values():
        assert conn is not None
        conn.close()


def _same(a: object, b: object) -> None:
    if isinstance(a, pd.DataFrame):
        assert isinstance(b, pd.DataFrame)
        assert len(a) > 0, "an empty answer proves nothing"
        pd.testing.assert_frame_equal(a, b, check_dtype=False)
    else:
        assert a == b and a not in (None, [], {}), (a, b)


def _window(conn: q.StoreConnection, *, points: int) -> ser.Window:
    window = ser.window_for(conn, "voc_ppb", "dev-000", "all", points=points)
    assert window is not None
    return window


def test_dashboard_queries_answer_the_same_on_both_backends(both) -> None:  # type: ignore[no-untyped-def]
    _, conns = both
    pg, lite = conns["pg"], conns["sqlite"]
    t0 = 1_700_000_000.0
    calls = [
        lambda c: q.targets(c),
        lambda c: [q.has_samples(c)],
        lambda c: q.device_status(c, "voc_ppb", "dev-001"),
        lambda c: q.device_series(c, "voc_ppb", "dev-001", points=300, window=50),
        lambda c: q.device_events(c, "voc_ppb", "dev-001", start_ts=t0, end_ts=t0 + 1000),
        lambda c: q.recent_device_events(c, "voc_ppb", "dev-002", limit=7),
        lambda c: q.model_scopes(c, "voc_ppb"),
        lambda c: q.model_versions(c, "voc_ppb"),
        lambda c: q.model_versions(c, "voc_ppb", scope="voc_ppb@dev-001"),
        lambda c: q.events(c, kinds=["model_promoted", "drift_detected"], scope_contains="dev-00", limit=9),
        lambda c: q.events(c, limit=500),
        lambda c: list(ser.span_of(c, "voc_ppb", "dev-000") or ()),
        lambda c: [ser.auto_start(c, "voc_ppb", "dev-000", points=200, end=t0 + 12_000)],
        lambda c: [ser.window_for(c, "voc_ppb", "dev-000", "all", points=100)],
        lambda c: ser.range_series(c, "voc_ppb", "dev-000", _window(c, points=100)),
        lambda c: ser.range_series(c, "voc_ppb", "dev-000", _window(c, points=5000)),
        lambda c: lin.lineage_events(c, ["voc_ppb", "voc_ppb@dev-001"]),
        lambda c: lin.serving(c, "voc_ppb"),
        lambda c: [fd.reporting_interval(c, "voc_ppb", "dev-001")],
        lambda c: fd.fleet(c, "voc_ppb", now=1_700_010_005.0),
    ]
    for i, call in enumerate(calls):
        try:
            _same(call(pg), call(lite))
        except AssertionError as exc:
            raise AssertionError(f"query {i} differs: {exc}") from exc


def test_training_windows_are_the_same_on_both_backends(both, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    stores, _ = both
    settings = load_settings(None, data_dir=str(tmp_path))
    for scope, since in (("voc_ppb", None), ("voc_ppb@dev-001", None), ("voc_ppb@dev-002", 1_700_008_000.0)):
        got = {name: _series_for(store, settings, scope, since) for name, store in stores.items()}
        assert len(got["pg"]) == len(got["sqlite"]) > 0
        for a, b in zip(got["pg"], got["sqlite"], strict=True):
            assert a.device == b.device and len(a.values) > 0
            np.testing.assert_array_equal(a.ts, b.ts)
            np.testing.assert_array_equal(a.values, b.values)
    assert stores["pg"].model_versions() == stores["sqlite"].model_versions()
    assert stores["pg"].events(scope="voc_ppb", limit=5) == stores["sqlite"].events(scope="voc_ppb", limit=5)


# -- refusals ----------------------------------------------------------------------------------------
def test_a_url_that_is_not_postgresql_is_refused_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_STORE_URL", "mysql://db/edgeloop")
    with pytest.raises(ConfigError, match=r"store\.url: .*postgresql://.*EDGELOOP_STORE_URL"):
        load_settings(None)


def test_an_unreachable_store_stops_the_edge_with_one_line(tmp_path: Path) -> None:
    url = "postgresql://edge:hunter2@127.0.0.1:9/edgeloop"  # the discard port: nothing listens
    env = {**os.environ, "PYTHONPATH": SRC, "EDGELOOP_STORE_URL": url, "EDGELOOP_MLFLOW_ENABLED": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "edgeloop", "edge", "--data-dir", str(tmp_path / "data"),
         "--broker", "mqtt://127.0.0.1:9"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "cannot open store postgresql://edge:***@127.0.0.1:9/edgeloop" in lines[0]
    assert "store.url" in lines[0] and "hunter2" not in proc.stderr + proc.stdout


# -- faults ------------------------------------------------------------------------------------------
def test_writer_reconnects_after_its_backend_is_terminated_and_loses_nothing(pg_url: str) -> None:
    writer = StoreWriter(pg_url, retention_rows=1_000_000, flush_interval=0.05)
    rows = _samples(3000)
    writer.put(rows[:1000])
    _wait_for(lambda: writer.rows_written == 1000, what="first batch")
    dbname = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = 'edgeloop' AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
        assert killed == [(True,)]
        writer.put(rows[1000:2000])
        _wait_for(lambda: writer.errors >= 1, what="the write on the dead connection to fail")
        writer.put(rows[2000:])
        _wait_for(lambda: writer.rows_written == len(rows), what="every row written after reconnecting")
        writer.close()
        assert admin.execute("SELECT count(*) FROM samples").fetchone()[0] == len(rows)
        assert writer.rows_dropped == 0
