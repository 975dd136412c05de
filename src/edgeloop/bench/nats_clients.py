"""The bench's nats-py clients, each in a process of its own (driven like :mod:`~edgeloop.bench.workers`).

- :func:`serve_nats_counter` ``kind="core"``: a do-nothing core NATS subscriber on the partitioned
  telemetry subjects (what the server delivers, no persistence); ``kind="jetstream"``: a do-nothing
  durable consumer on the edges' stream config, read as the edge reads it (the same pull loop,
  :func:`~edgeloop.adapters.nats_pull.pull`, the same inbox bound and ack-all, one acknowledgement
  per turn of received messages); ``kind="jetstream-each"``: the same with an explicit
  acknowledgement of every message. All count into ``counters[slot]``, which the load generator
  reads to run closed loop.
- :func:`serve_nats_collector`: the measuring subscriber of the NATS windows, on the predictions and
  events the edges publish as core NATS, feeding a :class:`~edgeloop.bench.workers.Recorder`.

nats-py is asyncio: its loop runs in a thread of the child while the child's main thread answers the
bench's pipe, as the MQTT workers do with their network thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from edgeloop.adapters.nats_partitions import FETCH_BATCH
from edgeloop.adapters.nats_pull import pull
from edgeloop.adapters.nats_subjects import stream_config
from edgeloop.bench.workers import Recorder, _reply_errors

INBOX = 20_000  # edge.inbox_max's default
CEILING_DURABLE = "bench-ceiling"
HISTORY = 2000  # the stream's per-device history (broker.history's default, as the edges use it)


class _Loop:
    """An asyncio loop in a daemon thread; ``run`` waits for a coroutine from the calling thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-nats", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _serve(
    conn: Any,
    start: Callable[[], Coroutine[Any, Any, Any]],
    on_take: Callable[[], Any],
    tasks: list[asyncio.Task[Any]] | None = None,
) -> None:
    """Connect (``start`` on the loop), say ready, then answer ``take`` and ``close`` until closed;
    ``tasks`` (filled by ``start``) are cancelled before the connection closes."""

    async def close(nc: Any) -> None:
        for task in tasks or []:
            task.cancel()
        await asyncio.gather(*(tasks or []), return_exceptions=True)
        await nc.close()

    def body() -> None:
        loop = _Loop()
        nc = loop.run(start())
        conn.send(("ready", {"pid": os.getpid()}))
        while True:
            name, _kwargs = conn.recv()
            if name == "take":
                conn.send(("ok", on_take()))
                continue
            if name == "close":
                with contextlib.suppress(Exception):
                    loop.run(close(nc), timeout=10)
                loop.stop()
                conn.send(("ok", None))
                return

    _reply_errors(conn, body)


def serve_nats_counter(
    conn: Any,
    counters: Any,
    slot: int,
    client: dict[str, Any],
    kind: str,
    subject: str,
    stream: str,
) -> None:
    """A do-nothing ``kind`` consumer (``core``, ``jetstream``, ``jetstream-each``) of ``subject``
    counting into a slot."""
    tasks: list[asyncio.Task[Any]] = []

    async def start() -> Any:
        nc = await nats.connect(**client, connect_timeout=10, pending_size=64 * 2**20)
        if kind == "core":

            async def count(_msg: Any) -> None:
                counters[slot] += 1

            # Limits high enough that nats-py never drops for a slow subscriber (the closed loop
            # bounds what is in flight anyway).
            await nc.subscribe(subject, cb=count, pending_msgs_limit=10**6, pending_bytes_limit=2**30)
            return nc
        js = nc.jetstream(timeout=10)
        await js.add_stream(stream_config(stream, subject, HISTORY))
        ack_all = kind == "jetstream"
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=CEILING_DURABLE,
                filter_subject=subject,
                ack_policy=AckPolicy.ALL if ack_all else AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.NEW,
                max_ack_pending=2 * FETCH_BATCH,  # as the edge's consumers (broker.receive_maximum)
                ack_wait=60.0,
            ),
        )
        received: list[Any] = []
        arrived = asyncio.Event()
        reserved = 0

        async def room() -> int:
            nonlocal reserved
            while True:  # the edge's inbox bound (edge.inbox_max), with nothing ever waiting in it
                free = min(FETCH_BATCH, INBOX - len(received) - reserved)
                if free > 0:
                    reserved += free
                    return free
                await asyncio.sleep(0.002)

        def release(count: int) -> None:
            nonlocal reserved
            reserved -= count

        def on_message(msg: Any) -> None:
            received.append(msg)
            arrived.set()

        async def acknowledge() -> None:
            # As the edge: everything received so far is "answered" at once, then acknowledged, with
            # ack-all one message (the last) per turn, else each message.
            while True:
                await arrived.wait()
                arrived.clear()
                batch = received[:]
                del received[:]
                for msg in batch[-1:] if ack_all else batch:
                    await msg.ack()
                counters[slot] += len(batch)

        tasks.append(asyncio.create_task(acknowledge()))
        tasks.append(
            asyncio.create_task(
                pull(
                    nc,
                    stream=stream,
                    consumer=CEILING_DURABLE,
                    room=room,
                    on_message=on_message,
                    release=release,
                    running=lambda: True,
                    wait=1.0,
                    batch=FETCH_BATCH,
                )
            )
        )
        return nc

    _serve(conn, start, lambda: None, tasks)


def serve_nats_collector(
    conn: Any,
    counters: Any,
    slot: int,
    client: dict[str, Any],
    predictions: str,
    events: str,
    devices: list[str],
) -> None:
    """The measuring subscriber of the NATS windows: ``predictions`` and ``events`` subjects into a
    :class:`~edgeloop.bench.workers.Recorder`; command ``take`` as the MQTT collector's."""
    recorder = Recorder(counters, slot, devices, events.encode())
    state: dict[str, Any] = {"nc": None}
    clock = time.monotonic

    async def start() -> Any:
        nc = await nats.connect(**client, connect_timeout=10, pending_size=64 * 2**20)
        handle = recorder.handle

        async def on_message(msg: Any) -> None:
            handle(msg.subject.encode(), msg.data, clock())

        for subject in (predictions, events):
            await nc.subscribe(subject, cb=on_message, pending_msgs_limit=10**6, pending_bytes_limit=2**30)
        await nc.flush()
        state["nc"] = nc
        return nc

    def take() -> dict[str, Any]:
        nc = state["nc"]
        return recorder.take(alive=nc is not None and nc.is_connected)

    _serve(conn, start, take)
