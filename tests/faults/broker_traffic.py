"""Traffic around the edge in the broker fault tests: a publisher of device readings and a sink of
predictions, both on persistent QoS 1 sessions that outlive broker restarts, and :func:`traffic`, which
starts an edge between them. Apart from ``test_broker_faults.py`` so that its tests read as scenarios.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from paho.mqtt.enums import MQTTErrorCode
from tests.faults.conftest import EdgeProcess

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession

EdgeFactory = Callable[..., EdgeProcess]


class Sink:
    """Every prediction of a site, from a persistent QoS 1 session that outlives broker restarts."""

    def __init__(self, broker: MosquittoBroker, site: str) -> None:
        self._payloads: list[bytes] = []
        self.first_at: list[float] = []  # arrival time of each payload (monotonic)
        self._lock = threading.Lock()
        self.session = MqttSession(
            broker.settings(reconnect_max_delay=1.0),
            role="sink",
            client_id=f"sink-{site}",
            clean_start=False,
            session_expiry=600,
            on_message=self._on,
        )
        self.session.start()
        self.session.subscribe([f"edgeloop/{site}/+/prediction"], qos=1)

    def _on(self, message: Any) -> None:
        now = time.monotonic()
        with self._lock:
            self._payloads.append(message.payload)
            self.first_at.append(now)

    def __len__(self) -> int:
        return len(self._payloads)

    def answers(self) -> list[dict[str, Any]]:
        with self._lock:
            return [orjson.loads(p) for p in self._payloads]

    def resent(self) -> int:
        """Byte-identical repeats: one prediction delivered again by MQTT QoS 1, not answered twice."""
        with self._lock:
            return len(self._payloads) - len(set(self._payloads))

    def close(self) -> None:
        self.session.close()


class Publisher:
    """QoS 1 readings of many devices from a persistent session (paho resends what is unacknowledged)."""

    def __init__(self, broker: MosquittoBroker, site: str, devices: int) -> None:
        self.broker = broker
        self.site = site
        self.devices = [f"dev-{i:03d}" for i in range(devices)]
        self.sent: dict[str, set[int]] = {d: set() for d in self.devices}
        self.count = 0
        self._buffer: list[tuple[str, bytes]] = []
        self.session = self._session()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _session(self) -> MqttSession:
        session = MqttSession(
            self.broker.settings(reconnect_max_delay=1.0),
            role="pub",
            client_id=f"pub-{self.site}",
            clean_start=False,
            session_expiry=600,
        )
        return session.start()

    def _next(self) -> tuple[str, bytes]:
        device = self.devices[self.count % len(self.devices)]
        seq = self.count // len(self.devices)
        self.sent[device].add(seq)
        self.count += 1
        payload = orjson.dumps({"ts": 1_700_000_000 + 60 * seq, "seq": seq, "voc_ppb": 100 + seq % 13})
        return f"edgeloop/{self.site}/{device}/telemetry", payload

    def _send(self, topic: str, payload: bytes) -> None:
        while self.session.client.publish(topic, payload, qos=1).rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            time.sleep(0.01)  # paho's own queue is full: wait for the broker's acks

    def publish(self, n: int) -> None:
        """Publish ``n`` readings round-robin over the devices as fast as paho takes them."""
        for _ in range(n):
            self._send(*self._next())

    def buffer(self, n: int) -> None:
        """Make ``n`` readings while the broker is away; :meth:`reconnect` publishes them."""
        self._buffer += [self._next() for _ in range(n)]

    def reconnect(self) -> None:
        self.session = self._session()
        for topic, payload in self._buffer:
            self._send(topic, payload)
        self._buffer.clear()

    def start(self, rate: float) -> None:
        """Publish ``rate`` readings per second in a thread until :meth:`stop`."""
        self._stop.clear()

        def run() -> None:
            start, base = time.monotonic(), self.count
            while not self._stop.is_set():
                due = base + int((time.monotonic() - start) * rate) - self.count
                if due > 0:
                    self.publish(due)
                time.sleep(0.01)

        self._thread = threading.Thread(target=run, name="publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def close(self) -> None:
        self.stop()
        self.session.close(drain_timeout=30)


def edge_env(broker: MosquittoBroker, site: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The default broker config of an edge; training is kept out (it is not what is tested here)."""
    return {
        "EDGELOOP_BROKER_URL": broker.url,
        "EDGELOOP_SITE": site,
        "EDGELOOP_DATA_DIR": str(data_dir),
        "EDGELOOP_MLFLOW_ENABLED": "false",
        "EDGELOOP_MODEL_MIN_TRAIN_SAMPLES": str(10**9),
        **extra,
    }


@dataclass
class Traffic:
    """An edge with the default broker config, and the devices and consumer around it."""

    env: Mapping[str, str]  # start a second edge with it to restart on the same data folder
    edge: EdgeProcess
    sink: Sink
    pub: Publisher


@contextlib.contextmanager
def traffic(
    broker: MosquittoBroker, site: str, tmp_path: Path, edge_process: EdgeFactory, devices: int
) -> Iterator[Traffic]:
    """Start an edge, then a prediction sink and a publisher of ``devices``; close both after."""
    env = edge_env(broker, site, tmp_path / "data")
    edge = edge_process(env)
    sink = Sink(broker, site)
    pub = Publisher(broker, site, devices=devices)
    try:
        yield Traffic(env, edge, sink, pub)
    finally:
        pub.close()
        sink.close()
