"""Alerts reach a real webhook receiver and a real MQTT subscriber, rate limited, never blocking."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from tests.integration.conftest import Collector, SimStream, wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.config import Settings
from edgeloop.service.alerts import Alerter
from edgeloop.service.edge import EdgeService
from edgeloop.telemetry.schema import Event
from edgeloop.telemetry.simulator import Simulator


class Receiver:
    """A webhook endpoint on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self, delay: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                time.sleep(delay)
                length = int(self.headers["Content-Length"])
                received.append(orjson.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_an_alert_reaches_the_webhook_and_the_mqtt_topic_once_per_interval(
    mosquitto: MosquittoBroker, make_settings: Callable[..., Settings], receiver: Receiver, site: str
) -> None:
    settings = make_settings(**{"alerts.webhook_url": receiver.url, "alerts.min_interval_s": 60})
    collector = Collector(mosquitto, f"edgeloop/{site}/alerts")
    from edgeloop.adapters.mqtt import MqttSession

    session = MqttSession(settings.broker, role="alerts-test").start()
    now = [1_000.0]
    alerter = Alerter(settings, session.publish, clock=lambda: now[0]).start()
    try:
        drift = Event("drift_detected", "voc_ppb@dev-001", 1700389100.0, reason="drift at 2023-11-19T10:18")
        alerter.offer([drift, Event("retrain_started", "voc_ppb@dev-001", 1.0)])  # not an alerting kind
        alerter.offer([drift, drift, drift])  # within the interval: held back and counted
        now[0] += 61
        alerter.offer([drift])
        wait_until(lambda: len(receiver.bodies) == 2 and len(collector.payloads()) == 2, 10, "two alerts")
    finally:
        alerter.close()
        session.close()
        collector.close()
    for got in (receiver.bodies, collector.payloads()):
        assert [(a["alert"], a["scope"], a["suppressed"]) for a in got] == [
            ("drift_detected", "voc_ppb@dev-001", 0),
            ("drift_detected", "voc_ppb@dev-001", 3),
        ]
        assert got[0]["site"] == site and got[0]["time"].endswith("+00:00")
    assert alerter.failed == 0 and alerter.dropped == 0


def test_a_slow_webhook_never_blocks_the_caller_and_overflow_is_counted(
    make_settings: Callable[..., Settings],
) -> None:
    slow = Receiver(delay=1.0)
    settings = make_settings(
        **{
            "alerts.webhook_url": slow.url,
            "alerts.mqtt": False,
            "alerts.queue_size": 4,
            "alerts.min_interval_s": 0,
        }
    )
    alerter = Alerter(settings).start()
    try:
        started = time.perf_counter()
        for i in range(50):
            alerter.offer([Event("model_rolled_back", f"voc_ppb@dev-{i:03d}", 1.0)])
        took = time.perf_counter() - started
        assert took < 0.1, f"offer blocked for {took:.3f} s"
        assert alerter.dropped >= 40  # one being sent, four waiting, the rest dropped and counted
    finally:
        slow.close()
    print(f"ALERTS offer of 50 alerts took {took * 1000:.1f} ms; dropped {alerter.dropped}")


def test_the_edge_alerts_when_a_device_goes_silent_and_not_for_one_that_reports(
    mosquitto: MosquittoBroker,
    make_settings: Callable[..., Settings],
    run_edge: Callable[[Settings], EdgeService],
    receiver: Receiver,
    site: str,
) -> None:
    settings = make_settings(
        **{
            "alerts.webhook_url": receiver.url,
            "alerts.silence_check_s": 0.5,
            "alerts.silent_factor": 3,
            "edge.status_interval": 0.1,
        }
    )
    collector = Collector(mosquitto, f"edgeloop/{site}/alerts")
    edge = run_edge(settings)
    stream = SimStream(mosquitto, site, Simulator(2, seed=1))
    try:
        # Both devices report at ~20 readings/s for 3 s; then only dev-001 stops (dev-002 keeps going).
        for _ in range(60):
            stream.publish(1)
            time.sleep(0.05)
        quiet_from = time.monotonic()
        sim = stream.simulator
        while time.monotonic() - quiet_from < 4 and not receiver.bodies:
            for payload in sim.step():
                if payload["device"] != "dev-001":
                    stream.session.publish(
                        f"edgeloop/{site}/{payload['device']}/telemetry", orjson.dumps(payload)
                    )
            time.sleep(0.05)
        wait_until(lambda: receiver.bodies and collector.payloads(), 10, "a silence alert")
    finally:
        stream.close()
        collector.close()
    assert edge.stats.processed > 0
    silent = [(a["alert"], a["scope"]) for a in receiver.bodies]
    assert silent == [("device_silent", "dev-001")], silent
    assert [(a["alert"], a["scope"]) for a in collector.payloads()] == silent
