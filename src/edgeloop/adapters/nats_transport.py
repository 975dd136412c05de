"""The edge's NATS JetStream transport: device partitions, durable pull consumers, state handed over.

Subjects. Devices publish telemetry as MQTT to the NATS server's MQTT listener (topic
``edgeloop/<site>/<device>/telemetry`` is subject ``edgeloop.<site>.<device>.telemetry``) or as NATS.
The server's mapping (``deploy/nats/nats-server.conf``) moves it to
``edgeloop.<site>.p.<partition>.<device>.telemetry`` with ``partition(P, <device>)``, so a device
always lands in the same one of P partitions (``broker.partitions``). One JetStream stream per site
holds them, keeping the last ``broker.history`` readings of each device (one subject per device).
Predictions and events are published as core NATS on the MQTT topics with '/' turned into '.', so
MQTT clients receive them on the documented topics (:mod:`~edgeloop.adapters.nats_subjects`).

Ownership and handover of partitions (leases, replaying a partition's answered readings before
consuming it) are in :mod:`~edgeloop.adapters.nats_partitions`.

At-least-once: a reading is acknowledged after its prediction was handed to the client on the same
connection (the client sends in order); a reading answered but not yet acknowledged when its owner
died is answered again by the next owner (counted as duplicated by the scale test). The consumers
are ack-all: the edge answers each partition's readings in delivery order, so one acknowledgement
of the last reading of each partition in an answered batch covers the batch.

Threads: nats-py runs on an asyncio loop in a thread of its own; the edge's loop thread talks to it
only through the inbox (readings in) and one operations queue (predictions, events, acks out, in
order). Pull requests (:mod:`~edgeloop.adapters.nats_pull`) ask for no more readings than the inbox
has room for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig

from edgeloop.adapters.backoff import jittered_backoff
from edgeloop.adapters.mqtt_client import _tls_context
from edgeloop.adapters.nats_partitions import LEASE_TTL, PartitionOwner
from edgeloop.adapters.nats_subjects import Subjects, _name, stream_config
from edgeloop.adapters.topics import topic_for
from edgeloop.adapters.transport import Inbox, Received
from edgeloop.config import Settings
from edgeloop.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

OPS_HIGH_WATER = 200  # queued output operations (batches) before the edge waits
API_TIMEOUT = 10.0  # seconds for a JetStream API request (a loaded machine answers slowly)


class NatsTransport(PartitionOwner):
    kind = "nats"
    rebuilds_state = True

    def __init__(
        self,
        settings: Settings,
        inbox: Inbox,
        control: Callable[[bytes], None],
        *,
        client_id: str,
    ) -> None:
        if len(settings.topics.telemetry) != 1:
            raise ConfigError("topics.telemetry: with NATS exactly one filter is supported")
        self.settings = settings
        self.broker = settings.broker
        self.inbox = inbox
        self.control = control
        self.client_id = client_id
        self.subjects = Subjects(settings.topics.telemetry[0], settings.site)
        self.events_subject = Subjects.of_topic(topic_for(settings.topics.events, site=settings.site))
        name = _name(settings.site)
        self.stream = f"EDGELOOP_{name}"
        self.bucket = f"edgeloop_leases_{name}"
        self.durable_prefix = f"edgeloop-{name}-p"
        replicas = settings.edge.replicas
        self.ordinal = settings.edge.resolved_ordinal()
        self.owned = [p for p in range(self.broker.partitions) if p % replicas == self.ordinal]
        self.identity = f"{client_id}@{socket.gethostname()}:{os.getpid()}".encode()
        self.taken: dict[int, int] = {}  # partition -> lease revision, while this replica owns it
        self.replayed: dict[int, int] = {}  # partition -> readings replayed when it was taken over
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgeloop-nats", daemon=True)
        self._nc: Any = None
        self._js: Any = None
        self._kv: Any = None
        self._pending: dict[int, tuple[int, Any]] = {}  # handle -> (partition, message) awaiting its ack
        self._next_handle = 0
        self._reserved = 0  # inbox room promised to fetches in flight
        # Output operations, appended by the edge's thread and carried out by _work in order. The
        # loop is woken (call_soon_threadsafe: a write to its self-pipe) only when _work went idle,
        # not once per operation: _wake_scheduled is True while _work is busy or a wake-up is on its way.
        self._ops: collections.deque[tuple[str, Any]] = collections.deque()
        self._ops_ready: asyncio.Event | None = None
        self._wake_scheduled = False
        self._queued = 0  # operations handed to the loop (edge thread) ...
        self._done = 0  # ... and carried out (loop thread)
        self._tasks: list[asyncio.Task[Any]] = []
        self._cancel = threading.Event()
        self._stopping = False

    # -- the edge's thread ------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()
        limit = self.broker.connect_wait
        deadline = time.monotonic() + limit
        attempt = 0
        while True:
            try:
                self._call(self._connect())
                return
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                if "authorization" in str(exc).lower():
                    raise BrokerError(
                        f"NATS server {self.broker.host}:{self.broker.port} refused our credentials "
                        "(broker.username/password, creds_file or nkey_file)"
                    ) from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerError(
                        f"NATS server {self.broker.host}:{self.broker.port} unreachable: {exc!r}. "
                        f"Waited {limit:g} s (broker.connect_wait)."
                    ) from exc
                attempt += 1
                delay = min(jittered_backoff(attempt, self.broker.reconnect_max_delay), remaining)
                log.warning("NATS server not reachable (%r); retrying in %.1f s", exc, delay)
                if self._cancel.wait(delay):
                    raise BrokerError("stopped while waiting for the broker") from exc

    def cancel(self) -> None:
        self._cancel.set()

    def subscribe(self) -> None:
        self._call(self._subscribe(), timeout=60)

    def describe(self) -> str:
        return (
            f"NATS {self.broker.host}:{self.broker.port}, replica {self.ordinal} of "
            f"{self.settings.edge.replicas}, partitions {self.owned} of {self.broker.partitions}"
        )

    def _submit(self, op: str, data: Any) -> None:
        self._queued += 1
        self._ops.append((op, data))
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._ops_ready is not None:
            self._ops_ready.set()

    def ack(self, batch: Sequence[Received]) -> None:
        handles = [item.mid for item in batch if item.qos and not item.replay]
        if handles:
            self._submit("ack", handles)

    def publish(self, messages: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], int, str]:
        # Never refused: while disconnected, the operation waits in order in front of the acks.
        if messages:
            self._submit("pub", [(Subjects.of_topic(t), p) for t, p in messages])
        return [], 0, ""

    def publish_event(self, topic: str, payload: bytes) -> None:
        self._submit("pub", [(Subjects.of_topic(topic), payload)])

    def publish_alert(self, topic: str, payload: bytes) -> None:
        self.publish_event(topic, payload)

    @property
    def busy(self) -> bool:
        return not self.connected or self._queued - self._done > OPS_HIGH_WATER

    def close(self, drain_timeout: float = 10.0) -> bool:
        if not self._thread.is_alive():
            return False
        try:
            self._call(self._close(drain_timeout), timeout=drain_timeout + 15)
            return True
        except Exception:  # closing must not raise over the edge's shutdown
            log.exception("closing the NATS connection failed")
            return False
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    # -- the loop's thread ------------------------------------------------------------------------
    async def _connect(self) -> None:
        b = self.broker
        options: dict[str, Any] = {
            "servers": [b.url],
            "name": self.client_id,
            "connect_timeout": 5,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "ping_interval": b.keepalive,
            "pending_size": 64 * 1024 * 1024,  # bytes buffered while reconnecting
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        password = b.resolved_password()
        if b.username:
            options["user"] = b.username
            options["password"] = password
        if b.creds_file is not None:
            options["user_credentials"] = str(b.creds_file)
        if b.nkey_file is not None:
            options["nkeys_seed"] = str(b.nkey_file)
        if b.tls:
            options["tls"] = _tls_context(b)
            options["tls_hostname"] = b.host
        nc = await nats.connect(**options)
        self._nc = nc
        self._js = nc.jetstream(timeout=API_TIMEOUT)
        self._ops_ready = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._work()))
        log.info("connected to NATS %s:%d as %s", b.host, b.port, self.client_id)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS: %s", exc)

    async def _on_disconnected(self) -> None:
        if not self._stopping:
            log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS")

    async def _subscribe(self) -> None:
        js = self._js
        config = stream_config(self.stream, self.subjects.stream, self.broker.history)
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:  # exists with other settings (e.g. another history)
            await js.update_stream(config)
        self._kv = await js.create_key_value(KeyValueConfig(bucket=self.bucket, history=1, ttl=LEASE_TTL))

        async def on_event(msg: Any) -> None:
            self.control(msg.data)

        await self._nc.subscribe(self.events_subject, cb=on_event)
        for p in self.owned:
            self._tasks.append(asyncio.create_task(self._own(p)))
        self._tasks.append(asyncio.create_task(self._renew()))

    async def _work(self) -> None:
        """Carry out the edge's output operations, one at a time in order: predictions before acks.
        An operation the connection interrupts resumes where it stopped once the client can buffer."""
        ops, ready = self._ops, self._ops_ready
        assert ready is not None
        publish = self._nc.publish
        while True:
            if not ops:
                # Idle: from now on the next _submit wakes us. Look once more after saying so, for an
                # operation appended while the flag still said "awake" (that _submit did not wake us).
                self._wake_scheduled = False
                if ops:
                    continue
                await ready.wait()
                ready.clear()
                continue
            op, data = ops.popleft()
            if op == "ack":
                data = self._last_of_each_partition(data)
            done = 0
            while done < len(data):
                try:
                    if op == "pub":
                        for subject, payload in data[done:] if done else data:
                            await publish(subject, payload)
                            done += 1
                    else:
                        for msg in data[done:]:
                            await msg.ack()
                            done += 1
                except (nats.errors.Error, OSError) as exc:  # buffer full while reconnecting: wait
                    log.debug("output waits for the connection: %r", exc)
                    await asyncio.sleep(0.1)
            self._done += 1

    def _last_of_each_partition(self, handles: list[int]) -> list[Any]:
        """The messages to acknowledge for answered ``handles`` (in delivery order): with ack-all
        consumers, the last one of each partition acknowledges the earlier ones."""
        last: dict[int, Any] = {}
        pending = self._pending
        for handle in handles:
            item = pending.pop(handle, None)
            if item is not None:
                last[item[0]] = item[1]
        return list(last.values())

    async def _close(self, drain_timeout: float) -> None:
        self._stopping = True
        workers = self._tasks[:1]
        for task in self._tasks[1:]:
            task.cancel()
        deadline = time.monotonic() + drain_timeout
        while self._queued > self._done and time.monotonic() < deadline and self.connected:
            await asyncio.sleep(0.01)
        nc = self._nc
        if nc is None:
            return
        with contextlib.suppress(Exception):
            await nc.flush(timeout=5)
        # A clean stop hands the partitions over at once; after kill -9 their leases expire instead.
        for p in list(self.taken):
            with contextlib.suppress(Exception):
                await self._kv.delete(f"p{p}")
        self.taken.clear()
        for task in workers:
            task.cancel()
        with contextlib.suppress(Exception):
            await nc.close()
