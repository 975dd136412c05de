"""A load generator that publishes the same simulated telemetry as core NATS, with nats-py.

The NATS windows of the bench are fed this way by default: the MQTT generator
(:class:`~edgeloop.bench.loadgen.LoadGenerator`, paho, MQTT 3.1.1 to the server's MQTT listener, as
devices publish) and the server's MQTT listener together cost more CPU per reading than the edge
spends answering it, on the same two cores as the edge, so MQTT publishing would be what the
windows measure. This generator publishes to ``edgeloop.<site>.<device>.telemetry`` (the subject the
MQTT listener turns each topic into, partitioned by the same mapping). Message numbering, payloads,
pacing and the closed loop are the MQTT generator's; only the client differs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import nats
import numpy as np
import orjson

from edgeloop.bench.loadgen import _BURST, SendLog
from edgeloop.bench.workers import STOP_SLOT, _flag, _reader, _reply_errors
from edgeloop.telemetry.simulator import Simulator


class NatsLoadGenerator:
    """Simulated telemetry over nats-py core publishes, paced like the MQTT generator."""

    def __init__(self, client: dict[str, Any], *, devices: int, seed: int = 0, interval: float = 5.0) -> None:
        self.sim = Simulator(devices, seed=seed, interval=interval)
        self.devices = self.sim.devices
        self.next_index = 0
        self._pending: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.nc: Any = self.loop.run_until_complete(
            nats.connect(**client, connect_timeout=10, pending_size=64 * 2**20)
        )

    def _next_payload(self) -> dict[str, Any]:
        if not self._pending:
            self._pending = self.sim.step()
            self._pending.reverse()
        return self._pending.pop()

    def run(self, **kwargs: Any) -> SendLog:
        """As :meth:`LoadGenerator.run <edgeloop.bench.loadgen.LoadGenerator.run>` (``qos`` ignored)."""
        log: SendLog = self.loop.run_until_complete(self._run(**kwargs))
        return log

    async def _run(
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
        del qos  # core NATS: the stream stores what the server receives
        if rate is None and answered is None:
            raise ValueError("a run without a rate needs an answered() counter (closed loop)")
        subjects = [f"edgeloop.{site}.{d}.telemetry" for d in self.devices]
        n_dev = len(subjects)
        publish, dumps, clock, wall = self.nc.publish, orjson.dumps, time.monotonic, time.time
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
            if due > 0:
                for _ in range(min(due, _BURST)):
                    payload = self._next_payload()
                    k = self.next_index
                    self.next_index = k + 1
                    payload["sent"] = wall()
                    append(clock())
                    await publish(subjects[k % n_dev], dumps(payload))
                await asyncio.sleep(0)  # let nats-py's flusher write the burst
                continue
            wait = 0.0005
            if rate and due <= 0:
                wait = min(0.002, max(0.0, started + len(sent_at) / rate - now))
            await asyncio.sleep(wait)
        ended = clock()
        total = answered() - base_answered if answered is not None else 0
        return SendLog(first, np.asarray(sent_at, dtype=np.float64), started, ended, stalled, total)

    def flush(self, timeout: float) -> None:
        self.loop.run_until_complete(self.nc.flush(timeout))

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


def serve_nats_load(
    conn: Any, counters: Any, client: dict[str, Any], devices: int, seed: int, interval: float
) -> None:
    """The NATS load generator's process, driven as :func:`~edgeloop.bench.workers.serve_load`."""

    def body() -> None:
        gen = NatsLoadGenerator(client, devices=devices, seed=seed, interval=interval)
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
