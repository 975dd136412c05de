"""Decoding the plain incoming PUBLISH packets of a read buffer in one loop, for the edge's receive path.

paho 2.2 spends about 70 us of Python per incoming message on a loaded machine (three or more reads
per packet, a dict of packet state, ``decode_publish``'s format strings, an ``MQTTMessage``, its
debug logging and callback look-up). :func:`decode_publishes` does what matters of that for the
packets the edge receives by the thousand, straight from the bytes one ``recv`` returned, and stops
at the first packet it does not take, for paho's own code to read:

- taken: PUBLISH of QoS 0, or QoS 1 when the client acknowledges by hand (paho then sends nothing
  for it), DUP flag clear, retained or not, MQTT 5 (properties skipped) or 3.1.1;
- left to paho: every other packet type, QoS 2, QoS 1 that paho would acknowledge itself, a DUP
  redelivery, a topic that is not UTF-8, and anything paho would refuse as malformed (an empty
  topic in 3.1.1, lengths pointing past the packet, a remaining length over four bytes).

Each message comes out as a :data:`Delivery` with what paho's ``MQTTMessage`` holds: the topic as
paho's ``message.topic`` decodes it, the payload bytes, the packet id (0 at QoS 0), QoS, retain.
"""

from __future__ import annotations

from typing import NamedTuple


class Delivery(NamedTuple):
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool


class Decoded(NamedTuple):
    deliveries: list[Delivery]
    pos: int  # where the first packet not taken starts (len(buf) when every byte was taken)
    partial: bool  # stopped at a packet of the kind taken that is not complete in ``buf``


def varint(buf: bytes | bytearray | memoryview, i: int, end: int) -> tuple[int, int]:
    """(value, index after it) of a variable byte integer at ``i``; (-1, i) incomplete, (-2, i) too long."""
    value = shift = 0
    while True:
        if i >= end:
            return -1, i
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift == 28:  # a fifth byte: paho refuses the packet
            return -2, i


def decode_publishes(buf: bytes, pos: int, *, v5: bool, manual_ack: bool) -> Decoded:
    """The PUBLISH packets taken from ``buf[pos:]``, up to the first packet left to paho."""
    out: list[Delivery] = []
    append = out.append
    end = len(buf)
    # Fixed header bits taken: PUBLISH (0x30), DUP clear, QoS 0, or 1 when acknowledged by hand.
    max_qos = 1 if manual_ack else 0
    while pos < end:
        first = buf[pos]
        qos = (first >> 1) & 3
        if first & 0xF8 != 0x30 or qos > max_qos:
            return Decoded(out, pos, False)
        # Remaining length, usually one or two bytes.
        length = buf[pos + 1] if pos + 1 < end else 0x80
        if length < 0x80:
            i = pos + 2
        else:
            length, i = varint(buf, pos + 1, end)
            if length == -2:
                return Decoded(out, pos, False)
            if length == -1:
                return Decoded(out, pos, True)
        stop = i + length
        if stop > end:
            return Decoded(out, pos, True)
        if length < 2:
            return Decoded(out, pos, False)
        t0 = i + 2
        t1 = t0 + ((buf[i] << 8) | buf[i + 1])
        if t1 > stop or (t1 == t0 and not v5):
            return Decoded(out, pos, False)
        p = t1
        mid = 0
        if qos:
            p += 2
            if p > stop:
                return Decoded(out, pos, False)
            mid = (buf[t1] << 8) | buf[t1 + 1]
        if v5:
            if p >= stop:
                return Decoded(out, pos, False)
            if buf[p] == 0:  # no properties: what devices send
                p += 1
            else:
                props, p = varint(buf, p, stop)
                p += props
                if props < 0 or p > stop:
                    return Decoded(out, pos, False)
        try:
            topic = buf[t0:t1].decode()
        except UnicodeDecodeError:
            return Decoded(out, pos, False)
        append(Delivery(topic, buf[p:stop], mid, qos, bool(first & 1)))
        pos = stop
    return Decoded(out, pos, False)
