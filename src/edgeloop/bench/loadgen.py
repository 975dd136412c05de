"""The bench's MQTT clients: the load generator (paho) and a lean subscriber that measures.

:class:`LoadGenerator` publishes simulated telemetry for D devices, round-robin, with paho in
manual-loop mode (no network thread: each ``publish`` writes straight to the socket, so the
generator costs one Python thread and no GIL hand-offs). It runs at a fixed total rate, or closed
loop: as fast as the pipeline answers, never more than ``window`` messages unanswered. Message
number ``k`` is device ``k % D`` at step ``k // D``; its payload carries ``seq = k // D`` and a
wall-clock ``sent`` field (the edge ignores unknown fields), and the generator keeps the monotonic
send time of every ``k`` for latency.

:class:`LeanSubscriber` is a minimal MQTT v5 subscriber (CONNECT, SUBSCRIBE, PUBLISH in, PUBACK
out, PINGREQ) that reads the socket in large chunks. paho spends about 20 us of CPU on each
received message (a third of it building MQTT v5 ``Properties``); on a 2-core machine the
instrument must not take that CPU from the edge it measures.

>>> varint(0), varint(127), varint(128), varint(16_384)
(b'\\x00', b'\\x7f', b'\\x80\\x01', b'\\x80\\x80\\x01')
>>> read_varint(b"\\x80\\x01rest", 0)
(128, 2)
>>> message_index(seq=3, device_index=2, devices=10)
32
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import orjson
import paho.mqtt.client as mqtt

from edgeloop.adapters.mqtt import make_client, topic_for
from edgeloop.config import BrokerSettings
from edgeloop.errors import BrokerError
from edgeloop.telemetry.simulator import Simulator

log = logging.getLogger(__name__)

TELEMETRY_TOPIC = "edgeloop/{site}/{device}/telemetry"
_BURST = 256  # most messages published between two looks at the socket
MAX_INFLIGHT = 1000  # QoS 1: most messages published and not yet acknowledged by the broker


def message_index(*, seq: int, device_index: int, devices: int) -> int:
    """The global number ``k`` of a message: device ``k % D`` at step ``k // D``."""
    return seq * devices + device_index


def unique_client_id(role: str) -> str:
    """``edgeloop-bench-<role>-<random>``: never collides with a running edge or another bench."""
    return f"edgeloop-bench-{role}-{uuid.uuid4().hex[:10]}"


@dataclass
class SendLog:
    """What one run of the generator sent: messages ``first .. first + count - 1``."""

    first: int
    sent_at: np.ndarray  # monotonic send time of each message, in order
    started: float
    ended: float
    stalled: bool = False  # closed loop: answers stopped coming (a message was lost)
    answered: int = 0  # closed loop: answers counted while the run lasted

    @property
    def count(self) -> int:
        return len(self.sent_at)

    @property
    def rate(self) -> float:
        span = self.ended - self.started
        return self.count / span if span > 0 else 0.0


class LoadGenerator:
    """Simulated telemetry over paho, in the calling thread (see the module docstring).

    ``answered`` (closed loop) returns how many messages the consumer has answered so far.
    """

    def __init__(
        self,
        broker: BrokerSettings,
        *,
        devices: int,
        seed: int = 0,
        interval: float = 5.0,
        client_id: str | None = None,
        protocol: str = "5",
    ) -> None:
        self.broker = broker
        self.sim = Simulator(devices, seed=seed, interval=interval)
        self.devices = self.sim.devices
        self.next_index = 0
        self._pending: list[dict[str, Any]] = []
        self._topics: dict[str, list[str]] = {}
        self.client = make_client(
            broker,
            role="bench-load",
            client_id=client_id or unique_client_id("load"),
            protocol=protocol,  # type: ignore[arg-type]
        )
        # paho rescans every unacknowledged message on each PUBACK while it enforces its own in-flight
        # limit (O(window) per ack); with the limit off, run() keeps the window itself, within the
        # broker's Receive Maximum.
        self.client.max_inflight_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self._connack: Any = None
        self.receive_maximum = 65535
        self.published = 0  # handed to paho
        self.completed = 0  # QoS 0 written, QoS 1 acknowledged by the broker

    # -- connection -------------------------------------------------------------------------------
    def _on_connect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, props: Any) -> None:
        self._connack = reason
        self.receive_maximum = int(getattr(props, "ReceiveMaximum", None) or 65535)

    def _on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, _reason: Any, _p: Any) -> None:
        self.completed += 1

    def start(self, timeout: float = 10.0) -> Self:
        """Connect (clean session) and run paho's loop by hand from here on."""
        b = self.broker
        try:
            self.client.connect(b.host, b.port, b.keepalive, clean_start=True)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"load generator cannot connect to {b.host}:{b.port}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while self._connack is None and time.monotonic() < deadline:
            self.client.loop(0.05)
        if self._connack is None or self._connack.is_failure:
            raise BrokerError(f"broker at {b.host}:{b.port} refused the load generator: {self._connack}")
        return self

    def close(self) -> None:
        self.flush(5.0)
        self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop(0.1)

    def flush(self, timeout: float) -> bool:
        """Wait until paho has written (QoS 0) or the broker acknowledged (QoS 1) everything."""
        deadline = time.monotonic() + timeout
        while (self.completed < self.published or self.client.want_write()) and time.monotonic() < deadline:
            self.client.loop(0.01)
        return self.completed >= self.published

    # -- messages ---------------------------------------------------------------------------------
    def topics(self, site: str) -> list[str]:
        if site not in self._topics:
            self._topics[site] = [topic_for(TELEMETRY_TOPIC, site=site, device=d) for d in self.devices]
        return self._topics[site]

    def _next_payload(self) -> dict[str, Any]:
        if not self._pending:
            self._pending = self.sim.step()
            self._pending.reverse()  # pop() from the end returns device 0 first
        return self._pending.pop()

    # -- the run ----------------------------------------------------------------------------------
    def run(
        self,
        *,
        site: str,
        qos: int,
        duration: float,
        rate: float | None = None,
        answered: Callable[[], int] | None = None,
        window: int = 2000,
        stall_timeout: float = 3.0,
        stop: Callable[[], bool] | None = None,
    ) -> SendLog:
        """Publish for ``duration`` seconds (or until ``stop()``) at ``rate`` messages/s in total, or,
        with ``rate`` None, closed loop on ``answered`` (at most ``window`` messages unanswered)."""
        if rate is None and answered is None:
            raise ValueError("a run without a rate needs an answered() counter (closed loop)")
        topics = self.topics(site)
        n_dev = len(self.devices)
        client, publish, dumps, clock = self.client, self.client.publish, orjson.dumps, time.monotonic
        wall = time.time
        inflight = min(self.receive_maximum, MAX_INFLIGHT) if qos > 0 else 0
        base_answered = answered() if answered is not None else 0
        first = self.next_index
        sent_at: list[float] = []
        append = sent_at.append
        started = clock()
        end = started + duration
        last_progress, last_answered, stalled = started, base_answered, False
        while True:
            now = clock()
            if now >= end or (stop is not None and stop()):
                break
            due = int((now - started) * rate) + 1 - len(sent_at) if rate else _BURST
            if answered is not None:
                got = answered()
                if got != last_answered:
                    last_answered, last_progress = got, now
                open_ = len(sent_at) - (got - base_answered)
                if open_ > 0 and now - last_progress > stall_timeout:
                    stalled = True
                    break
                due = min(due, window - open_)
            if inflight:
                due = min(due, inflight - (self.published - self.completed))
            if due > 0 and not client.want_write():
                for _ in range(min(due, _BURST)):
                    payload = self._next_payload()
                    k = self.next_index
                    self.next_index = k + 1
                    payload["sent"] = wall()
                    append(clock())
                    publish(topics[k % n_dev], dumps(payload), qos)
                self.published += min(due, _BURST)
                client.loop(0.0)  # acks in, leftovers out
                continue
            # Nothing due: sleep until the next message is due, or briefly while waiting for answers.
            wait = 0.0005
            if rate and due <= 0:
                wait = min(0.002, max(0.0, started + len(sent_at) / rate - now))
            client.loop(wait)
        ended = clock()
        total = answered() - base_answered if answered is not None else 0
        return SendLog(first, np.asarray(sent_at, dtype=np.float64), started, ended, stalled, total)


# -- the lean MQTT v5 subscriber ------------------------------------------------------------------


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
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise IndexError("incomplete variable byte integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ValueError("malformed variable byte integer")


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


# -- worker processes -----------------------------------------------------------------------------
# Each bench client runs in its own process (spawned), so the generator, the measuring subscriber and
# the edge never share a GIL. A worker answers commands ``(name, kwargs)`` on a pipe; it first sends
# ``("ready", info)`` or ``("error", text)``. ``counters`` is shared memory: slot i counts the
# messages consumer i received, which the generator reads to run closed loop.


def _reply_errors(conn: Any, body: Callable[[], None]) -> None:
    try:
        body()
    except Exception as exc:  # the parent must hear why a worker died, not wait forever
        log.exception("bench worker failed")
        with contextlib.suppress(OSError, ValueError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def serve_load(
    conn: Any, counters: Any, broker: dict[str, Any], devices: int, seed: int, interval: float
) -> None:
    """The load generator's process: ``run`` (kwargs of :meth:`LoadGenerator.run` plus ``slot``)."""

    def body() -> None:
        gen = LoadGenerator(BrokerSettings(**broker), devices=devices, seed=seed, interval=interval).start()
        conn.send(("ready", {"devices": gen.devices, "pid": _pid()}))
        while True:
            name, kwargs = conn.recv()
            if name == "close":
                gen.close()
                conn.send(("ok", None))
                return
            if name == "run":
                slot = kwargs.pop("slot", None)
                run_id = kwargs.pop("run_id", -1)
                answered = _reader(counters, slot) if slot is not None else None
                sent = gen.run(answered=answered, stop=_flag(counters, 0, run_id), **kwargs)
                gen.flush(5.0)
                conn.send(("ok", sent))

    _reply_errors(conn, body)


def serve_collector(
    conn: Any,
    counters: Any,
    slot: int,
    broker: dict[str, Any],
    filters: list[str],
    events_topic: str,
    qos: int,
    devices: list[str],
) -> None:
    """The measuring subscriber: records (k, receive time) of every prediction, model changes, events.

    ``take`` returns what arrived since the last ``take``: ``k`` (int64 bytes), ``t`` (float64 bytes,
    monotonic), ``models`` [(t, k, label)], ``events`` [(t, event dict)], ``bad`` (unreadable).
    """
    import threading
    from array import array

    def body() -> None:
        sub = LeanSubscriber(BrokerSettings(**broker)).start()
        sub.subscribe([*filters, events_topic], qos)
        index = {name: i for i, name in enumerate(devices)}
        n = len(devices)
        ks, ts = array("q"), array("d")
        models: list[tuple[float, int, str]] = []
        events: list[tuple[float, dict[str, Any]]] = []
        events_b = events_topic.encode()
        state: dict[str, Any] = {"label": None, "bad": 0}
        loads = orjson.loads

        def handle(topic: bytes, payload: bytes, now: float) -> None:
            try:
                data = loads(payload)
                if topic == events_b:
                    events.append((now, data))
                    return
                k = data["seq"] * n + index[data["device"]]
                label = next(iter(data["predictions"].values()))["model"]
            except (orjson.JSONDecodeError, KeyError, TypeError, StopIteration):
                state["bad"] += 1
                return
            ks.append(k)
            ts.append(now)
            counters[slot] += 1
            if label != state["label"]:
                state["label"] = label
                models.append((now, k, label))

        stop = threading.Event()
        thread = threading.Thread(target=sub.run, args=(handle, stop.is_set), daemon=True)
        thread.start()
        conn.send(("ready", {"pid": _pid()}))
        offsets = [0, 0, 0]
        while True:
            name, _kwargs = conn.recv()
            if name == "close":
                stop.set()
                thread.join(5)
                sub.close()
                conn.send(("ok", None))
                return
            if name == "take":
                end = min(len(ks), len(ts))
                m_end, e_end = len(models), len(events)
                out = {
                    "k": ks[offsets[0] : end].tobytes(),
                    "t": ts[offsets[0] : end].tobytes(),
                    "models": models[offsets[1] : m_end],
                    "events": events[offsets[2] : e_end],
                    "bad": state["bad"],
                    "alive": thread.is_alive(),
                }
                offsets[:] = [end, m_end, e_end]
                conn.send(("ok", out))

    _reply_errors(conn, body)


def serve_counter(
    conn: Any,
    counters: Any,
    slot: int,
    broker: dict[str, Any],
    filters: list[str],
    qos: int,
    kind: str,
    shared_group: str | None,
) -> None:
    """A do-nothing subscriber that counts into ``counters[slot]``.

    ``kind="paho"`` is built like the edge's receive side (paho network thread, MQTT v5, the same
    shared subscription, an ``on_message`` that only counts); ``kind="lean"`` is :class:`LeanSubscriber`.
    """
    import threading

    from edgeloop.adapters.mqtt import MqttSession, shared_filter

    def body() -> None:
        settings = BrokerSettings(**broker)
        if kind == "paho":

            def on_message(_message: mqtt.MQTTMessage) -> None:
                counters[slot] += 1

            session = MqttSession(
                settings, role="bench-ceiling", client_id=unique_client_id("ceiling"), on_message=on_message
            ).start()
            session.subscribe(filters, qos=qos, shared_group=shared_group)
            conn.send(("ready", {"pid": _pid()}))
            conn.recv()
            session.close()
        else:
            sub = LeanSubscriber(settings).start()
            sub.subscribe([shared_filter(f, shared_group) for f in filters], qos)

            def count(_topic: bytes, _payload: bytes, _now: float) -> None:
                counters[slot] += 1

            stop = threading.Event()
            thread = threading.Thread(target=sub.run, args=(count, stop.is_set), daemon=True)
            thread.start()
            conn.send(("ready", {"pid": _pid()}))
            conn.recv()
            stop.set()
            thread.join(5)
            sub.close()
        conn.send(("ok", None))

    _reply_errors(conn, body)


def _reader(counters: Any, slot: int) -> Callable[[], int]:
    return lambda: int(counters[slot])


def _flag(counters: Any, slot: int, value: int) -> Callable[[], bool]:
    return lambda: bool(counters[slot] == value)


def _pid() -> int:
    import os

    return os.getpid()
