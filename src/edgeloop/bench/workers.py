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

from edgeloop.adapters.mqtt import MqttSession, shared_filter
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
        self, counters: Any, broker: dict[str, Any], *, devices: int, seed: int, interval: float, window: int
    ) -> None:
        self.counters = counters
        self.window = window
        self.worker = Worker("load", serve_load, counters, broker, devices, seed, interval)
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
    conn: Any, counters: Any, broker: dict[str, Any], devices: int, seed: int, interval: float
) -> None:
    """The load generator's process: ``run`` (kwargs of :meth:`LoadGenerator.run` plus ``slot``)."""

    def body() -> None:
        gen = LoadGenerator(BrokerSettings(**broker), devices=devices, seed=seed, interval=interval).start()
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
        conn.send(("ready", {"pid": os.getpid()}))
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
