"""The batched publish path (``publish_encode.queue_publishes``) against paho's own ``publish`` loop.

Two clients take the same calls, one through paho's ``publish`` per message and one through
``_BatchingClient.publish_many``'s lean path; after each step the bytes queued for the socket, the
infos and paho's bookkeeping of unacknowledged messages must be the same, through PUBACKs, an in-flight
window that fills, a queue limit, a disconnection and the resend after a reconnect.
"""

from __future__ import annotations

import hashlib
import inspect
import struct
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import CONNACK, PUBACK, _ConnectionState
from tests.unit.paho_stubs import CountingPair

from edgeloop.adapters import mqtt_client, paho_internals, publish_encode
from edgeloop.config import BrokerSettings

verified = pytest.mark.skipif(not paho_internals.PRIVATE_API_OK, reason="lean publish needs verified paho")

# sha256 of the paho 2.2.0 code queue_publishes does the work of, read for it: publish (checks, mid,
# message fields, window, queue limit), _mid_generate, _send_publish and the two packers it calls, and
# the methods that later read what it stores (PUBACK handling, in-flight refill, resend on reconnect,
# writing queued packets, MQTTMessageInfo).
PUBLISH_PATH_SHA256 = {
    "Client.publish": "5c00cd3dcebceaae0eeac2e40402cd18fb64664c78343a6673ce0776a1608ec4",
    "Client._mid_generate": "55fc1e4a5f1584fb687647788805957b812707e849b2be1432b0eb9212905d53",
    "Client._raise_for_invalid_topic": "985dad9e15a6396afbb0d3f267f3508a08a9bab48068536f55e7106576edd423",
    "_encode_payload": "38d50bdd8d9a61132adb88ecfe4c32403e8fca5c6618b113168ef58c52670882",
    "Client._send_publish": "4edd21dd50f58a287ce343e596d53de053ed97b2596a3dd2f6f75e61fd7cafd4",
    "Client._pack_remaining_length": "588b47e80722ce0c2befc906a9faa93c4402f98655955dcf37f9d9afe84b8b0c",
    "Client._pack_str16": "98802a36e9783f17c773427b0ee6cca07f04d3600d84bbc295ed98cb8591ca13",
    "Client._packet_queue": "e298fa9ab31e5f79c1c6d08d303b049db9a2bcf681dcac1cd510b2fb519d3a26",
    "Client._packet_write": "d097b7b51bed128df99bf5e6ba0bc2f502bffbd38cbe136f9d0b1280057ef02b",
    "Client._handle_pubackcomp": "04d39ba283b1f3bee9aa99f5b27b112eca549f889a58a8a5720d7f7873b09428",
    "Client._do_on_publish": "5bbcad6f9447107a5ba9446e6dbdbdf4eedad2734533d900db907240f75b93e4",
    "Client._update_inflight": "d11feb21cf855b12bbda2ccccfed5655864a4eec23f19286f4721e5ec31d46b1",
    "Client._messages_reconnect_reset_out": "464a42c69618a49b54ab813a472a2b4cc6b8370daf79f36f91758a0330b1613c",  # noqa: E501
    "Client._handle_connack": "39267140212c8b5f9ec69c283f6f9d358249484858b1596bb039c0e8fed1e17c",
    "MQTTMessage.__init__": "af92f9a50f5f90e4f45d39c578fe129901f2c7c0f3c4fbb71ae5259f91f34b15",
    "MQTTMessageInfo.__init__": "517706c942bd3cb7ce6f5b707bb9d63cac68111c32573cf4d8f737f763b22d7c",
    "MQTTMessageInfo._set_as_published": "6e546f718e97af4450c34f1f79c3c2ee739938655cef648bed489a8552c361eb",
    "MQTTMessageInfo.is_published": "75a22e144e790a0bee255ea58e586ccfe7c4b5cf74608a21e224c77e20178a2f",
    "MQTTMessageInfo.wait_for_publish": "2118a68b8d1a00368aa5b38c85b1cb4f42c4dce80a741a5537dc9069142db74a",
}


class _Sock:
    """A connected socket that keeps what paho writes to it (only paho's own ``loop_write`` writes here)."""

    def __init__(self) -> None:
        self.written = bytearray()

    def send(self, data: bytes) -> int:
        self.written += data
        return len(data)

    def close(self) -> None:
        pass


def _client(protocol: str, lean: bool, *, window: int = 1000, max_queued: int = 0) -> Any:
    client: Any = mqtt_client.make_client(BrokerSettings(), role="t", protocol=protocol)  # type: ignore[arg-type]
    client.lean_publish = lean
    client._sockpairW = CountingPair()
    client._thread = threading.Thread(target=lambda: None)  # as under loop_start; never started
    client._max_inflight_messages = window
    client._max_queued_messages = max_queued
    _connect(client)
    return client


def _connect(client: Any) -> None:
    client._sock = _Sock()
    client._state = _ConnectionState.MQTT_CS_CONNECTED


def _disconnect(client: Any) -> None:
    client._sock = None
    client._state = _ConnectionState.MQTT_CS_CONNECTION_LOST


def _paho_publish_many(
    client: Any, messages: list[tuple[str, bytes]], qos: int
) -> list[mqtt.MQTTMessageInfo]:
    return [client.publish(topic, payload, qos) for topic, payload in messages]


def _state(client: Any, infos: list[mqtt.MQTTMessageInfo]) -> dict[str, Any]:
    packets = [
        (
            p["command"],
            p["mid"],
            p["qos"],
            p["pos"],
            p["to_process"],
            bytes(p["packet"]),
            p["info"] is not None,
        )
        for p in client._out_packet
    ]
    messages = [
        (
            mid,
            m.mid,
            m.topic,
            bytes(m.payload),
            m.qos,
            m.retain,
            m.dup,
            m.state,
            m.properties,
            m.info.mid,
            m.info.rc,
            m.info._published,
        )
        for mid, m in client._out_messages.items()
    ]
    # packet infos are the infos returned (QoS 0) or those of the stored messages (QoS 1)
    packet_infos = [
        p["info"] is None
        or any(p["info"] is i for i in infos)
        or any(p["info"] is m.info for m in client._out_messages.values())
        for p in client._out_packet
    ]
    return {
        "packets": packets,
        "packet_infos": packet_infos,
        "messages": messages,
        "inflight": client._inflight_messages,
        "last_mid": client._last_mid,
        "written": bytes(client._sock.written) if client._sock is not None else None,
        "infos": [(i.mid, i.rc, i._published) for i in infos],
    }


def _puback(client: Any, mid: int) -> None:
    client._in_packet = {"command": PUBACK, "packet": struct.pack("!H", mid), "remaining_length": 2}
    client._packet_handle()


def _connack(client: Any, v5: bool) -> None:
    packet = b"\x00\x00\x00" if v5 else b"\x00\x00"
    client._in_packet = {"command": CONNACK, "packet": packet, "remaining_length": len(packet)}
    client._messages_reconnect_reset_out()
    client._packet_handle()


def _messages(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [(f"edgeloop/s/dev-{k:04d}/prediction", b'{"score": %d}' % k) for k in range(start, start + n)]


@verified
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize("qos", [0, 1])
def test_lean_publish_leaves_what_pahos_loop_leaves(protocol: str, qos: int) -> None:
    v5 = protocol == "5"
    paho, lean = _client(protocol, False, window=20), _client(protocol, True, window=20)

    def step(messages: list[tuple[str, bytes]]) -> None:
        expected = _state(paho, _paho_publish_many(paho, messages, qos))
        assert _state(lean, paho_internals.publish_many(lean, messages, qos)) == expected

    step(_messages(12))  # connected, inside the window
    step([("a/b", b""), ("é/ü", b"x" * 200), ("t", b"y" * 20000)])  # empty payload, UTF-8, long lengths
    step(_messages(10, 100))  # fills the window: QoS 1 beyond it waits in state "queued"
    for mid in (3, 1, 17):  # PUBACKs: the window refills from the queued ones (paho's code on both)
        _puback(paho, mid)
        _puback(lean, mid)
        assert _state(lean, []) == _state(paho, [])
    _disconnect(paho)
    _disconnect(lean)
    step(_messages(5, 200))  # disconnected: QoS 1 kept for the resend, QoS 0 refused
    _connect(paho)
    _connect(lean)
    paho._out_packet.clear()
    lean._out_packet.clear()
    _connack(paho, v5)
    _connack(lean, v5)  # paho resends what is unacknowledged, DUP set on those sent before
    resent = _state(paho, [])
    assert _state(lean, []) == resent
    if qos:
        assert resent["written"][0] == 0x3A  # DUP, QoS 1: sent before the disconnection
    for mid in list(paho._out_messages):
        _puback(paho, mid)
        _puback(lean, mid)
    assert _state(lean, []) == _state(paho, [])
    assert lean.lean_publish and isinstance(lean, paho_internals._BatchingClient)


@verified
def test_lean_publish_keeps_the_queue_limit_and_the_mid_wrap() -> None:
    paho, lean = _client("5", False, window=4, max_queued=6), _client("5", True, window=4, max_queued=6)
    for client in (paho, lean):
        client._last_mid = 65533
    expected = _state(paho, _paho_publish_many(paho, _messages(9), 1))
    assert _state(lean, paho_internals.publish_many(lean, _messages(9), 1)) == expected
    assert [rc for _mid, rc, _p in expected["infos"]].count(mqtt.MQTT_ERR_QUEUE_SIZE) == 3


@verified
def test_lean_publish_refuses_as_paho_does() -> None:
    lean = _client("3.1.1", True)
    with pytest.raises(ValueError, match="wildcards"):
        paho_internals.publish_many(lean, [("ok/1", b"x"), ("a/+", b"x")], 1)
    assert list(lean._out_messages) == [1]  # the message before the bad one stays published, as with paho
    with pytest.raises(ValueError, match="Invalid topic"):
        paho_internals.publish_many(lean, [("", b"x")], 1)
    infos = paho_internals.publish_many(lean, [("s/1", "text"), ("s/2", bytearray(b"ab"))], 1)  # type: ignore[list-item]
    assert [bytes(m.payload) for m in lean._out_messages.values()][-2:] == [b"text", b"ab"]
    assert [i.rc for i in infos] == [mqtt.MQTT_ERR_SUCCESS] * 2


@verified
def test_lean_publish_wakes_the_network_thread_once() -> None:
    lean = _client("5", True)
    infos = paho_internals.publish_many(lean, _messages(50), 1)
    assert [i.rc for i in infos] == [mqtt.MQTT_ERR_SUCCESS] * 50
    assert lean._sockpairW.sent == 1 and len(lean._out_packet) == 50


@verified
@pytest.mark.parametrize("qos", [0, 1])
def test_wait_for_publish_returns_after_the_puback(qos: int) -> None:
    # A waiter without a timeout, blocked before the message is published, and many racing: a lost
    # wake-up would leave a thread waiting for ever.
    lean = _client("5", True)
    infos = paho_internals.publish_many(lean, _messages(200), qos)
    assert all(isinstance(i, publish_encode.LeanInfo) for i in infos)
    waiters = [threading.Thread(target=i.wait_for_publish, daemon=True) for i in infos]
    for waiter in waiters[:100]:
        waiter.start()
    waiting = threading.Event()
    threading.Timer(0.05, waiting.set).start()
    waiting.wait()
    for k, info in enumerate(infos):
        if k == 100:
            for waiter in waiters[100:]:
                waiter.start()
        if qos:
            _puback(lean, info.mid)
        else:
            info._set_as_published()  # what paho's _packet_write does once the packet is written
    deadline = time.monotonic() + 10
    for waiter in waiters:
        waiter.join(max(0.0, deadline - time.monotonic()))
    assert not any(w.is_alive() for w in waiters)
    assert all(i.is_published() for i in infos)
    assert not lean._out_messages and lean._inflight_messages == 0
    fresh = publish_encode.LeanInfo(7)
    assert not fresh.is_published() and fresh._condition is fresh._condition
    assert tuple(fresh) == (mqtt.MQTT_ERR_SUCCESS, 7) and str(fresh) == str(mqtt.MQTTMessageInfo(7))


@verified
def test_lean_publish_only_where_it_does_what_paho_does() -> None:
    client = _client("5", True)
    assert publish_encode.lean_publish_ok(client, 1) and publish_encode.lean_publish_ok(client, 0)
    assert not publish_encode.lean_publish_ok(client, 2)
    client.enable_logger()
    assert not publish_encode.lean_publish_ok(client, 1)  # paho logs every packet
    client.disable_logger()
    client._thread = None
    assert not publish_encode.lean_publish_ok(client, 1)  # paho writes at once without a network thread


def _paho(name: str) -> Any:
    if name == "MQTTMessage.__init__":
        return paho_internals._PAHO_MESSAGE.__init__  # paho's, whatever stands in for it
    found: Any = mqtt
    for part in name.split("."):
        found = getattr(found, part)
    return found


def test_paho_publish_path_is_as_read() -> None:
    # LeanInfo keeps its Condition in paho's slot and every other field as paho's __init__ sets them
    assert mqtt.MQTTMessageInfo.__slots__ == ("_condition", "_iterpos", "_published", "mid", "rc")
    for name, digest in PUBLISH_PATH_SHA256.items():
        source = inspect.getsource(_paho(name))
        assert hashlib.sha256(source.encode()).hexdigest() == digest, (
            f"paho's {name} changed: re-verify edgeloop.adapters.publish_encode against it"
        )
