"""Bench clients in processes of their own, and the pipe protocol the bench drives them with.

Each client runs in a spawned process, so the load generator, the measuring subscriber and the edge
never share a GIL. A child (``serve_*``) answers commands ``(name, kwargs)`` on a pipe after first
sending ``("ready", info)`` or ``("error", text)``; :class:`Worker` is the parent's end. ``counters``
is shared memory (``RawArray("q")``): slot :data:`STOP_SLOT` holds the number of the load run to stop
early, and each consumer slot counts the messages that consumer received, which the generator reads
to run closed loop.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from array import array
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.topics import shared_filter
from edgeloop.bench import BenchError
from edgeloop.bench.lean import LeanSubscriber
from edgeloop.bench.loadgen import LoadGenerator, SendLog, unique_client_id
from edgeloop.config import BrokerSettings

log = logging.getLogger(__name__)

STOP_SLOT, COLLECT_SLOT, CEILING_SLOT = 0, 1, 2  # slots of the shared counters
SLOTS = 4


class Worker:
    """A bench client in its own (spawned) process, driven over a pipe; see the ``serve_*`` functions."""

    def __init__(self, name: str, target: Any, *args: Any, timeout: float = 60.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), name=f"bench-{name}", daemon=True)
        self.proc.start()
        child.close()
        self.info: dict[str, Any] = self._reply(timeout)

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)

    def send(self, name: str, **kwargs: Any) -> None:
        self.conn.send((name, kwargs))

    def _reply(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise BenchError(f"bench {self.name} process did not answer within {timeout:g} s")
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise BenchError(f"bench {self.name} process died (exit code {self.proc.exitcode})") from None
        if status == "error":
            raise BenchError(f"bench {self.name} process failed: {value}")
        return value

    def result(self, timeout: float = 600.0) -> Any:
        return self._reply(timeout)

    def call(self, name: str, timeout: float = 600.0, **kwargs: Any) -> Any:
        self.send(name, **kwargs)
        return self._reply(timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.is_alive():
                self.call("close", timeout=10)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


class Load:
    """The load generator's process seen from the bench: one run at a time, numbered.

    A run at a fixed ``rate`` lasts ``duration`` s; with ``rate`` None it runs closed loop on the
    consumer counting into ``slot``. :meth:`finish` with the run's number stops it early.
    """

    def __init__(
        self,
        counters: Any,
        broker: dict[str, Any],
        *,
        devices: int,
        seed: int,
        interval: float,
        window: int,
        protocol: str = "5",
        serve: Callable[..., None] | None = None,
    ) -> None:
        self.counters = counters
        self.window = window
        if serve is None:  # the MQTT generator (paho); else another client's serve_* (NATS)
            self.worker = Worker("load", serve_load, counters, broker, devices, seed, interval, protocol)
        else:
            self.worker = Worker("load", serve, counters, broker, devices, seed, interval)
        self.devices: list[str] = list(self.worker.info["devices"])
        self._run_no = 0

    @property
    def pid(self) -> int:
        return self.worker.pid

    def start(self, *, site: str, qos: int, duration: float, rate: float | None, slot: int | None) -> int:
        """Start a run (returns at once) and return its number."""
        self._run_no += 1
        self.worker.send(
            "run",
            site=site,
            qos=qos,
            duration=duration,
            rate=rate,
            slot=slot,
            window=self.window,
            run_id=self._run_no,
        )
        return self._run_no

    def finish(self, run_no: int | None = None) -> SendLog:
        """Wait for the current run's :class:`SendLog`; with ``run_no``, first tell that run to stop."""
        if run_no is not None:
            self.counters[STOP_SLOT] = run_no
        sent: SendLog = self.worker.result()
        return sent

    def run(self, *, site: str, qos: int, duration: float, rate: float | None, slot: int | None) -> SendLog:
        """A whole run: start it and wait for its end."""
        self.start(site=site, qos=qos, duration=duration, rate=rate, slot=slot)
        return self.finish()

    def close(self) -> None:
        self.worker.close()


# -- the children ---------------------------------------------------------------------------------


def _reply_errors(conn: Any, body: Callable[[], None]) -> None:
    try:
        body()
    except Exception as exc:  # the parent must hear why a worker died, not wait forever
        log.exception("bench worker failed")
        with contextlib.suppress(OSError, ValueError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def serve_load(
    conn: Any,
    counters: Any,
    broker: dict[str, Any],
    devices: int,
    seed: int,
    interval: float,
    protocol: str = "5",
) -> None:
    """The load generator's process: ``run`` (kwargs of :meth:`LoadGenerator.run` plus ``slot``)."""

    def body() -> None:
        settings = BrokerSettings(**broker)
        gen = LoadGenerator(settings, devices=devices, seed=seed, interval=interval, protocol=protocol)
        drive_load(conn, counters, gen.start())

    _reply_errors(conn, body)


def drive_load(conn: Any, counters: Any, gen: Any) -> None:
    """Answer the bench's ``run`` and ``close`` commands with a started load generator ``gen``."""
    conn.send(("ready", {"devices": gen.devices, "pid": os.getpid()}))
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
            sent = gen.run(answered=answered, stop=_flag(counters, STOP_SLOT, run_id), **kwargs)
            gen.flush(5.0)
            conn.send(("ok", sent))


class Recorder:
    """What the measuring subscriber records: (k, receive time) of every prediction, model changes, events.

    :meth:`handle` is called for each message (any client, any thread); :meth:`take` returns what
    arrived since the last call: ``k`` (int64 bytes), ``t`` (float64 bytes, monotonic), ``models``
    [(t, k, label)], ``events`` [(t, event dict)], ``bad`` (unreadable).
    """

    def __init__(self, counters: Any, slot: int, devices: list[str], events_topic: bytes) -> None:
        self.counters, self.slot = counters, slot
        self.index = {name: i for i, name in enumerate(devices)}
        self.n = len(devices)
        self.events_topic = events_topic
        self.ks, self.ts = array("q"), array("d")
        self.models: list[tuple[float, int, str]] = []
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.label: str | None = None
        self.bad = 0
        self._offsets = [0, 0, 0]

    def handle(self, topic: bytes, payload: bytes, now: float) -> None:
        try:
            data = orjson.loads(payload)
            if topic == self.events_topic:
                self.events.append((now, data))
                return
            k = data["seq"] * self.n + self.index[data["device"]]
            label = next(iter(data["predictions"].values()))["model"]
        except (orjson.JSONDecodeError, KeyError, TypeError, StopIteration):
            self.bad += 1
            return
        self.ks.append(k)
        self.ts.append(now)
        self.counters[self.slot] += 1
        if label != self.label:
            self.label = label
            self.models.append((now, k, label))

    def take(self, alive: bool) -> dict[str, Any]:
        end = min(len(self.ks), len(self.ts))
        m_end, e_end = len(self.models), len(self.events)
        k0, m0, e0 = self._offsets
        out = {
            "k": self.ks[k0:end].tobytes(),
            "t": self.ts[k0:end].tobytes(),
            "models": self.models[m0:m_end],
            "events": self.events[e0:e_end],
            "bad": self.bad,
            "alive": alive,
        }
        self._offsets[:] = [end, m_end, e_end]
        return out


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
    """The measuring subscriber on MQTT (:class:`LeanSubscriber`) feeding a :class:`Recorder`;
    commands ``take`` and ``close``."""

    def body() -> None:
        sub = LeanSubscriber(BrokerSettings(**broker)).start()
        sub.subscribe([*filters, events_topic], qos)
        recorder = Recorder(counters, slot, devices, events_topic.encode())
        stop = threading.Event()
        thread = threading.Thread(target=sub.run, args=(recorder.handle, stop.is_set), daemon=True)
        thread.start()
        conn.send(("ready", {"pid": os.getpid()}))
        while True:
            name, _kwargs = conn.recv()
            if name == "close":
                stop.set()
                thread.join(5)
                sub.close()
                conn.send(("ok", None))
                return
            if name == "take":
                conn.send(("ok", recorder.take(thread.is_alive())))

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

    def body() -> None:
        settings = BrokerSettings(**broker)
        if kind == "paho":

            def on_message(_message: mqtt.MQTTMessage) -> None:
                counters[slot] += 1

            session = MqttSession(
                settings, role="bench-ceiling", client_id=unique_client_id("ceiling"), on_message=on_message
            ).start()
            session.subscribe(filters, qos=qos, shared_group=shared_group)
            conn.send(("ready", {"pid": os.getpid()}))
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
            conn.send(("ready", {"pid": os.getpid()}))
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
