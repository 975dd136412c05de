"""``edgeloop demo`` as a user runs it, then the dashboard over the store it left, in Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from tests.e2e.browser import BUILD, SKIP_WITHOUT_CHROMIUM, chromium, serving

from edgeloop.adapters.broker import mosquitto_binary

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict, str]]:
    """One real demo: private broker, simulator with a regime change, edge, retraining, MLflow."""
    work = tmp_path_factory.mktemp("demo")
    data, report = work / "data", work / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    cmd = [sys.executable, "-m", "edgeloop", "demo", "--duration", "100", "--no-dashboard",
           "--data-dir", str(data), "--json", str(report)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=work)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    yield data, json.loads(report.read_text()), proc.stdout


def test_demo_answers_every_reading_and_beats_both_baselines(demo_run: tuple[Path, dict, str]) -> None:
    data, report, stdout = demo_run
    assert "started private mosquitto" in stdout or "embedded amqtt" in stdout
    assert report["published"] > 10_000 and report["predictions"] == report["published"]
    assert report["dropped"] == {}
    voc = report["targets"]["voc_ppb"]
    assert voc["model_rmse"] < voc["persistence_rmse"] and voc["model_rmse"] < voc["mean_rmse"]
    assert len(report["devices"]) == 4 and all(v != "persistence" for v in report["devices"].values())
    assert (data / "edgeloop.db").exists() and (data / "mlflow.db").exists()


def test_demo_heals_the_drifted_device_only(demo_run: tuple[Path, dict, str]) -> None:
    data, report, _ = demo_run
    with sqlite3.connect(data / "edgeloop.db") as db:
        events = db.execute("SELECT kind, scope FROM events").fetchall()
    assert ("drift_detected", "voc_ppb@dev-001") in events
    assert ("model_promoted", "voc_ppb@dev-001") in events
    retrained = {scope for kind, scope in events if kind == "retrain_requested"}
    assert retrained == {"voc_ppb", "voc_ppb@dev-001"}
    assert report["devices"]["dev-001/voc_ppb"] == "voc_ppb@dev-001:v1"
    # The others stay on the fleet model (which a scheduled refresh may have replaced: voc_ppb:v2).
    assert report["devices"]["dev-002/voc_ppb"].startswith("voc_ppb:v")


@pytest.mark.skipif(SKIP_WITHOUT_CHROMIUM, reason="needs /usr/bin/chromium (apt-get install -y chromium)")
def test_dashboard_over_the_demo_store(demo_run: tuple[Path, dict, str], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    data, _, _ = demo_run
    with sqlite3.connect(data / "edgeloop.db") as db:
        rmse = {d: r for d, r in db.execute("SELECT device, rmse FROM scope_status WHERE target='voc_ppb'")}
        # What each device is served by when the demo ended (a refresh or the floor may have changed it).
        served = {m for (m,) in db.execute("SELECT DISTINCT model FROM scope_status WHERE target='voc_ppb'")}
    assert any(m.startswith("voc_ppb@dev-001:v") for m in served), served
    BUILD.mkdir(exist_ok=True)
    with serving(tmp_path, data, site="site-1") as url, chromium(height=1100) as page:
        page.goto(url)
        grid = page.get_by_test_id("stDataFrame")
        expect(grid).to_be_visible(timeout=30_000)
        for device in ("dev-000", "dev-001", "dev-003"):
            expect(
                grid.get_by_role("gridcell", name=device, exact=True, include_hidden=True).first
            ).to_be_attached()
        for version in sorted(served):
            cell = grid.get_by_role("gridcell", name=version, exact=True, include_hidden=True).first
            expect(cell).to_be_attached()
        shown = grid.locator("td[role=gridcell]").all_inner_texts()
        numbers = {round(float(t), 6) for t in shown if t.replace(".", "", 1).isdigit()}
        assert any(round(v, 6) in numbers for v in rmse.values() if v is not None), (rmse, shown[:40])
        page.wait_for_timeout(1500)
        page.screenshot(path=str(BUILD / "dashboard-demo-fleet.png"), full_page=True)
        page.goto(f"{url}/?view=Device&device=dev-001")
        expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible(timeout=30_000)
        expect(page.get_by_text(re.compile(r"voc_ppb@dev-001:v\d+")).first).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(BUILD / "dashboard-demo-device.png"), full_page=True)


def test_sigterm_stops_the_demo_and_what_it_started(tmp_path: Path) -> None:
    """``kill <demo>`` ends it as Ctrl-C does: its private broker and retrain worker stop too."""
    assert mosquitto_binary(), "mosquitto is needed (apt-get install mosquitto)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    cmd = [sys.executable, "-m", "edgeloop", "demo", "--duration", "120", "--no-dashboard",
           "--data-dir", str(tmp_path / "data")]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not any(line.startswith("scenario:") for line in seen) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
        text = "".join(seen)
        broker = re.search(r"private mosquitto \(pid (\d+)\)", text)
        worker = re.search(r"retrain worker started \(pid (\d+)\)", text)
        assert broker and worker, text[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(1.0)
    while not lines.empty():
        seen.append(lines.get_nowait())
    assert "stopping (Ctrl-C or SIGTERM)" in "".join(seen)
    for pid in (int(broker.group(1)), int(worker.group(1))):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
