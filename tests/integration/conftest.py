"""Helpers for tests that run the edge against a real private broker."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.bench.options import BenchOptions
from edgeloop.config import Settings, load_settings
from edgeloop.service.edge import EdgeService
from edgeloop.telemetry.simulator import Simulator


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate``; fail with ``what`` if it is not true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Collector:
    """Subscribes to a filter and keeps every JSON message it gets."""

    def __init__(self, broker: MosquittoBroker, topic_filter: str, **broker_overrides: Any) -> None:
        self.messages: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self.session = MqttSession(broker.settings(**broker_overrides), role="collector", on_message=self._on)
        self.session.start()
        self.session.subscribe([topic_filter], qos=1)

    def _on(self, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, orjson.loads(message.payload)))

    def payloads(self) -> list[Any]:
        with self._lock:
            return [p for _, p in self.messages]

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def site(request: pytest.FixtureRequest) -> str:
    """A site id unique to this test, so its topics never meet another test's."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:40] + "-" + uuid.uuid4().hex[:6]


@pytest.fixture
def make_settings(mosquitto: MosquittoBroker, tmp_path: Path, site: str) -> Callable[..., Settings]:
    """Settings for an edge on the private broker and a fresh data dir; overrides are dotted keys."""

    def build(**overrides: Any) -> Settings:
        base = {
            "site": site,
            "data_dir": tmp_path / "data",
            "broker.url": mosquitto.url,
            "broker.client_id": f"edge-{site}",
            "store.flush_interval": 0.05,
            "edge.model_poll_interval": 0.5,
            "mlflow.enabled": False,
        }
        return load_settings(None, **{**base, **overrides})

    return build


@pytest.fixture
def run_edge() -> Iterator[Callable[[Settings], EdgeService]]:
    """Start edges in threads; every one started is stopped at the end of the test."""
    started: list[EdgeService] = []

    def start(settings: Settings) -> EdgeService:
        edge = EdgeService(settings).start()
        assert edge.ready.wait(20), "edge did not connect"
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.stop()


class SimStream:
    """Publishes a simulator's readings over MQTT, step by step, when asked."""

    def __init__(self, broker: MosquittoBroker, site: str, simulator: Any) -> None:
        self.simulator = simulator
        self.site = site
        self.session = MqttSession(broker.settings(), role="sim-stream")
        self.session.start()
        self.step = 0

    def publish(self, steps: int, *, pause_every: int = 200, pause: float = 0.05) -> None:
        for _ in range(steps):
            for payload in self.simulator.step():
                self.session.publish(
                    f"edgeloop/{self.site}/{payload['device']}/telemetry", orjson.dumps(payload), qos=1
                )
            self.step += 1
            if self.step % pause_every == 0:
                time.sleep(pause)  # a steady stream, not one burst the broker must queue

    def publish_in_step(self, steps: int, edge: Any, chunk: int = 50) -> None:
        """Publish ``steps`` steps in chunks, each time waiting until ``edge`` processed everything."""
        devices = len(self.simulator.devices)
        for _ in range(0, steps, chunk):
            self.publish(chunk)
            wait_until(lambda: edge.stats.processed >= devices * self.step, 60, "the edge to catch up")

    def close(self) -> None:
        self.session.close()


class BackgroundStream:
    """Two simulated devices' readings at a steady pace in a thread, to whatever broker is up."""

    def __init__(self, broker: MosquittoBroker, site: str) -> None:
        self.sim = Simulator(2, seed=3)
        self.site = site
        self.session = MqttSession(broker.settings(), role="stream").start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self.sim.step():
                self.session.publish(f"edgeloop/{self.site}/{p['device']}/telemetry", orjson.dumps(p), qos=1)
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.session.close()


def bus_settings(
    broker: MosquittoBroker, site: str, data_dir: Path, client_id: str, **extra: Any
) -> Settings:
    """Settings of an edge or trainer host in ``distribution.mode: bus``: a data dir of its own, champions
    only over the broker, and an edge that asks for no training itself; ``extra`` are dotted keys."""
    return load_settings(
        None,
        **{
            "site": site,
            "data_dir": data_dir,
            "broker.url": broker.url,
            "broker.client_id": client_id,
            "store.flush_interval": 0.05,
            "edge.model_poll_interval": 0.5,
            "edge.retrain": "mqtt",
            "mlflow.enabled": False,
            "model.min_train_samples": 100_000,
            "distribution.mode": "bus",
            **extra,
        },
    )


def tiny_bench_options(**extra: Any) -> BenchOptions:
    """``edgeloop bench`` at a tiny scale: every phase in seconds, no first training."""
    tiny: dict[str, Any] = {
        "devices": 20,
        "qos": [1],
        "ceiling_seconds": 1.0,
        "max_seconds": 1.0,
        "step_seconds": 1.5,
        "steps": 1,
        "latency_rate": 200.0,
        "latency_seconds": 2.0,
        "train_model": False,
        "window": 200,
    }
    return BenchOptions(**{**tiny, **extra})


def events_of(collector: Collector, kind: str, scope: str | None = None) -> list[dict[str, Any]]:
    return [e for e in collector.payloads() if e["kind"] == kind and (scope is None or e["scope"] == scope)]
