"""Queueing a batch of outgoing PUBLISH packets in one loop, as paho 2.2's ``Client.publish`` would.

paho's ``publish`` costs the edge a call chain per prediction: payload and topic checks, a locked mid,
an ``MQTTMessage``, ``_send_publish`` (a bytearray grown piece by piece, a remaining-length loop, debug
logging), ``_packet_queue`` and ``_out_message_mutex`` taken once per message.
:func:`queue_publishes` does the same for a batch with one hold of ``_out_message_mutex``, packing each
packet with one join, and leaves paho's bookkeeping exactly as a loop of ``publish`` calls would:

- QoS 1: an ``MQTTMessage`` in ``_out_messages`` under its mid, counted in ``_inflight_messages``
  and in state "wait for PUBACK" with its packet queued when connected and inside the in-flight
  window; state "queued" outside it; state "publish" and ``MQTT_ERR_NO_CONN`` while disconnected
  (sent on reconnect). ``MQTT_ERR_QUEUE_SIZE`` when ``_max_queued_messages`` is reached or the mid is
  still unacknowledged;
- QoS 0: an ``MQTTMessageInfo`` with its packet queued, or ``MQTT_ERR_NO_CONN``.

The infos are :class:`LeanInfo`: paho's, with the ``Condition`` made only for a thread that checks or
waits on it (the edge checks the last of each batch); making one per message was about as costly as
the rest of the loop.

Only for QoS 0 and 1, without retain or properties, with no ``on_log``/logger (paho logs every
packet) and a network thread running (queued packets wait for it to be woken). Any message paho would
treat otherwise (a payload that is not ``bytes``, an empty or invalid topic, a packet near the MQTT
size limit) goes through paho's own ``publish`` in its place in the batch, which raises what paho
raises. Runs on verified paho only (``paho_internals._BatchingClient``).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

_H = struct.Struct("!H")
_PUBLISH = mqtt.PUBLISH
_SMALL = [bytes((n,)) for n in range(128)]  # remaining lengths of one byte
_LARGEST = 1 << 20  # bigger packets take paho's path (its size checks; rare)
_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
_NO_CONN = MQTTErrorCode.MQTT_ERR_NO_CONN
_QUEUE_SIZE = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE


# paho's slot, where LeanInfo keeps its Condition (None until made)
_CONDITION: Any = mqtt.MQTTMessageInfo.__dict__["_condition"]
_MAKING = threading.Lock()  # makes each LeanInfo's Condition once


class LeanInfo(mqtt.MQTTMessageInfo):
    """paho's ``MQTTMessageInfo`` whose ``Condition`` (about 1 us to make) is made when first used.

    Only a thread that reads ``_condition`` (``is_published``, ``wait_for_publish``) makes it. Marking
    the message published sets ``_published`` first and then wakes the Condition if one exists: a
    waiter makes it before it checks ``_published`` under it, so it either finds ``_published`` set or
    is waiting when the Condition is notified, as with paho's own.
    """

    __slots__ = ()

    def __init__(self, mid: int) -> None:
        self.mid = mid
        self._published = False
        _CONDITION.__set__(self, None)
        self.rc = _OK
        self._iterpos = 0

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        condition = _CONDITION.__get__(self)
        if condition is None:
            with _MAKING:
                condition = _CONDITION.__get__(self)
                if condition is None:
                    condition = threading.Condition()
                    _CONDITION.__set__(self, condition)
        return condition

    def _set_as_published(self) -> None:
        self._published = True
        condition = _CONDITION.__get__(self)
        if condition is not None:
            with condition:
                condition.notify()


class OutMessage(mqtt.MQTTMessage):
    """paho's ``MQTTMessage`` with every field an outgoing QoS 1 message gets set once."""

    __slots__ = ()

    def __init__(self, mid: int, topic: bytes, payload: bytes, timestamp: float) -> None:
        self.timestamp = timestamp
        self.state = mqtt.mqtt_ms_invalid
        self.dup = False
        self.mid = mid
        self._topic = topic
        self.payload = payload
        self.qos = 1
        self.retain = False
        self.info = LeanInfo(mid)
        self.properties = None


def lean_publish_ok(client: mqtt.Client, qos: int) -> bool:
    """Whether :func:`queue_publishes` does for ``client`` exactly what paho's ``publish`` would."""
    return (
        (qos == 0 or qos == 1)
        and client._on_log is None
        and client._logger is None
        and client._thread is not None
    )


def _remaining_length(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def out_packet(command: int, packet: bytes | bytearray, mid: int, qos: int, info: Any) -> mqtt._OutPacket:
    """An entry of paho's ``_out_packet`` queue, as paho's ``_packet_queue`` builds it."""
    return {
        "command": command,
        "mid": mid,
        "qos": qos,
        "pos": 0,
        "to_process": len(packet),
        "packet": packet,
        "info": info,
    }


def queue_publishes(
    client: mqtt.Client, messages: Sequence[tuple[str, bytes]], qos: int
) -> tuple[list[mqtt.MQTTMessageInfo], bool]:
    """paho's ``publish(topic, payload, qos)`` for each message, the packets only appended to
    ``_out_packet`` (the caller wakes the network thread). Returns the infos and whether any packet was
    queued. Only where :func:`lean_publish_ok`."""
    v5 = client._protocol == mqtt.MQTTv5
    props = b"\x00" if v5 else b""
    command = bytes((_PUBLISH | (qos << 1),))
    overhead = 2 + len(props) + (2 if qos else 0)  # topic length, packet id, properties length
    out_messages = client._out_messages
    append = client._out_packet.append
    mid_lock = client._mid_generate_mutex
    now = mqtt.time_func
    pack_h = _H.pack
    infos: list[mqtt.MQTTMessageInfo] = []
    queued = False
    with client._out_message_mutex:
        for topic, payload in messages:
            topic_bytes = topic.encode("utf-8")
            if (
                type(payload) is not bytes
                or not topic_bytes
                or b"+" in topic_bytes
                or b"#" in topic_bytes
                or len(topic_bytes) + len(payload) > _LARGEST
            ):
                # paho's own path for what it would treat otherwise (or refuse); the lock is an RLock
                infos.append(client.publish(topic, payload, qos))
                continue
            with mid_lock:  # as paho's _mid_generate
                mid = client._last_mid + 1
                if mid == 65536:
                    mid = 1
                client._last_mid = mid
            if qos == 0:
                info: mqtt.MQTTMessageInfo = LeanInfo(mid)
                infos.append(info)
                if client._sock is None:
                    info.rc = _NO_CONN
                    continue
            else:
                message = OutMessage(mid, topic_bytes, payload, now())
                info = message.info
                infos.append(info)
                max_queued = client._max_queued_messages
                if (max_queued > 0 and len(out_messages) >= max_queued) or mid in out_messages:
                    info.rc = _QUEUE_SIZE
                    continue
                out_messages[mid] = message
                window = client._max_inflight_messages
                if window and client._inflight_messages >= window:
                    message.state = mqtt.mqtt_ms_queued
                    continue
                if client._sock is None:
                    # paho counts it in flight, finds no socket and takes it back: sent on reconnect
                    message.state = mqtt.mqtt_ms_publish
                    info.rc = _NO_CONN
                    continue
                client._inflight_messages += 1
                message.state = mqtt.mqtt_ms_wait_for_puback
            packet = b"".join(
                (
                    command,
                    _remaining_length(overhead + len(topic_bytes) + len(payload)),
                    pack_h(len(topic_bytes)),
                    topic_bytes,
                    pack_h(mid) if qos else b"",
                    props,
                    payload,
                )
            )
            append(out_packet(_PUBLISH, packet, mid, qos, info))
            queued = True
    return infos, queued
