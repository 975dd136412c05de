"""Helpers of the training fault tests: the edge's and trainer's environment, a trainer process,
a steady publisher of simulator readings, and a store seeded with readings to train on.

Shared by ``test_training_faults.py`` and ``test_trainer_pool.py``; a module of its own so that no test
module imports another.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from tests.faults.conftest import EdgeProcess, count_answers
from tests.integration.conftest import Collector, wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.store import SampleRow, Store
from edgeloop.telemetry.simulator import Simulator

DEVICES = 4
FIRST_TRAINING = 400  # readings of voc_ppb (all devices) before the edge asks for its first model


def base_env(mosquitto: MosquittoBroker, data_dir: Path, site: str, **extra: str) -> dict[str, str]:
    return {
        "EDGELOOP_SITE": site,
        "EDGELOOP_DATA_DIR": str(data_dir),
        "EDGELOOP_BROKER_URL": mosquitto.url,
        "EDGELOOP_BROKER_CLIENT_ID": f"edge-{site}",
        "EDGELOOP_MLFLOW_ENABLED": "false",
        "EDGELOOP_MODEL_MIN_TRAIN_SAMPLES": str(FIRST_TRAINING),
        "EDGELOOP_MODEL_CANDIDATES": '["persistence", "linear"]',
        "EDGELOOP_STORE_FLUSH_INTERVAL": "0.05",
        "EDGELOOP_EDGE_MODEL_POLL_INTERVAL": "0.5",
        "EDGELOOP_RETRAIN_BACKOFF": "1",
        **extra,
    }


def trainer_env(
    env: Mapping[str, str], client_id: str, *, mlflow: bool = False, **extra: str
) -> dict[str, str]:
    """``env`` for an ``edgeloop trainer`` of its own client id. ``mlflow``: seconds of MLflow set-up per
    training, so a kill lands mid-training, and scope names must pass as registered-model names."""
    more = {"EDGELOOP_MLFLOW_ENABLED": "true"} if mlflow else {}
    return {**env, "EDGELOOP_BROKER_CLIENT_ID": client_id, **more, **extra}


class TrainerProcess(EdgeProcess):
    """``edgeloop trainer`` as its own process."""

    def start(self, wait_ready: float | None = 30.0) -> TrainerProcess:
        fh = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop", "trainer"], env=self.env, stdout=fh, stderr=subprocess.STDOUT
        )
        fh.close()
        if wait_ready:
            self.wait_log("trainer up", wait_ready, count=self.log().count("trainer up") + 1)
        return self


class Readings:
    """Publishes simulator readings at a steady pace (in a thread); remembers each (device, seq)."""

    def __init__(self, mosquitto: MosquittoBroker, site: str, rate_steps: float = 100.0) -> None:
        self.sim = Simulator(DEVICES, seed=11)
        self.site = site
        self.sent: dict[str, set[int]] = defaultdict(set)
        self.session = MqttSession(mosquitto.settings(), role="readings")
        self.session.start()
        self.steps = 0
        self._rate = rate_steps
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, steps: int) -> None:
        for _ in range(steps):
            for payload in self.sim.step():
                self.session.publish(
                    f"edgeloop/{self.site}/{payload['device']}/telemetry", orjson.dumps(payload), qos=1
                )
                self.sent[payload["device"]].add(payload["seq"])
            self.steps += 1
            time.sleep(1 / self._rate)

    def start(self) -> Readings:
        def run() -> None:
            while not self._stop.is_set():
                self.publish(1)

        self._thread = threading.Thread(target=run, name="readings", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return sum(len(s) for s in self.sent.values())

    def close(self) -> None:
        self.stop()
        self.session.close()


def events_of(events: Collector, kind: str, scope: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events.payloads() if e["kind"] == kind and (scope is None or e["scope"] == scope)]


def settle(readings: Readings, predictions: Collector, timeout: float = 30) -> tuple[int, int, int, int]:
    """Stop publishing, wait for the answers; (published, answered, lost, duplicated)."""
    published = readings.stop()

    def all_in() -> bool:
        return count_answers(readings.sent, predictions.payloads())[1] == 0

    wait_until(all_in, timeout, "every reading to be answered")
    time.sleep(0.5)  # a duplicate would arrive about now
    answered, lost, duplicated = count_answers(readings.sent, predictions.payloads())
    return published, answered, lost, duplicated


def seeded_data_dir(path: Path, devices: list[str]) -> Path:
    """A new data dir whose store already holds enough voc_ppb readings of ``devices`` to train on."""
    path.mkdir()
    _seed_store(path / "edgeloop.db", devices)
    return path


def _seed_store(path: Path, devices: list[str], n: int = 300) -> None:
    store = Store(path, retention_rows=100_000)
    rows = [
        SampleRow(
            d,
            "voc_ppb",
            1_700_000_000 + 60 * i,
            i,
            200 + 40 * math.sin(i / 9) + (i % 7),
            None,
            None,
            None,
            None,
        )
        for d in devices
        for i in range(n)
    ]
    store.write(samples=rows)
    store.close()
