"""The real dashboard (``launch.run_dashboard``) over a filled store, driven in headless Chromium.

Screenshots land in ``build/`` (dashboard-fleet.png, -device.png, -models.png, -events.png,
-empty.png, -liveness.png, -device-light.png, -device-dark.png, -models-rollback.png).
``filled_store`` writes realistic rows through the Store API; it can be swapped for a short
``edgeloop demo`` run that fills the same tables.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.e2e.browser import BUILD, SKIP_WITHOUT_CHROMIUM, chromium, serving

from edgeloop.adapters.store import SampleRow, StatusRow, Store
from edgeloop.telemetry.schema import Event

TARGET = "voc_ppb"
DEVICES = [f"dev-{i:03d}" for i in range(1, 13)]
N = 900  # readings per device, one a second, ending now
WINDOW = 100
THRESHOLD = 12.0
ROW_PX = 35  # st.dataframe's header and row height

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(SKIP_WITHOUT_CHROMIUM, reason="needs /usr/bin/chromium (apt-get install -y chromium)"),
]


def _rmse(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(err**2)))


@dataclass
class Facts:
    """What ``filled_store`` wrote that the test expects to see."""

    devices: list[str]
    rmse: dict[str, float] = field(default_factory=dict)  # rolling RMSE per device, as in scope_status
    versions: list[str] = field(default_factory=list)


def filled_store(path: Path) -> Facts:
    """Fill a store at ``path`` as an edge would after 15 minutes of 12 VOC sensors; returns facts
    the test checks (devices, versions, a status and the RMSE figure shown for one device).

    Story: a fleet model (voc_ppb:v1, later v2) serves everyone after 400 readings; dev-003 drifts
    at t-300 s, gets its own model voc_ppb@dev-003:v1 (on probation); dev-005 drifts now (a sensor
    fault, a retrain requested); dev-007's own model was rolled back to the fleet's; dev-011 is
    retraining; dev-012 went silent 5 minutes ago.
    """
    rng = np.random.default_rng(7)
    now = time.time()
    t0 = now - N
    store = Store(path)
    samples: list[SampleRow] = []
    status: list[StatusRow] = []
    facts = Facts(devices=DEVICES)
    for i, dev in enumerate(DEVICES):
        n = N - 300 if dev == "dev-012" else N
        ts = t0 + np.arange(n, dtype=float)
        level = 180 + 25 * i
        value = level + 30 * np.sin(2 * np.pi * np.arange(n) / 600 + i) + rng.normal(0, 4, n)
        if dev == "dev-003":
            value[N - 300 :] += 60 + 0.3 * np.arange(300)  # a new VOC source: level and trend shift
        persistence = np.concatenate([[np.nan], value[:-1]])
        noise = rng.normal(0, 3.5, n)
        forecast = persistence.copy()
        model = np.array(["persistence"] * n, dtype=object)
        trained = slice(400, n)
        forecast[trained] = value[trained] + noise[trained]
        model[trained] = "voc_ppb:v1"
        model[650:n] = "voc_ppb:v2"
        if dev == "dev-003":
            forecast[N - 300 : N - 120] = persistence[N - 300 : N - 120] - 25  # the fleet model lags
            forecast[N - 120 :] = value[N - 120 :] + noise[N - 120 :] * 0.8
            model[N - 120 :] = "voc_ppb@dev-003:v1"
        if dev == "dev-011":
            forecast[N - 150 :] = value[N - 150 :] + rng.normal(0, 11, 150)
        if dev == "dev-005":  # a sensor fault: the model no longer fits
            value[N - 120 :] += rng.normal(0, 15, 120)
            forecast[N - 120 :] = value[N - 121 : -1] + rng.normal(0, 4, 120)
        samples += [
            SampleRow(dev, TARGET, float(ts[k]), k, float(value[k]),
                      None if np.isnan(forecast[k]) else float(forecast[k]),
                      None if np.isnan(persistence[k]) else float(persistence[k]),
                      float(value[k]), str(model[k]))
            for k in range(n)
        ]  # fmt: skip
        err = (value - forecast)[-WINDOW:]
        rmse = _rmse(err)
        facts.rmse[dev] = rmse
        st = {
            "dev-003": "probation",
            "dev-007": "rolled_back",
            "dev-011": "retraining",
            "dev-005": "drifting",
        }
        updated = now - 300 if dev == "dev-012" else now
        status.append(
            StatusRow(dev, TARGET, float(ts[-1]), n, 1.0, rmse, THRESHOLD,
                      _rmse(np.diff(value[-WINDOW - 1 :])), float(np.std(value[-WINDOW:])),
                      str(model[-1]), st.get(dev, "healthy"), updated)
        )  # fmt: skip
    events = [
        Event("retrain_finished", TARGET, t0 + 395, "first training", {"val_rmse": 3.9}, "voc_ppb:v1"),
        Event("model_promoted", TARGET, t0 + 400, "first model beats persistence", {"val_rmse": 3.9},
              "voc_ppb:v1", "persistence"),
        Event("model_promoted", TARGET, t0 + 650, "beats champion by 6%", {"val_rmse": 3.6},
              "voc_ppb:v2", "voc_ppb:v1"),
        Event("drift_detected", f"{TARGET}@dev-003", t0 + N - 260, "page-hinkley alarm",
              {"rmse": 31.2, "threshold": THRESHOLD}),
        Event("retrain_requested", f"{TARGET}@dev-003", t0 + N - 259, "drift", {}),
        Event("retrain_started", f"{TARGET}@dev-003", t0 + N - 250, "drift", {"n_samples": 1200}),
        Event("retrain_finished", f"{TARGET}@dev-003", t0 + N - 125, "drift", {"val_rmse": 3.1},
              f"{TARGET}@dev-003:v1"),
        Event("model_promoted", f"{TARGET}@dev-003", t0 + N - 120, "beats champion by 88%",
              {"val_rmse": 3.1, "champion_rmse": 26.4}, f"{TARGET}@dev-003:v1", "voc_ppb:v2"),
        Event("model_promoted", f"{TARGET}@dev-007", t0 + N - 400, "beats champion by 4%",
              {"val_rmse": 3.4}, f"{TARGET}@dev-007:v1", "voc_ppb:v2"),
        Event("model_rolled_back", f"{TARGET}@dev-007", t0 + N - 200, "probation RMSE 5.9 > 1.1 x 3.6",
              {"probation_rmse": 5.9}, "voc_ppb:v2", f"{TARGET}@dev-007:v1"),
        Event("drift_detected", f"{TARGET}@dev-011", t0 + N - 140, "page-hinkley alarm", {"rmse": 10.8}),
        Event("drift_detected", f"{TARGET}@dev-005", t0 + N - 40, "page-hinkley alarm", {"rmse": 19.5}),
        Event("retrain_requested", f"{TARGET}@dev-005", t0 + N - 39, "drift", {}),
        Event("model_rejected", TARGET, t0 + N - 60, "does not beat champion by 2%",
              {"val_rmse": 3.7, "champion_rmse": 3.6}, "voc_ppb:v3", "voc_ppb:v2"),
    ]  # fmt: skip
    store.write(samples, events, status)
    versions = [
        (TARGET, 1, t0 + 395, 3.9, None, "retired", "first model beats persistence", "lgbm-delta"),
        (TARGET, 2, t0 + 645, 3.6, 3.85, "champion", "beats champion by 6%", "lgbm-delta"),
        (TARGET, 3, t0 + N - 60, 3.7, 3.6, "rejected", "does not beat champion by 2%", "linear"),
        (f"{TARGET}@dev-003", 1, t0 + N - 125, 3.1, 26.4, "promoted", "beats champion by 88%", "lgbm-level"),
        (f"{TARGET}@dev-007", 1, t0 + N - 405, 3.4, 3.55, "rolled_back", "probation RMSE 5.9 > 1.1 x 3.6",
         "linear"),
    ]  # fmt: skip
    for scope, version, created, val, champ, decision, reason, formulation in versions:
        store.record_model_version(
            scope=scope, version=version, label=f"{scope}:v{version}", created=created,
            formulation=formulation, trigger="drift" if "@" in scope else "schedule", val_rmse=val,
            champion_rmse=champ, persistence_rmse=5.6, mean_rmse=21.0, window_start=created - 400,
            window_end=created - 5, n_samples=400 * (12 if "@" not in scope else 1), decision=decision,
            reason=reason, mlflow_run_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{scope}:v{version}").hex,
        )  # fmt: skip
    store.close()
    facts.versions = [f"{s}:v{v}" for s, v, *_ in versions]
    return facts


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, Facts]]:
    facts = filled_store(tmp_path / "data" / "edgeloop.db")
    with serving(tmp_path, tmp_path / "data") as url:
        yield url, facts


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def cell(grid: Any, text: str) -> Any:
    """A cell of an st.dataframe showing exactly ``text``. The grid draws on a canvas and mirrors the
    rendered rows into a visually hidden ARIA table, so the lookup includes hidden elements."""
    return grid.get_by_role("gridcell", name=text, exact=True, include_hidden=True).first


def snap(page: Any, name: str) -> None:
    """Screenshot the whole app: Streamlit scrolls inside its main block, not the document, so the
    viewport grows to the content's height first."""
    page.wait_for_timeout(800)  # charts and grids finish drawing after the element appears
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], section')]"
        ".map(e => e.scrollHeight), 600)"
    )
    page.set_viewport_size({"width": 1600, "height": min(int(height) + 40, 4000)})
    page.wait_for_timeout(800)
    page.screenshot(path=str(BUILD / name))
    page.set_viewport_size({"width": 1600, "height": 1000})


def test_dashboard_in_chromium(dashboard: tuple[str, Facts]) -> None:
    from playwright.sync_api import expect

    url, facts = dashboard
    BUILD.mkdir(exist_ok=True)
    with chromium() as page:
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(url)
        expect(page.get_by_text("edgeloop · lab-7")).to_be_visible(timeout=30_000)
        # Offline: every request goes to the dashboard itself (page icon included); no Deploy button.
        page.wait_for_timeout(1500)
        icon = page.locator("link[rel~='icon']").first.get_attribute("href") or ""
        assert not icon.startswith(("http://", "https://")) or icon.startswith(url), icon
        outside = [u for u in requested if not u.startswith((url, "data:", "blob:"))]
        assert not outside, outside
        expect(page.get_by_role("button", name="Deploy")).to_have_count(0)
        # The fleet: summary metrics and the table (a canvas grid with an accessible DOM copy).
        grid = page.get_by_test_id("stDataFrame")
        expect(grid).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("stMetric").filter(has_text="Devices")).to_contain_text("12")
        for dev in ("dev-001", "dev-003", "dev-012"):
            expect(cell(grid, dev)).to_be_attached()
        expect(cell(grid, "silent")).to_be_attached()
        expect(cell(grid, "on probation")).to_be_attached()
        expect(cell(grid, "voc_ppb@dev-003:v1")).to_be_attached()
        # The ARIA copy holds raw values (the canvas shows them rounded): find dev-011's RMSE.
        shown = [_float(t) for t in grid.locator("td[role=gridcell]").all_inner_texts()]
        assert any(abs(x - facts.rmse["dev-011"]) < 1e-9 for x in shown if x is not None)
        snap(page, "dashboard-fleet.png")

        # Selecting a row opens that device's view.
        row = int(cell(grid, "dev-005").get_attribute("data-testid").rsplit("-", 1)[1])
        box = grid.bounding_box()
        page.mouse.click(box["x"] + 15, box["y"] + ROW_PX * (row + 1) + ROW_PX / 2)
        expect(page.get_by_role("tab", name="Device", selected=True)).to_be_visible(timeout=30_000)
        expect(page.get_by_text("serving voc_ppb:v2")).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("stMetric").filter(has_text="Rolling RMSE")).to_contain_text(
            f"{facts.rmse['dev-005']:.2f}"
        )

        # The device view, opened by URL as a bookmark would.
        page.goto(f"{url}/?view=Device&device=dev-003")
        rolling = page.get_by_test_id("stMetric").filter(has_text="Rolling RMSE")
        expect(rolling).to_contain_text(f"{facts.rmse['dev-003']:.2f}", timeout=30_000)
        expect(page.get_by_text("serving voc_ppb@dev-003:v1")).to_be_visible()
        expect(page.get_by_text("on probation").first).to_be_visible()
        expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible()
        snap(page, "dashboard-device.png")

        page.goto(f"{url}/?view=Models")
        grid = page.get_by_test_id("stDataFrame")
        expect(grid).to_be_visible(timeout=30_000)
        for label in facts.versions:
            expect(cell(grid, label)).to_be_attached()
        links = grid.locator("td[role=gridcell]", has_text="/#/runs/")
        expect(links.first).to_contain_text("http://127.0.0.1:5000/#/runs/")
        snap(page, "dashboard-models.png")

        page.goto(f"{url}/?view=Events")
        grid = page.get_by_test_id("stDataFrame")
        expect(grid).to_be_visible(timeout=30_000)
        expect(cell(grid, "model_rolled_back")).to_be_attached()
        snap(page, "dashboard-events.png")


def test_empty_dashboard_fills_itself_when_data_arrives(tmp_path: Path) -> None:
    """No store yet: the page explains what to start; once an edge writes, it shows the fleet without
    a reload (the views refresh themselves)."""
    from playwright.sync_api import expect

    data = tmp_path / "data"
    with serving(tmp_path, data) as url, chromium() as page:
        page.goto(url)
        hint = page.get_by_text("No data yet: is a publisher running on mqtt://127.0.0.1:1883")
        expect(hint).to_be_visible(timeout=30_000)
        expect(page.get_by_text("topic edgeloop/lab-7/+/telemetry?")).to_be_visible()
        snap(page, "dashboard-empty.png")
        facts = filled_store(data / "edgeloop.db")
        grid = page.get_by_test_id("stDataFrame")
        expect(grid).to_be_visible(timeout=30_000)
        expect(cell(grid, facts.devices[0])).to_be_attached()
        expect(hint).to_have_count(0)


# -- liveness: each device judged against its own pace ------------------------------------------
class PacedEdge:
    """Writes readings and status rows into a store as a live edge does, each device at its own pace
    in wall time: readings stamped with the wall clock when due, and once a second a status row for
    each device whose row changed (count moved, or the rate fell to 0), as ``Engine.status_rows``."""

    def __init__(self, path: Path, paces: dict[str, float], history: int = 40) -> None:
        self.store = Store(path)
        self.paces = dict(paces)
        self.stopped: set[str] = set()
        now = time.time()
        self.count = dict.fromkeys(paces, 0)
        self.due = {d: now for d in paces}
        self.mark: dict[str, tuple[float, int, tuple[Any, ...] | None]] = {}
        samples = []
        for d, pace in paces.items():  # a past at this pace, so the interval is known from the start
            for k in range(history, 0, -1):
                samples.append(self._sample(d, now - pace * k))
        self.store.write(samples, [], self._status(now))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-edge", daemon=True)

    def _sample(self, device: str, ts: float) -> SampleRow:
        self.count[device] += 1
        value = 200 + 10 * np.sin(ts / 60)
        return SampleRow(
            device, TARGET, ts, self.count[device], value, value + 1.0, value, None, "voc_ppb:v1"
        )

    def _status(self, now: float) -> list[StatusRow]:
        rows = []
        for d in self.paces:
            mark_time, mark_count, shown = self.mark.get(d, (now, self.count[d], None))
            rate = (self.count[d] - mark_count) / (now - mark_time) if now > mark_time else 0.0
            view = (self.count[d], rate > 0)
            self.mark[d] = (now, self.count[d], view)
            if view != shown:
                rows.append(StatusRow(d, TARGET, self.due[d], self.count[d], rate, 1.0, THRESHOLD, 1.5, 9.0,
                                      "voc_ppb:v1", "healthy", now))  # fmt: skip
        return rows

    def _run(self) -> None:
        next_status = time.time() + 1.0
        while not self._stop.wait(0.1):
            now = time.time()
            samples = []
            for d, pace in self.paces.items():
                while d not in self.stopped and self.due[d] <= now:
                    samples.append(self._sample(d, self.due[d]))
                    self.due[d] += pace
            status = []
            if now >= next_status:
                status, next_status = self._status(now), now + 1.0
            if samples or status:
                self.store.write(samples, [], status)

    def __enter__(self) -> PacedEdge:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.store.close()


def grid_rows(grid: Any) -> list[list[str]]:
    """The cells of each row of an st.dataframe, from its accessible copy."""
    return [
        [t.strip() for t in row.get_by_role("gridcell", include_hidden=True).all_inner_texts()]
        for row in grid.get_by_role("row", include_hidden=True).all()
    ]


def silent_rows(grid: Any) -> set[str]:
    """Devices whose fleet row says silent (the device is in the first cell)."""
    return {cells[0] for cells in grid_rows(grid) if "silent" in cells}


def test_devices_are_silent_only_after_three_of_their_own_intervals(tmp_path: Path) -> None:
    """1 reading per 10 s and 50 per second side by side: neither is ever silent. A device that
    stopped 40 s ago (10 s pace) is silent from the start; one at a 3 s pace turns silent after it
    stops (3 of its intervals and a refresh later), not before."""
    from playwright.sync_api import expect

    data = tmp_path / "data"
    data.mkdir()
    paces = {"slow-10s": 10.0, "fast-50hz": 0.02, "mid-3s": 3.0}
    gone = PacedEdge(data / "edgeloop.db", {"gone-10s": 10.0})
    gone.store.close()
    with closing(sqlite3.connect(data / "edgeloop.db")) as c, c:  # it stopped 40 s ago
        c.execute("UPDATE samples SET ts = ts - 40")
        c.execute("UPDATE scope_status SET updated = updated - 39, last_seen = last_seen - 40")
    with (
        PacedEdge(data / "edgeloop.db", paces) as edge,
        serving(tmp_path, data, extra_env={"EDGELOOP_DASHBOARD_SILENT_AFTER": ""}) as url,
        chromium() as page,
    ):
        page.goto(url)
        grid = page.get_by_test_id("stDataFrame")
        expect(grid).to_be_visible(timeout=30_000)
        silent = page.get_by_test_id("stMetric").filter(has_text="Silent")
        expect(silent).to_contain_text("1", timeout=30_000)
        # Two readings of the slow device (20 s): each look shows only the stopped one silent.
        seen: list[set[str]] = []
        deadline = time.monotonic() + 22
        while time.monotonic() < deadline:
            seen.append(silent_rows(grid))
            page.wait_for_timeout(1500)
        assert seen and all(s <= {"gone-10s"} for s in seen), seen
        assert any(s == {"gone-10s"} for s in seen), seen
        snap(page, "dashboard-liveness.png")

        edge.stopped.add("mid-3s")
        stopped_at = time.monotonic()
        expect(silent).to_contain_text("2", timeout=40_000)
        assert time.monotonic() - stopped_at > 5  # not before 3 intervals (9 s from its last news)
        deadline = time.monotonic() + 30  # the grid redraws a moment after the metric
        while silent_rows(grid) != {"gone-10s", "mid-3s"} and time.monotonic() < deadline:
            page.wait_for_timeout(500)
        assert silent_rows(grid) == {"gone-10s", "mid-3s"}

        page.goto(f"{url}/?view=Device&device=fast-50hz")
        header = page.get_by_role("heading", name="fast-50hz")
        expect(header).to_contain_text("healthy", timeout=30_000)


# -- the drift story in both themes, and the lineage after a rollback ------------------------------
def luminance(css: str) -> float:
    r, g, b = (int(x) for x in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def rolled_back(data: Path) -> None:
    """``edgeloop models rollback voc_ppb`` (its function, ``retrain.admin.rollback``) over real model
    files: v1 then v2 promoted in the registry, then v2 rolled back (MLflow off: the registry and
    the events are what the dashboard reads)."""
    from edgeloop.config import Settings
    from edgeloop.engine.features import training_pairs
    from edgeloop.models.forecasters import LinearForecaster
    from edgeloop.models.modelfile import save_model
    from edgeloop.registry.local import LocalRegistry
    from edgeloop.retrain.admin import rollback

    registry = LocalRegistry(data / "models")
    y = np.asarray([100 + ((i * 7) % 13) for i in range(300)], dtype=float)
    model = LinearForecaster(5).fit(*training_pairs(y, 5))
    for v in (1, 2):
        assert registry.next_version(TARGET) == v
        save_model(registry.version_dir(TARGET, v), model,
                   {"scope": TARGET, "target": TARGET, "version": v, "label": f"{TARGET}:v{v}"})  # fmt: skip
        registry.promote(TARGET, v)
    settings = Settings(data_dir=data, mlflow={"enabled": False})
    done, message = rollback(settings, TARGET)
    assert done, message
    assert registry.champion(TARGET) == 1


def test_drift_story_in_light_and_dark_and_models_after_a_rollback(
    dashboard: tuple[str, Facts], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    url, _ = dashboard
    BUILD.mkdir(exist_ok=True)
    backgrounds = {}
    for scheme in ("light", "dark"):
        with chromium(color_scheme=scheme) as page:
            page.goto(f"{url}/?view=Device&device=dev-003")
            chart = page.get_by_test_id("stVegaLiteChart").first
            expect(chart).to_be_visible(timeout=30_000)
            # Vega draws SVG with an accessible label per mark and legend.
            legend = chart.locator("[aria-label^=\"Symbol legend titled 'Event'\"]")
            expect(legend).to_have_count(1, timeout=30_000)
            label = legend.get_attribute("aria-label") or ""
            assert all(k in label for k in ("drift", "retrain", "promotion", "rollback")), label
            expect(chart.locator("[aria-label^=\"Symbol legend titled 'Series'\"]")).to_have_count(1)
            for kind in ("drift_detected", "retrain_finished", "model_promoted"):
                expect(chart.locator(f"[aria-label*='kind: {kind};']").first).to_be_attached()
            backgrounds[scheme] = luminance(
                page.evaluate(
                    "() => getComputedStyle(document.querySelector('[data-testid=stApp]')).backgroundColor"
                )
            )
            snap(page, f"dashboard-device-{scheme}.png")
    assert backgrounds["dark"] < 0.3 < backgrounds["light"], backgrounds

    rolled_back(tmp_path / "data")
    with chromium() as page:
        page.goto(f"{url}/?view=Models")
        grid = page.get_by_test_id("stDataFrame")
        expect(grid).to_be_visible(timeout=30_000)
        expect(cell(grid, "rolled back").first).to_be_attached(timeout=30_000)
        standing = {cells[0]: cells[1] for cells in grid_rows(grid) if len(cells) > 1}
        deadline = time.monotonic() + 30
        while standing.get(f"{TARGET}:v1") != "champion" and time.monotonic() < deadline:
            page.wait_for_timeout(500)
            standing = {cells[0]: cells[1] for cells in grid_rows(grid) if len(cells) > 1}
        assert standing[f"{TARGET}:v1"] == "champion"
        assert standing[f"{TARGET}:v2"] == "rolled back"
        assert standing[f"{TARGET}@dev-007:v1"] == "rolled back"
        assert standing[f"{TARGET}:v3"] == "rejected"
        assert standing[f"{TARGET}@dev-003:v1"] == "champion"
        snap(page, "dashboard-models-rollback.png")


def test_login_in_chromium(tmp_path: Path) -> None:
    """With a secret file the dashboard asks for it before showing anything (here on loopback; beyond
    it, the launcher refuses to start without one: see the unit tests)."""
    from playwright.sync_api import expect

    filled_store(tmp_path / "data" / "edgeloop.db")
    secret = tmp_path / "dashboard.token"
    secret.write_text("s3cret-token-for-e2e\n")
    env = {"EDGELOOP_DASHBOARD_AUTH_FILE": str(secret)}
    with serving(tmp_path, tmp_path / "data", extra_env=env) as url, chromium() as page:
        page.goto(url)
        field = page.get_by_label("Token or password")
        expect(field).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("stDataFrame")).to_have_count(0)
        field.fill("wrong")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Wrong token or password.")).to_be_visible(timeout=30_000)
        field.fill("s3cret-token-for-e2e")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_test_id("stDataFrame")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("s3cret-token-for-e2e")).to_have_count(0)
