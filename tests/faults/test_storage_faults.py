"""Storage faults against a real edge process, a real Mosquitto and a real (tiny) filesystem.

A full disk is a real full disk: a 1-2 MB tmpfs mounted for the test (needs root, as in CI's container;
skipped with the reason otherwise) and filled with a file until the kernel says ENOSPC. A read-only
data dir is the same tmpfs remounted read-only. The restart test kills the edge with SIGKILL and
checks what comes back: the per-device state (first forecasts from the model, drift detection armed)
and every reading answered.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from tests.faults.conftest import EdgeProcess, count_answers, report
from tests.integration.conftest import Collector, wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.engine.features import training_pairs
from edgeloop.models.forecasters import LinearForecaster
from edgeloop.models.modelfile import save_model
from edgeloop.registry.local import LocalRegistry

DEVICES = ["dev-a", "dev-b", "dev-c"]
TARGET = "voc_ppb"


# -- a real small filesystem -------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount tmpfs of a given size (``"2m"``) under tmp_path; unmounted at the end of the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    written += os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return written


# -- the edge as a process -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def edge_env(broker: MosquittoBroker, data_dir: Path, site: str, port: int, **extra: str) -> dict[str, str]:
    return {
        "EDGELOOP_BROKER_URL": broker.url,
        "EDGELOOP_SITE": site,
        "EDGELOOP_DATA_DIR": str(data_dir),
        "EDGELOOP_BROKER_CLIENT_ID": f"edge-{site}",
        "EDGELOOP_MLFLOW_ENABLED": "false",
        "EDGELOOP_MODEL_MIN_TRAIN_SAMPLES": "1000000",  # no training: these tests are about storage
        "EDGELOOP_STORE_FLUSH_INTERVAL": "0.05",
        "EDGELOOP_EDGE_METRICS_PORT": str(port),
        "EDGELOOP_EDGE_SNAPSHOT_INTERVAL": "0.5",
        **extra,
    }


def http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(port: int, name: str, **labels: str) -> float:
    _, text = http(port, "/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + want + '}') if want else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def stored_rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return int(conn.execute("SELECT count(*) FROM samples").fetchone()[0])


class Feed:
    """Publishes readings of DEVICES (QoS 1) and remembers every (device, seq) sent."""

    def __init__(self, broker: MosquittoBroker, site: str) -> None:
        self.site = site
        self.session = MqttSession(broker.settings(), role="fault-feed")
        self.session.start()
        self.sent: dict[str, set[int]] = {d: set() for d in DEVICES}
        self.seq = 0
        self.rng = np.random.default_rng(7)

    def publish(self, steps: int, pause: float = 0.0) -> int:
        for _ in range(steps):
            for k, device in enumerate(DEVICES):
                value = float(100 + 10 * np.sin(self.seq / 15 + k) + self.rng.normal(0, 1))
                payload = {
                    "device": device,
                    "ts": 1_700_000_000 + 60 * self.seq,
                    "seq": self.seq,
                    TARGET: value,
                }
                self.session.publish(f"edgeloop/{self.site}/{device}/telemetry", orjson.dumps(payload), qos=1)
                self.sent[device].add(self.seq)
            self.seq += 1
            if pause:
                time.sleep(pause)
        return steps * len(DEVICES)

    @property
    def published(self) -> int:
        return sum(len(s) for s in self.sent.values())

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def site() -> str:
    return "storage-" + uuid.uuid4().hex[:8]


def wait_answered(feed: Feed, predictions: Collector, timeout: float) -> None:
    wait_until(
        lambda: count_answers(feed.sent, predictions.payloads())[1] == 0, timeout, "every reading answered"
    )


# -- refusing to start -----------------------------------------------------------------------------------
def refused(edge: EdgeProcess) -> list[str]:
    edge.start(wait_ready=None)
    assert edge.proc is not None
    code = edge.proc.wait(30)
    lines = [line for line in edge.log().splitlines() if line.strip()]
    assert code != 0, edge.log()
    return lines


def test_full_disk_at_start_is_refused_with_one_line(
    mosquitto: MosquittoBroker, tmpfs: Callable[[str], Path], edge_process: Any, site: str
) -> None:
    data = tmpfs("1m")
    fill(data / "filler")
    lines = refused(edge_process(edge_env(mosquitto, data, site, free_port()), start=False))
    assert len(lines) == 1, lines
    assert str(data) in lines[0] and "no space left" in lines[0]
    report(
        "disk full at start",
        published=0,
        answered=0,
        lost=0,
        duplicated=0,
        note="refused to start (exit 1): " + lines[0].replace(str(data), "<dir>")[:80],
    )


@pytest.mark.parametrize("kind", ["a file", "read-only"])
def test_unusable_data_dir_is_refused_with_one_line(
    kind: str,
    mosquitto: MosquittoBroker,
    tmpfs: Callable[[str], Path],
    edge_process: Any,
    site: str,
    tmp_path: Path,
) -> None:
    if kind == "a file":
        data = tmp_path / "data"
        data.write_text("not a directory")
        expected = "not a directory"
    else:
        data = tmpfs("1m")
        subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
        expected = "not writable"
    lines = refused(edge_process(edge_env(mosquitto, data, site, free_port()), start=False))
    assert len(lines) == 1, lines
    assert str(data) in lines[0] and expected in lines[0]
    report(
        f"data dir is {kind}",
        published=0,
        answered=0,
        lost=0,
        duplicated=0,
        note="refused to start (exit 1): " + lines[0].replace(str(data), "<dir>")[:80],
    )


# -- a disk that fills up while the edge runs -------------------------------------------------------------
def test_disk_full_while_running_keeps_answering_and_resumes_writing(
    mosquitto: MosquittoBroker, tmpfs: Callable[[str], Path], edge_process: Any, site: str
) -> None:
    data, port = tmpfs("2m"), free_port()
    edge = edge_process(edge_env(mosquitto, data, site, port))
    predictions = Collector(mosquitto, f"edgeloop/{site}/+/prediction")
    feed = Feed(mosquitto, site)
    feed.publish(200)
    wait_answered(feed, predictions, 30)
    wait_until(lambda: stored_rows(data / "edgeloop.db") == feed.published, 15, "the first rows stored")

    fill(data / "filler")
    feed.publish(200, pause=0.002)
    wait_answered(feed, predictions, 30)  # the disk is full; the forecasts go on
    wait_until(
        lambda: metric(port, "edgeloop_store_errors_total", op="write") > 0, 15, "counted write errors"
    )
    code, body = http(port, "/healthz")
    assert code == 200 and orjson.loads(body)["_store_errors"] > 0
    assert edge.alive() and stored_rows(data / "edgeloop.db") < feed.published

    (data / "filler").unlink()
    freed = time.monotonic()
    feed.publish(50)
    wait_until(lambda: stored_rows(data / "edgeloop.db") == feed.published, 20, "writing to resume")
    recovery = time.monotonic() - freed
    wait_answered(feed, predictions, 30)
    rss = edge.rss_mb()
    assert edge.stop() == 0
    answered, lost, duplicated = count_answers(feed.sent, predictions.payloads())
    assert lost == 0 and duplicated == 0 and rss < 400
    assert "store writes resumed" in edge.log()
    report(
        "disk full while running",
        published=feed.published,
        answered=answered,
        lost=lost,
        duplicated=duplicated,
        recovery_s=recovery,
        note=f"rows kept in memory, all stored after space was freed; RSS {rss:.0f} MB",
    )
    feed.close()
    predictions.close()


def test_disk_full_during_pruning_is_survived(
    mosquitto: MosquittoBroker, tmpfs: Callable[[str], Path], edge_process: Any, site: str
) -> None:
    data, port = tmpfs("2m"), free_port()
    edge = edge_process(edge_env(mosquitto, data, site, port, EDGELOOP_STORE_RETENTION_ROWS="1000"))
    predictions = Collector(mosquitto, f"edgeloop/{site}/+/prediction")
    feed = Feed(mosquitto, site)
    feed.publish(800)  # 2,400 rows: the first prune (10 s after start) has 1,400 to delete
    wait_until(lambda: stored_rows(data / "edgeloop.db") == feed.published, 15, "rows stored")
    fill(data / "filler")
    # Keep the stream going while the disk is full until the writer has tried (and failed) to prune.
    deadline = time.monotonic() + 25
    while metric(port, "edgeloop_store_errors_total", op="prune") == 0 and time.monotonic() < deadline:
        feed.publish(5, pause=0.02)
    assert metric(port, "edgeloop_store_errors_total", op="prune") > 0, edge.log()[-2000:]
    assert edge.alive() and http(port, "/healthz")[0] == 200
    wait_answered(feed, predictions, 30)

    (data / "filler").unlink()
    freed = time.monotonic()
    feed.publish(20)
    # The next prune succeeds: the table is back within the retention bound plus what arrived since.
    wait_until(lambda: stored_rows(data / "edgeloop.db") <= 1000 + 3 * 60, 25, "a successful prune")
    recovery = time.monotonic() - freed
    wait_answered(feed, predictions, 30)
    with contextlib.closing(sqlite3.connect(data / "edgeloop.db")) as conn:
        newest = conn.execute("SELECT max(seq) FROM samples").fetchone()[0]
    assert newest == feed.seq - 1  # nothing written during the fault was lost to the prune failure
    assert edge.stop() == 0
    answered, lost, duplicated = count_answers(feed.sent, predictions.payloads())
    assert lost == 0 and duplicated == 0
    report(
        "disk full during pruning",
        published=feed.published,
        answered=answered,
        lost=lost,
        duplicated=duplicated,
        recovery_s=recovery,
        note="prune failures counted, retried, then pruned",
    )
    feed.close()
    predictions.close()


# -- kill -9 and restart -----------------------------------------------------------------------------------
def install_champion(data: Path) -> str:
    registry = LocalRegistry(data / "models")
    x = 100 + 10 * np.sin(np.arange(3000) / 15) + np.random.default_rng(0).normal(0, 1, 3000)
    xs, ys = training_pairs(x, 5)
    meta = {
        "scope": TARGET,
        "target": TARGET,
        "version": 1,
        "label": f"{TARGET}:v1",
        "scores": {"val_rmse": 1.0},
    }
    save_model(registry.version_dir(TARGET, 1), LinearForecaster(5).fit(xs, ys), meta)
    registry.promote(TARGET, 1, reason="test")
    return f"{TARGET}:v1"


def test_kill_9_and_restart_restores_state_and_answers_every_reading(
    mosquitto: MosquittoBroker, edge_process: Any, site: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    label = install_champion(data)
    env = edge_env(
        mosquitto,
        data,
        site,
        free_port(),
        EDGELOOP_DRIFT_WARMUP="10",
        EDGELOOP_DRIFT_WINDOW="20",
        EDGELOOP_DRIFT_CALIBRATION="20",
    )
    edge = edge_process(env)
    predictions = Collector(mosquitto, f"edgeloop/{site}/+/prediction")
    feed = Feed(mosquitto, site)
    feed.publish(100)
    wait_answered(feed, predictions, 30)
    snapshot = data / "state" / f"edge-{site}.json"

    def snapshot_has_all() -> bool:
        state = orjson.loads(snapshot.read_bytes()) if snapshot.exists() else {"tracks": []}
        return sorted(t["count"] for t in state["tracks"]) == [100] * len(DEVICES)

    wait_until(snapshot_has_all, 10, "a snapshot holding every reading")
    edge.kill9()

    down_from = feed.seq
    feed.publish(20)  # while the edge is down: the broker keeps them in the edge's session
    restarted = time.monotonic()
    edge = edge_process(env)
    edge.wait_log("restored state of 3 devices/targets", 5)
    feed.publish(20)
    wait_answered(feed, predictions, 30)
    recovery = time.monotonic() - restarted
    answers = predictions.payloads()
    for device in DEVICES:
        first = min(
            (p for p in answers if p["device"] == device and p["seq"] >= down_from), key=lambda p: p["seq"]
        )
        assert first["seq"] == down_from and first["predictions"][TARGET]["model"] == label  # not persistence
    assert edge.stop() == 0
    state = orjson.loads(snapshot.read_bytes())
    for track in state["tracks"]:
        guard = track["guard"]
        # Detection stayed armed: the guard counts on from before the kill, no new warm-up/calibration.
        assert guard["samples"] > 100 and guard["warmup_left"] == 0
        assert guard["detector"]["live_reference"] is not None
    answered, lost, duplicated = count_answers(feed.sent, answers)
    assert lost == 0
    report(
        "edge kill -9 and restart",
        published=feed.published,
        answered=answered,
        lost=lost,
        duplicated=duplicated,
        recovery_s=recovery,
        note="state restored from the snapshot: model forecasts and armed drift detection at once",
    )
    feed.close()
    predictions.close()


def test_kill_9_mid_stream_answers_every_reading_exactly_once(
    mosquitto: MosquittoBroker, edge_process: Any, site: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    label = install_champion(data)
    env = edge_env(mosquitto, data, site, free_port())
    edge = edge_process(env)
    predictions = Collector(mosquitto, f"edgeloop/{site}/+/prediction")
    feed = Feed(mosquitto, site)
    feed.publish(50)
    wait_answered(feed, predictions, 30)
    time.sleep(1.0)  # a snapshot with every device's lag window
    feed.publish(100)  # a burst, and the kill lands in the middle of answering it
    edge.kill9()
    feed.publish(20)
    edge = edge_process(env)
    restarted = time.monotonic()
    feed.publish(20)
    with contextlib.suppress(AssertionError):
        wait_answered(feed, predictions, 8)
    answered, lost, duplicated = count_answers(feed.sent, predictions.payloads())
    report(
        "edge kill -9 mid-stream and restart",
        published=feed.published,
        answered=answered,
        lost=lost,
        duplicated=duplicated,
        recovery_s=time.monotonic() - restarted,
        note="readings unacknowledged at the kill are delivered again to the restarted edge",
    )
    assert edge.stop() == 0
    last = max(p["seq"] for p in predictions.payloads())
    assert all(p["predictions"][TARGET]["model"] == label for p in predictions.payloads() if p["seq"] == last)
    assert lost == 0
    feed.close()
    predictions.close()
