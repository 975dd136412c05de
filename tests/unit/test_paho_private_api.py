"""edgeloop reads private paho fields and overrides private methods (see
``edgeloop.adapters.paho_internals``). This test fails loudly on a paho version nobody checked them on.

To verify a new paho version: read ``Client._update_inflight``, ``_handle_pubackcomp`` and
``publish`` in paho/mqtt/client.py; the shortcut is valid while ``_out_messages`` holds every
unacknowledged outgoing message, ``_inflight_messages`` counts those sent, and ``publish`` reads
``_max_inflight_messages`` per call. Read ``_packet.decode_publish`` and ``properties.Properties``:
``_LeanProperties`` is valid while decode_publish builds ``Properties(PacketTypes.PUBLISH)`` by its
module-global name and calls ``unpack`` once, and ``Properties`` only reads its ``types``, ``names``
and ``properties`` tables. Read ``_packet_queue``, ``_packet_write`` and ``_send_command_with_mid``:
``_BatchingClient`` is valid while ``_out_packet`` is a deque of packet dicts written in order and a
PUBACK is the four bytes ``_send_command_with_mid`` packs. Read ``MQTTMessage`` and every use of
``.info`` in paho/mqtt/client.py: ``_LeanMessage`` is valid while ``_handle_publish`` and ``publish``
build messages by the module-global name and only ``publish`` and ``_do_on_publish`` read ``info``,
both under ``_out_message_mutex``. Read ``_packet_read``, ``_packet_handle``, ``_handle_publish``,
``_handle_on_message``, ``_easy_log`` and ``_check_keepalive``: batched receive is valid while a PUBLISH
delivers as ``edgeloop.adapters.publish_decode`` says and nothing else reads it (see
``test_paho_batch_receive.py``, which compares both paths byte stream by byte stream). Read the paho
code ``test_paho_publish_batch.py`` pins: the lean publish path is valid while it leaves what paho's
``publish`` leaves, which that test compares. Then add the version to ``PAHO_VERIFIED`` and update the
digests.
"""

from __future__ import annotations

import hashlib
import inspect
import socket
import threading

import paho.mqtt.client as mqtt
from tests.unit.paho_stubs import CountingPair

from edgeloop.adapters import mqtt_client, paho_internals
from edgeloop.config import BrokerSettings

# sha256 of paho 2.2.0's Client._update_inflight source, the code the shortcut stands in front of.
UPDATE_INFLIGHT_SHA256 = "d11feb21cf855b12bbda2ccccfed5655864a4eec23f19286f4721e5ec31d46b1"


def test_paho_version_was_verified() -> None:
    assert paho_internals.PAHO_VERSION in paho_internals.PAHO_VERIFIED, (
        f"paho-mqtt {paho_internals.PAHO_VERSION} was not verified for edgeloop's use of its private API; "
        "see this test's docstring, then add it to PAHO_VERIFIED"
    )


def test_paho_internals_are_as_read() -> None:
    source = inspect.getsource(mqtt.Client._update_inflight)
    assert hashlib.sha256(source.encode()).hexdigest() == UPDATE_INFLIGHT_SHA256, (
        "paho's Client._update_inflight changed: re-verify _FastAckClient (see this test's docstring)"
    )
    assert "_max_inflight_messages" in inspect.getsource(mqtt.Client.publish)
    client = mqtt_client.make_client(BrokerSettings(), role="t")
    assert isinstance(client._out_messages, dict)
    assert isinstance(client._inflight_messages, int)
    assert client._max_inflight_messages == mqtt_client.MAX_INFLIGHT


def test_verified_paho_gets_the_shortcut() -> None:
    client = mqtt_client.make_client(BrokerSettings(), role="t")
    assert isinstance(client, paho_internals._FastAckClient) == paho_internals.PRIVATE_API_OK


# sha256 of paho 2.2.0's _packet.decode_publish source: it builds a Properties by its module-global name
# for every incoming MQTT 5 PUBLISH, which _LeanProperties stands in for.
DECODE_PUBLISH_SHA256 = "50c158487fa3d96ecac8944c9c10b2a63d3955970512a2e4fa72f34713d17235"


def test_paho_decode_publish_is_as_read() -> None:
    from paho.mqtt import _packet

    source = inspect.getsource(_packet.decode_publish)
    assert hashlib.sha256(source.encode()).hexdigest() == DECODE_PUBLISH_SHA256, (
        "paho's _packet.decode_publish changed: re-verify _LeanProperties (see this test's docstring)"
    )
    mqtt_client.make_client(BrokerSettings(), role="t")
    assert (_packet.Properties is paho_internals._LeanProperties) == paho_internals.PRIVATE_API_OK


def _property_blocks() -> list[bytes]:
    """Property sections of a PUBLISH as paho packs them: none, and a few kinds."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    blocks = [b"\x00"]
    for fill in (
        {"ContentType": "application/json"},
        {"UserProperty": [("a", "1"), ("b", "2")], "MessageExpiryInterval": 60},
        {"PayloadFormatIndicator": 1, "ResponseTopic": "r/t", "CorrelationData": b"\x00\x01"},
    ):
        props = Properties(PacketTypes.PUBLISH)
        for name, value in fill.items():
            setattr(props, name, value)
        blocks.append(bytes(props.pack()))
    return blocks


def test_lean_properties_decode_every_publish_as_paho_does() -> None:
    import struct

    from paho.mqtt import _packet
    from paho.mqtt.enums import MQTTProtocolVersion
    from paho.mqtt.properties import Properties

    mqtt_client.make_client(BrokerSettings(), role="t")
    for block in _property_blocks():
        packet = struct.pack("!H", 3) + b"a/b" + struct.pack("!H", 7) + block + b'{"x": 1}'
        lean = _packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5)
        _packet.Properties = Properties
        try:
            full = _packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5)
        finally:
            paho_internals._use_lean_stand_ins()
        assert type(lean.properties) is (
            paho_internals._LeanProperties if paho_internals.PRIVATE_API_OK else Properties
        )
        assert lean.properties.json() == full.properties.json()
        assert (lean.payload, lean.topic, lean.mid, lean.qos) == (
            full.payload,
            full.topic,
            full.mid,
            full.qos,
        )
        assert lean.payload == b'{"x": 1}'


# sha256 of paho 2.2.0's Client._packet_queue and _send_command_with_mid: _BatchingClient appends to
# _out_packet as _packet_queue does and sends PUBACKs as _send_command_with_mid packs them.
PACKET_QUEUE_SHA256 = "e298fa9ab31e5f79c1c6d08d303b049db9a2bcf681dcac1cd510b2fb519d3a26"
SEND_COMMAND_WITH_MID_SHA256 = "1a771678b66dc9e48c72d825a824a0634506f914ac2b46e7c5d00de7547fc9ff"


def _sha(function: object) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()  # type: ignore[arg-type]


def test_paho_packet_queue_is_as_read() -> None:
    assert _sha(mqtt.Client._packet_queue) == PACKET_QUEUE_SHA256, (
        "paho's Client._packet_queue changed: re-verify _BatchingClient (see this test's docstring)"
    )
    assert _sha(mqtt.Client._send_command_with_mid) == SEND_COMMAND_WITH_MID_SHA256, (
        "paho's Client._send_command_with_mid changed: re-verify _BatchingClient.ack_many"
    )
    client = mqtt_client.make_client(BrokerSettings(), role="t", manual_ack=True)
    assert isinstance(client, paho_internals._BatchingClient) == paho_internals.PRIVATE_API_OK


def _queued(client: mqtt.Client) -> bytes:
    return b"".join(bytes(p["packet"]) for p in client._out_packet)


def test_ack_many_queues_the_bytes_of_one_ack_each() -> None:
    mids = [1, 2, 300, 65535]
    paho = mqtt_client.make_client(BrokerSettings(), role="t", manual_ack=True)
    for mid in mids:
        paho.ack(mid, 1)
    batched = mqtt_client.make_client(BrokerSettings(), role="t", manual_ack=True)
    paho_internals.ack_many(batched, mids)
    assert _queued(paho) and _queued(batched) == _queued(paho)
    assert len(batched._out_packet) == (1 if paho_internals.PRIVATE_API_OK else len(mids))


def test_publish_many_wakes_the_network_thread_once() -> None:
    if not paho_internals.PRIVATE_API_OK:
        return  # paho's own path: one wake-up per packet
    from paho.mqtt.client import _ConnectionState

    client = mqtt_client.make_client(BrokerSettings(), role="t")
    pair = CountingPair()
    # As while connected with a network thread (loop_start); the thread never runs, so nothing is
    # written to the socket.
    sock, peer = socket.socketpair()
    client._sock = sock
    client._sockpairW = pair
    client._thread = threading.Thread(target=lambda: None)
    client._state = _ConnectionState.MQTT_CS_CONNECTED
    infos = paho_internals.publish_many(client, [(f"t/{i}", b"x") for i in range(50)], qos=1)
    assert [i.rc for i in infos] == [mqtt.MQTT_ERR_SUCCESS] * 50
    assert pair.sent == 1
    assert len(client._out_packet) == 50
    client.publish("t/x", b"y", qos=1)  # outside a batch: paho's own wake-up per packet
    assert pair.sent == 2
    client._sockpairW = None
    client._sock = None
    sock.close()
    peer.close()


# sha256 of paho 2.2.0's MQTTMessage.__init__ and of the Client methods that build messages or read
# their info: _LeanMessage copies the first and makes info lazily for the others.
MESSAGE_SHA256 = {
    "MQTTMessage.__init__": "af92f9a50f5f90e4f45d39c578fe129901f2c7c0f3c4fbb71ae5259f91f34b15",
    "Client._handle_publish": "1bbaa3ef0e3afc6dea0423a41e67170930c024827e2e8dbf69b5d61c304b675d",
    "Client.publish": "5c00cd3dcebceaae0eeac2e40402cd18fb64664c78343a6673ce0776a1608ec4",
    "Client._do_on_publish": "5bbcad6f9447107a5ba9446e6dbdbdf4eedad2734533d900db907240f75b93e4",
}
INFO_READS = 11  # occurrences of ".info" in paho/mqtt/client.py


def test_paho_message_is_as_read() -> None:
    import re

    functions = {
        "MQTTMessage.__init__": paho_internals._PAHO_MESSAGE.__init__,
        "Client._handle_publish": mqtt.Client._handle_publish,
        "Client.publish": mqtt.Client.publish,
        "Client._do_on_publish": mqtt.Client._do_on_publish,
    }
    for name, function in functions.items():
        assert _sha(function) == MESSAGE_SHA256[name], (
            f"paho's {name} changed: re-verify _LeanMessage (see this test's docstring)"
        )
    assert len(re.findall(r"\.info\b", inspect.getsource(mqtt))) == INFO_READS, (
        "paho reads MQTTMessage.info in more or fewer places: re-verify _LeanMessage"
    )
    mqtt_client.make_client(BrokerSettings(), role="t")
    assert (mqtt.MQTTMessage is paho_internals._LeanMessage) == paho_internals.PRIVATE_API_OK


def test_lean_message_is_pahos_with_a_lazy_info() -> None:
    full = paho_internals._PAHO_MESSAGE(7, b"a/b")
    lean = paho_internals._LeanMessage(7, b"a/b")
    for slot in mqtt.MQTTMessage.__slots__:
        if slot != "info":
            assert getattr(lean, slot) == getattr(full, slot), slot
    assert lean.topic == "a/b"
    info = lean.info
    assert isinstance(info, mqtt.MQTTMessageInfo) and info.mid == 7 and not info.is_published()
    assert lean.info is info
    try:
        _ = lean.no_such_field  # type: ignore[attr-defined]
    except AttributeError:
        pass
    else:
        raise AssertionError("unknown attributes must still raise AttributeError")


# sha256 of paho 2.2.0's Client._sock_recv and loop_read: _BatchingClient serves the first from its
# read buffer and repeats the second while that buffer holds bytes.
READ_SHA256 = {
    "Client._sock_recv": "c3b9043a46dd81b79a601a321a2479154ec158c75243f4f4ad7431474efa1d62",
    "Client.loop_read": "4fa11ca2d451dbec3f8518b7ce7578e17513c03d319139017512773b8ec1bded",
}


def test_paho_reads_are_as_read() -> None:
    for name, function in {
        "Client._sock_recv": mqtt.Client._sock_recv,
        "Client.loop_read": mqtt.Client.loop_read,
    }.items():
        assert _sha(function) == READ_SHA256[name], (
            f"paho's {name} changed: re-verify _BatchingClient's buffered reads (see this test's docstring)"
        )


def _publish_packet(mid: int, topic: bytes, payload: bytes) -> bytes:
    """A QoS 1 MQTT 5 PUBLISH without properties, as a broker sends it."""
    import struct

    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + b"\x00" + payload
    length, encoded = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return b"\x32" + encoded + body


def _reading_client() -> tuple[mqtt.Client, list[tuple[int, str, bytes]]]:
    from paho.mqtt.client import _ConnectionState

    client = mqtt_client.make_client(BrokerSettings(), role="t", manual_ack=True)
    got: list[tuple[int, str, bytes]] = []
    client.on_message = lambda _c, _u, m: got.append((m.mid, m.topic, m.payload))
    client._state = _ConnectionState.MQTT_CS_CONNECTED
    return client, got


def test_one_read_hands_every_packet_it_holds_to_paho() -> None:
    client, got = _reading_client()
    sock, peer = socket.socketpair()
    sock.setblocking(False)
    client._sock = sock
    try:
        # Payload sizes around the length field's one/two byte boundary, so packets straddle reads.
        sent = [(mid, b"a/%d" % mid, b"x" * (mid % 200)) for mid in range(1, 401)]
        peer.sendall(b"".join(_publish_packet(mid, topic, payload) for mid, topic, payload in sent))
        while len(got) < len(sent) and client.loop_read() == mqtt.MQTT_ERR_SUCCESS:
            if not paho_internals.PRIVATE_API_OK:
                continue  # paho's own: one packet per call
            break  # one call takes every packet the socket held
        assert got == [(mid, topic.decode(), payload) for mid, topic, payload in sent]
    finally:
        client._sock = None
        sock.close()
        peer.close()


def test_bytes_of_a_closed_connection_are_never_read_on_the_next() -> None:
    client, got = _reading_client()
    old, old_peer = socket.socketpair()
    new, new_peer = socket.socketpair()
    old.setblocking(False)
    new.setblocking(False)
    try:
        client._sock = old
        first, second = _publish_packet(1, b"a/1", b"one"), _publish_packet(2, b"a/2", b"two")
        old_peer.sendall(first + second[:5])  # a packet and a half arrive, then the connection drops
        client.loop_read()
        assert got[:1] == [(1, "a/1", b"one")]
        client._sock = new  # as after a reconnect (paho resets its packet reader too)
        client._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }
        new_peer.sendall(_publish_packet(3, b"a/3", b"three"))
        while len(got) < 2 and client.loop_read() == mqtt.MQTT_ERR_SUCCESS:
            pass
        assert got == [(1, "a/1", b"one"), (3, "a/3", b"three")]
    finally:
        client._sock = None
        for s in (old, old_peer, new, new_peer):
            s.close()


# sha256 of the paho 2.2.0 code batched receive (paho_internals.deliver_batches, publish_decode) stands
# in for or reads: it decodes PUBLISH packets as _packet_read/_packet_handle/_handle_publish/
# decode_publish would (pinned above: _handle_publish, decode_publish, loop_read, _sock_recv), only
# between packets (_in_packet["command"] == 0, reset by _packet_read), records the bytes for
# _check_keepalive (_last_bytes_received under _msgtime_mutex), and leaves to paho whatever
# _handle_on_message would route to message_callback_add filters (MQTTMatcher's _root._children)
# or _easy_log would log.
BATCH_RECEIVE_SHA256 = {
    "Client._packet_read": "bbe32d8af1e37955175d7835c8b0a16a61435dbc40e563f447f08b102c776347",
    "Client._packet_handle": "ac4c129ed409db421a6f85be6fdce91ebee5bdf1048bcc67034930c2617472f5",
    "Client._handle_on_message": "8ccc46fdb090aeadac6c4afea7e684dd714ca2d4b163f38271b0a30dbaa112ed",
    "Client._easy_log": "02c7afc1854c3a9d0a65b6184f18920fe732da5359b88b84613751d7bc0935c0",
    "Client._check_keepalive": "162b7cd2a4d56585298c5753eb056f318d014f15827b0d1661574b4eccf79063",
    "Client.message_callback_add": "ccabe4ba3af0ef9deb8dce3926865051df350c3026138ff3d410f405dc99ae76",
    "MQTTMatcher": "00e415638ca8756709d9a958f3880b8aa7dba4962a4d5b68d6175992760008c2",
}


def test_paho_receive_is_as_read() -> None:
    from paho.mqtt.matcher import MQTTMatcher

    for name, code in {
        "Client._packet_read": mqtt.Client._packet_read,
        "Client._packet_handle": mqtt.Client._packet_handle,
        "Client._handle_on_message": mqtt.Client._handle_on_message,
        "Client._easy_log": mqtt.Client._easy_log,
        "Client._check_keepalive": mqtt.Client._check_keepalive,
        "Client.message_callback_add": mqtt.Client.message_callback_add,
        "MQTTMatcher": MQTTMatcher,
    }.items():
        assert _sha(code) == BATCH_RECEIVE_SHA256[name], (
            f"paho's {name} changed: re-verify batched receive "
            "(paho_internals._BatchingClient._read_publishes and edgeloop.adapters.publish_decode)"
        )
    client = mqtt_client.make_client(BrokerSettings(), role="t", manual_ack=True)
    assert client._in_packet["command"] == 0
    assert not client._on_message_filtered._root._children
    assert isinstance(client._last_bytes_received, float)
    assert paho_internals.deliver_batches(client, lambda _m: None) == paho_internals.PRIVATE_API_OK
