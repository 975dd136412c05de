"""The bench's load generator: simulated telemetry published with paho, at a fixed rate or closed loop.

:class:`LoadGenerator` publishes simulated telemetry for D devices, round-robin, with paho in
manual-loop mode (no network thread: each ``publish`` writes straight to the socket, so the
generator costs one Python thread and no GIL hand-offs). It runs at a fixed total rate, or closed
loop: as fast as the pipeline answers, never more than ``window`` messages unanswered. Message
number ``k`` is device ``k % D`` at step ``k // D``; its payload carries ``seq = k // D`` and a
wall-clock ``sent`` field (the edge ignores unknown fields), and the generator keeps the monotonic
send time of every ``k`` for latency. The subscriber that measures is :mod:`edgeloop.bench.lean`.

>>> message_index(seq=3, device_index=2, devices=10)
32
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import orjson
import paho.mqtt.client as mqtt

from edgeloop.adapters.mqtt_client import make_client
from edgeloop.adapters.topics import topic_for
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


class SimulatedTelemetry:
    """The simulator's readings for D devices, round-robin, numbered ``k`` (see the module docstring)."""

    def __init__(self, devices: int, seed: int, interval: float) -> None:
        self.sim = Simulator(devices, seed=seed, interval=interval)
        self.devices = self.sim.devices
        self.next_index = 0
        self._pending: list[dict[str, Any]] = []

    def _next_payload(self) -> dict[str, Any]:
        if not self._pending:
            self._pending = self.sim.step()
            self._pending.reverse()  # pop() from the end returns device 0 first
        return self._pending.pop()

    def next_message(self) -> tuple[int, bytes]:
        """The next message: its number ``k`` and its payload, stamped with the wall-clock ``sent``."""
        payload = self._next_payload()
        k = self.next_index
        self.next_index = k + 1
        payload["sent"] = time.time()
        return k, orjson.dumps(payload)


class Pace:
    """When messages are due in one run: ``rate`` messages/s in total for ``duration`` s, or, with
    ``rate`` None, closed loop on ``answered`` (at most ``window`` unanswered); ends early on
    ``stop()`` or when answers stopped coming for ``stall_timeout`` s. Send times go to ``sent_at``."""

    def __init__(
        self,
        *,
        duration: float,
        rate: float | None,
        answered: Callable[[], int] | None,
        window: int,
        stall_timeout: float,
        stop: Callable[[], bool] | None,
    ) -> None:
        if rate is None and answered is None:
            raise ValueError("a run without a rate needs an answered() counter (closed loop)")
        self.rate, self.answered, self.window = rate, answered, window
        self.stall_timeout, self.stop = stall_timeout, stop
        self.base = answered() if answered is not None else 0
        self.sent_at: list[float] = []
        self.started = time.monotonic()
        self.end = self.started + duration
        self.last_answered, self.last_progress = self.base, self.started
        self.stalled = False

    def due(self, now: float) -> int | None:
        """How many messages are due at ``now`` (0 or less: none); None when the run is over."""
        if now >= self.end or (self.stop is not None and self.stop()):
            return None
        sent = len(self.sent_at)
        due = int((now - self.started) * self.rate) + 1 - sent if self.rate else _BURST
        if self.answered is not None:
            got = self.answered()
            if got != self.last_answered:
                self.last_answered, self.last_progress = got, now
            open_ = sent - (got - self.base)
            if open_ > 0 and now - self.last_progress > self.stall_timeout:
                self.stalled = True
                return None
            due = min(due, self.window - open_)
        return due

    def wait(self, now: float, due: int) -> float:
        """Nothing due: sleep until the next message is due, or briefly while waiting for answers."""
        if self.rate and due <= 0:
            return min(0.002, max(0.0, self.started + len(self.sent_at) / self.rate - now))
        return 0.0005

    def log(self, first: int) -> SendLog:
        ended = time.monotonic()
        total = self.answered() - self.base if self.answered is not None else 0
        sent_at = np.asarray(self.sent_at, dtype=np.float64)
        return SendLog(first, sent_at, self.started, ended, self.stalled, total)


class LoadGenerator(SimulatedTelemetry):
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
        super().__init__(devices, seed, interval)
        self.broker = broker
        self.protocol = protocol
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
            if self.protocol == "5":
                self.client.connect(b.host, b.port, b.keepalive, clean_start=True)
            else:  # MQTT 3.1.1 (NATS's MQTT listener): the clean-session flag was set by make_client
                self.client.connect(b.host, b.port, b.keepalive)
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
        pace = Pace(
            duration=duration,
            rate=rate,
            answered=answered,
            window=window,
            stall_timeout=stall_timeout,
            stop=stop,
        )
        topics = self.topics(site)
        n_dev = len(self.devices)
        client, publish, clock = self.client, self.client.publish, time.monotonic
        inflight = min(self.receive_maximum, MAX_INFLIGHT) if qos > 0 else 0
        first, message = self.next_index, self.next_message
        append = pace.sent_at.append
        while (due := pace.due(now := clock())) is not None:
            if inflight:
                due = min(due, inflight - (self.published - self.completed))
            if due > 0 and not client.want_write():
                for _ in range(min(due, _BURST)):
                    k, data = message()
                    append(clock())
                    publish(topics[k % n_dev], data, qos)
                self.published += min(due, _BURST)
                client.loop(0.0)  # acks in, leftovers out
                continue
            client.loop(pace.wait(now, due))
        return pace.log(first)
