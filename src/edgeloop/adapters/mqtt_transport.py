"""The edge's MQTT transport: telemetry in on one paho connection, predictions out on another.

paho's network thread of the input connection only appends messages to the edge's inbox; when the
inbox is full it stops reading the socket until there is room (TCP and the broker's flow control
hold the producers back). Predictions leave on a connection of their own: while the input thread
waits, the acknowledgements of our predictions must keep arriving, or paho's outgoing queue grows
without bound. QoS 1 readings are acknowledged with paho's manual acks, on the connection that
delivered them (a packet id means nothing on a later one; the broker delivers those again).

On verified paho the readings of one socket read reach :meth:`MqttTransport._on_messages` as one list
(decoded from paho's read buffer, :func:`edgeloop.adapters.paho_internals.deliver_batches`), which
measured about 40 % less CPU on the input connection (``benchmarks/bench_paho_receive.py``);
whatever paho delivers itself (anything but a plain QoS 0/1 PUBLISH) still comes to :meth:`_on_message`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from paho.mqtt.client import error_string as mqtt_error_string
from paho.mqtt.enums import MQTTErrorCode

from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.paho_internals import deliver_batches
from edgeloop.adapters.publish_decode import Delivery
from edgeloop.adapters.topics import topic_for
from edgeloop.adapters.transport import Inbox, Received
from edgeloop.config import Settings
from edgeloop.registry.bus import models_topic

log = logging.getLogger(__name__)

# Readings decoded from paho's read buffer and put into the inbox a read at a time, on verified paho
# (paho_internals.deliver_batches); off: paho's per-message on_message for every message.
BATCH_RECEIVE = True


class MqttTransport:
    kind = "mqtt"
    rebuilds_state = False

    def __init__(
        self,
        settings: Settings,
        inbox: Inbox,
        control: Callable[[bytes], None],
        *,
        client_id: str,
        protocol: str = "5",
        models: Callable[[tuple[str, bytes]], None] | None = None,
        batch_receive: bool = BATCH_RECEIVE,
    ) -> None:
        self.settings = settings
        self.models = models
        self.models_prefix = models_topic(settings.site) + "/"
        self.inbox = inbox
        self.control = control
        self.protocol = protocol
        self.events_topic = topic_for(settings.topics.events, site=settings.site)
        broker = settings.broker
        self.session = MqttSession(
            broker,
            role="edge",
            client_id=client_id,
            # Resume the broker's session (and the telemetry it queued while we were away) unless
            # sessions are configured not to outlive a connection.
            clean_start=broker.session_expiry == 0,
            session_expiry=broker.session_expiry,
            protocol=protocol,  # type: ignore[arg-type]
            on_message=self._on_message,
            manual_ack=True,
        )
        if batch_receive:
            deliver_batches(self.session.client, self._on_messages)
        self.outbox = MqttSession(
            broker,
            role="edge-out",
            client_id=f"{client_id}-out",
            clean_start=broker.session_expiry == 0,
            session_expiry=broker.session_expiry,
            protocol=protocol,  # type: ignore[arg-type]
        )

    # -- paho's thread: enqueue only --------------------------------------------------------------
    def _on_message(self, message: Any) -> None:
        connection = self.session.connection
        topic = message.topic  # decoded by paho on every access
        if topic == self.events_topic:
            self.control(message.payload)
            self.session.ack(message.mid, message.qos, connection)
            return
        if self.models is not None and topic.startswith(self.models_prefix):
            self.models((topic, message.payload))
            self.session.ack(message.mid, message.qos, connection)
            return
        self.inbox.put_waiting(Received(topic, message.payload, message.mid, message.qos, connection))

    def _on_messages(self, messages: list[Delivery]) -> None:
        # The plain PUBLISH packets of one read (paho_internals.deliver_batches), in order: readings
        # go into the inbox together; a control or model message first lets the readings before it in.
        try:
            connection = self.session.connection
            events, models = self.events_topic, self.models
            prefix = self.models_prefix if models is not None else None
            batch: list[Received] = []
            for topic, payload, mid, qos, _retain in messages:
                if topic == events:
                    self.inbox.put_many_waiting(batch)
                    batch = []
                    self.control(payload)
                elif prefix is not None and models is not None and topic.startswith(prefix):
                    self.inbox.put_many_waiting(batch)
                    batch = []
                    models((topic, payload))
                else:
                    batch.append(Received(topic, payload, mid, qos, connection))
                    continue
                self.session.ack(mid, qos, connection)
            self.inbox.put_many_waiting(batch)
        except Exception:
            log.exception("message handler failed on a batch of %d message(s)", len(messages))

    @property
    def connected(self) -> bool:
        return self.session.connected and self.outbox.connected

    def start(self) -> None:
        self.session.start()
        self.outbox.start()

    def cancel(self) -> None:
        self.session.cancel()
        self.outbox.cancel()

    def subscribe(self) -> None:
        s = self.settings
        group = s.broker.shared_group if self.protocol == "5" else None
        self.session.subscribe(s.topics.telemetry_filters(s.site), qos=s.broker.qos, shared_group=group)
        self.session.subscribe([self.events_topic], qos=1)
        if self.models is not None:
            self.session.subscribe([self.models_prefix + "+"], qos=1)

    def describe(self) -> str:
        return f"MQTT {self.settings.broker.host}:{self.settings.broker.port}, subscribed " + ", ".join(
            self.settings.topics.telemetry_filters(self.settings.site)
        )

    def ack(self, batch: Sequence[Received]) -> None:
        # One write per connection the batch arrived on (almost always one); QoS 0 needs none.
        by_connection: dict[int, list[int]] = {}
        for item in batch:
            if item.qos:
                mids = by_connection.get(item.connection)
                if mids is None:
                    mids = by_connection[item.connection] = []
                mids.append(item.mid)
        for connection, mids in by_connection.items():
            self.session.ack_many(mids, connection)

    @property
    def busy(self) -> bool:
        # While the broker has not acknowledged many predictions (or the outbox is disconnected) the
        # edge takes no new readings, so their acks wait and the broker and the inbox bound hold the
        # producers back instead of paho's queue growing. The outbox's thread never waits for the
        # edge, so waiting cannot deadlock. The loop waits while a whole batch would no longer fit in
        # paho's in-flight window: once paho queues messages behind that window, it rescans every
        # unacknowledged one on each PUBACK (117 us each with 1,000 in flight), which slowed the edge
        # most when it was already behind.
        if not self.outbox.connected:
            return True
        window = self.outbox.client.max_inflight_messages  # the broker's Receive Maximum may lower it
        return self.outbox.outgoing > max(window - self.settings.edge.batch_max, 1)

    def publish(self, messages: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], int, str]:
        """Hand predictions to paho; returns those it refused (kept for a retry at QoS>0)."""
        qos = self.settings.broker.qos
        refused: list[tuple[str, bytes]] = []
        failed = 0
        last_rc = ok = MQTTErrorCode.MQTT_ERR_SUCCESS
        no_conn = MQTTErrorCode.MQTT_ERR_NO_CONN
        for message, info in zip(messages, self.outbox.publish_many(messages, qos), strict=True):
            rc = info.rc
            # At QoS>0 paho keeps a message published while disconnected and sends it on reconnect.
            if rc == ok or (qos and rc == no_conn):
                continue
            failed += 1
            if qos:
                refused.append(message)
            last_rc = rc
        return refused, failed, mqtt_error_string(last_rc) if failed else ""

    def publish_event(self, topic: str, payload: bytes) -> None:
        self.session.publish(topic, payload, qos=1)

    def publish_alert(self, topic: str, payload: bytes) -> Any:
        return self.session.publish(topic, payload)

    def close(self) -> bool:
        delivered = self.outbox.close()  # waits until the broker has the last prediction
        self.session.close()  # the acks queued before go out before its DISCONNECT
        return delivered
