"""MQTT plumbing against private mosquitto brokers: auth, TLS, persistent sessions, shared subscriptions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from edgeloop.adapters.broker import MosquittoBroker, find_free_port
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.mqtt_client import connect, default_client_id, make_client
from edgeloop.config import BrokerSettings
from edgeloop.errors import BrokerError, ConfigError

integration = pytest.mark.integration

# The credentials of the mosquitto_auth and mosquitto_tls fixtures (see conftest.py).
TEST_USER, TEST_PASSWORD = "edge", "s3cret-test"


class Collector:
    """An on_message handler that records payloads and lets a test wait for a count."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self._cv = threading.Condition()

    def __call__(self, message: mqtt.MQTTMessage) -> None:
        self.add(message.payload.decode())

    def tagged(self, tag: str) -> Callable[[mqtt.MQTTMessage], None]:
        """A handler recording ``<tag>:<payload>``, to tell subscribers apart."""
        return lambda message: self.add(f"{tag}:{message.payload.decode()}")

    def add(self, text: str) -> None:
        with self._cv:
            self.payloads.append(text)
            self._cv.notify_all()

    def wait_for(self, count: int, timeout: float = 10) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: len(self.payloads) >= count, timeout)


def _publish_all(settings: BrokerSettings, topic: str, count: int) -> None:
    with MqttSession(settings, role="test-pub") as pub:
        infos = [pub.publish(topic, str(i), qos=1) for i in range(count)]
        for info in infos:
            info.wait_for_publish(10)
        assert all(info.is_published() for info in infos)


def _round_trip(settings: BrokerSettings, topic: str) -> None:
    got = Collector()
    with MqttSession(settings, role="test-sub", on_message=got) as sub:
        sub.subscribe([topic], qos=1)
        sub.publish(topic, "hello", qos=1).wait_for_publish(5)
        assert got.wait_for(1, timeout=5)
    assert got.payloads == ["hello"]


# -- pure helpers (no broker) ----------------------------------------------------------------------


def test_default_client_id_has_only_safe_characters() -> None:
    cid = default_client_id("edge.1/x")
    assert cid.startswith("edgeloop-edge-1-x-")
    assert all(ch.isalnum() or ch in "-_" for ch in cid)


def test_make_client_uses_settings_client_id_and_protocol() -> None:
    client = make_client(BrokerSettings(client_id="fixed-id"), role="edge", protocol="3.1.1")
    assert client._client_id == b"fixed-id"
    assert client.protocol == MQTTProtocolVersion.MQTTv311
    assert client.max_inflight_messages >= 1000


def test_make_client_names_missing_ca_file(tmp_path: Path) -> None:
    settings = BrokerSettings(url="mqtts://127.0.0.1:8883", tls_ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"broker\.tls_ca_file"):
        make_client(settings, role="edge")


# -- connection errors -----------------------------------------------------------------------------


@integration
def test_connection_refused_names_url() -> None:
    settings = BrokerSettings(url=f"mqtt://127.0.0.1:{find_free_port()}")
    with pytest.raises(BrokerError, match=r"refused.*broker\.url"):
        connect(make_client(settings, role="t"), settings, clean_start=True, session_expiry=None, timeout=3)


@integration
def test_right_password_connects(mosquitto_auth: MosquittoBroker, unique_topic: str) -> None:
    _round_trip(mosquitto_auth.settings(username=TEST_USER, password=TEST_PASSWORD), f"{unique_topic}/t")


@integration
def test_password_file_connects(mosquitto_auth: MosquittoBroker, tmp_path: Path, unique_topic: str) -> None:
    secret = tmp_path / "broker-password"
    secret.write_text(TEST_PASSWORD + "\n")
    _round_trip(mosquitto_auth.settings(username=TEST_USER, password_file=secret), f"{unique_topic}/t")


@integration
@pytest.mark.parametrize(
    ("username", "password", "expected"),
    [
        # mosquitto 2.0 answers 135 "Not authorized" to a wrong password too (not 134).
        (TEST_USER, "wrong", r"reason code 13[45]\).*Check broker\.username \('edge'\) and broker\.password"),
        (None, None, r"Not authorized \(reason code 135\).*require credentials.*set broker\.username"),
    ],
    ids=["wrong-password", "anonymous"],
)
def test_bad_credentials_fail_with_reason(
    mosquitto_auth: MosquittoBroker, username: str | None, password: str | None, expected: str
) -> None:
    settings = mosquitto_auth.settings(username=username, password=password)
    client = make_client(settings, role="t")
    with pytest.raises(BrokerError, match=expected):
        connect(client, settings, clean_start=True, session_expiry=None, timeout=5)
    assert not client.is_connected()


@integration
def test_tls_with_ca_connects(mosquitto_tls: MosquittoBroker, unique_topic: str) -> None:
    assert mosquitto_tls.url.startswith("mqtts://")
    _round_trip(mosquitto_tls.settings(username=TEST_USER, password=TEST_PASSWORD), f"{unique_topic}/t")


@integration
def test_tls_without_ca_fails_verification(mosquitto_tls: MosquittoBroker) -> None:
    # Without our CA the system trust store is used, which does not know the test CA.
    settings = mosquitto_tls.settings(username=TEST_USER, password=TEST_PASSWORD, tls_ca_file=None)
    with pytest.raises(BrokerError, match=r"certificate.*failed verification.*broker\.tls_ca_file"):
        connect(make_client(settings, role="t"), settings, clean_start=True, session_expiry=None, timeout=5)


@integration
def test_plain_mqtt_to_tls_port_fails(mosquitto_tls: MosquittoBroker) -> None:
    settings = BrokerSettings(url=f"mqtt://127.0.0.1:{mosquitto_tls.port}", username=TEST_USER)
    with pytest.raises(BrokerError, match=r"mqtts://"):
        connect(make_client(settings, role="t"), settings, clean_start=True, session_expiry=None, timeout=3)


# -- sessions and subscriptions --------------------------------------------------------------------


@integration
@pytest.mark.parametrize("resume", [True, False], ids=["resume", "clean-start"])
def test_persistent_session_receives_backlog(
    mosquitto: MosquittoBroker, unique_topic: str, resume: bool
) -> None:
    """QoS 1 telemetry published while the edge is away arrives when it reconnects with clean_start=False."""
    settings = mosquitto.settings()
    topic = f"{unique_topic}/dev-1/telemetry"
    client_id = f"edge-{uuid.uuid4().hex[:8]}"

    first = MqttSession(settings, role="edge", client_id=client_id, clean_start=False, session_expiry=300)
    with first:
        first.subscribe([topic], qos=1)
    assert not first.connected

    _publish_all(settings, topic, 100)

    got = Collector()
    again = MqttSession(
        settings, role="edge", client_id=client_id, clean_start=not resume, session_expiry=300, on_message=got
    )
    with again:
        if resume:
            assert again.session_present is True
            assert got.wait_for(100, timeout=10)
        else:
            assert again.session_present is False
            assert not got.wait_for(1, timeout=0.5)
    expected = [str(i) for i in range(100)] if resume else []
    assert sorted(got.payloads, key=int) == expected


@integration
def test_shared_subscription_splits_stream(mosquitto: MosquittoBroker, unique_topic: str) -> None:
    settings = mosquitto.settings()
    topic = f"{unique_topic}/telemetry"
    group = f"g{uuid.uuid4().hex[:8]}"
    got = Collector()
    with (
        MqttSession(settings, role="edge-a", client_id=f"a-{group}", on_message=got.tagged("a")) as sa,
        MqttSession(settings, role="edge-b", client_id=f"b-{group}", on_message=got.tagged("b")) as sb,
    ):
        sa.subscribe([topic], qos=1, shared_group=group)
        sb.subscribe([topic], qos=1, shared_group=group)
        _publish_all(settings, topic, 200)
        assert got.wait_for(200, timeout=10)
        got.wait_for(201, timeout=0.3)  # a duplicate would show up here
    seen_a = [p.split(":")[1] for p in got.payloads if p.startswith("a:")]
    seen_b = [p.split(":")[1] for p in got.payloads if p.startswith("b:")]
    assert seen_a and seen_b, "both group members get a share"
    assert set(seen_a).isdisjoint(seen_b)
    assert sorted(seen_a + seen_b, key=int) == [str(i) for i in range(200)]


@integration
def test_resubscribes_after_broker_restart(unique_topic: str) -> None:
    """A broker that lost our session (restart, no persistence) gets our subscriptions again."""
    topic = f"{unique_topic}/t"
    got = Collector()
    broker = MosquittoBroker(port=find_free_port()).start()
    try:
        session = MqttSession(broker.settings(reconnect_max_delay=1.0), role="edge", on_message=got)
        with session:
            session.subscribe([topic], qos=1)
            broker.stop()
            broker.start()
            assert session.wait_connected(10)
            assert session.disconnects == 1
            assert session.session_present is False
            _publish_all(broker.settings(), topic, 1)
            assert got.wait_for(1, timeout=10)
    finally:
        broker.stop()


@integration
def test_failing_handler_does_not_stop_delivery(mosquitto: MosquittoBroker, unique_topic: str) -> None:
    got = Collector()

    def handler(message: mqtt.MQTTMessage) -> None:
        got(message)
        if message.payload == b"0":
            raise RuntimeError("bad message")

    with MqttSession(mosquitto.settings(), role="edge", on_message=handler) as session:
        session.subscribe([f"{unique_topic}/t"], qos=1)
        _publish_all(mosquitto.settings(), f"{unique_topic}/t", 3)
        assert got.wait_for(3, timeout=5)
    assert sorted(got.payloads) == ["0", "1", "2"]


@integration
def test_batched_publishes_and_acks_arrive_once(mosquitto: MosquittoBroker, unique_topic: str) -> None:
    """publish_many and ack_many (one wake-up, one write per batch) deliver and settle every message:
    a session resumed after the batched acks gets nothing again, one resumed without them gets all."""
    settings = mosquitto.settings()
    topic = f"{unique_topic}/dev-1/telemetry"
    count = 300

    def receive(client_id: str, *, ack: bool) -> list[str]:
        got: list[mqtt.MQTTMessage] = []
        cv = threading.Condition()

        def on_message(message: mqtt.MQTTMessage) -> None:
            with cv:
                got.append(message)
                cv.notify_all()

        session = MqttSession(
            settings,
            role="edge",
            client_id=client_id,
            clean_start=False,
            session_expiry=300,
            on_message=on_message,
            manual_ack=True,
        )
        with session:
            session.subscribe([topic], qos=1)
            with cv:
                cv.wait_for(lambda: len(got) >= count, 10)
            if ack:
                for start in range(0, len(got), 128):
                    session.ack_many([m.mid for m in got[start : start + 128]], session.connection)
                # The broker handles a client's packets in order: once it acknowledged this, it
                # has taken the acks (closing at once may lose acks, with or without batching).
                session.publish(f"{unique_topic}/sync", b"", qos=1).wait_for_publish(5)
        return [m.payload.decode() for m in got]

    client_id = f"edge-{uuid.uuid4().hex[:8]}"
    with MqttSession(settings, role="edge", client_id=client_id, clean_start=False, session_expiry=300) as s:
        s.subscribe([topic], qos=1)  # the session exists, so what is published next is queued for it
    with MqttSession(settings, role="test-pub") as pub:
        infos = pub.publish_many([(topic, str(i)) for i in range(count)], qos=1)
        assert all(info.rc == mqtt.MQTT_ERR_SUCCESS for info in infos)
        infos[-1].wait_for_publish(10)
        assert all(info.is_published() for info in infos)
        assert pub.outgoing == 0

    expected = [str(i) for i in range(count)]
    assert sorted(receive(client_id, ack=False), key=int) == expected
    assert sorted(receive(client_id, ack=True), key=int) == expected  # redelivered: never acked
    assert receive(client_id, ack=False) == []  # the batched acks settled every one
