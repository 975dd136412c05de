"""MQTT plumbing on paho-mqtt 2 (callback API v2, MQTT v5 by default): one long-lived session.

:class:`MqttSession` owns one client for a long-running service: it waits for the broker at start
(``broker.connect_wait``), tracks ``connected``, subscribes every wanted filter again on every
connect, names the cause when another client takes our client id, and adds jitter to paho's reconnect
backoff (:mod:`edgeloop.adapters.backoff`). Building and connecting a client is in
:mod:`edgeloop.adapters.mqtt_client`; topic names are in :mod:`edgeloop.adapters.topics`.

Re-subscribing on every connect, whatever "session present" says: Mosquitto 2.0 restarted with
persistence restores a session without its ``$share`` subscriptions, so trusting the flag leaves a
service deaf. A repeated SUBSCRIBE for a filter the broker still holds is harmless (it replaces it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edgeloop.adapters.backoff import jittered_backoff
from edgeloop.adapters.mqtt_client import (
    SESSION_TAKEN_OVER,
    BrokerUnavailable,
    Protocol,
    _clamp_inflight,
    connect,
    default_client_id,
    make_client,
)
from edgeloop.adapters.paho_internals import ack_many, publish_many
from edgeloop.adapters.topics import shared_filter
from edgeloop.config import BrokerSettings
from edgeloop.errors import BrokerError

__all__ = ["MqttSession"]

log = logging.getLogger(__name__)

MessageHandler = Callable[[mqtt.MQTTMessage], None]

TAKEOVER_STABLE_S = 10.0  # a connection the broker closes sooner than this counts towards a takeover
TAKEOVER_SUSPECT = 3  # such closes in a row before the log names a client id clash as the likely cause


class MqttSession:
    """Owns one paho client: connects, tracks ``connected``, and keeps subscriptions alive.

    Every wanted subscription is sent again on every connect. Exceptions raised by ``on_message`` are
    logged, not allowed to kill paho's network thread. Do not call :meth:`subscribe` from inside
    ``on_message`` (it waits for the SUBACK that this same thread would deliver).

    With ``manual_ack`` the owner acknowledges each QoS>0 delivery with :meth:`ack`, passing the
    :attr:`connection` number current when the message arrived: a packet id is only meaningful on the
    connection that delivered it, so acks for an earlier connection are skipped (the broker sends
    those messages again).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        role: str,
        client_id: str | None = None,
        clean_start: bool = True,
        session_expiry: int | None = None,
        protocol: Protocol = "5",
        on_message: MessageHandler | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.settings = settings
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.on_message = on_message
        self.client_id = client_id or settings.client_id or default_client_id(role)
        self.client = make_client(
            settings,
            role=role,
            client_id=self.client_id,
            clean_start=clean_start,
            protocol=protocol,
            manual_ack=manual_ack,
        )
        if not clean_start and session_expiry and not (client_id or settings.client_id):
            log.warning(
                "persistent MQTT session with a per-process client id: set broker.client_id so a restart "
                "resumes the session instead of leaving an orphan queue on the broker"
            )
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._wanted: dict[str, int] = {}  # topic filter -> qos
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._suback_cv = threading.Condition(self._lock)
        self._background_mids: dict[int, list[str]] = {}  # re-subscriptions sent by _on_connect
        self._attempt = 0
        self._takeover_streak = 0
        self._connected_at = 0.0
        self._closing = False
        self._cancel = threading.Event()
        self._last_publish: mqtt.MQTTMessageInfo | None = None
        # QoS>0 publishes not known to be acknowledged, oldest first: (last message of a batch, count)
        self._unacked: deque[tuple[mqtt.MQTTMessageInfo, int]] = deque()
        self._outgoing = 0
        self.disconnects = 0
        self.taken_over = 0  # disconnects because another client connected with our client id
        self.connection = 0  # incremented on every successful connect
        self.subscribed = threading.Event()  # every wanted filter acknowledged on this connection
        self.session_present: bool | None = None  # from the last successful CONNACK
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def closing(self) -> bool:
        return self._closing

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self, timeout: float = 10, *, wait: float | None = None) -> Self:
        """Connect; paho reconnects afterwards.

        A broker that cannot be reached yet is retried with the reconnect backoff for up to ``wait``
        seconds (default ``broker.connect_wait``); refusals that waiting cannot fix (credentials, TLS,
        an unknown host) raise :class:`BrokerError` at once. :meth:`cancel` ends the wait.
        """
        self._closing = False
        limit = self.settings.connect_wait if wait is None else wait
        deadline = time.monotonic() + limit
        attempt = 0
        while True:
            try:
                connect(
                    self.client,
                    self.settings,
                    clean_start=self.clean_start,
                    session_expiry=self.session_expiry,
                    timeout=timeout,
                )
                return self
            except BrokerUnavailable as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if limit > 0:
                        raise BrokerUnavailable(f"{exc} Waited {limit:g} s (broker.connect_wait).") from exc
                    raise
                attempt += 1
                delay = min(jittered_backoff(attempt, self.settings.reconnect_max_delay), remaining)
                log.warning("%s Retrying in %.1f s (broker.connect_wait: %.0f s left)", exc, delay, remaining)
                if self._cancel.wait(delay):
                    raise BrokerError("stopped while waiting for the broker") from exc

    def cancel(self) -> None:
        """End a :meth:`start` that is waiting for the broker."""
        self._cancel.set()

    def ack(self, mid: int, qos: int, connection: int) -> None:
        """Acknowledge delivery ``mid`` received on ``connection`` (``manual_ack`` sessions only)."""
        if qos > 0 and connection == self.connection and self.connected:
            self.client.ack(mid, qos)

    def ack_many(self, mids: list[int], connection: int) -> None:
        """Acknowledge QoS 1 deliveries ``mids``, all received on ``connection``, in one write."""
        if mids and connection == self.connection and self.connected:
            ack_many(self.client, mids)

    def close(self, drain_timeout: float = 10.0) -> bool:
        """Send what is still queued (up to ``drain_timeout`` s), disconnect, stop the network thread.

        Acknowledgements queued before this call are sent before the DISCONNECT (paho sends in order).
        Returns True if every message published was confirmed (acknowledged by the broker at QoS 1,
        written at QoS 0), False if some may have been lost with the connection.
        """
        self._closing = True
        last = self._last_publish
        delivered = last is None
        if last is not None and self.connected:
            # paho sends in order, so once the last publish is out, every earlier one is too. Not queued
            # (disconnected meanwhile): nothing to wait for.
            with contextlib.suppress(RuntimeError, ValueError):
                last.wait_for_publish(drain_timeout)
                delivered = last.is_published()
        self.client.disconnect()
        self.client.loop_stop()
        self._connected.clear()
        return delivered

    def subscribe(
        self, filters: list[str], qos: int = 1, shared_group: str | None = None, *, timeout: float = 10
    ) -> None:
        """Subscribe now if connected (waits for the SUBACK) and again on every reconnect.

        Raises :class:`BrokerError` if the broker refuses a filter (e.g. an ACL denies it).
        """
        topics = [shared_filter(f, shared_group) for f in filters]
        with self._lock:
            for topic in topics:
                self._wanted[topic] = qos
        if not self.connected:
            return  # _on_connect subscribes
        rc, mid = self.client.subscribe([(t, qos) for t in topics])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return  # connection dropped meanwhile; _on_connect subscribes
        with self._suback_cv:
            if not self._suback_cv.wait_for(lambda: mid in self._subacks, timeout):
                raise BrokerError(f"no SUBACK for {topics} within {timeout:g} s")
            codes = self._subacks.pop(mid)
            refused = [f"{t}: {c.getName()}" for t, c in zip(topics, codes, strict=False) if c.is_failure]
        if refused:
            raise BrokerError(f"broker refused subscription(s): {', '.join(refused)}")

    def publish(
        self, topic: str, payload: bytes | str, qos: int | None = None, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Publish (QoS defaults to ``broker.qos``); paho queues QoS>0 messages while disconnected."""
        qos = self.settings.qos if qos is None else qos
        info = self.client.publish(topic, payload, qos, retain)
        self._last_publish = info
        if qos and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._unacked.append((info, 1))
            self._outgoing += 1
            self._prune_acknowledged()
        return info

    def publish_many(self, messages: list[tuple[str, bytes]], qos: int) -> list[mqtt.MQTTMessageInfo]:
        """Publish each (topic, payload) at ``qos``, with one wake-up of paho's network thread."""
        infos = publish_many(self.client, messages, qos)
        if infos:
            self._last_publish = infos[-1]
            if qos:
                ok = MQTTErrorCode.MQTT_ERR_SUCCESS
                # A batch counts as acknowledged once its last message is (the broker acknowledges in
                # order), so the bookkeeping costs one entry per batch rather than per message.
                accepted = sum(1 for info in infos if info.rc == ok)
                if accepted:
                    self._unacked.append((infos[-1], accepted))
                    self._outgoing += accepted
                    self._prune_acknowledged()
        return infos

    @property
    def outgoing(self) -> int:
        """About how many QoS>0 messages handed to paho the broker has not acknowledged yet.

        Counted from the oldest unacknowledged one (the broker acknowledges mostly in order), with
        paho's public ``MQTTMessageInfo.is_published``; call it from the publishing thread. paho's
        own queue has no byte bound and each entry costs kilobytes, so a producer faster than the
        broker's acknowledgements should wait while this is high.
        """
        self._prune_acknowledged()
        return self._outgoing

    def _prune_acknowledged(self) -> None:
        # Runs after every QoS>0 publish: a try costs nothing here, a contextlib.suppress per call did.
        unacked = self._unacked
        while unacked:
            try:
                if not unacked[0][0].is_published():
                    return
            except (RuntimeError, ValueError):  # refused by paho: nothing to wait for
                pass
            self._outgoing -= unacked.popleft()[1]

    # -- paho callbacks (run on paho's network thread) --------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused connection: %s (reason code %d)", reason.getName(), reason.value)
            return
        _clamp_inflight(client, props)
        self._attempt = 0
        self._connected_at = time.monotonic()
        self.connection += 1
        self.session_present = bool(flags.session_present)
        with self._lock:
            wanted = list(self._wanted.items())
        self.subscribed.clear()
        if wanted:
            rc, mid = client.subscribe(wanted)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                with self._lock:
                    self._background_mids[mid] = [t for t, _ in wanted]
        else:
            self.subscribed.set()
        log.info(
            "connected to %s:%d as %s (session present: %s, subscribing: %d)",
            self.settings.host,
            self.settings.port,
            self.client_id,
            flags.session_present,
            len(wanted),
        )
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self.subscribed.clear()
        if self._closing:
            log.debug("disconnected from broker on close")
            return
        short = was_connected and time.monotonic() - self._connected_at < TAKEOVER_STABLE_S
        if reason.value == SESSION_TAKEN_OVER or short:
            self._takeover_streak = self._takeover_streak + 1 if short else 1
            # Two clients with one id evict each other on every reconnect: back off further each time
            # the connection was short-lived, so the pair does not churn the broker twice a second.
            self._attempt = self._takeover_streak
        else:
            self._takeover_streak = 0
        if reason.value == SESSION_TAKEN_OVER:
            self.taken_over += 1
            log.error(
                "disconnected: another client connected with client id %s (broker reason: Session taken "
                "over); give each edge its own broker.client_id",
                self.client_id,
            )
        elif self._takeover_streak >= TAKEOVER_SUSPECT:
            # Mosquitto 2.0.11 and older close the evicted connection without a reason code.
            self.taken_over += 1
            log.error(
                "disconnected: the broker closed our connection %d times in a row within %g s of accepting "
                "it (%s): most likely another client connected with client id %s; give each edge its own "
                "broker.client_id",
                self._takeover_streak,
                TAKEOVER_STABLE_S,
                reason.getName(),
                self.client_id,
            )
        elif was_connected:
            log.warning(
                "disconnected from broker: %s (reason code %d%s)",
                reason.getName(),
                reason.value,
                ", sent by broker" if flags.is_disconnect_packet_from_server else "",
            )
        if was_connected:
            self.disconnects += 1
        self._next_backoff()

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        log.info("reconnect to %s:%d failed", self.settings.host, self.settings.port)
        self._next_backoff()

    def _next_backoff(self) -> None:
        # Jittered exponential backoff through paho's own scheduler: setting min == max resets paho's
        # doubling, so its next wait is exactly the delay drawn here.
        self._attempt += 1
        delay = jittered_backoff(self._attempt, self.settings.reconnect_max_delay)
        self.client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        with self._suback_cv:
            if mid in self._background_mids:
                topics = self._background_mids.pop(mid)
                for topic, code in zip(topics, codes, strict=False):
                    if code.is_failure:
                        log.error("broker refused re-subscription to %s: %s", topic, code.getName())
                log.info("subscribed again to %d filter(s)", len(topics))
                self.subscribed.set()
                return
            self._subacks[mid] = codes
            self._suback_cv.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if self.on_message is None:
            return
        try:
            self.on_message(message)
        except Exception:
            log.exception("message handler failed on topic %s", message.topic)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
