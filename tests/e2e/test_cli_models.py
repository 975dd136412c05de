"""``edgeloop models`` as an operator runs it: promotions and rollbacks reach the store and the broker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.store import Store
from edgeloop.engine.features import training_pairs
from edgeloop.models.forecasters import LinearForecaster
from edgeloop.models.modelfile import save_model
from edgeloop.registry.local import LocalRegistry
from edgeloop.scopes import version_label


def make_versions(data: Path, scope: str, n: int) -> None:
    reg = LocalRegistry(data / "models")
    y = np.asarray([100 + ((i * 7) % 13) for i in range(300)], dtype=float)
    model = LinearForecaster(5).fit(*training_pairs(y, 5))
    for _ in range(n):
        v = reg.next_version(scope)
        meta = {"scope": scope, "target": scope, "version": v, "label": version_label(scope, v)}
        save_model(reg.version_dir(scope, v), model, meta)
        reg.promote(scope, v)


class Subscriber:
    """Keeps every event published on one site's events topic."""

    def __init__(self, broker: MosquittoBroker, site: str) -> None:
        self.got: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.session = MqttSession(broker.settings(), role="test", on_message=self._on).start()
        self.session.subscribe([f"edgeloop/{site}/events"], qos=1)

    def _on(self, message: Any) -> None:
        with self._lock:
            self.got.append(orjson.loads(message.payload))

    def kinds(self) -> list[str]:
        with self._lock:
            return [e["kind"] for e in self.got]


def edgeloop(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeloop", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_rollback_and_promotion_are_events_on_the_broker_and_in_the_store(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    site = "cli-" + uuid.uuid4().hex[:8]
    data = tmp_path / "data"
    make_versions(data, "voc_ppb", 2)
    got: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_message(message: Any) -> None:
        with lock:
            got.append(orjson.loads(message.payload))

    session = MqttSession(mosquitto.settings(), role="test", on_message=on_message).start()
    session.subscribe([f"edgeloop/{site}/events"], qos=1)
    env = {**os.environ, "EDGELOOP_BROKER_URL": mosquitto.url, "EDGELOOP_SITE": site}
    try:
        done = edgeloop("models", "rollback", "voc_ppb", "--yes", "--data-dir", str(data), env=env)
        assert done.returncode == 0, done.stderr
        done = edgeloop(
            "models", "promote", "voc_ppb:v2", "--force", "--yes", "--data-dir", str(data), env=env
        )
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(got) < 2:
            time.sleep(0.05)
    finally:
        session.close()
    kinds = [(e["kind"], e.get("version"), e.get("previous_version")) for e in got]
    assert kinds == [
        ("model_rolled_back", "voc_ppb:v1", "voc_ppb:v2"),
        ("model_promoted", "voc_ppb:v2", "voc_ppb:v1"),
    ]
    store = Store(data / "edgeloop.db", readonly=True)
    try:
        stored = [(e.kind, e.version) for e in store.events(scope="voc_ppb")]
    finally:
        store.close()
    assert ("model_rolled_back", "voc_ppb:v1") in stored and ("model_promoted", "voc_ppb:v2") in stored


def test_cli_train_publishes_and_stores_its_promotion(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    site = "train-" + uuid.uuid4().hex[:8]
    data = tmp_path / "data"
    data.mkdir()
    store = Store(data / "edgeloop.db")
    rng = np.random.default_rng(0)
    day = np.sin(np.arange(3000) * 2 * np.pi / 1440)
    values = 100 + 40 * day + rng.normal(0, 2, 3000)
    store.write(
        samples=[
            ("dev-001", "voc_ppb", 1.7e9 + 60 * i, i, float(v), None, None, None, None)
            for i, v in enumerate(values)
        ]
    )
    store.close()
    subscriber = Subscriber(mosquitto, site)
    env = {**os.environ, "EDGELOOP_BROKER_URL": mosquitto.url, "EDGELOOP_SITE": site}
    try:
        done = edgeloop("train", "--no-mlflow", "--data-dir", str(data), env=env)
        assert done.returncode == 0, done.stderr
        assert "voc_ppb: promoted" in done.stdout, done.stdout
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "model_promoted" not in subscriber.kinds():
            time.sleep(0.05)
    finally:
        subscriber.session.close()
    assert "model_promoted" in subscriber.kinds(), subscriber.kinds()
    store = Store(data / "edgeloop.db", readonly=True)
    try:
        assert [e.version for e in store.events() if e.kind == "model_promoted"] == ["voc_ppb:v1"]
    finally:
        store.close()
