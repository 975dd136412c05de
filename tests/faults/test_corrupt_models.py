"""Corrupt models against a real edge process on a real Mosquitto: it starts, serves the last good
version, answers every reading exactly once, and reports ``model_load_failed``.

Each test copies a registry of two real versions (linear models trained by the training code on
simulator data; ``voc_ppb:v1`` then ``voc_ppb:v2`` promoted), breaks it the way a disk, a hand edit or
an old writer would, and runs ``edgeloop edge`` on it as its own process.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.faults.conftest import EdgeProcess, count_answers, report
from tests.integration.conftest import Collector, wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.store import Series
from edgeloop.models.modelfile import META_FILE, MODEL_FILE, save_model, sha256_bytes
from edgeloop.models.training import train_candidates
from edgeloop.registry.local import LocalRegistry
from edgeloop.registry.pointer import CHAMPION_FILE
from edgeloop.scopes import version_label
from edgeloop.telemetry.simulator import Simulator

SCOPE = "voc_ppb"
LAGS = 5
DEVICES = 3
STEPS = 60  # readings per device and run
POLL = 0.3  # edge.model_poll_interval: several polls happen during each run
MAX_RSS_MB = 400  # an edge serving a few linear models; refusals must not pile anything up


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with voc_ppb:v1 and voc_ppb:v2 (the champion), trained on simulator data."""
    frame = Simulator(DEVICES, seed=11).frame(1200)
    series = [
        Series(str(dev), g["ts"].to_numpy(float), g["voc_ppb"].to_numpy(float))
        for dev, g in frame.groupby("device")
    ]
    root = tmp_path_factory.mktemp("trained") / "models"
    reg = LocalRegistry(root)
    for window in (600, 1200):
        result = train_candidates(
            [Series(s.device, s.ts[:window], s.values[:window]) for s in series],
            lags=LAGS,
            candidates=["linear"],
        )
        v = reg.next_version(SCOPE)
        meta = {"scope": SCOPE, "target": SCOPE, "version": v, "label": version_label(SCOPE, v)}
        save_model(reg.version_dir(SCOPE, v), result.forecaster, meta)
        reg.promote(SCOPE, v)
    return root


@dataclass
class Run:
    """One edge process on a copy of the trained registry, with its predictions and events."""

    mosquitto: MosquittoBroker
    make_edge: Callable[..., EdgeProcess]
    data_dir: Path
    site: str = field(default_factory=lambda: f"cm-{uuid.uuid4().hex[:8]}")
    sent: dict[str, set[int]] = field(default_factory=dict)
    step: int = 0

    def __post_init__(self) -> None:
        self.registry = LocalRegistry(self.data_dir / "models")
        self.predictions = Collector(self.mosquitto, f"edgeloop/{self.site}/+/prediction")
        self.events = Collector(self.mosquitto, f"edgeloop/{self.site}/events")
        self.publisher = MqttSession(self.mosquitto.settings(), role="corrupt-models-pub")
        self.publisher.start()
        self.sim = Simulator(DEVICES, seed=3)

    def env(self) -> Mapping[str, str]:
        return {
            "EDGELOOP_SITE": self.site,
            "EDGELOOP_DATA_DIR": str(self.data_dir),
            "EDGELOOP_BROKER_URL": self.mosquitto.url,
            "EDGELOOP_BROKER_CLIENT_ID": f"edge-{self.site}",
            "EDGELOOP_EDGE_MODEL_POLL_INTERVAL": str(POLL),
            "EDGELOOP_STORE_FLUSH_INTERVAL": "0.05",
            "EDGELOOP_MLFLOW_ENABLED": "false",
            "EDGELOOP_MODEL_MIN_TRAIN_SAMPLES": "1000000",  # no training of its own: only our versions
            # The persistence floor would rightly demote a device now and then; these tests are about
            # which version serves, so it never gets a full window to judge in.
            "EDGELOOP_MODEL_FLOOR_WINDOW": "1000000",
        }

    def start_edge(self) -> EdgeProcess:
        return self.make_edge(self.env())

    def publish(self, steps: int) -> int:
        """Publish ``steps`` readings per device; returns the first seq of this batch."""
        first = self.step
        for _ in range(steps):
            for payload in self.sim.step():
                payload["ts"] = time.time()
                self.sent.setdefault(payload["device"], set()).add(payload["seq"])
                self.publisher.publish(
                    f"edgeloop/{self.site}/{payload['device']}/telemetry", orjson.dumps(payload), qos=1
                )
            self.step += 1
            time.sleep(0.01)  # a steady stream across several registry polls
        return first

    def wait_answered(self, timeout: float = 30.0) -> None:
        total = sum(len(s) for s in self.sent.values())
        wait_until(
            lambda: len({(p["device"], p["seq"]) for p in self.predictions.payloads()}) >= total,
            timeout,
            f"{total} readings answered",
        )
        time.sleep(2 * POLL)  # room for a duplicate to show up

    def models_from(self, first_seq: int) -> set[str]:
        """Model labels of predictions from ``first_seq + LAGS`` on (earlier ones may be persistence)."""
        return {
            p["predictions"][SCOPE]["model"]
            for p in self.predictions.payloads()
            if p["seq"] >= first_seq + LAGS
        }

    def check_edge(self, edge: EdgeProcess) -> None:
        assert edge.alive(), edge.log()[-3000:]
        assert edge.rss_mb() < MAX_RSS_MB

    def load_failures(self) -> list[dict[str, Any]]:
        return [e for e in self.events.payloads() if e["kind"] == "model_load_failed"]

    def report(self, scenario: str, note: str, recovery_s: float | None = None) -> tuple[int, int, int]:
        answered, lost, duplicated = count_answers(self.sent, self.predictions.payloads())
        published = sum(len(s) for s in self.sent.values())
        report(
            scenario,
            published=published,
            answered=answered,
            lost=lost,
            duplicated=duplicated,
            recovery_s=recovery_s,
            note=note,
        )
        return answered, lost, duplicated

    def close(self) -> None:
        for session in (self.predictions, self.events):
            session.close()
        self.publisher.close()


@pytest.fixture
def run(
    mosquitto: MosquittoBroker,
    edge_process: Callable[..., EdgeProcess],
    trained: Path,
    tmp_path: Path,
) -> Iterator[Run]:
    data_dir = tmp_path / "data"
    shutil.copytree(trained, data_dir / "models")
    r = Run(mosquitto, edge_process, data_dir)
    yield r
    r.close()


def edit_meta(version_dir: Path, **changes: Any) -> None:
    meta = orjson.loads((version_dir / META_FILE).read_bytes())
    meta.update(changes)
    (version_dir / META_FILE).write_bytes(orjson.dumps(meta))


def rewrite_model(version_dir: Path, body: bytes) -> None:
    """A model file its writer got wrong: the checksum matches, the content does not build."""
    (version_dir / MODEL_FILE).write_bytes(body)
    edit_meta(version_dir, sha256=sha256_bytes(body))


def tamper(version_dir: Path) -> None:
    path = version_dir / MODEL_FILE
    data = orjson.loads(path.read_bytes())
    data["intercept"] = float(data["intercept"]) + 1.0
    path.write_bytes(orjson.dumps(data))


def _pointer(reg: LocalRegistry, raw: bytes) -> None:
    (reg.scope_dir(SCOPE) / CHAMPION_FILE).write_bytes(raw)


# (case, corruption, version expected to serve, text the refusal must hold)
START_CASES: list[tuple[str, Callable[[LocalRegistry], None], str, str]] = [
    (
        'champion.json {"version": "abc"}',
        lambda reg: _pointer(reg, b'{"version": "abc"}'),
        "voc_ppb:v2",  # the last good pointer state, from champion.log
        "champion.json: field 'version'",
    ),
    (
        "meta.json lags: null",
        lambda reg: edit_meta(reg.version_dir(SCOPE, 2), lags=None),
        "voc_ppb:v1",
        "meta.json: field 'lags'",
    ),
    (
        "linear coefficients an object",
        lambda reg: rewrite_model(reg.version_dir(SCOPE, 2), b'{"coef": {"lag_1": 1.0}, "intercept": 0}'),
        "voc_ppb:v1",
        "model.txt: not a valid linear model",
    ),
    (
        "tampered model file",
        lambda reg: tamper(reg.version_dir(SCOPE, 2)),
        "voc_ppb:v1",
        "checksum mismatch",
    ),
]


@pytest.mark.parametrize(
    ("case", "corrupt", "expected", "refusal"), START_CASES, ids=[c[0] for c in START_CASES]
)
def test_edge_starts_on_a_corrupt_champion_and_serves_the_last_good_version(
    run: Run, case: str, corrupt: Callable[[LocalRegistry], None], expected: str, refusal: str
) -> None:
    corrupt(run.registry)
    edge = run.start_edge()
    first = run.publish(STEPS)
    run.wait_answered()
    run.check_edge(edge)
    assert run.models_from(first) == {expected}
    failures = run.load_failures()
    assert len(failures) == 1, failures  # reported once, not at every poll
    assert refusal in failures[0]["reason"] and failures[0]["previous_version"] == expected
    answered, lost, duplicated = run.report(f"corrupt model at start: {case}", f"serves {expected}")
    assert (answered, lost, duplicated) == (DEVICES * STEPS, 0, 0)


def test_stray_files_and_folders_are_ignored_with_one_warning(run: Run) -> None:
    root = run.registry.root
    for folder in ("junk", "Bad Name", "voc_ppb/vX", "voc_ppb/v01"):
        (root / folder).mkdir()
    (root / "notes.txt").write_text("not a model")
    (root / "voc_ppb" / "notes.txt").write_text("not a model")
    edge = run.start_edge()
    first = run.publish(STEPS)
    run.wait_answered()
    run.check_edge(edge)
    assert run.models_from(first) == {"voc_ppb:v2"}
    assert run.load_failures() == []
    log = edge.log()
    for stray in ("junk", "Bad Name", "vX", "v01", "models/notes.txt", "voc_ppb/notes.txt"):
        assert sum(stray in line and "ignored" in line for line in log.splitlines()) == 1, stray
    answered, lost, duplicated = run.report("stray files and folders under models/", "serves voc_ppb:v2")
    assert (answered, lost, duplicated) == (DEVICES * STEPS, 0, 0)


def test_a_champion_corrupted_while_stopped_falls_back_at_restart(run: Run) -> None:
    edge = run.start_edge()
    first = run.publish(STEPS)
    run.wait_answered()
    assert run.models_from(first) == {"voc_ppb:v2"}
    assert edge.stop() == 0
    tamper(run.registry.version_dir(SCOPE, 2))  # the disk flips a byte while the edge is down
    started = time.monotonic()
    edge = run.start_edge()
    recovery = time.monotonic() - started
    second = run.publish(STEPS)
    run.wait_answered()
    run.check_edge(edge)
    assert {
        p["predictions"][SCOPE]["model"] for p in run.predictions.payloads() if p["seq"] >= second + LAGS
    } == {"voc_ppb:v1"}
    failures = run.load_failures()
    assert len(failures) == 1 and "checksum" in failures[0]["reason"], failures
    # recovery: from the restart on the corrupt registry to "edge up", serving the champion before
    answered, lost, duplicated = run.report(
        "corrupt champion at restart",
        "serves voc_ppb:v1, the champion before; recovery = restart to edge up",
        recovery,
    )
    assert (answered, lost, duplicated) == (2 * DEVICES * STEPS, 0, 0)


def test_a_bad_champion_appearing_while_running_is_refused_and_the_current_model_keeps_serving(
    run: Run,
) -> None:
    edge = run.start_edge()
    first = run.publish(STEPS // 2)
    # What an old trainer or a hand edit does: a version that does not load, named champion unverified.
    reg = run.registry
    v = reg.next_version(SCOPE)
    good = reg.load(SCOPE, 2)
    meta = {**good.meta, "version": v, "label": version_label(SCOPE, v)}
    save_model(reg.version_dir(SCOPE, v), good.forecaster, meta)
    edit_meta(reg.version_dir(SCOPE, v), lags=None)
    _pointer(reg, orjson.dumps({"version": v, "history": [1, 2, v]}))
    wait_until(lambda: bool(run.load_failures()), 10, "model_load_failed")
    second = run.publish(STEPS - STEPS // 2)
    run.wait_answered()
    run.check_edge(edge)
    assert run.models_from(first) == {"voc_ppb:v2"} and run.models_from(second) == {"voc_ppb:v2"}
    failures = run.load_failures()
    assert len(failures) == 1 and failures[0]["version"] == f"voc_ppb:v{v}", failures
    assert failures[0]["previous_version"] == "voc_ppb:v2"
    answered, lost, duplicated = run.report("bad champion while running", "voc_ppb:v2 keeps serving")
    assert (answered, lost, duplicated) == (DEVICES * STEPS, 0, 0)


def test_devices_with_unusual_ids_get_their_own_model(run: Run) -> None:
    """The scope folder encoding lets any device id the parser accepts have a model of its own."""
    devices = ["Küche 1", "DEV-A", "..", "a\\b"]
    frame = Simulator(devices, seed=5).frame(800)
    reg = run.registry
    for device in devices:
        scope = f"{SCOPE}@{device}"
        rows = frame[frame["device"] == device]
        result = train_candidates(
            [Series(device, rows["ts"].to_numpy(float), rows["voc_ppb"].to_numpy(float))],
            lags=LAGS,
            candidates=["linear"],
        )
        v = reg.next_version(scope)
        meta = {"scope": scope, "target": SCOPE, "device": device, "version": v}
        save_model(reg.version_dir(scope, v), result.forecaster, {**meta, "label": version_label(scope, v)})
        reg.promote(scope, v)
    run.sim = Simulator(devices, seed=5)
    edge = run.start_edge()
    first = run.publish(STEPS)
    run.wait_answered()
    run.check_edge(edge)
    served = {
        p["device"]: p["predictions"][SCOPE]["model"]
        for p in run.predictions.payloads()
        if p["seq"] >= first + LAGS
    }
    assert served == {d: f"voc_ppb@{d}:v1" for d in devices}
    assert run.load_failures() == []
    answered, lost, duplicated = run.report("device ids needing an encoded scope folder", "own models")
    assert (answered, lost, duplicated) == (len(devices) * STEPS, 0, 0)
