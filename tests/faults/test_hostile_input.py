"""Hostile devices against a real Mosquitto and the edge as its own process.

Poison device ids, a device impersonating another, a far-future clock and a flood of 60,000 device
ids: each is published for real, interleaved with good readings. The edge must stay connected (no
reconnect loop), answer every good reading exactly once, count every bad one under its reason, and
keep its memory bounded.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from tests.faults.conftest import EdgeProcess, count_answers, report
from tests.integration.conftest import wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession

POISON = ["dev\x01", "dev\x7f", "dev\x85", "dev\ufffe", "dev\ufdd0"]  # C0, DEL, C1, non-characters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Predictions:
    """Predictions on ``filters``: kept if their topic holds ``keep``, counted all the same."""

    def __init__(self, broker: MosquittoBroker, filters: list[str], keep: str = "") -> None:
        self._lock = threading.Lock()
        self._got: list[tuple[str, dict[str, Any]]] = []
        self._keep = keep
        self.count = 0
        self.session = MqttSession(broker.settings(), role="collector", on_message=self._on)
        self.session.start()
        self.session.subscribe(filters, qos=1)

    def _on(self, message: Any) -> None:
        with self._lock:
            self.count += 1
            if self._keep in message.topic:
                self._got.append((message.topic, orjson.loads(message.payload)))

    def on(self, topic_part: str = "") -> list[dict[str, Any]]:
        with self._lock:
            return [p for t, p in self._got if topic_part in t]

    def close(self) -> None:
        self.session.close()


class Edge:
    """An edge process on a fresh site, with its metrics endpoint."""

    def __init__(
        self,
        broker: MosquittoBroker,
        tmp_path: Path,
        start: Callable[[Mapping[str, str]], EdgeProcess],
        **env: str,
    ) -> None:
        self.site = f"hostile-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.data_dir = tmp_path / "data"
        self.proc = start(
            {
                "EDGELOOP_SITE": self.site,
                "EDGELOOP_DATA_DIR": str(self.data_dir),
                "EDGELOOP_BROKER_URL": broker.url,
                "EDGELOOP_BROKER_CLIENT_ID": f"edge-{self.site}",
                "EDGELOOP_MLFLOW_ENABLED": "false",
                # No training: these tests are about input, and a trainer would take the CPU.
                "EDGELOOP_MODEL_MIN_TRAIN_SAMPLES": "1000000000",
                "EDGELOOP_STORE_FLUSH_INTERVAL": "0.05",
                "EDGELOOP_EDGE_STATUS_INTERVAL": "0.2",
                "EDGELOOP_EDGE_METRICS_PORT": str(self.port),
                **env,
            }
        )

    def topic(self, device: str, kind: str = "telemetry") -> str:
        return f"edgeloop/{self.site}/{device}/{kind}"

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            match = re.match(r"^(edgeloop_\w+(?:\{[^}]*\})?) (\S+)$", line)
            if match:
                out[match.group(1)] = float(match.group(2))
        return out

    def count(self, name: str, **labels: str) -> float:
        key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        return self.metrics().get(key, 0.0)

    def dropped(self, reason: str) -> int:
        return int(self.count("edgeloop_messages_dropped_total", reason=reason))

    def received(self) -> int:
        return int(self.count("edgeloop_messages_received_total"))

    def assert_never_disconnected(self) -> None:
        assert self.proc.alive(), self.proc.log()[-3000:]
        assert "disconnected" not in self.proc.log(), self.proc.log()[-3000:]


def reading(device: str | None, seq: int, ts: float | str | None = None, **extra: Any) -> bytes:
    payload: dict[str, Any] = {
        "ts": time.time() if ts is None else ts,
        "seq": seq,
        "voc_ppb": 100.0 + seq % 7,
    }
    if device is not None:
        payload["device"] = device
    return orjson.dumps({**payload, **extra})


@pytest.fixture
def publisher(mosquitto: MosquittoBroker) -> Any:
    with MqttSession(mosquitto.settings(), role="hostile") as session:
        yield session


def broker_refuses_topic(broker: MosquittoBroker, topic: str) -> bool:
    """Publish once on ``topic`` with a plain paho client; True if the broker disconnects it for it."""
    gone = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_disconnect = lambda *_a: gone.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, b'{"ts": 1, "voc_ppb": 1}', qos=1)
        return gone.wait(5)
    finally:
        client.loop_stop()
        client.disconnect()


def test_poison_device_ids_are_dropped_and_the_edge_stays_connected(
    mosquitto: MosquittoBroker, tmp_path: Path, edge_process: Any, publisher: MqttSession
) -> None:
    edge = Edge(mosquitto, tmp_path, edge_process)
    goods = ["good-1", "good-2"]
    preds = Predictions(mosquitto, [edge.topic("+", "prediction")])
    sent: dict[str, set[int]] = {g: set() for g in goods}
    seq = poisons = 0
    for _ in range(20):
        for bad in POISON:
            for good in goods:
                publisher.publish(edge.topic(good), reading(good, seq), qos=1)
                sent[good].add(seq)
                seq += 1
            # The poison id in the payload, on a good device's topic and on a device-less-looking one.
            publisher.publish(edge.topic("good-1"), reading(bad, seq), qos=1)
            publisher.publish(edge.topic("poison"), reading(bad, seq + 1), qos=1)
            seq += 2
            poisons += 2
    # The poison id as a topic level never reaches the edge: Mosquitto disconnects such a publisher.
    refused = sum(broker_refuses_topic(mosquitto, edge.topic(bad)) for bad in POISON)
    good_total = sum(len(s) for s in sent.values())
    wait_until(lambda: edge.received() >= good_total + poisons, 30, "every reading received")
    wait_until(lambda: len(preds.on()) >= good_total, 20, "every good reading answered")
    time.sleep(0.5)  # an unexpected extra answer would arrive now
    answered, lost, duplicated = count_answers(sent, preds.on())
    report(
        "poison device ids (C0, DEL, C1, U+FFFE, U+FDD0)",
        published=good_total,
        answered=answered,
        lost=lost,
        duplicated=duplicated,
        note=f"{poisons} poison readings dropped as bad_device, {refused} poison topics refused by Mosquitto",
    )
    assert (answered, lost, duplicated) == (good_total, 0, 0)
    assert len(preds.on()) == good_total  # nothing for the poison readings
    assert edge.dropped("bad_device") == poisons and refused == len(POISON)
    edge.assert_never_disconnected()
    preds.close()


def test_a_device_cannot_impersonate_another(
    mosquitto: MosquittoBroker, tmp_path: Path, edge_process: Any, publisher: MqttSession
) -> None:
    edge = Edge(mosquitto, tmp_path, edge_process)
    preds = Predictions(mosquitto, [edge.topic("+", "prediction")])
    sent: dict[str, set[int]] = {"dev-001": set(), "dev-002": set()}
    forged = 0
    for i in range(50):
        publisher.publish(edge.topic("dev-001"), reading("dev-001", i), qos=1)
        publisher.publish(edge.topic("dev-002"), reading("dev-002", i), qos=1)
        publisher.publish(edge.topic("dev-001"), reading(None, 1000 + i), qos=1)  # device from the topic
        sent["dev-001"].update({i, 1000 + i})
        sent["dev-002"].add(i)
        if i % 5 == 0:
            publisher.publish(edge.topic("dev-001"), reading("dev-002", 5000 + i, voc_ppb=9999.0), qos=1)
            forged += 1
    total = sum(len(s) for s in sent.values())
    wait_until(lambda: edge.received() >= total + forged, 30, "every reading received")
    wait_until(lambda: len(preds.on()) >= total, 20, "every genuine reading answered")
    time.sleep(0.5)
    answered, lost, duplicated = count_answers(sent, preds.on())
    report(
        "impersonation (payload device != topic device)",
        published=total,
        answered=answered,
        lost=lost,
        duplicated=duplicated,
        note=f"{forged} forged readings dropped as device_mismatch",
    )
    assert (answered, lost, duplicated) == (total, 0, 0)
    assert edge.dropped("device_mismatch") == forged
    on_002 = preds.on("/dev-002/prediction")
    assert sorted(p["seq"] for p in on_002) == sorted(sent["dev-002"])  # none of the forged 5000+
    assert all(p["device"] == "dev-002" for p in on_002)
    assert all(p["device"] == "dev-001" for p in preds.on("/dev-001/prediction"))
    edge.assert_never_disconnected()
    preds.close()


def test_a_far_future_timestamp_is_dropped(
    mosquitto: MosquittoBroker, tmp_path: Path, edge_process: Any, publisher: MqttSession
) -> None:
    edge = Edge(mosquitto, tmp_path, edge_process)
    preds = Predictions(mosquitto, [edge.topic("clock", "prediction")])
    sent: dict[str, set[int]] = {"clock": set()}
    future = 0
    for i in range(60):
        publisher.publish(edge.topic("clock"), reading("clock", i), qos=1)
        sent["clock"].add(i)
        if i % 3 == 0:
            ts: str | float = "5107-03-01T00:00:00Z" if i % 2 else time.time() + 3600
            publisher.publish(edge.topic("clock"), reading("clock", 10_000 + i, ts=ts), qos=1)
            future += 1
    wait_until(lambda: edge.received() >= 60 + future, 30, "every reading received")
    wait_until(lambda: len(preds.on()) >= 60, 20, "every good reading answered")
    time.sleep(0.5)
    answered, lost, duplicated = count_answers(sent, preds.on())
    report(
        "far-future timestamps (year 5107, +1 h)",
        published=60,
        answered=answered,
        lost=lost,
        duplicated=duplicated,
        note=f"{future} readings dropped as ts_out_of_window",
    )
    assert (answered, lost, duplicated) == (60, 0, 0)
    assert edge.dropped("ts_out_of_window") == future
    # The device's time was not pinned in the future: its status row holds its real last reading.
    db = edge.data_dir / "edgeloop.db"

    def last_seen() -> float | None:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT max(last_seen) FROM scope_status").fetchone()
        return None if row is None else row[0]

    wait_until(lambda: db.exists() and last_seen() is not None, 10, "a status row")
    assert (last_seen() or 0.0) < time.time() + 60
    edge.assert_never_disconnected()
    preds.close()


def test_sixty_thousand_device_ids_keep_memory_bounded(
    mosquitto: MosquittoBroker, tmp_path: Path, edge_process: Any, publisher: MqttSession
) -> None:
    max_devices, flood, chunk = 5_000, 60_000, 4_000
    filled = 3 * chunk  # ids published by then: the engine is full, the rest must not cost memory
    settled = 9 * chunk  # by then thousands of devices were evicted and replaced: memory is at its plateau
    edge = Edge(
        mosquitto,
        tmp_path,
        edge_process,
        EDGELOOP_LIMITS_MAX_DEVICES=str(max_devices),
        EDGELOOP_LIMITS_DEVICE_IDLE_S="5",
    )
    goods = [f"good-{i}" for i in range(5)]
    preds = Predictions(mosquitto, [edge.topic("+", "prediction")], keep="/good-")
    sent: dict[str, set[int]] = {g: set() for g in goods}
    seq = 0

    def good_round() -> None:
        nonlocal seq
        for g in goods:
            publisher.publish(edge.topic(g), reading(g, seq), qos=1)
            sent[g].add(seq)
        seq += 1

    for _ in range(20):  # warm up: the edge's steady state before the flood
        good_round()
    wait_until(lambda: len(preds.on()) >= 100, 20, "warm-up answered")
    time.sleep(0.5)
    baseline = peak = edge.proc.rss_mb()
    rss_at: dict[int, float] = {}
    started = time.monotonic()
    for k in range(flood):
        name = f"flood-{k:05d}"
        publisher.publish(edge.topic(name), reading(name, 0), qos=1)
        if k % 250 == 0:
            good_round()
        if k % chunk == chunk - 1:
            # Paced so the edge keeps up: this measures its per-device state, not a backlog of
            # unprocessed readings (bounded separately, by the inbox and the broker's flow control).
            # Where RSS is compared, the edge is first let to catch up completely.
            slack = 0 if k + 1 in (filled, settled, flood) else 2500
            published = k + 1 + sum(len(s) for s in sent.values())
            wait_until(
                lambda: (
                    edge.received() >= published - slack
                    and preds.count >= edge.count("edgeloop_predictions_total") - slack
                ),
                30,
                "the edge to keep up",
            )
            rss_at[k + 1] = edge.proc.rss_mb()
            peak = max(peak, rss_at[k + 1])
    good_total = sum(len(s) for s in sent.values())
    total = flood + good_total
    wait_until(lambda: edge.received() >= total, 20, "every reading received")
    wait_until(lambda: len(preds.on()) >= good_total, 10, "every good reading answered")
    elapsed = time.monotonic() - started
    answered, lost, duplicated = count_answers(sent, preds.on())
    refused = edge.dropped("device_full")
    evicted = int(edge.count("edgeloop_devices_evicted_total"))
    predicted = int(edge.count("edgeloop_predictions_total"))
    report(
        f"60,000 device ids (max_devices {max_devices:,})",
        published=good_total,
        answered=answered,
        lost=lost,
        duplicated=duplicated,
        note=f"RSS {baseline:.0f} MB, {rss_at[filled]:.0f} at {filled:,} ids, {rss_at[settled]:.0f} at "
        f"{settled:,}, {rss_at[flood]:.0f} at {flood:,}, peak {peak:.0f}; {evicted:,} evicted, "
        f"{refused:,} dropped as device_full, {predicted - good_total:,} flood readings answered, "
        f"{elapsed:.1f} s",
    )
    assert (answered, lost, duplicated) == (good_total, 0, 0)
    assert refused > 0 and evicted > 0
    assert predicted + refused == total  # every reading answered or counted: nothing lost silently
    # 5,000 devices of state are ~35 MB (~7 kB each, measured on the engine alone); unbounded, the
    # 60,000 ids cost +420 MB (issue 8). Each eviction frees a device's state, but the allocator keeps
    # the freed pools: how much depends on how many devices were evicted and replaced (4,995 to 9,990
    # to 13,990 here, by how fast the edge gets through the flood), and levels off slowly. Seen: +71 to
    # +106 MB at the peak; with 180,000 ids (39,960 evicted) +117 MB.
    assert peak - baseline < 150, f"RSS grew {peak - baseline:.0f} MB"
    # After 36,000 ids, 24,000 more (whose state would be ~170 MB) must cost far less (seen: +9 to +32).
    grown = rss_at[flood] - rss_at[settled]
    assert grown < 40, f"RSS grew {grown:.0f} MB from {settled:,} to {flood:,} ids"
    edge.assert_never_disconnected()
    preds.close()
