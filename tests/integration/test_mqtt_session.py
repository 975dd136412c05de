"""MqttSession at start: waits for a broker that is not up yet, fails at once when waiting cannot help."""

from __future__ import annotations

import threading
import time

import pytest
from tests.conftest import TEST_PASSWORD, TEST_USER

from edgeloop.adapters.broker import MosquittoBroker, find_free_port
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.mqtt_client import BrokerUnavailable
from edgeloop.config import BrokerSettings
from edgeloop.errors import BrokerError

pytestmark = pytest.mark.integration


def test_waits_for_a_broker_that_starts_later() -> None:
    broker = MosquittoBroker(port=find_free_port())
    timer = threading.Timer(1.5, broker.start)
    timer.start()
    try:
        started = time.monotonic()
        session = MqttSession(broker.settings(reconnect_max_delay=1.0), role="t").start(timeout=3, wait=20)
        assert session.connected and time.monotonic() - started >= 1.0
        session.close()
    finally:
        timer.join()
        broker.stop()


def test_no_wait_fails_at_once() -> None:
    settings = BrokerSettings(url=f"mqtt://127.0.0.1:{find_free_port()}", connect_wait=0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="refused"):
        MqttSession(settings, role="t").start(timeout=3)
    assert time.monotonic() - started < 2


def test_wait_is_bounded_and_says_so() -> None:
    settings = BrokerSettings(url=f"mqtt://127.0.0.1:{find_free_port()}", connect_wait=1.5)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"Waited 1\.5 s \(broker\.connect_wait\)"):
        MqttSession(settings, role="t").start(timeout=3)
    assert 1.4 < time.monotonic() - started < 6


def test_wrong_password_fails_at_once_however_long_the_wait(mosquitto_auth: MosquittoBroker) -> None:
    settings = mosquitto_auth.settings(username=TEST_USER, password=TEST_PASSWORD + "x", connect_wait=60)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="refused the connection") as info:
        MqttSession(settings, role="t").start(timeout=5)
    assert not isinstance(info.value, BrokerUnavailable)
    assert time.monotonic() - started < 5


def test_cancel_ends_the_wait() -> None:
    session = MqttSession(BrokerSettings(url=f"mqtt://127.0.0.1:{find_free_port()}"), role="t")
    threading.Timer(1.0, session.cancel).start()
    started = time.monotonic()
    with pytest.raises(BrokerError, match="stopped while waiting"):
        session.start(timeout=3)
    assert time.monotonic() - started < 5


def test_credentials_in_the_url_are_used(mosquitto_auth: MosquittoBroker) -> None:
    url = f"mqtt://{TEST_USER}:{TEST_PASSWORD}@{mosquitto_auth.host}:{mosquitto_auth.port}"
    session = MqttSession(BrokerSettings(url=url, connect_wait=0), role="t").start(timeout=5)
    assert session.connected
    session.close()
