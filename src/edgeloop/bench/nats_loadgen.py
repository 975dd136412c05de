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
import time
from collections.abc import Callable
from typing import Any

import nats

from edgeloop.bench.loadgen import _BURST, Pace, SendLog, SimulatedTelemetry
from edgeloop.bench.workers import _reply_errors, drive_load


class NatsLoadGenerator(SimulatedTelemetry):
    """Simulated telemetry over nats-py core publishes, paced like the MQTT generator."""

    def __init__(self, client: dict[str, Any], *, devices: int, seed: int = 0, interval: float = 5.0) -> None:
        super().__init__(devices, seed, interval)
        self.loop = asyncio.new_event_loop()
        self.nc: Any = self.loop.run_until_complete(
            nats.connect(**client, connect_timeout=10, pending_size=64 * 2**20)
        )

    def run(self, **kwargs: Any) -> SendLog:
        """As :meth:`LoadGenerator.run <edgeloop.bench.loadgen.LoadGenerator.run>` (``qos`` ignored:
        the stream stores what the server receives)."""
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
        pace = Pace(
            duration=duration,
            rate=rate,
            answered=answered,
            window=window,
            stall_timeout=stall_timeout,
            stop=stop,
        )
        subjects = [f"edgeloop.{site}.{d}.telemetry" for d in self.devices]
        n_dev = len(subjects)
        publish, clock = self.nc.publish, time.monotonic
        first, message = self.next_index, self.next_message
        append = pace.sent_at.append
        while (due := pace.due(now := clock())) is not None:
            if due > 0:
                for _ in range(min(due, _BURST)):
                    k, data = message()
                    append(clock())
                    await publish(subjects[k % n_dev], data)
                await asyncio.sleep(0)  # let nats-py's flusher write the burst
                continue
            await asyncio.sleep(pace.wait(now, due))
        return pace.log(first)

    def flush(self, timeout: float) -> None:
        self.loop.run_until_complete(self.nc.flush(timeout))

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


def serve_nats_load(
    conn: Any, counters: Any, client: dict[str, Any], devices: int, seed: int, interval: float
) -> None:
    """The NATS load generator's process, driven as :func:`~edgeloop.bench.workers.serve_load`."""
    _reply_errors(
        conn,
        lambda: drive_load(
            conn, counters, NatsLoadGenerator(client, devices=devices, seed=seed, interval=interval)
        ),
    )
