"""The bench's measuring subscriber: a minimal MQTT v5 client that receives and acknowledges.

:class:`LeanSubscriber` speaks just enough MQTT v5 (CONNECT, SUBSCRIBE, PUBLISH in, PUBACK out,
PINGREQ) to receive at QoS 0 and 1, and parses whole socket reads at a time.

Why not paho, or another maintained client (the load generator does use paho): the measuring
subscriber receives every prediction of every window on the same cores as the edge it measures, so
each microsecond it spends per message is taken from the edge, and a subscriber that falls behind
reports its own lateness as the edge's latency. paho reads each packet with at least three ``recv``
calls and builds a message object (and, on MQTT v5, a ``Properties`` object) per message; this
reader parses whole socket reads and acknowledges all QoS 1 messages of one read with one write.
Measured with ``python -m edgeloop.bench.instrument`` (a subscriber that only counts, in its own
process, fed 5,000 msg/s of the bench's telemetry through a private mosquitto; its CPU time per
message received, least of 3 runs, in each of two sessions) on the 2-core VM while it was shared
with other jobs (load average ~10, which inflates every figure; the ratios carry over): at QoS 1 /
QoS 0, paho as the edge runs it (MQTT v5) 51 / 34-35 us per message, paho on MQTT 3.1.1 32-35 /
19-23 us, amqtt's asyncio client (MQTT 3.1.1, the other maintained client installed) 102-108 / 71 us,
this reader 15-19 / 7-14 us. At the edge's 6,700 msg/s that is about a third of a core for paho (v5)
against about a tenth for this reader, on a machine of two. So the bench keeps this ~170-line
reader, limited to what it needs (receive at QoS 0 and 1, PUBACK, PINGREQ; no QoS 2 and no
reconnect: a lost connection ends the window with an error, as an instrument should), and tests it
against mosquitto (tests/integration/test_bench.py).

>>> varint(0), varint(127), varint(128), varint(16_384)
(b'\\x00', b'\\x7f', b'\\x80\\x01', b'\\x80\\x80\\x01')
>>> read_varint(b"\\x80\\x01rest", 0)
(128, 2)
>>> read_varint(b"\\x80", 0)
Traceback (most recent call last):
...
IndexError: incomplete variable byte integer
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Self

from edgeloop.adapters.publish_decode import varint as decode_varint
from edgeloop.bench.loadgen import unique_client_id
from edgeloop.config import BrokerSettings
from edgeloop.errors import BrokerError


def varint(value: int) -> bytes:
    """MQTT variable byte integer."""
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Decode a variable byte integer at ``pos``; returns (value, position after it)."""
    value, after = decode_varint(buf, pos, len(buf))
    if value == -1:
        raise IndexError("incomplete variable byte integer")
    if value == -2:
        raise ValueError("malformed variable byte integer")
    return value, after


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


# handler(topic, payload, received_at); one receive time for all packets of one socket read
Handler = Callable[[bytes, bytes, float], None]


class LeanSubscriber:
    """A minimal MQTT v5 subscriber that parses whole socket reads (see the module docstring).

    Not a general client: no reconnect, no QoS 2. Call :meth:`start`, then :meth:`run` in one thread
    until ``stop()`` returns true.
    """

    def __init__(self, broker: BrokerSettings, *, client_id: str | None = None, keepalive: int = 60) -> None:
        self.broker = broker
        self.client_id = client_id or unique_client_id("sub")
        self.keepalive = keepalive
        self.sock: socket.socket | None = None
        self._buf = bytearray()
        self._mid = 0
        self.received = 0

    def start(self, timeout: float = 10.0) -> Self:
        b = self.broker
        try:
            sock = socket.create_connection((b.host, b.port), timeout=timeout)
            if b.tls:
                ctx = ssl.create_default_context(cafile=str(b.tls_ca_file) if b.tls_ca_file else None)
                if b.tls_insecure:
                    ctx.check_hostname = False
                sock = ctx.wrap_socket(sock, server_hostname=b.host)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"bench subscriber cannot connect to {b.host}:{b.port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock = sock
        flags = 0x02  # clean start
        payload = _utf8(self.client_id)
        password = b.resolved_password()
        if b.username is not None:
            flags |= 0x80
            payload += _utf8(b.username)
            if password is not None:
                flags |= 0x40
                payload += _utf8(password)
        body = _utf8("MQTT") + bytes([5, flags]) + struct.pack("!H", self.keepalive) + b"\x00" + payload
        sock.sendall(_packet(0x10, body))
        first, data = self._read_packet(timeout)
        if first >> 4 != 2 or len(data) < 2 or data[1] >= 0x80:
            raise BrokerError(f"broker refused the bench subscriber (CONNACK {bytes(data[:2]).hex()})")
        self._last_out = time.monotonic()
        return self

    def subscribe(self, filters: list[str], qos: int, timeout: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK (raises :class:`BrokerError` on refusal)."""
        assert self.sock is not None
        self._mid = self._mid % 65535 + 1
        body = struct.pack("!H", self._mid) + b"\x00" + b"".join(_utf8(f) + bytes([qos]) for f in filters)
        self.sock.sendall(_packet(0x82, body))
        first, data = self._read_packet(timeout)
        if first >> 4 != 9:
            raise BrokerError(f"expected a SUBACK, got packet type {first >> 4}")
        _props_len, pos = read_varint(data, 2)
        codes = bytes(data[pos + _props_len :])
        if any(c >= 0x80 for c in codes):
            raise BrokerError(f"broker refused subscription to {filters}: reason codes {codes.hex()}")

    def _read_packet(self, timeout: float) -> tuple[int, bytearray]:
        # Blocking read of one packet (only before run(): CONNACK, SUBACK).
        assert self.sock is not None
        self.sock.settimeout(timeout)
        while True:
            if len(self._buf) >= 2:
                try:
                    length, pos = read_varint(self._buf, 1)
                except IndexError:
                    length, pos = -1, 0
                if length >= 0 and len(self._buf) >= pos + length:
                    first, data = self._buf[0], self._buf[pos : pos + length]
                    del self._buf[: pos + length]
                    return first, data
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError) as exc:
                raise BrokerError(f"no answer from the broker: {exc}") from exc
            if not chunk:
                raise BrokerError("the broker closed the connection")
            self._buf += chunk

    def run(self, handler: Handler, stop: Callable[[], bool], poll: float = 0.05) -> None:
        """Receive until ``stop()``; QoS 1 messages are acknowledged in one write per socket read."""
        sock = self.sock
        assert sock is not None
        sock.setblocking(False)
        buf = self._buf
        clock = time.monotonic
        ping_every = self.keepalive / 2
        while not stop():
            ready, _, _ = select.select([sock], [], [], poll)
            now = clock()
            if now - self._last_out > ping_every:
                sock.sendall(b"\xc0\x00")  # PINGREQ
                self._last_out = now
            if not ready:
                continue
            try:
                chunk = sock.recv(1 << 20)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            if not chunk:
                raise BrokerError("the broker closed the bench subscriber's connection")
            buf += chunk
            acks = bytearray()
            pos, end = 0, len(buf)
            while pos + 2 <= end:
                first = buf[pos]
                # Remaining length: inline decode of the common 1-2 byte case.
                b1 = buf[pos + 1]
                if b1 < 0x80:
                    length, body = b1, pos + 2
                else:
                    try:
                        length, body = read_varint(buf, pos + 1)
                    except IndexError:
                        break
                stop_at = body + length
                if stop_at > end:
                    break
                if first >> 4 == 3:  # PUBLISH
                    qos = (first >> 1) & 3
                    tlen = (buf[body] << 8) | buf[body + 1]
                    p = body + 2 + tlen
                    topic = bytes(buf[body + 2 : p])
                    if qos:
                        acks += b"\x40\x02" + buf[p : p + 2]
                        p += 2
                    plen = buf[p]
                    p += 1 if plen < 0x80 else 0
                    if plen >= 0x80:
                        plen, p = read_varint(buf, p)
                    handler(topic, bytes(buf[p + plen : stop_at]), now)
                    self.received += 1
                pos = stop_at
            del buf[:pos]
            if acks:
                sock.setblocking(True)
                sock.sendall(acks)
                sock.setblocking(False)
                self._last_out = now

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.setblocking(True)
                self.sock.sendall(b"\xe0\x00")  # DISCONNECT
            self.sock.close()
            self.sock = None
