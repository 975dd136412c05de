"""The one interface between the edge service and a broker, whichever it is.

The edge takes readings from an :class:`Inbox` that a transport fills from its own thread(s), answers
them, hands predictions to :meth:`Transport.publish` and only then acknowledges the readings with
:meth:`Transport.ack`. Two transports implement it, chosen by the scheme of ``broker.url``:

- ``mqtt://``/``mqtts://``: :class:`edgeloop.adapters.mqtt_transport.MqttTransport` (paho, an input
  and an output connection, manual QoS 1 acks);
- ``nats://``/``tls://``: :class:`edgeloop.adapters.nats_transport.NatsTransport` (nats-py on an
  asyncio loop in its own thread, a JetStream stream and one durable pull consumer per owned
  partition).

A transport may also put readings marked ``replay`` into the inbox before the live ones of the same
devices: readings answered before (by this or another replica), fed to the engine only to rebuild
the devices' state; the edge neither answers nor acknowledges them.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from edgeloop.config import Settings

INBOX_FULL_PAUSE = 0.002  # seconds a blocking put sleeps before looking for room in a full inbox


class Received(NamedTuple):
    """One delivered message: what the loop needs to answer it and then acknowledge it."""

    topic: str  # always the MQTT form (edgeloop/<site>/<device>/telemetry), whatever the transport
    payload: bytes
    mid: int  # the transport's handle for the acknowledgement (paho packet id, NATS pending id)
    qos: int  # 0: nothing to acknowledge
    connection: int  # the connection it arrived on; a handle is only meaningful there
    replay: bool = False  # answered before: rebuild state only, no answer, no acknowledgement


class Inbox:
    """Readings received but not yet taken by the edge's loop, bounded by ``maximum``.

    A SimpleQueue bounded by a size check: ``queue.Queue(maxsize)`` costs a lock round trip per reading
    on both threads. ``accepting`` turns False at shutdown; what arrives afterwards stays
    unacknowledged (counted in ``left``) so the broker delivers it to the next run.
    """

    def __init__(self, maximum: int) -> None:
        self.queue: queue.SimpleQueue[Received] = queue.SimpleQueue()
        self.maximum = maximum
        self.accepting = True
        self.left = 0

    def room(self) -> int:
        return max(0, self.maximum - self.queue.qsize())

    def put_waiting(self, item: Received) -> None:
        """Put ``item``, waiting while the inbox is full (the caller's thread stops reading meanwhile)."""
        self.put_many_waiting((item,))

    def put_many_waiting(self, items: Sequence[Received]) -> None:
        """Put ``items`` in order, as many at a time as there is room for (never past ``maximum``)."""
        put, qsize, maximum = self.put, self.queue.qsize, self.maximum
        i, n = 0, len(items)
        while i < n:
            if not self.accepting:
                self.left += n - i
                return
            room = maximum - qsize()
            if room <= 0:
                time.sleep(INBOX_FULL_PAUSE)
                continue
            for item in items[i : i + room]:
                put(item)
            i += room

    def put(self, item: Received) -> None:
        if self.accepting:
            self.queue.put(item)
        else:
            self.left += 1


class Transport(Protocol):
    """What the edge service needs from a broker."""

    kind: str  # "mqtt" or "nats"
    rebuilds_state: bool  # True: device state comes from replayed readings, not the local snapshot

    @property
    def connected(self) -> bool: ...

    def start(self) -> None:
        """Connect, waiting up to ``broker.connect_wait`` for a broker that is not up yet."""

    def cancel(self) -> None:
        """End a :meth:`start` that is waiting for the broker."""

    def subscribe(self) -> None:
        """Start the deliveries: telemetry into the inbox, control events to the control callback."""

    def ack(self, batch: Sequence[Received]) -> None:
        """Acknowledge answered readings (after their predictions were handed to :meth:`publish`)."""

    def publish(self, messages: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], int, str]:
        """Hand predictions over; returns (refused ones to retry, how many failed, why)."""

    def publish_event(self, topic: str, payload: bytes) -> None:
        """Publish an event (best effort, at least once where the broker allows it)."""

    def publish_alert(self, topic: str, payload: bytes) -> Any:
        """Publish an alert (the alerter's ``publish``)."""

    @property
    def busy(self) -> bool:
        """True while the output side should not get more (disconnected, or much unacknowledged)."""

    def close(self) -> bool:
        """Send what was handed over (acks included), then disconnect; True if the broker confirmed
        every prediction handed over (none can have been lost with the connection)."""

    def describe(self) -> str:
        """One phrase for the start-up log line: what this transport listens to."""


def make_transport(
    settings: Settings,
    inbox: Inbox,
    control: Callable[[bytes], None],
    *,
    client_id: str,
    protocol: str = "5",
    models: Callable[[tuple[str, bytes]], None] | None = None,
) -> Transport:
    """The transport ``broker.url`` selects (imported lazily: a MQTT edge needs no nats-py).

    ``models`` receives the signed champions published on the models topics (distribution.mode bus,
    MQTT only: the config refuses it with NATS).
    """
    if settings.broker.transport == "nats":
        from edgeloop.adapters.nats_transport import NatsTransport

        return NatsTransport(settings, inbox, control, client_id=client_id)
    from edgeloop.adapters.mqtt_transport import MqttTransport

    return MqttTransport(settings, inbox, control, client_id=client_id, protocol=protocol, models=models)
