"""The dashboard's views and empty states through Streamlit's AppTest, and its queries' index use.

Each test builds a small store in ``tmp_path`` with the Store API and points the app at it through
``EDGELOOP_DATA_DIR`` (or a config file given after ``--``, as ``streamlit run`` passes it).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from edgeloop.adapters.store import SampleRow, StatusRow, Store
from edgeloop.config import Settings
from edgeloop.dashboard import fleetdata as fd
from edgeloop.dashboard import queries as q
from edgeloop.dashboard.launch import APP_PATH, dashboard_command, wait_ready
from edgeloop.telemetry.schema import Event

TARGET = "voc_ppb"
N = 150  # readings per device


def fill(db: Path, *, trained: bool = True) -> dict[str, float]:
    """Three devices: dev-a healthy, dev-b drifting, dev-c silent (its status row is 10 min old).

    Timestamps are replayed ones from 2021 while ``updated`` is wall clock, as during a replay.
    Returns each device's rolling RMSE as written to scope_status.
    """
    rng = np.random.default_rng(1)
    now = time.time()
    t0 = 1_610_000_000.0
    store = Store(db)
    samples, status, rmses = [], [], {}
    model = "voc_ppb:v1" if trained else "persistence"
    for i, dev in enumerate(["dev-a", "dev-b", "dev-c"]):
        value = 200 + 10 * i + rng.normal(0, 3, N)
        err = rng.normal(0, 20 if dev == "dev-b" else 2, N)
        for k in range(N):
            forecast = None if k == 0 else float(value[k] + err[k])
            prev = None if k == 0 else float(value[k - 1])
            samples.append(SampleRow(dev, TARGET, t0 + k, k, float(value[k]), forecast, prev, None, model))
        rmses[dev] = float(np.sqrt(np.mean(err[-100:] ** 2)))
        status.append(
            StatusRow(
                dev,
                TARGET,
                t0 + N - 1,
                N,
                2.0 + i,
                rmses[dev],
                10.0,
                4.0,
                9.0,
                model,
                "drifting" if dev == "dev-b" else "healthy",
                now - 600 if dev == "dev-c" else now,
            )
        )
    events = []
    if trained:
        events = [
            Event("model_promoted", TARGET, t0 + 20, "first model", {"val_rmse": 2.1}, "voc_ppb:v1"),
            Event("drift_detected", f"{TARGET}@dev-b", t0 + 120, "page-hinkley alarm", {"rmse": 19.5}),
            Event("retrain_requested", f"{TARGET}@dev-b", t0 + 121, "drift"),
        ]
    store.write(samples, events, status)
    if trained:
        for version, decision, val, champ in ((1, "champion", 2.1, None), (2, "rejected", 2.3, 2.0)):
            store.record_model_version(
                scope=TARGET, version=version, label=f"{TARGET}:v{version}", created=t0 + 10 * version,
                val_rmse=val, champion_rmse=champ, persistence_rmse=4.2, mean_rmse=9.1,
                window_start=t0, window_end=t0 + 100, n_samples=300, decision=decision,
                reason="does not beat the champion by 2%" if decision == "rejected" else "first model",
                mlflow_run_id=f"run{version}", formulation="linear", trigger="schedule",
            )  # fmt: skip
    store.close()
    return rmses


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("EDGELOOP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", [str(APP_PATH)])
    return tmp_path


def run(view: str = "Fleet", **state: Any) -> AppTest:
    at = AppTest.from_file(str(APP_PATH), default_timeout=30)
    at.session_state["view"] = view
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def texts(at: AppTest) -> str:
    return "\n".join(
        str(e.value) for kind in ("info", "markdown", "caption", "warning", "error") for e in at.get(kind)
    )


# -- fleet ---------------------------------------------------------------------------------------
def test_fleet_lists_every_device_with_status_rmse_and_model(data_dir: Path) -> None:
    rmses = fill(data_dir / "edgeloop.db")
    at = run("Fleet")
    m = metrics(at)
    assert (m["Devices"], m["Drifting"], m["Silent"], m["Need attention"]) == ("3", "1", "1", "2")
    assert m["Messages/s"] == "5.0"  # the silent device's rate is not counted
    table = at.dataframe[0].value
    assert table["device"].tolist() == ["dev-b", "dev-c", "dev-a"]  # drifting, silent, healthy
    assert table["status"].tolist() == ["drifting", "silent", "healthy"]
    assert table["model"].unique().tolist() == ["voc_ppb:v1"]
    assert table.set_index("device")["rmse"].to_dict() == pytest.approx(rmses)
    assert table.set_index("device")["rmse_ratio"]["dev-b"] == pytest.approx(rmses["dev-b"] / 10.0)


def test_fleet_filters_by_status_and_device_name(data_dir: Path) -> None:
    fill(data_dir / "edgeloop.db")
    at = run("Fleet")
    at.button_group(key="fleet_status").set_value(["silent", "healthy"]).run()
    assert at.dataframe[0].value["device"].tolist() == ["dev-c", "dev-a"]
    at.text_input(key="fleet_search").input("DEV-A").run()
    assert at.dataframe[0].value["device"].tolist() == ["dev-a"]
    at.text_input(key="fleet_search").input("nope").run()
    assert not at.dataframe
    assert "No device matches the filter." in texts(at)


def test_no_store_yet_says_where_data_should_come_from(data_dir: Path) -> None:
    at = run("Fleet")
    assert (
        "No data yet: is a publisher running on mqtt://127.0.0.1:1883 topic edgeloop/site-1/+/telemetry?"
        in (texts(at))
    )
    assert not (data_dir / "edgeloop.db").exists()  # the dashboard never creates the store
    for view in ("Device", "Events"):
        at = run(view)
        assert not at.dataframe


def test_empty_store_uses_the_configured_broker_and_topics(data_dir: Path, tmp_path: Path) -> None:
    Store(data_dir / "edgeloop.db").close()
    config = tmp_path / "edge.yaml"
    config.write_text(
        f"site: plant-9\ndata_dir: {data_dir}\nbroker: {{url: 'mqtt://broker.lan:1884'}}\n"
        "topics: {telemetry: ['factory/{site}/+/data']}\n"
    )
    sys.argv = [str(APP_PATH), "--config", str(config)]
    at = run("Fleet")
    assert at.title[0].value == "edgeloop · plant-9"
    assert "is a publisher running on mqtt://broker.lan:1884 topic factory/plant-9/+/data?" in texts(at)


def test_invalid_config_is_reported_not_raised(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_DRIFT_POLICY", "sometimes")
    at = AppTest.from_file(str(APP_PATH), default_timeout=30).run()
    assert not at.exception
    assert "drift.policy" in at.error[0].value
    monkeypatch.delenv("EDGELOOP_DRIFT_POLICY")
    monkeypatch.setenv("EDGELOOP_DASHBOARD_REFRESH", "soon")
    at = AppTest.from_file(str(APP_PATH), default_timeout=30).run()
    assert "EDGELOOP_DASHBOARD_REFRESH='soon' is not a valid float" in at.error[0].value


def test_unreadable_store_is_reported_not_raised(data_dir: Path) -> None:
    (data_dir / "edgeloop.db").write_bytes(b"this is not a database" * 100)
    for view in ("Fleet", "Device", "Models", "Events"):
        at = run(view)
        assert "Cannot read the store" in at.error[0].value


# -- device --------------------------------------------------------------------------------------
def test_device_view_shows_metrics_charts_markers_and_events(data_dir: Path) -> None:
    rmses = fill(data_dir / "edgeloop.db")
    at = run("Device", device="dev-b")
    m = metrics(at)
    assert m["Rolling RMSE"] == f"{rmses['dev-b']:.2f}"
    assert (m["Drift threshold"], m["Persistence RMSE"], m["Mean RMSE"]) == ("10.00", "4.00", "9.00")
    header = texts(at)
    assert "dev-b" in header and "drifting" in header and "serving **voc_ppb:v1**" in header
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2
    # The markers in view are layered on the chart (the drift at t0 + 120 is within the newest 150).
    data = b"".join(d.data.data for d in charts[0].proto.datasets)
    assert b"drift_detected" in data and b"retrain_requested" in data
    assert "worse than persistence" in texts(at)  # dev-b's RMSE (~20) is above persistence's 4.0
    events = at.dataframe[0].value
    assert events["kind"].tolist() == ["retrain_requested", "drift_detected", "model_promoted"]


def test_a_model_better_than_persistence_has_no_badge_and_the_legend_is_always_there(data_dir: Path) -> None:
    fill(data_dir / "edgeloop.db")
    at = run("Device", device="dev-a")
    assert "worse than persistence" not in texts(at)
    spec = at.get("vega_lite_chart")[0].proto.spec
    assert '"title": "Event"' in spec.replace('":"', '": "') or '"title":"Event"' in spec
    assert all(f'"{kind}"' in spec for kind in ("drift", "retrain", "promotion", "rollback"))


def test_a_status_from_a_newer_edge_is_shown_as_it_is(data_dir: Path) -> None:
    fill(data_dir / "edgeloop.db")
    with closing(sqlite3.connect(data_dir / "edgeloop.db")) as c, c:
        c.execute("UPDATE scope_status SET status = 'demoted' WHERE device = 'dev-a'")
    at = run("Device", device="dev-a")
    assert "demoted" in texts(at) and "healthy" not in texts(at)


def test_device_can_be_opened_by_url(data_dir: Path) -> None:
    fill(data_dir / "edgeloop.db")
    at = AppTest.from_file(str(APP_PATH), default_timeout=30)
    at.query_params["view"] = "Device"
    at.query_params["device"] = "dev-c"
    at.run()
    assert at.selectbox(key="device").value == "dev-c"
    assert "silent" in texts(at)


def test_device_without_model_explains_when_training_starts(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGELOOP_MODEL_MIN_TRAIN_SAMPLES", "250")
    fill(data_dir / "edgeloop.db", trained=False)
    at = run("Device", device="dev-a")
    assert f"No model yet: training starts after 250 samples** (dev-a has {N} so far)" in texts(at)
    assert len(at.get("vega_lite_chart")) == 2  # readings are still charted against persistence


# -- models --------------------------------------------------------------------------------------
def test_models_view_lists_versions_scores_reasons_and_mlflow_links(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGELOOP_DASHBOARD_MLFLOW_URL", "http://mlflow.lan:5000/")
    fill(data_dir / "edgeloop.db")
    at = run("Models")
    table = at.dataframe[0].value
    assert table["label"].tolist() == ["voc_ppb:v2", "voc_ppb:v1"]  # newest first
    v2 = table.iloc[0]
    assert (v2["decision"], v2["val_rmse"], v2["champion_rmse"]) == ("rejected", 2.3, 2.0)
    assert v2["gain"] == pytest.approx(-0.15)
    assert v2["reason"] == "does not beat the champion by 2%"
    assert v2["mlflow"] == "http://mlflow.lan:5000/#/runs/run2"
    assert v2["window"].startswith("2021-01-07 06:13:20 → ")
    assert metrics(at)["Rejected"] == "1"


def rolled_back_story(data_dir: Path) -> None:
    """After ``fill``: voc_ppb:v3 was promoted over v1 (a ``models promote``), then rolled back (a
    ``models rollback``): the champion pointer names v1 again; the stored decisions were never updated."""
    from edgeloop.registry.local import LocalRegistry
    from edgeloop.registry.pointer import ChampionPointer, write_pointer

    t0 = 1_610_000_000.0
    store = Store(data_dir / "edgeloop.db")
    store.record_model_version(
        scope=TARGET, version=3, label=f"{TARGET}:v3", created=t0 + 30, val_rmse=1.9, champion_rmse=2.1,
        persistence_rmse=4.2, mean_rmse=9.1, window_start=t0, window_end=t0 + 100, n_samples=300,
        decision="promoted", reason="manual", mlflow_run_id="run3", formulation="linear", trigger="manual",
    )  # fmt: skip
    store.write(
        [],
        [
            Event("model_promoted", TARGET, t0 + 130, "manual promotion", {}, f"{TARGET}:v3", f"{TARGET}:v1"),
            Event(
                "model_rolled_back", TARGET, t0 + 140, "manual rollback", {}, f"{TARGET}:v1", f"{TARGET}:v3"
            ),
        ],
        [],
    )
    store.close()
    folder = LocalRegistry(data_dir / "models").scope_dir(TARGET)
    folder.mkdir(parents=True)
    write_pointer(folder, ChampionPointer(version=1, history=[1], updated=t0 + 140, reason="manual rollback"))


def test_models_view_shows_the_champion_rolled_back_and_rejected_versions(data_dir: Path) -> None:
    fill(data_dir / "edgeloop.db")
    rolled_back_story(data_dir)
    at = run("Models")
    table = at.dataframe[0].value.set_index("label")
    assert table["standing"].to_dict() == {
        "voc_ppb:v3": "rolled back",
        "voc_ppb:v2": "rejected",
        "voc_ppb:v1": "champion",
    }
    assert table.loc["voc_ppb:v3", "parent"] == "voc_ppb:v1"
    assert table.loc["voc_ppb:v1", "devices"] == "dev-a, dev-b, dev-c"
    m = metrics(at)
    assert (m["Champions"], m["Rolled back"], m["Rejected"], m["Retired"]) == ("1", "1", "1", "0")


def test_without_a_models_folder_the_events_say_who_is_champion(tmp_path: Path) -> None:
    from edgeloop.dashboard import lineage as lin

    fill(tmp_path / "edgeloop.db")
    rolled_back_story(tmp_path)
    with closing(q.open_store(tmp_path / "edgeloop.db")) as conn:
        assert conn is not None
        versions = q.model_versions(conn, TARGET)
        events = lin.lineage_events(conn, [TARGET])
        served = lin.serving(conn, TARGET)
    by_pointer = lin.lineage(versions, lin.pointers(tmp_path / "models", [TARGET]), events, served)
    by_events = lin.lineage(versions, lin.pointers(tmp_path / "elsewhere", [TARGET]), events, served)
    assert by_pointer["standing"].tolist() == by_events["standing"].tolist()
    assert by_events["standing"].tolist() == ["rolled_back", "rejected", "champion"]
    # Promoted again later: v1 retires, v3 is champion.
    later = pd.concat(
        [events, pd.DataFrame([{"ts": 2e9, "kind": "model_promoted", "scope": TARGET,
                                "version": f"{TARGET}:v2", "previous_version": f"{TARGET}:v1"}])]
    )  # fmt: skip
    again = lin.lineage(versions, {}, later, served)
    assert again["standing"].tolist() == ["rolled_back", "champion", "retired"]


def test_models_view_without_models(data_dir: Path) -> None:
    fill(data_dir / "edgeloop.db", trained=False)
    at = run("Models")
    expected = Settings().model.min_train_samples
    assert f"No model yet: training starts after {expected} samples" in texts(at)
    assert not at.dataframe


# -- events --------------------------------------------------------------------------------------
def test_events_newest_first_filtered_by_kind_and_scope(data_dir: Path) -> None:
    fill(data_dir / "edgeloop.db")
    at = run("Events")
    assert at.dataframe[0].value["kind"].tolist() == ["retrain_requested", "drift_detected", "model_promoted"]
    at.multiselect(key="event_kinds").set_value(["drift_detected", "model_promoted"]).run()
    assert at.dataframe[0].value["kind"].tolist() == ["drift_detected", "model_promoted"]
    at.text_input(key="event_scope").input("@dev-b").run()
    events = at.dataframe[0].value
    assert events["scope"].tolist() == ["voc_ppb@dev-b"]
    assert events["metrics"].tolist() == ["rmse=19.5"]
    at.text_input(key="event_scope").input("dev-z").run()
    assert "No event matches the filter." in texts(at)


def test_events_empty_state(data_dir: Path) -> None:
    fill(data_dir / "edgeloop.db", trained=False)
    at = run("Events")
    assert "No drift or model events yet" in texts(at)


# -- queries -------------------------------------------------------------------------------------
@pytest.fixture
def conn(tmp_path: Path) -> Any:
    fill(tmp_path / "edgeloop.db")
    c = q.open_store(tmp_path / "edgeloop.db")
    assert c is not None
    yield c
    c.close()


def test_device_series_reads_the_newest_points_through_the_index(conn: sqlite3.Connection) -> None:
    df = q.device_series(conn, TARGET, "dev-a", points=50, window=20)
    assert len(df) == 50
    assert df["ts"].is_monotonic_increasing and df["ts"].iloc[-1] == 1_610_000_000.0 + N - 1
    assert df["rolling_rmse"].notna().all()  # the extra window rows fill the first points' window
    plan = q.query_plan(conn, q.SERIES_SQL, (TARGET, "dev-a", 10))
    assert "USING INDEX samples_scope_ts" in plan and "TEMP B-TREE" not in plan
    assert "SCAN samples" in q.query_plan(conn, q.SERIES_SQL_NO_INDEX, (TARGET, "dev-a", 10))


def test_event_queries_use_their_indexes(conn: sqlite3.Connection) -> None:
    plan = q.query_plan(conn, q.DEVICE_EVENTS_SQL, (TARGET, f"{TARGET}@dev-a", 0.0, 1e12, 10))
    assert "events_scope_ts" in plan
    plan = q.query_plan(conn, "SELECT ts FROM events ORDER BY ts DESC LIMIT 5")
    assert "events_ts" in plan


def test_silence_uses_the_wall_clock_not_replayed_timestamps(conn: sqlite3.Connection) -> None:
    # The readings are from 2021, yet only dev-c (status row 10 minutes old) is silent.
    fleet = fd.fleet(conn, TARGET, now=time.time(), silent_after=30)
    assert fleet.set_index("device")["status"].to_dict() == {
        "dev-a": "healthy",
        "dev-b": "drifting",
        "dev-c": "silent",
    }


def paced_store(db: Path, now: float) -> None:
    """Devices at their own paces, status rows written as the edge writes them (only on change, wall
    clock): ``slow`` reports every 10 s (last news 9 s ago, its newest reading 50 s of reading time
    behind the fleet's), ``fast`` at 50/s, ``stopped`` reported every 10 s until 31 s ago."""
    store = Store(db)
    samples, status = [], []
    for dev, gap, n, heard, rate in (
        ("slow", 10.0, 40, 9.0, 0.0),
        ("fast", 0.02, 2000, 0.4, 50.0),
        ("stopped", 10.0, 40, 31.0, 0.0),
    ):
        last = now - heard - (50.0 if dev == "slow" else 0.0)
        ts = [last - gap * (n - 1 - k) for k in range(n)]
        samples += [SampleRow(dev, TARGET, t, k, 1.0, 1.0, 1.0, None, "voc_ppb:v1") for k, t in enumerate(ts)]
        status.append(
            StatusRow(dev, TARGET, ts[-1], n, rate, 1.0, 10.0, 1.0, 1.0, "voc_ppb:v1", "healthy", now - heard)
        )
    store.write(samples, [], status)
    store.close()


def test_each_device_is_judged_against_its_own_reporting_interval(tmp_path: Path) -> None:
    now = time.time()
    paced_store(tmp_path / "edgeloop.db", now)
    with closing(q.open_store(tmp_path / "edgeloop.db")) as conn:
        assert conn is not None
        fleet = fd.fleet(conn, TARGET, now=now, silent_after=5.0).set_index("device")
    assert fleet["status"].to_dict() == {"stopped": "silent", "fast": "healthy", "slow": "healthy"}
    assert fleet.loc["slow", "interval_s"] == pytest.approx(10.0)
    assert fleet.loc["fast", "interval_s"] == pytest.approx(0.02)
    assert fleet.loc["fast", "silent_after_s"] == 5.0  # the floor: status rows come once a second
    assert fleet.loc["slow", "rate"] == pytest.approx(0.1)  # its pace, not the last status row's 0
    assert fleet.loc["stopped", "age_s"] == pytest.approx(31, abs=1)
    # The same slow device 31 s after its last news, and the fast one 6 s after: both silent.
    with closing(q.open_store(tmp_path / "edgeloop.db")) as conn:
        assert conn is not None
        later = fd.fleet(conn, TARGET, now=now + 22.5, silent_after=5.0).set_index("device")
    assert later["status"].to_dict() == {"fast": "silent", "slow": "silent", "stopped": "silent"}


def test_reporting_interval_reads_few_rows_through_the_index(tmp_path: Path) -> None:
    now = time.time()
    paced_store(tmp_path / "edgeloop.db", now)
    with closing(q.open_store(tmp_path / "edgeloop.db")) as conn:
        assert conn is not None
        assert "samples_scope_ts" in q.query_plan(conn, fd.INTERVAL_SQL, (TARGET, "fast", 33))
        cache = fd.IntervalCache(ttl=30)
        assert cache.intervals(conn, TARGET, ["slow", "nobody"], now) == {
            "slow": pytest.approx(10.0),
            "nobody": None,
        }


def test_policies_without_an_rmse_threshold_say_so(data_dir: Path) -> None:
    fill(data_dir / "edgeloop.db")
    with closing(sqlite3.connect(data_dir / "edgeloop.db")) as c, c:
        c.execute("UPDATE scope_status SET threshold = NULL")
    at = run("Fleet")
    assert at.dataframe[0].value["rmse_ratio"].isna().all()
    assert "Drift policy page-hinkley has no fixed RMSE threshold" in texts(at)
    at = run("Device", device="dev-a")
    assert metrics(at)["Drift threshold"] == "—"
    assert len(at.get("vega_lite_chart")) == 2


def test_model_scopes_match_target_prefix_exactly(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    for scope in ("voc_ppb", "voc_ppb@dev-1", "voc_ppbx", "voc_ppb_2@dev-1", "temp_c"):
        store.record_model_version(scope=scope, version=1, label=f"{scope}:v1", created=1.0)
    assert q.model_scopes(store.conn, "voc_ppb") == ["voc_ppb", "voc_ppb@dev-1"]
    assert q.model_versions(store.conn, "voc_ppb", scope="voc_ppb@dev-1")["label"].tolist() == [
        "voc_ppb@dev-1:v1"
    ]
    store.close()


def test_null_scores_are_nan_not_errors(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.record_model_version(
        scope="voc_ppb", version=1, label="voc_ppb:v1", created=1.0, decision="champion"
    )
    df = q.model_versions(store.conn, "voc_ppb")
    assert df["gain"].isna().all() and df["val_rmse"].isna().all()
    assert q.model_versions(store.conn, "temp_c").empty
    store.close()


def test_events_query_rejects_unknown_kinds(conn: sqlite3.Connection) -> None:
    with pytest.raises(ValueError, match="unknown event kinds"):
        q.events(conn, kinds=["nope"])
    assert isinstance(q.events(conn, limit=1), pd.DataFrame)


def test_options_flags_beat_environment_beat_settings() -> None:
    from edgeloop.config import Settings
    from edgeloop.dashboard.common import parse_options

    settings = Settings(edge={"status_interval": 2.5})
    opts = parse_options([], {}, settings)
    # refresh: 2 status intervals; silence: never sooner than 3 status rows
    assert (opts.refresh, opts.silent_after, opts.silent_intervals, opts.points) == (5.0, 7.5, 3.0, 500)
    env = {"EDGELOOP_DASHBOARD_REFRESH": "3", "EDGELOOP_DASHBOARD_MLFLOW_URL": "http://m:1"}
    opts = parse_options(["--refresh", "7", "--co"], env, settings)  # "--co" is not "--config"
    assert (opts.refresh, opts.mlflow_url, opts.config) == (7.0, "http://m:1", None)
    assert parse_options(["--config", "x.yaml"], {}).config == Path("x.yaml")


# -- launch --------------------------------------------------------------------------------------
def test_dashboard_command_passes_config_after_double_dash(tmp_path: Path) -> None:
    cmd = dashboard_command(tmp_path / "c.yaml", 9999, host="0.0.0.0", headless=False)
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--server.headless") + 1] == "false"
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    assert cmd[cmd.index("--") + 1 :] == ["--config", str(tmp_path / "c.yaml")]
    assert "--config" not in dashboard_command(None, 9999)
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "minimal"  # no "Deploy" button


def test_serving_beyond_loopback_needs_a_login(tmp_path: Path) -> None:
    from edgeloop.dashboard.launch import run_dashboard
    from edgeloop.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^refusing to serve the dashboard on 0.0.0.0 without a login"):
        run_dashboard(None, 9, host="0.0.0.0", env={})
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="8\\+ characters") as info:
        run_dashboard(None, 9, host="0.0.0.0", env={"EDGELOOP_DASHBOARD_AUTH_FILE": str(short)})
    assert "abc" not in str(info.value)  # the secret is never shown
    with pytest.raises(ConfigError, match="cannot be read"):
        run_dashboard(None, 9, host="192.168.1.5", auth_file=tmp_path / "missing")
    from edgeloop.dashboard.access import require_auth

    require_auth("0.0.0.0", None, by_proxy=True)  # the container manifests: a login proxy in front


def test_login_is_asked_once_per_session_and_the_secret_not_shown(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(data_dir / "edgeloop.db")
    secret = data_dir / "token"
    secret.write_text("correct horse battery\n")
    monkeypatch.setenv("EDGELOOP_DASHBOARD_AUTH_FILE", str(secret))
    at = AppTest.from_file(str(APP_PATH), default_timeout=30)
    at.run()
    assert not at.metric and not at.dataframe  # nothing of the fleet before signing in
    at.text_input(key="_login_secret").input("wrong guess")
    at.button[0].click().run()
    assert "Wrong token or password." in texts(at) and not at.dataframe
    at.text_input(key="_login_secret").input("correct horse battery")
    at.button[0].click().run()
    assert at.dataframe and metrics(at)["Devices"] == "3"
    assert "correct horse" not in texts(at)
    at.run()  # the session stays signed in
    assert at.dataframe


def test_exposure_and_redaction() -> None:
    from edgeloop.dashboard.access import exposed, redact_url

    assert exposed("0.0.0.0", None) and exposed(None, "host:8501") and not exposed("127.0.0.1", "x")
    assert not exposed(None, None)  # AppTest: no server
    assert "s3cret" not in redact_url("mqtt://u:s3cret@h:1883")


def test_wait_ready_fails_fast_when_the_process_died() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(RuntimeError, match="code 3"):
        wait_ready("http://127.0.0.1:9", timeout=5, proc=proc)
    with pytest.raises(TimeoutError):
        wait_ready("http://127.0.0.1:9", timeout=0.2)


# -- device time range ---------------------------------------------------------------------------
def days_store(db: Path) -> float:
    """One device reporting every 60 s for 3 days with a constant forecast error of 2 (persistence's
    error is 0: the value is constant); a drift event 2 days before the newest reading."""
    t0 = 1_700_000_000.0
    n = 3 * 1440
    store = Store(db)
    samples = [
        SampleRow("d", TARGET, t0 + 60.0 * k, k, 10.0, 12.0, 10.0, None, "voc_ppb:v1") for k in range(n)
    ]
    event = Event("drift_detected", f"{TARGET}@d", t0 + 60.0 * (n - 1) - 2 * 86400, "alarm")
    promo = Event("model_promoted", f"{TARGET}@d", t0 + 60.0 * (n - 1) - 2 * 86400 + 600, "better", {}, "v2")
    odd = Event("drift_detected", f"{TARGET}@d", t0, "a kind from a newer edge")
    store.write(samples, [event, promo, odd], [])
    store.close()
    with closing(sqlite3.connect(db)) as c, c:
        c.execute("UPDATE events SET kind = 'model_demoted' WHERE reason = ?", (odd.reason,))
    return t0 + 60.0 * (n - 1)


def test_auto_range_reaches_back_to_the_last_event_and_is_thinned(tmp_path: Path) -> None:
    from edgeloop.dashboard import series as sr

    end = days_store(tmp_path / "edgeloop.db")
    with closing(q.open_store(tmp_path / "edgeloop.db")) as conn:
        assert conn is not None
        window = sr.window_for(conn, TARGET, "d", sr.AUTO, points=500)
        assert window is not None and window.end == end
        assert window.start < end - 2 * 86400  # the promotion and the drift before it are in view
        assert window.readings > 2 * 1440 and window.bucket_s > 60  # more readings than points: buckets
        df = sr.range_series(conn, TARGET, "d", window, rolling=100)
        markers = q.device_events(conn, TARGET, "d", start_ts=window.start, end_ts=window.end)
    assert len(df) <= 501
    assert df["rolling_rmse"].dropna().round(9).unique().tolist() == [2.0]  # bucket MSEs, not means
    assert df["rolling_persistence_rmse"].dropna().unique().tolist() == [0.0]
    assert set(markers["kind"]) == {"drift_detected", "model_promoted"}


def test_fixed_ranges_and_unknown_event_kinds(tmp_path: Path) -> None:
    from edgeloop.dashboard import charts
    from edgeloop.dashboard import series as sr

    end = days_store(tmp_path / "edgeloop.db")
    with closing(q.open_store(tmp_path / "edgeloop.db")) as conn:
        assert conn is not None
        hour = sr.window_for(conn, TARGET, "d", "1 h", points=500)
        assert hour is not None and (hour.start, hour.readings, hour.bucket_s) == (end - 3600, 61, 0.0)
        whole = sr.window_for(conn, TARGET, "d", "all", points=500)
        assert whole is not None and whole.readings == 3 * 1440
        capped = sr.window_for(conn, TARGET, "d", "all", points=500, max_scan=1440)
        assert capped is not None and capped.capped and capped.readings == 1441  # the newest day
        df = sr.range_series(conn, TARGET, "d", whole)
        markers = q.device_events(conn, TARGET, "d", start_ts=whole.start, end_ts=whole.end)
    assert markers.set_index("kind")["marker"].to_dict()["model_demoted"] == "other"
    spec = charts.forecast_chart(df, markers, TARGET).to_dict()
    assert "%m-%d" in str(spec)  # three days: the axis shows dates
    top = charts.rmse_top(df)
    assert top is not None and top < 3  # scaled to model (2) and persistence (0), not a far reference
    rmse = charts.rmse_chart(df, markers, threshold=50.0, mean_rmse=40.0, show_mean=True).to_dict()
    assert "drift threshold" not in str(rmse) and "mean RMSE" not in str(rmse)  # off the scale
