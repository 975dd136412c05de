"""The edge against a real private Mosquitto: predictions, the foreign-publisher mapping, hostile input."""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from tests.integration.conftest import Collector, wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.config import Settings
from edgeloop.service.edge import EdgeService

pytestmark = pytest.mark.integration


def publish_readings(broker: MosquittoBroker, site: str, devices: list[str], n: int) -> None:
    with MqttSession(broker.settings(), role="test-pub") as pub:
        for seq in range(n):
            for i, device in enumerate(devices):
                payload = {
                    "device": device,
                    "ts": 1_700_000_000 + 60 * seq,
                    "seq": seq,
                    "voc_ppb": 100 + i + seq % 7,
                }
                pub.publish(f"edgeloop/{site}/{device}/telemetry", orjson.dumps(payload), qos=1)


def test_every_reading_gets_exactly_one_prediction(
    mosquitto: MosquittoBroker,
    make_settings: Callable[..., Settings],
    run_edge: Callable[[Settings], EdgeService],
) -> None:
    settings = make_settings()
    edge = run_edge(settings)
    predictions = Collector(mosquitto, f"edgeloop/{settings.site}/+/prediction")
    devices = ["dev-a", "dev-b", "dev-c"]
    publish_readings(mosquitto, settings.site, devices, 300)
    wait_until(lambda: len(predictions.payloads()) >= 900, 30, "900 predictions")
    got = Counter((p["device"], p["seq"]) for p in predictions.payloads())
    assert got == Counter({(d, s): 1 for d in devices for s in range(300)})
    first = next(p for p in predictions.payloads() if p["device"] == "dev-a" and p["seq"] == 299)
    assert first["predictions"]["voc_ppb"]["model"] == "persistence"  # no model yet, and it says so
    edge.stop()
    with sqlite3.connect(settings.store_path) as db:
        assert db.execute("SELECT count(*) FROM samples").fetchone()[0] == 900
        assert db.execute("SELECT count(DISTINCT device) FROM scope_status").fetchone()[0] == 3
    predictions.close()


@pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None, reason="mosquitto_pub missing (apt-get install mosquitto-clients)"
)
def test_foreign_publisher_is_consumed_by_mapping_alone(
    mosquitto: MosquittoBroker,
    make_settings: Callable[..., Settings],
    run_edge: Callable[[Settings], EdgeService],
    tmp_path: Path,
) -> None:
    room = f"room{random.randrange(10**6)}"
    config = tmp_path / "foreign.yaml"
    config.write_text(
        f"topics:\n  telemetry: ['{room}/sensors']\n  device_level: 0\n"
        "mapping:\n  fields: {timestamp: ts}\n"
        "model:\n  targets: [temp_c, humidity, voc_ppb]\n"
    )
    from edgeloop.config import load_settings

    base = make_settings()
    settings = load_settings(
        config,
        site=base.site,
        data_dir=base.data_dir,
        **{"broker.url": mosquitto.url, "broker.client_id": base.broker.client_id},
    )
    run_edge(settings)
    predictions = Collector(mosquitto, f"edgeloop/{settings.site}/{room}/prediction")
    for minute in range(3):
        payload = {
            "timestamp": f"2024-05-01T12:0{minute}:00",
            "temp_c": 22.1,
            "humidity": 51.0,
            "voc_ppb": 210.0 + minute,
        }
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                str(mosquitto.port),
                "-q",
                "1",
                "-t",
                f"{room}/sensors",
                "-m",
                orjson.dumps(payload).decode(),
            ],
            check=True,
            timeout=10,
        )
    wait_until(lambda: len(predictions.payloads()) >= 3, 20, "3 predictions for the foreign publisher")
    last = predictions.payloads()[-1]
    assert last["device"] == room and set(last["predictions"]) == {"temp_c", "humidity", "voc_ppb"}
    assert last["predictions"]["voc_ppb"]["value"] == 212.0
    predictions.close()


def hostile_payloads(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    valid = {"device": "fuzz", "ts": 1_700_000_000, "seq": 1, "voc_ppb": 120.0}
    out: list[bytes] = []
    for _ in range(n):
        kind = rng.randrange(9)
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(1, 200)))
        elif kind == 1:
            out.append(b"{" * rng.randrange(1, 5000))  # deep nesting / unterminated
        elif kind == 2:
            out.append(b'{"voc_ppb": "' + b"A" * 20000 + b'"}')  # oversize
        elif kind == 3:
            out.append(orjson.dumps({**valid, "voc_ppb": rng.choice(["NaN", None, [1], {"a": 1}, True])}))
        elif kind == 4:
            out.append(orjson.dumps({**valid, "voc_ppb": rng.choice([-5.0, 1e9, -1e12])}))
        elif kind == 5:
            out.append(orjson.dumps({**valid, "ts": rng.choice(["soon", -1, 1e30, [], True])}))
        elif kind == 6:
            out.append(orjson.dumps({**valid, "device": rng.choice(["", "a/b", "#", 7, "x" * 500])}))
        elif kind == 7:
            out.append(orjson.dumps({**valid, "seq": rng.choice([-1, 1.5, "7", 2**64 - 1])}))
        else:
            out.append(orjson.dumps(rng.choice([[1, 2], "text", 3.5, None, {"device": "fuzz", "ts": 1}])))
    return out


def test_ten_thousand_hostile_payloads_are_counted_and_dropped(
    mosquitto: MosquittoBroker,
    make_settings: Callable[..., Settings],
    run_edge: Callable[[Settings], EdgeService],
) -> None:
    settings = make_settings()
    edge = run_edge(settings)
    predictions = Collector(mosquitto, f"edgeloop/{settings.site}/+/prediction")
    payloads = hostile_payloads(10_000)
    with MqttSession(mosquitto.settings(), role="fuzzer") as pub:
        for payload in payloads:
            pub.publish(f"edgeloop/{settings.site}/fuzz/telemetry", payload, qos=1)
    wait_until(lambda: sum(edge.stats.dropped.values()) >= 10_000, 60, "10,000 drops counted")
    assert sum(edge.stats.dropped.values()) == 10_000 and edge.stats.processed == 0
    assert {"not_json", "oversize", "bad_value", "out_of_range", "bad_ts", "bad_device", "bad_seq"} <= set(
        edge.stats.dropped
    )
    # Still alive and answering.
    publish_readings(mosquitto, settings.site, ["after-fuzz"], 5)
    wait_until(lambda: len(predictions.payloads()) == 5, 20, "predictions after the fuzzing")
    predictions.close()


def test_edge_with_password_auth(
    mosquitto_auth: MosquittoBroker,
    make_settings: Callable[..., Settings],
    run_edge: Callable[[Settings], EdgeService],
    tmp_path: Path,
) -> None:
    secret = tmp_path / "broker-password"
    secret.write_text("s3cret-test\n")
    settings = make_settings(
        **{"broker.url": mosquitto_auth.url, "broker.username": "edge", "broker.password_file": secret}
    )
    edge = run_edge(settings)
    assert edge.session.connected
    anonymous = make_settings(**{"broker.url": mosquitto_auth.url, "broker.client_id": "anon"})
    from edgeloop.errors import BrokerError

    with pytest.raises(BrokerError, match="refused"):
        EdgeService(anonymous).run()
