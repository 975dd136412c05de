"""Helpers for tests on a private NATS server: the shipped config, MQTT devices, a reference engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from edgeloop.adapters.nats_server import NatsServer, render_users
from edgeloop.adapters.store import Series
from edgeloop.config import Settings, load_settings
from edgeloop.models.modelfile import save_model
from edgeloop.models.training import train_candidates
from edgeloop.registry.local import LocalRegistry
from edgeloop.scopes import version_label
from edgeloop.service.edge import build_engine
from edgeloop.telemetry.parser import parser_from_settings
from edgeloop.telemetry.simulator import Simulator

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "nats"
EDGE_PASSWORD = "edge-secret"
OBSERVER_PASSWORD = "observer-secret"
BASE_TS = 1_700_000_000
SCOPE = "voc_ppb"
LAGS = 5

# Settings that make an edge deterministic on a fixed champion: no drift alarms, no scheduled or
# initial training, no probation rollback, so forecasts depend only on each device's readings.
DETERMINISTIC = {
    "model.lags": LAGS,
    "model.min_train_samples": 1_000_000,
    "model.refresh_every": "0",
    "model.consolidate_after": "0",
    "model.probation_tolerance": 1000.0,
    "drift.ph_threshold": 1e12,
    "mlflow.enabled": False,
    "alerts.mqtt": False,
}


def device_names(n: int) -> list[str]:
    return [f"dev-{i:03d}" for i in range(n)]


def start_nats(site: str, partitions: int, devices: Iterable[str]) -> NatsServer:
    """A private nats-server from deploy/nats (mapping, MQTT listener, per-device users) on free ports."""
    users = render_users(
        (DEPLOY / "users.conf").read_text(),
        site=site,
        devices={d: f"pw-{d}" for d in devices},
        edge_password=EDGE_PASSWORD,
        observer_password=OBSERVER_PASSWORD,
    )
    template = (DEPLOY / "nats-server.conf").read_text()
    return NatsServer.from_template(template, site=site, partitions=partitions, users=users).start()


def reading(device: str, seq: int) -> bytes:
    """A deterministic reading: a slow wave per device plus a seq pattern (a model has work to do)."""
    offset = int(device[-3:]) % 17
    value = 100.0 + 20.0 * ((seq + offset) % 24) / 24.0 + (seq * 7 + offset) % 5
    return orjson.dumps({"ts": BASE_TS + 60 * seq, "seq": seq, "voc_ppb": round(value, 3)})


def train_champion(models_dir: Path) -> None:
    """A linear fleet model for voc_ppb as the champion of ``models_dir``, trained on simulator data."""
    frame = Simulator(4, seed=5).frame(400)
    series = [
        Series(str(dev), g["ts"].to_numpy(float), g["voc_ppb"].to_numpy(float))
        for dev, g in frame.groupby("device")
    ]
    result = train_candidates(series, lags=LAGS, candidates=["linear"])
    reg = LocalRegistry(models_dir)
    v = reg.next_version(SCOPE)
    meta = {"scope": SCOPE, "target": SCOPE, "version": v, "label": version_label(SCOPE, v)}
    save_model(reg.version_dir(SCOPE, v), result.forecaster, meta)
    reg.promote(SCOPE, v)


def reference_forecasts(
    settings: Settings, readings: list[tuple[str, bytes]], batch: int = 256
) -> dict[tuple[str, int], float]:
    """What one edge (one engine, the same champion) forecasts for ``readings`` given in order."""
    engine = build_engine(settings)
    reg = LocalRegistry(settings.models_dir)
    champion = reg.champion(SCOPE)
    assert champion is not None
    engine.install(SCOPE, reg.load(SCOPE, champion, lags=settings.model.lags), probation=True)
    parser = parser_from_settings(settings, wall_clock=None)
    out: dict[tuple[str, int], float] = {}
    for i in range(0, len(readings), batch):
        parsed = [parser.parse(t, p) for t, p in readings[i : i + batch]]
        for p in engine.process(parsed).predictions:
            assert p.seq is not None
            out[(p.device, p.seq)] = p.forecasts[SCOPE].value
    return out


def reference_settings(data_dir: Path, site: str) -> Settings:
    return load_settings(None, site=site, data_dir=data_dir, **DETERMINISTIC)


class MqttDevices:
    """Devices publishing QoS 1 telemetry to the NATS MQTT listener, each with its own user."""

    def __init__(self, server: NatsServer, site: str, devices: list[str]) -> None:
        self.site = site
        self.devices = devices
        self.clients: dict[str, mqtt.Client] = {}
        self.sent: dict[str, list[int]] = {d: [] for d in devices}
        self.order: list[tuple[str, bytes]] = []  # (topic, payload) as published, for the reference
        for device in devices:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=f"{site}-{device}", protocol=mqtt.MQTTv311
            )
            client.username_pw_set(device, f"pw-{device}")
            client.max_queued_messages_set(0)
            client.connect(server.host, server.mqtt_port, keepalive=30)
            client.loop_start()
            self.clients[device] = client
        deadline = time.monotonic() + 60
        while not all(c.is_connected() for c in self.clients.values()):
            assert time.monotonic() < deadline, "devices did not connect to the MQTT listener"
            time.sleep(0.05)
        self._last: list[mqtt.MQTTMessageInfo] = []

    def publish_round(self, seq: int) -> None:
        """Every device publishes its reading ``seq``."""
        for device, client in self.clients.items():
            topic = f"edgeloop/{self.site}/{device}/telemetry"
            payload = reading(device, seq)
            self._last.append(client.publish(topic, payload, qos=1))
            self.sent[device].append(seq)
            self.order.append((topic, payload))

    def publish_as(self, device: str, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self.clients[device].publish(topic, payload, qos=1)

    def wait_acked(self, timeout: float = 60) -> None:
        """Wait until the server acknowledged (PUBACK) everything published so far."""
        deadline = time.monotonic() + timeout
        for info in self._last:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "the MQTT listener did not acknowledge a reading"
        self._last = []

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()


class PredictionSink:
    """Collects predictions as an MQTT client of the NATS MQTT listener (the observer user)."""

    def __init__(self, server: NatsServer, site: str) -> None:
        self._lock = threading.Lock()
        self.payloads: list[dict[str, Any]] = []
        self.topics: list[str] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{site}-observer", protocol=mqtt.MQTTv311
        )
        self.client.username_pw_set("observer", OBSERVER_PASSWORD)
        self.client.on_message = self._on
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(server.host, server.mqtt_port)
        self.client.loop_start()
        self.client.subscribe(f"edgeloop/{site}/+/prediction", qos=1)
        assert subscribed.wait(30), "no SUBACK from the MQTT listener"

    def _on(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(orjson.loads(message.payload))
            self.topics.append(message.topic)

    def answers(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.payloads)

    def count(self) -> int:
        with self._lock:
            return len(self.payloads)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
