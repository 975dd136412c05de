"""Partitions of the edge's NATS transport: who owns which, and how a new owner takes one over.

Ownership. With R replicas (``edge.replicas``), replica r (``edge.ordinal``) owns the partitions
p with p mod R == r. It consumes each through a durable pull consumer ``edgeloop-<site>-p<p>``,
and holds a lease on the partition in a JetStream key-value bucket (renewed every few seconds,
expiring after :data:`LEASE_TTL` s), so two replicas never consume one partition at once, even while
R changes in a rolling restart: a replica waits for a partition until its previous owner released
it (at a clean stop) or its lease expired (kill -9, lost host).

Handover (why forecasts equal a single edge's). A new owner has no state for the partition's
devices. Before answering anything of it, it reads the durable consumer's ack floor (every reading
up to there was answered: acknowledgements follow the predictions, in stream order), replays the
partition's readings up to the floor from the stream into the engine (marked ``replay``: state only,
not answered again), then recreates the durable consumer to start right after the floor, so the
readings the previous owner received but did not acknowledge come at once rather than after
the ack wait. The engine then holds, per device, the state it would hold in a single edge that saw
the same readings: exactly so while the stream still has every reading of the device
(``broker.history`` per device); beyond that, lag windows are exact and the slower statistics (error
scale, drift detector, floor) are rebuilt from the last ``broker.history`` readings. The local state
snapshot is not used with this transport (the stream is the shared state).

:class:`PartitionOwner` holds that part of :class:`~edgeloop.adapters.nats_transport.NatsTransport`
(it runs on the transport's asyncio loop); the transport connects, publishes and acknowledges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from edgeloop.adapters.nats_pull import pull
from edgeloop.adapters.nats_subjects import Subjects
from edgeloop.adapters.transport import Inbox, Received
from edgeloop.config import BrokerSettings

log = logging.getLogger(__name__)

LEASE_TTL = 10.0  # seconds a partition lease lives without renewal (a dead owner's partitions wait this)
LEASE_RENEW = 2.0  # seconds between renewals
LEASE_RETRY = 1.0  # seconds between attempts to take a partition someone else holds
FETCH_BATCH = 500  # most readings one fetch asks for
FETCH_WAIT = 1.0  # seconds a fetch waits for readings when there are none
ACK_WAIT = 60.0  # seconds before JetStream redelivers an unacknowledged reading to the same consumer
ROOM_PAUSE = 0.002  # seconds a fetcher sleeps while the inbox is full


class PartitionOwner:
    """The partition side of :class:`~edgeloop.adapters.nats_transport.NatsTransport` (its base).

    The state is set up by the transport's constructor; what ownership uses of it is declared here.
    """

    broker: BrokerSettings
    inbox: Inbox
    subjects: Subjects
    stream: str
    durable_prefix: str
    identity: bytes
    taken: dict[int, int]
    replayed: dict[int, int]
    _nc: Any
    _js: Any
    _kv: Any
    _pending: dict[int, tuple[int, Any]]
    _next_handle: int
    _reserved: int
    _stopping: bool

    async def _own(self, p: int) -> None:
        """Take partition ``p`` (waiting for its lease), rebuild its devices' state, then consume it."""
        key = f"p{p}"
        waited = False
        while not self._stopping:
            revision = await self._acquire(key)
            if revision is not None:
                break
            if not waited:
                log.info("partition %d is held by another replica; waiting for its lease", p)
                waited = True
            await asyncio.sleep(LEASE_RETRY)
        else:
            return
        self.taken[p] = revision
        try:
            await self._take_over(p)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("taking over partition %d failed; releasing it", p)
            self.taken.pop(p, None)
            with contextlib.suppress(Exception):
                await self._kv.delete(key)

    async def _acquire(self, key: str) -> int | None:
        kv = self._kv
        try:
            return int(await kv.create(key, self.identity))
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None  # expired or released meanwhile: the next attempt creates it
        if entry.value == self.identity:  # ours (a lease renewal that timed out on our side)
            return int(await kv.update(key, self.identity, last=entry.revision))
        return None

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEW)
            for p, revision in list(self.taken.items()):
                try:
                    self.taken[p] = int(await self._kv.update(f"p{p}", self.identity, last=revision))
                except nats.js.errors.KeyWrongLastSequenceError:
                    log.error(
                        "lost the lease on partition %d (not renewed within %g s); stopped consuming it",
                        p,
                        LEASE_TTL,
                    )
                    self.taken.pop(p, None)
                except (TimeoutError, nats.errors.Error, OSError) as exc:
                    log.warning("lease renewal of partition %d failed: %r", p, exc)

    async def _take_over(self, p: int) -> None:
        js = self._js
        durable = f"{self.durable_prefix}{p}"
        floor = 0
        with contextlib.suppress(nats.js.errors.NotFoundError):
            info = await js.consumer_info(self.stream, durable)
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            # Recreated below to start after the floor: the previous owner's unacknowledged
            # deliveries come now, not after the ack wait.
            await js.delete_consumer(self.stream, durable)
        replayed = await self._replay(p, floor) if floor else 0
        self.replayed[p] = replayed
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=self.subjects.partition(p),
            # Ack-all: the edge answers a partition's readings in delivery order, so acknowledging the
            # last reading of a partition in an answered batch acknowledges the batch (one ack, not
            # hundreds); the ack floor keeps meaning "every reading up to here was answered".
            ack_policy=AckPolicy.ALL,
            ack_wait=ACK_WAIT,
            max_deliver=-1,
            max_ack_pending=max(self.broker.receive_maximum, FETCH_BATCH),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if floor else DeliverPolicy.ALL,
            opt_start_seq=floor + 1 if floor else None,
        )
        await js.add_consumer(self.stream, config)
        log.info(
            "took over partition %d: replayed %d readings answered before (up to %d)", p, replayed, floor
        )
        await self._consume(p, durable)

    async def _replay(self, p: int, floor: int) -> int:
        """Put the partition's readings up to stream sequence ``floor`` into the inbox as ``replay``."""
        js = self._js
        info = await js.add_consumer(
            self.stream,
            ConsumerConfig(
                filter_subject=self.subjects.partition(p),
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=60.0,
            ),
        )
        count = 0
        try:
            if not info.num_pending:
                return 0
            sub = await js.pull_subscribe_bind(consumer=info.name, stream=self.stream)
            topic = self.subjects.topic
            while True:
                room = await self._room()
                try:
                    msgs = await sub.fetch(min(FETCH_BATCH, room), timeout=FETCH_WAIT * 5)
                finally:
                    self._reserved -= room
                done = False
                for msg in msgs:
                    meta = msg.metadata
                    if meta.sequence.stream > floor:
                        done = True
                        break
                    self.inbox.put(Received(topic(msg.subject), msg.data, 0, 0, 0, True))
                    count += 1
                    if meta.num_pending == 0:
                        done = True
                if done:
                    break
            await sub.unsubscribe()
        finally:
            with contextlib.suppress(Exception):
                await js.delete_consumer(self.stream, info.name)
        return count

    async def _room(self) -> int:
        """Wait for room in the inbox; reserve and return up to a fetch's worth of it."""
        while True:
            room = min(FETCH_BATCH, self.inbox.room() - self._reserved)
            if room > 0:
                self._reserved += room
                return room
            await asyncio.sleep(ROOM_PAUSE)

    async def _consume(self, p: int, durable: str) -> None:
        """Pull partition ``p``'s readings into the inbox (:func:`~edgeloop.adapters.nats_pull.pull`),
        each request for no more than the inbox has room for."""
        topic = self.subjects.topic
        inbox = self.inbox
        pending = self._pending
        new = tuple.__new__  # Received(...) through a namedtuple's __new__ costs a Python call per reading

        def on_message(msg: Any) -> None:
            handle = self._next_handle = self._next_handle + 1
            pending[handle] = (p, msg)
            inbox.put(new(Received, (topic(msg.subject), msg.data, handle, 1, 0, False)))

        def release(count: int) -> None:
            self._reserved -= count

        await pull(
            self._nc,
            stream=self.stream,
            consumer=durable,
            room=self._room,
            on_message=on_message,
            release=release,
            running=lambda: not self._stopping and p in self.taken,
            wait=FETCH_WAIT,
            batch=FETCH_BATCH,
        )
