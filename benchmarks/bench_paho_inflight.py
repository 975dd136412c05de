"""What edgeloop's paho shortcut (``_FastAckClient``) saves, with and without a broker.

First the CPU paho spends per PUBACK with a full in-flight window (999 of 1,000 unacknowledged, none
queued): no network, so the figure does not depend on machine load. Then one client publishes QoS 1
messages at a fixed rate to a private Mosquitto and records the time from ``publish`` to its PUBACK
(``on_publish``), alternating paho's own client and the shortcut (noisy on a busy machine):

    PYTHONPATH=src python benchmarks/bench_paho_inflight.py [--rate 5000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgeloop.adapters import mqtt_client, paho_internals
from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.config import BrokerSettings


def run(cls: type[mqtt.Client], settings: BrokerSettings, rate: float, seconds: float) -> dict[str, float]:
    sent: dict[int, float] = {}
    latencies: list[float] = []

    def on_publish(_c: Any, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        started = sent.pop(mid, None)
        if started is not None:
            latencies.append(time.perf_counter() - started)

    client = cls(
        CallbackAPIVersion.VERSION2, client_id=f"bench-{cls.__name__}", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.max_inflight_messages_set(mqtt_client.MAX_INFLIGHT)
    client.max_queued_messages_set(mqtt_client.MAX_QUEUED)
    client.on_publish = on_publish
    client.connect(settings.host, settings.port)
    client.loop_start()
    time.sleep(0.5)
    payload = b'{"device": "dev-001", "seq": 1, "ts": 1700000000.0, "voc_ppb": 180.2}'
    start = time.perf_counter()
    n = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * rate)
        while n < due:
            info = client.publish("bench/inflight", payload, qos=1)
            sent[info.mid] = time.perf_counter()
            n += 1
        time.sleep(0.001)
    deadline = time.monotonic() + 30
    while sent and time.monotonic() < deadline:
        time.sleep(0.05)
    total = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    latencies.sort()
    return {
        "published": n,
        "acked/s": len(latencies) / total,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "unacked": len(sent),
    }


def per_puback_us(cls: type[mqtt.Client]) -> float:
    client = mqtt_client.make_client(BrokerSettings(), role="bench")
    client.__class__ = cls
    for mid in range(1, mqtt_client.MAX_INFLIGHT):
        message = mqtt.MQTTMessage(mid=mid, topic=b"t")
        message.qos, message.state = 1, mqtt.mqtt_ms_wait_for_puback
        client._out_messages[mid] = message
    client._inflight_messages = mqtt_client.MAX_INFLIGHT - 1
    n = 2000
    return 1e6 * min(timeit.repeat(client._update_inflight, number=n, repeat=5)) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    for cls in (mqtt.Client, paho_internals._FastAckClient):
        us = per_puback_us(cls)
        share = us * 5000 / 1e4  # percent of one core at 5,000 PUBACKs per second
        print(f"{cls.__name__:16} {us:8.2f} us per PUBACK, 999 in flight: {share:.1f}% of a core at 5,000/s")
    with MosquittoBroker() as broker:
        settings = broker.settings()
        for cls in (mqtt.Client, paho_internals._FastAckClient, mqtt.Client, paho_internals._FastAckClient):
            figures = run(cls, settings, args.rate, args.seconds)
            print(f"{cls.__name__:16} " + "  ".join(f"{k} {v:,.1f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
