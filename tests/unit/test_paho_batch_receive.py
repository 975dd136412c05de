"""Batched receive (``paho_internals.deliver_batches``) delivers exactly what paho's own path delivers.

Each stream of packets is fed through a socket pair to paho's own ``Client.loop_read`` and to the edge's
client with a batch hook, whole, split at every byte offset, and as many packets in one read; both
must deliver the same messages (topic, payload, packet id, QoS, retain, DUP) and acknowledgements in
the same order, and queue the same bytes for the broker.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import _ConnectionState
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.adapters import mqtt_client, paho_internals
from edgeloop.adapters.mqtt_transport import MqttTransport
from edgeloop.adapters.publish_decode import Delivery, decode_publishes
from edgeloop.adapters.transport import Inbox
from edgeloop.config import BrokerSettings, Settings

pytestmark = pytest.mark.skipif(not paho_internals.PRIVATE_API_OK, reason="paho's own path only")


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n % 128, n // 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def publish(
    topic: bytes,
    payload: bytes,
    *,
    qos: int = 1,
    mid: int = 1,
    v5: bool = True,
    props: bytes = b"\x00",
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    body += (props if v5 else b"") + payload
    return bytes([0x30 | dup << 3 | qos << 1 | retain]) + _varint(len(body)) + body


def puback(mid: int) -> bytes:
    return struct.pack("!BBH", 0x40, 2, mid)


def pubrel(mid: int) -> bytes:
    return struct.pack("!BBH", 0x62, 2, mid)


PINGRESP = b"\xd0\x00"


def _props(**fill: Any) -> bytes:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in fill.items():
        setattr(props, name, value)
    return bytes(props.pack())


Event = tuple[Any, ...]


def _message_event(m: mqtt.MQTTMessage) -> Event:
    try:
        topic: Any = m.topic
    except UnicodeDecodeError:
        topic = ("not utf-8", m._topic)
    return ("message", topic, m.payload, m.mid, m.qos, m.retain, m.dup)


def _delivery_event(d: Delivery) -> Event:
    return ("message", d.topic, d.payload, d.mid, d.qos, d.retain, False)  # DUP is left to paho


class _Feed:
    """A client reading from one end of a socket pair, recording what it delivers in order."""

    def __init__(
        self, *, batched: bool, protocol: mqtt_client.Protocol = "5", manual_ack: bool = True
    ) -> None:
        client = mqtt_client.make_client(BrokerSettings(), role="t", protocol=protocol, manual_ack=manual_ack)
        if not batched:
            client.__class__ = mqtt.Client  # paho's own loop_read, _sock_recv and delivery
        self.events: list[Event] = []
        self.batches: list[int] = []
        client.on_message = lambda _c, _u, m: self.events.append(_message_event(m))
        client.on_publish = lambda _c, _u, mid, _r, _p: self.events.append(("puback", mid))
        if batched:
            assert paho_internals.deliver_batches(client, self._batch)
        client._state = _ConnectionState.MQTT_CS_CONNECTED
        self.sock, self.peer = socket.socketpair()
        self.sock.setblocking(False)
        client._sock = self.sock
        self.client = client
        for mid in (101, 102, 103):  # predictions awaiting their PUBACK
            message = mqtt.MQTTMessage(mid=mid, topic=b"p")
            message.qos, message.state = 1, mqtt.mqtt_ms_wait_for_puback
            client._out_messages[mid] = message
        client._inflight_messages = 3

    def _batch(self, deliveries: list[Delivery]) -> None:
        self.batches.append(len(deliveries))
        self.events.extend(_delivery_event(d) for d in deliveries)

    def send(self, data: bytes) -> None:
        if data:
            self.peer.sendall(data)
        for _ in range(100_000):
            buffered = getattr(self.client, "_read_pos", 0) < len(getattr(self.client, "_read_buf", b""))
            if not buffered and not select.select([self.sock], [], [], 0)[0]:
                return
            assert self.client.loop_read() == mqtt.MQTT_ERR_SUCCESS
        raise AssertionError("loop_read made no progress")

    def queued(self) -> bytes:
        """What the client wrote to the broker (paho writes at once without a network thread) and queued."""
        self.peer.setblocking(False)
        written = b""
        while True:
            try:
                data = self.peer.recv(65536)
            except BlockingIOError:
                break
            if not data:
                break
            written += data
        return written + b"".join(bytes(p["packet"]) for p in self.client._out_packet)

    def close(self) -> None:
        self.client._sock = None
        self.sock.close()
        self.peer.close()


@contextmanager
def feed(**kwargs: Any) -> Iterator[_Feed]:
    f = _Feed(**kwargs)
    try:
        yield f
    finally:
        f.close()


def _through(chunks: list[bytes], **kwargs: Any) -> tuple[list[Event], bytes, list[int]]:
    with feed(**kwargs) as f:
        for chunk in chunks:
            f.send(chunk)
        return f.events, f.queued(), f.batches


def _same_as_paho(stream: bytes, *, split: bool = True, **kwargs: Any) -> list[Event]:
    expected, expected_queued, _ = _through([stream], batched=False, **kwargs)
    got, queued, _ = _through([stream], batched=True, **kwargs)
    assert got == expected
    assert queued == expected_queued
    if split:
        for k in range(1, len(stream)):
            got, queued, _ = _through([stream[:k], stream[k:]], batched=True, **kwargs)
            assert got == expected, f"split at byte {k}"
            assert queued == expected_queued, f"split at byte {k}"
    return expected


def test_mqtt5_publishes_with_and_without_properties_and_acks_between() -> None:
    stream = b"".join(
        [
            publish(b"edgeloop/s/d1/telemetry", b'{"x": 1}', mid=1),
            publish(b"edgeloop/s/d2/telemetry", b"", qos=0),
            puback(101),
            publish(b"a/b", b"y" * 130, mid=2, props=_props(ContentType="application/json")),
            publish(b"a/c", b"z", mid=3, props=_props(UserProperty=[("a", "1")], MessageExpiryInterval=60)),
            PINGRESP,
            publish(b"a/r", b"kept", mid=4, retain=True),
            publish(b"a/d", b"again", mid=5, dup=True),  # a redelivery: paho's path
            publish(b"a/\xff", b"bad topic", mid=6),  # not UTF-8: paho's path
            publish(b"a/q2", b"two", qos=2, mid=7),  # QoS 2: paho's path (PUBREC, then PUBREL)
            pubrel(7),
            puback(102),
            publish(b"", b"empty topic", mid=8),  # allowed in MQTT 5
            publish("é/ü".encode(), b"\x00\xff", mid=9),
            # A payload holding what looks like a whole packet: a read that starts inside it (paho
            # holds the first part) must not be taken as a packet of its own.
            publish(b"a/nest", publish(b"fake", b"!", qos=0) * 2, mid=10),
        ]
    )
    events = _same_as_paho(stream)
    assert [e[0] for e in events].count("message") == 11
    assert ("puback", 101) in events and ("puback", 102) in events


def test_mqtt311_publishes() -> None:
    stream = b"".join(
        [
            publish(b"t/1", b"a", mid=1, v5=False),
            publish(b"t/2", b"b" * 200, qos=0, v5=False),
            puback(101)[:4],
            publish(b"t/3", b"c", mid=3, v5=False, retain=True),
            publish(b"t/4", b"d", mid=4, v5=False, dup=True),
        ]
    )
    _same_as_paho(stream, protocol="3.1.1")


def test_qos1_without_manual_acks_is_left_to_paho_which_acknowledges_it() -> None:
    stream = publish(b"t/1", b"a", mid=1) + publish(b"t/0", b"b", qos=0) + publish(b"t/2", b"c", mid=2)
    _same_as_paho(stream, manual_ack=False)
    with feed(batched=True, manual_ack=False) as f:
        f.client._out_messages.clear()  # else paho's loop_read reads one packet per message in flight
        f.send(stream)
        assert f.queued() == puback(1) + puback(2)  # paho's own PUBACKs; the QoS 0 one was batched
        assert f.batches == [1]


def test_many_packets_in_one_read_are_one_batch() -> None:
    sent = [publish(b"a/%d" % mid, b"x" * (mid % 100), mid=mid) for mid in range(1, 501)]
    stream = b"".join(sent)
    assert len(stream) < paho_internals.READ_SIZE
    events = _same_as_paho(stream, split=False)
    assert len(events) == 500
    with feed(batched=True) as f:
        f.peer.sendall(stream)
        time.sleep(0.05)
        assert f.client.loop_read() == mqtt.MQTT_ERR_SUCCESS
        assert f.batches == [500]  # one recv, one call of the hook


def test_split_reads_with_large_payloads() -> None:
    # Remaining lengths of one, two and three bytes, straddling the reads.
    stream = b"".join(
        publish(b"big/%d" % n, bytes(n * 61 % 251 for _ in range(size)), mid=n)
        for n, size in enumerate((0, 127, 128, 16_383, 16_384, 70_000), start=1)
    )
    expected, _, _ = _through([stream], batched=False)
    for k in [*range(1, 8), 130, 140, 16_600, len(stream) - 3, len(stream) - 1]:
        got, _, _ = _through([stream[:k], stream[k:]], batched=True)
        assert got == expected, k


@pytest.mark.parametrize("batched", [False, True])
def test_the_end_of_the_stream_after_messages_is_a_lost_connection(batched: bool) -> None:
    with feed(batched=batched) as f:
        f.send(publish(b"a/b", b"x", mid=1) + publish(b"a/c", b"y", qos=0))
        assert len(f.events) == 2
        f.peer.close()
        assert f.client.loop_read() == mqtt.MQTT_ERR_CONN_LOST
        assert f.client._sock is None


def test_keepalive_sees_the_bytes() -> None:
    with feed(batched=True) as f:
        f.client._last_bytes_received = 0.0
        f.send(publish(b"a/b", b"x"))
        assert f.batches == [1]
        assert f.client._last_bytes_received > 0


def test_paho_delivers_when_it_would_log_or_filter() -> None:
    stream = publish(b"a/b", b"x", mid=1) + publish(b"c/d", b"y", qos=0)
    with feed(batched=True) as f:
        f.client.on_log = lambda *_: None
        f.send(stream)
        assert f.batches == [] and len(f.events) == 2
    with feed(batched=True) as f:
        got: list[str] = []
        f.client.message_callback_add("c/#", lambda _c, _u, m: got.append(m.topic))
        f.send(stream)
        assert f.batches == [] and got == ["c/d"] and len(f.events) == 1


def test_decoder_leaves_malformed_packets_to_paho() -> None:
    for bad, v5 in [
        (publish(b"", b"x", mid=2, v5=False), False),  # empty topic in 3.1.1
        (b"\x32\x01\x00", True),  # shorter than a topic length
        (b"\x32\x04\x00\x09ab", True),  # topic past the packet
        (b"\x32\x04\x00\x01a\x00", True),  # no room for the packet id
        (b"\x32\x05\x00\x01a\x00\x01", True),  # no property length
        (b"\x32\x07\x00\x01a\x00\x01\x05x", True),  # properties past the packet
        (b"\x32\xff\xff\xff\xff\x01", True),  # remaining length over four bytes
        (b"\x36\x02\x00\x00", True),  # QoS 3
    ]:
        good = publish(b"a/b", b"x", mid=1, v5=v5)
        decoded = decode_publishes(good + bad + good, 0, v5=v5, manual_ack=True)
        assert (len(decoded.deliveries), decoded.pos, decoded.partial) == (1, len(good), False), bad
    # v3.1.1 decodes the same good packet without a property length
    plain = publish(b"a/b", b"x", mid=1, v5=False)
    assert decode_publishes(plain, 0, v5=False, manual_ack=True).deliveries == [
        Delivery("a/b", b"x", 1, 1, False)
    ]
    good = publish(b"a/b", b"x", mid=1)
    for k in range(len(good)):
        assert decode_publishes(good[:k], 0, v5=True, manual_ack=True) == ([], 0, k > 0)


def test_transport_lets_readings_in_before_a_control_message() -> None:
    settings = Settings(site="s")
    inbox = Inbox(100)
    seen: list[tuple[Any, int]] = []
    transport = MqttTransport(
        settings,
        inbox,
        lambda payload: seen.append((payload, inbox.queue.qsize())),
        client_id="t",
        models=lambda message: seen.append((message, inbox.queue.qsize())),
    )
    reading = "edgeloop/s/d1/telemetry"
    model = transport.models_prefix + "fleet"
    transport._on_messages(
        [
            Delivery(reading, b"1", 1, 1, False),
            Delivery(transport.events_topic, b"event", 2, 1, False),
            Delivery(reading, b"2", 3, 0, False),
            Delivery(model, b"signed", 4, 1, False),
            Delivery(reading, b"3", 5, 1, True),
        ]
    )
    assert seen == [(b"event", 1), ((model, b"signed"), 2)]
    items = [inbox.queue.get_nowait() for _ in range(inbox.queue.qsize())]
    assert [(i.topic, i.payload, i.mid, i.qos) for i in items] == [
        (reading, b"1", 1, 1),
        (reading, b"2", 3, 0),
        (reading, b"3", 5, 1),
    ]


def test_put_many_waiting_never_passes_the_bound() -> None:
    from edgeloop.adapters.transport import Received

    inbox = Inbox(3)
    items = [Received("t", b"%d" % n, n, 1, 1) for n in range(7)]
    putter = threading.Thread(target=inbox.put_many_waiting, args=(items,))
    putter.start()
    taken: list[Received] = []
    while len(taken) < len(items):
        time.sleep(0.01)
        assert inbox.queue.qsize() <= 3
        taken.append(inbox.queue.get(timeout=5))
    putter.join(5)
    assert taken == items
    inbox.accepting = False
    inbox.put_many_waiting(items[:2])
    assert inbox.left == 2 and inbox.queue.empty()
