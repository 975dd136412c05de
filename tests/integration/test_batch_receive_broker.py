"""The edge's transport with batched receive, through a real Mosquitto, in plain TCP and in TLS.

Every reading arrives once, in the order sent, with its payload, whatever the packet sizes (TLS
records of at most 16 KiB cut the larger ones across reads), and most arrive in batches; the
acknowledgements the edge sends keep the broker's in-flight window moving (more readings than the
window would stall otherwise).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from edgeloop.adapters import paho_internals
from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.mqtt_transport import MqttTransport
from edgeloop.adapters.publish_decode import Delivery
from edgeloop.adapters.transport import Inbox, Received
from edgeloop.config import Settings

pytestmark = pytest.mark.skipif(not paho_internals.PRIVATE_API_OK, reason="paho's own path only")

READINGS = 3000  # three times the broker's in-flight window


def _payload(k: int) -> bytes:
    size = (k * 37) % 300 if k % 250 else 40_000 + k  # mostly small, a few over a TLS record
    return (b"%06d:" % k) + bytes((k + i) % 256 for i in range(size))


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
def test_every_reading_arrives_once_in_order(secure: bool, request: pytest.FixtureRequest) -> None:
    from tests.conftest import TEST_PASSWORD, TEST_USER

    broker: MosquittoBroker = request.getfixturevalue("mosquitto_tls" if secure else "mosquitto")
    auth: dict[str, Any] = {"username": TEST_USER, "password": TEST_PASSWORD} if secure else {}
    site = f"br{int(time.time() * 1000) % 10**8}{int(secure)}"
    settings = Settings(site=site, broker=broker.settings(qos=1, session_expiry=0, **auth))
    inbox = Inbox(500)
    transport = MqttTransport(settings, inbox, lambda _p: None, client_id=f"{site}-edge")
    batches: list[int] = []
    hook: Callable[[list[Delivery]], None] = transport._on_messages

    def counted(messages: list[Delivery]) -> None:
        batches.append(len(messages))
        hook(messages)

    assert paho_internals.deliver_batches(transport.session.client, counted)
    got: list[Received] = []
    done = threading.Event()

    def consume() -> None:  # as the edge's loop: take what is there, acknowledge it
        while len(got) < READINGS:
            batch = [inbox.queue.get(timeout=30)]
            while not inbox.queue.empty():
                batch.append(inbox.queue.get_nowait())
            got.extend(batch)
            transport.ack(batch)
        done.set()

    transport.start()
    try:
        transport.subscribe()
        topic = f"edgeloop/{site}/dev-1/telemetry"
        with MqttSession(broker.settings(**auth), role="test-pub") as pub:
            infos = [pub.publish(topic, _payload(k), qos=1) for k in range(READINGS)]
            for info in infos:
                info.wait_for_publish(30)
        # The edge's loop starts late, as after a pause: the inbox is full and the broker holds the rest.
        threading.Thread(target=consume, daemon=True).start()
        assert done.wait(60), f"{len(got)} of {READINGS} readings arrived"
    finally:
        transport.close()
    assert [r.payload for r in got] == [_payload(k) for k in range(READINGS)]
    assert {r.topic for r in got} == {topic} and {r.qos for r in got} == {1}
    assert len({r.mid for r in got[:1000]}) == 1000  # packet ids of unacknowledged readings differ
    # Batched receive took nearly all, several per read; paho's own read finishes a packet that a read
    # left incomplete (the few over 40 KB, and now and then the last one of a read).
    assert READINGS * 0.9 <= sum(batches) <= READINGS
    assert sum(batches) / len(batches) > 4, (len(batches), max(batches), batches[-50:])
