"""Private brokers: mosquitto's own config, the embedded amqtt fallback, probes and test certificates."""

from __future__ import annotations

import contextlib
import queue
import shutil
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgeloop.adapters.broker import (
    EmbeddedBroker,
    MosquittoBroker,
    TlsFiles,
    broker_answers,
    make_test_certs,
    start_broker,
)
from edgeloop.adapters.certs import _certs_with_openssl
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.mqtt_client import connect, make_client

pytestmark = pytest.mark.integration


@pytest.fixture
def not_mqtt_port() -> Iterator[int]:
    """A port that accepts TCP and answers like an HTTP server."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_broker_answers_only_for_mqtt(mosquitto: MosquittoBroker, not_mqtt_port: int) -> None:
    assert broker_answers(mosquitto.host, mosquitto.port)
    assert not broker_answers("127.0.0.1", not_mqtt_port, timeout=0.5)


def test_broker_answers_behind_auth(mosquitto_auth: MosquittoBroker) -> None:
    # "Not authorized" is still an MQTT answer.
    assert broker_answers(mosquitto_auth.host, mosquitto_auth.port)


def test_tls_broker_answers_only_over_tls(mosquitto_tls: MosquittoBroker) -> None:
    assert mosquitto_tls.tls is not None
    ctx = ssl.create_default_context(cafile=str(mosquitto_tls.tls.ca))
    assert broker_answers(mosquitto_tls.host, mosquitto_tls.port, ssl_context=ctx)
    assert not broker_answers(mosquitto_tls.host, mosquitto_tls.port, timeout=0.5)


def test_private_mosquitto_is_private_and_stops() -> None:
    broker = MosquittoBroker().start()
    try:
        assert broker.port != 1883
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert broker_answers(broker.host, broker.port)
    finally:
        broker.stop()
    assert not broker_answers(broker.host, broker.port, timeout=0.5)


def test_offline_backlog_beyond_mosquitto_default_queue(
    mosquitto: MosquittoBroker, unique_topic: str
) -> None:
    """mosquitto drops an offline session's QoS 1 backlog past 1000 messages by default; ours keeps it."""
    settings = mosquitto.settings()
    topic, client_id, count = f"{unique_topic}/t", f"edge-{uuid.uuid4().hex[:8]}", 1500
    with MqttSession(settings, role="edge", client_id=client_id, clean_start=False, session_expiry=60) as s:
        s.subscribe([topic], qos=1)
    with MqttSession(settings, role="pub") as pub:
        infos = [pub.publish(topic, str(i), qos=1) for i in range(count)]
        for info in infos:
            info.wait_for_publish(10)
    received: list[bytes | bytearray] = []
    done = threading.Event()

    def on_message(message: mqtt.MQTTMessage) -> None:
        received.append(message.payload)
        if len(received) == count:
            done.set()

    session = MqttSession(
        settings,
        role="edge",
        client_id=client_id,
        clean_start=False,
        session_expiry=60,
        on_message=on_message,
    )
    with session:
        assert done.wait(15)
    assert len(set(received)) == count


def test_embedded_broker_round_trip_mqtt311(unique_topic: str) -> None:
    with EmbeddedBroker() as broker:
        assert broker.protocol == "3.1.1"
        assert broker.url.startswith("mqtt://127.0.0.1:")
        settings = broker.settings()
        inbox: queue.Queue[bytes] = queue.Queue()
        sub = make_client(settings, role="sub", protocol=broker.protocol)
        sub.on_message = lambda _c, _u, m: inbox.put(m.payload)
        subscribed = threading.Event()
        sub.on_subscribe = lambda *_: subscribed.set()
        connect(sub, settings, clean_start=True, session_expiry=None, timeout=5)
        pub = make_client(settings, role="pub", protocol=broker.protocol)
        connect(pub, settings, clean_start=True, session_expiry=None, timeout=5)
        try:
            sub.subscribe(f"{unique_topic}/t", qos=1)
            assert subscribed.wait(5)
            pub.publish(f"{unique_topic}/t", b"hello 3.1.1", qos=1).wait_for_publish(5)
            assert inbox.get(timeout=5) == b"hello 3.1.1"
        finally:
            for client in (sub, pub):
                client.disconnect()
                client.loop_stop()
    assert not broker_answers(broker.host, broker.port, timeout=0.5)


def test_embedded_session_round_trip(unique_topic: str) -> None:
    with start_broker(prefer="amqtt") as broker:
        assert isinstance(broker, EmbeddedBroker)
        inbox: queue.Queue[bytes] = queue.Queue()
        session = MqttSession(
            broker.settings(), role="edge", protocol="3.1.1", on_message=lambda m: inbox.put(m.payload)
        )
        with session:
            session.subscribe([f"{unique_topic}/t"], qos=1)
            session.publish(f"{unique_topic}/t", b"x", qos=1).wait_for_publish(5)
            assert inbox.get(timeout=5) == b"x"


def test_start_broker_prefers_mosquitto(mosquitto: MosquittoBroker) -> None:
    # The mosquitto fixture ran, so a binary exists.
    with start_broker() as broker:
        assert isinstance(broker, MosquittoBroker)
        assert broker.port != mosquitto.port
    with pytest.raises(ValueError, match="prefer"):
        start_broker(prefer="rabbit")  # type: ignore[arg-type]


def test_certificates_verify_for_host_and_ip(tmp_path: Path) -> None:
    files = make_test_certs(tmp_path / "py")
    _check_certs(files)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")
def test_openssl_certificates_work_with_mosquitto(tmp_path: Path, unique_topic: str) -> None:
    (tmp_path / "cli").mkdir()
    files = TlsFiles(tmp_path / "cli/ca.pem", tmp_path / "cli/server.pem", tmp_path / "cli/server.key")
    _certs_with_openssl(files, "localhost")
    _check_certs(files)
    with MosquittoBroker(tls=files) as broker:
        settings = broker.settings()
        client = make_client(settings, role="t")
        connect(client, settings, clean_start=True, session_expiry=None, timeout=5)
        client.disconnect()
        client.loop_stop()


def _handshake(files: TlsFiles, server_hostname: str) -> ssl.SSLObject:
    """An in-memory TLS handshake of a client trusting ``files.ca`` with a server using the cert."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(files.cert), str(files.key))
    client_ctx = ssl.create_default_context(cafile=str(files.ca))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return client


def _check_certs(files: TlsFiles) -> None:
    """The server cert chains to the CA and names localhost and 127.0.0.1, and nothing else."""
    for name in ("localhost", "127.0.0.1"):
        client = _handshake(files, name)
        assert client.version() in ("TLSv1.2", "TLSv1.3")
        assert client.getpeercert()["subject"] == ((("commonName", "localhost"),),)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(files, "example.com")
