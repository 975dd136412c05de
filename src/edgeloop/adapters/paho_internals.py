"""paho internals edgeloop stands in for, on the paho versions they were read against only.

Each is limited to :data:`PAHO_VERIFIED`; on any other version it is left out (slower, never wrong)
and ``tests/unit/test_paho_private_api.py`` fails until someone re-reads paho's code:

- :class:`_FastAckClient` skips paho's per-PUBACK rescan of unacknowledged messages when none is
  queued;
- :class:`_BatchingClient` reads many packets per ``recv`` and queues a batch of publishes or
  acknowledgements with one wake-up of the network thread, a batch of PUBACKs as one write
  (:func:`publish_many`, :func:`ack_many`), packing and recording a batch of QoS 0/1 publishes in
  one loop as paho's ``publish`` would (:mod:`edgeloop.adapters.publish_encode`); with a batch hook
  (:func:`deliver_batches`) it also decodes the plain PUBLISH packets of each read itself
  (:mod:`edgeloop.adapters.publish_decode`) and hands them over as one list, leaving every other
  packet to paho;
- :class:`_LeanProperties` stands in for ``Properties`` where paho decodes an incoming PUBLISH
  (``paho.mqtt._packet.decode_publish``), so an MQTT 5 message without properties costs no
  property tables;
- :class:`_LeanMessage` stands in for ``MQTTMessage``, making its ``MQTTMessageInfo`` (a
  ``Condition`` and its lock) only when something reads it, which paho does for outgoing messages
  only.

(``mqtt_client._clamp_inflight`` also writes a private field, under the same guard.)
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt import _packet
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties

from edgeloop.adapters.publish_decode import Decoded, Delivery, decode_publishes
from edgeloop.adapters.publish_encode import lean_publish_ok, out_packet, queue_publishes

log = logging.getLogger(__name__)

# paho versions whose Client._update_inflight, _out_messages, _inflight_messages and
# _max_inflight_messages, and whose _packet.decode_publish and Properties, were read and found to
# behave as _Client, _clamp_inflight and _LeanProperties assume.
PAHO_VERIFIED = frozenset({"2.2.0"})
PAHO_VERSION: str = paho.mqtt.__version__
PRIVATE_API_OK = PAHO_VERSION in PAHO_VERIFIED


class _FastAckClient(mqtt.Client):
    """paho's client, minus a rescan that cost the edge a third of its CPU at QoS 1.

    On every PUBACK paho walks all unacknowledged messages looking for queued ones to send (up to
    1,000 with our in-flight limit). When every stored message is already in flight there is nothing
    to find, so the walk is skipped; otherwise paho's own code runs unchanged. Measured by
    ``benchmarks/bench_paho_inflight.py``: 117 us of CPU per PUBACK with 999 in flight without it,
    0.1 us with it (58% of a core at 5,000 predictions/s, on a loaded 2-core machine).
    """

    def _update_inflight(self) -> MQTTErrorCode:
        if len(self._out_messages) <= self._inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._update_inflight()


_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id: reason "success"


READ_SIZE = 65536  # most bytes one recv takes from the socket
LEAN_PUBLISH = True  # publish_many queues a batch in one loop (publish_encode); False: paho's publish each


class _BatchingClient(_FastAckClient):
    """paho's client, reading many packets per system call and queueing a batch with one wake-up.

    paho's ``_packet_queue`` writes a byte to a socket pair for every packet queued from outside its
    network thread, to wake that thread's ``select``: one system call per prediction and per
    acknowledgement, each releasing the GIL to a network thread that then has to get it back. While
    :meth:`publish_many` runs, packets queued by the calling thread only join paho's outgoing queue
    (a deque, as paho appends them) and the network thread is woken once at the end; packets queued
    by any other thread take paho's own path. :meth:`ack_many` sends the PUBACKs of a batch as one
    packet (the same bytes as paho's ``ack``, one after another), so the network thread writes them
    with one ``send`` instead of one each. Reads take what the socket holds (up to
    :data:`READ_SIZE`) and :meth:`_sock_recv` serves paho's small reads from it; bytes left from a
    closed connection are never served on the next (they belong to the socket they were read from).
    With a batch hook (:func:`deliver_batches`), :meth:`loop_read` first hands the plain PUBLISH
    packets at the head of what was read to the hook (:meth:`_read_publishes`); paho reads the rest.
    """

    _deferring: int | None = None  # thread id whose packets wait for one wake-up at the end
    _deferred = False
    # Bytes read from _read_sock but not handed to paho's packet reader yet, from _read_pos on.
    _read_buf = b""
    _read_pos = 0
    _read_sock: Any = None
    # Takes the plain PUBLISH packets of each read as one list (see deliver_batches); None: paho's path.
    _on_messages: Callable[[list[Delivery]], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho reads each packet in three or more recv calls (its type, each byte of its length, the
        # rest), each a system call that releases the GIL. Read what the socket has, up to
        # READ_SIZE, and hand it out in the pieces paho asks for.
        buf, pos = self._read_buf, self._read_pos
        if pos < len(buf) and self._read_sock is self._sock:
            end = pos + bufsize
            self._read_pos = end
            return buf[pos:end]
        data = super()._sock_recv(max(bufsize, READ_SIZE))
        if len(data) <= bufsize:
            self._read_buf, self._read_pos = b"", 0
            return data
        self._read_buf, self._read_pos, self._read_sock = data, bufsize, self._sock
        return data[:bufsize]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho reads one packet per select() when nothing of ours is in flight (the input side):
        # go on while read bytes wait here, since select() cannot see them. With a batch hook, plain
        # PUBLISH packets are taken from the buffer first (_read_publishes); paho reads the rest.
        batches = self._on_messages is not None
        if batches and self._read_publishes(may_read=True):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        rc = super().loop_read(max_packets)
        while (
            rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            and self._read_pos < len(self._read_buf)
            and self._sock is not None
            and self._read_sock is self._sock
        ):
            # No socket read of ours here: under steady traffic that could go on without writing.
            if batches and self._read_publishes(may_read=False):
                break
            rc = super().loop_read(max_packets)
        return rc

    def _read_publishes(self, *, may_read: bool) -> bool:
        """Deliver the plain PUBLISH packets at the head of the read buffer to ``_on_messages``.

        Only between packets (paho holds no partly read one) and with nothing that paho's delivery
        would do differently: no ``on_log``/logger (paho logs every PUBLISH) and no
        ``message_callback_add`` filters. With ``may_read``, reads the socket once when the buffer is
        empty or ends in part of such a packet. True when every byte read was taken: nothing waits for paho.
        """
        sock = self._sock
        if (
            sock is None
            or self._in_packet["command"]
            or self._on_log is not None
            or self._logger is not None
            or self._on_message_filtered._root._children
        ):
            return False
        buf, pos = self._read_buf, self._read_pos
        if self._read_sock is not sock or pos >= len(buf):
            # Nothing left of what was read: an empty buffer, so that a read that ends the stream
            # (or finds nothing) reports "not all taken" and paho's own read meets it.
            buf, pos = b"", 0
        v5 = self._protocol == mqtt.MQTTv5
        decoded = decode_publishes(buf, pos, v5=v5, manual_ack=self._manual_ack)
        if may_read and (decoded.partial or decoded.pos >= len(buf)):
            # Empty, or ends in part of a PUBLISH: read on. Errors, end of stream and "nothing yet"
            # are left for paho's own read to meet again and handle.
            data = self._recv_available()
            if data:
                buf = buf[decoded.pos :] + data if decoded.pos < len(buf) else data
                more = decode_publishes(buf, 0, v5=v5, manual_ack=self._manual_ack)
                decoded = Decoded(decoded.deliveries + more.deliveries, more.pos, more.partial)
        self._read_buf, self._read_pos, self._read_sock = buf, decoded.pos, sock
        messages = decoded.deliveries
        if messages:
            with self._msgtime_mutex:  # paho's keepalive: bytes arrived
                self._last_bytes_received = mqtt.time_func()
            hook = self._on_messages
            if hook is not None:
                with self._in_callback_mutex:  # as paho holds it around on_message
                    hook(messages)
        return decoded.pos >= len(buf) and bool(buf)

    def _recv_available(self) -> bytes:
        # What the socket holds, up to READ_SIZE; b"" for nothing, an error or the end of the stream
        # (paho's own read meets those again). A TLS socket returns one record per recv and brokers
        # write a record per packet, so read the records already here as well.
        recv = mqtt.Client._sock_recv
        try:
            data = recv(self, READ_SIZE)
        except OSError:
            return b""
        if not data or not hasattr(self._sock, "pending"):
            return data
        parts, total = [data], len(data)
        while total < READ_SIZE:
            try:
                more = recv(self, READ_SIZE - total)
            except OSError:
                break
            if not more:
                break
            parts.append(more)
            total += len(more)
        return b"".join(parts)

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: mqtt.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        if self._deferring is None or self._deferring != threading.get_ident() or self._thread is None:
            return super()._packet_queue(command, packet, mid, qos, info)
        self._out_packet.append(out_packet(command, packet, mid, qos, info))
        self._deferred = True
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _wake(self) -> None:
        # What paho's _packet_queue does after appending, once for the whole batch.
        self._deferred = False
        if self._sockpairW is not None:
            with contextlib.suppress(BlockingIOError):
                self._sockpairW.send(mqtt.sockpair_data)
        self._call_socket_register_write()

    # Batches go through publish_encode.queue_publishes where it does what paho's publish would:
    # 59-70 % less CPU of the publishing thread per QoS 1 message, 27-48 % of the process, measured
    # with benchmarks/bench_paho_publish.py. False: paho's publish per message.
    lean_publish = LEAN_PUBLISH

    def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[mqtt.MQTTMessageInfo]:
        publish = self.publish
        self._deferring = threading.get_ident()
        try:
            if self.lean_publish and lean_publish_ok(self, qos):
                infos, queued = queue_publishes(self, messages, qos)
                self._deferred = self._deferred or queued
                return infos
            return [publish(topic, payload, qos) for topic, payload in messages]
        finally:
            self._deferring = None
            if self._deferred:
                self._wake()

    def ack_many(self, mids: Sequence[int]) -> None:
        if self._manual_ack and mids:
            pack = _PUBACK.pack
            self._packet_queue(PUBACK, b"".join([pack(PUBACK, 2, mid) for mid in mids]), 0, 1)


def publish_many(
    client: mqtt.Client, messages: Sequence[tuple[str, bytes]], qos: int
) -> list[mqtt.MQTTMessageInfo]:
    """``client.publish`` each (topic, payload); one wake-up of paho's network thread on verified paho."""
    if isinstance(client, _BatchingClient):
        return client.publish_many(messages, qos)
    return [client.publish(topic, payload, qos) for topic, payload in messages]


def deliver_batches(client: mqtt.Client, hook: Callable[[list[Delivery]], None] | None) -> bool:
    """Hand the plain PUBLISH packets of each read to ``hook`` as one list, on verified paho.

    ``hook`` runs on paho's network thread in place of ``on_message`` for those messages (see
    :mod:`edgeloop.adapters.publish_decode`; their MQTT 5 properties are not decoded); every other
    message still reaches ``on_message``, in the order received. Returns False (nothing changed)
    when the client is paho's own. None turns it off.
    """
    if not isinstance(client, _BatchingClient):
        return False
    client._on_messages = hook
    return True


def ack_many(client: mqtt.Client, mids: Sequence[int]) -> None:
    """Acknowledge the QoS 1 deliveries ``mids`` (manual acks); one write on verified paho."""
    if isinstance(client, _BatchingClient):
        client.ack_many(mids)
        return
    for mid in mids:
        client.ack(mid, 1)


_Client: type[mqtt.Client] = _BatchingClient if PRIVATE_API_OK else mqtt.Client
if not PRIVATE_API_OK:
    log.warning(
        "paho-mqtt %s is not among the versions edgeloop was verified with (%s): running without the "
        "PUBACK rescan shortcut (QoS 1 publishing is slower)",
        PAHO_VERSION,
        ", ".join(sorted(PAHO_VERIFIED)),
    )


class _LeanProperties(Properties):
    """paho's ``Properties`` without rebuilding its lookup tables for every incoming message.

    paho 2.2 decodes each MQTT 5 PUBLISH into a new ``Properties``, whose constructor builds three
    tables (28 names, 27 property types) and whose ``unpack`` first clears every name: about 10 us per
    message on the bench machine, where the whole decode of a v3.1.1 PUBLISH takes 2 us. The tables
    are the same for every instance and paho only reads them, so this class shares one copy; and a
    PUBLISH without properties (a zero length byte, what devices send) is unpacked to exactly what
    paho's ``unpack`` gives a fresh object: no attributes, one byte consumed. Anything else takes
    paho's own ``unpack``.
    """

    _tables: tuple[Any, Any, Any] | None = None

    def __init__(self, packetType: int) -> None:
        tables = _LeanProperties._tables
        if tables is None:
            full = Properties(packetType)
            tables = _LeanProperties._tables = (full.types, full.names, full.properties)
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", tables[0])
        object.__setattr__(self, "names", tables[1])
        object.__setattr__(self, "properties", tables[2])

    def unpack(self, buffer: bytes | bytearray) -> tuple[Properties, int]:
        if buffer[:1] == b"\x00" and not self.__dict__.keys() - _TABLE_FIELDS:
            return self, 1
        return super().unpack(buffer)


_TABLE_FIELDS = frozenset({"packetType", "types", "names", "properties"})


class _LeanMessage(mqtt.MQTTMessage):
    """paho's ``MQTTMessage`` whose ``info`` is made when first read.

    paho builds an ``MQTTMessage`` for every incoming PUBLISH, and each builds an ``MQTTMessageInfo``
    with a ``threading.Condition`` (and its lock) that only outgoing messages use: ``publish`` reads
    it under ``_out_message_mutex`` before the message can be acknowledged, and the PUBACK handler
    reads it under the same lock, so it is made once, by one thread. Everything else is paho's.
    """

    __slots__ = ()

    def __init__(self, mid: int = 0, topic: bytes = b"") -> None:
        self.timestamp = 0.0
        self.state = mqtt.mqtt_ms_invalid
        self.dup = False
        self.mid = mid
        self._topic = topic
        self.payload = b""
        self.qos = 0
        self.retain = False
        self.properties = None

    def __getattr__(self, name: str) -> Any:
        # Only reached for a slot not set yet: info before its first read.
        if name == "info":
            info = self.info = mqtt.MQTTMessageInfo(self.mid)
            return info
        raise AttributeError(name)


def _use_lean_stand_ins() -> None:
    """Let paho decode with :class:`_LeanProperties` and :class:`_LeanMessage` (verified paho only)."""
    if not PRIVATE_API_OK:
        return
    if _packet.Properties is Properties:
        _packet.Properties = _LeanProperties  # type: ignore[misc]
    if mqtt.MQTTMessage is _PAHO_MESSAGE:
        mqtt.MQTTMessage = _LeanMessage  # type: ignore[misc]


_PAHO_MESSAGE = mqtt.MQTTMessage
