"""MQTT plumbing on paho-mqtt 2 (callback API v2, MQTT v5 by default).

``make_client`` builds a configured client, ``connect`` connects it and fails fast with a
:class:`BrokerError` telling the user what to check, and :class:`MqttSession` owns one client for a
long-running service: it tracks ``connected``, re-subscribes when the broker lost the session and adds
jitter to paho's reconnect backoff.

Reconnect backoff: paho 2.2 waits ``min_delay`` after a lost connection and doubles the wait on each
failed attempt up to ``max_delay`` with **no jitter**, so a fleet of edges that lost the same broker
reconnects in lock-step. :class:`MqttSession` draws each wait from [d/2, d] of the doubled delay d.

>>> shared_filter("edgeloop/lab/+/telemetry", "edge")
'$share/edge/edgeloop/lab/+/telemetry'
>>> topic_for("edgeloop/{site}/{device}/prediction", site="lab", device="dev-1")
'edgeloop/lab/dev-1/prediction'
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import secrets
import socket
import ssl
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeloop.config import BrokerSettings
from edgeloop.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)

Protocol = Literal["5", "3.1.1"]
MessageHandler = Callable[[mqtt.MQTTMessage], None]

RECONNECT_MIN_DELAY = 0.5
MAX_INFLIGHT = 1000  # QoS>0 messages on the wire at once; paho's default of 20 caps throughput
MAX_QUEUED = 100_000  # beyond the in-flight window; publish() returns MQTT_ERR_QUEUE_SIZE past this
_PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}
_WILDCARDS = re.compile(r"[/+#]")


def shared_filter(topic_filter: str, group: str | None) -> str:
    """The MQTT v5 shared-subscription form of ``topic_filter`` for ``group`` (unchanged when None).

    >>> shared_filter("a/#", None)
    'a/#'
    >>> shared_filter("a/#", "g/1")
    Traceback (most recent call last):
    ...
    ValueError: shared group name must not contain '/', '+' or '#': 'g/1'
    """
    if not group:
        return topic_filter
    if _WILDCARDS.search(group):
        raise ValueError(f"shared group name must not contain '/', '+' or '#': {group!r}")
    if topic_filter.startswith("$share/"):
        raise ValueError(f"topic filter is already shared: {topic_filter!r}")
    return f"$share/{group}/{topic_filter}"


def topic_for(template: str, **fields: str) -> str:
    """Fill ``{site}``/``{device}`` (or any named field) of a topic template.

    A value holding '/', '+' or '#' would change the topic's structure, so it is refused.

    >>> topic_for("edgeloop/{site}/events", site="s1")
    'edgeloop/s1/events'
    >>> topic_for("edgeloop/{site}/{device}/prediction", site="s1")
    Traceback (most recent call last):
    ...
    ValueError: topic template 'edgeloop/{site}/{device}/prediction' needs field 'device'
    """
    for name, value in fields.items():
        if not value or _WILDCARDS.search(value):
            raise ValueError(f"topic field {name}={value!r} must be non-empty without '/', '+' or '#'")
    try:
        return template.format(**fields)
    except KeyError as exc:
        raise ValueError(f"topic template {template!r} needs field {exc.args[0]!r}") from None


def jittered_backoff(attempt: int, cap: float, base: float = RECONNECT_MIN_DELAY) -> float:
    """Seconds before reconnect ``attempt`` n (1, 2, ...): uniform in [d/2, d], d = min(cap, base * 2^(n-1)).

    >>> all(0.25 <= jittered_backoff(1, 30) <= 0.5 for _ in range(100))
    True
    >>> all(15 <= jittered_backoff(12, 30) <= 30 for _ in range(100))
    True
    """
    delay = min(cap, base * 2 ** min(attempt - 1, 30))
    return random.uniform(delay / 2, delay)


def default_client_id(role: str, *, stable: bool = False) -> str:
    """``edgeloop-<role>-<host>-<pid>-<random>`` restricted to characters every broker accepts.

    Two clients with one id take the connection from each other, so transient clients get a random
    suffix. ``stable`` leaves out pid and suffix: a service with a persistent session must come back
    under the same id after a restart, or the broker keeps an orphaned session queueing its share.
    """
    suffix = "" if stable else f"-{os.getpid()}-{secrets.token_hex(3)}"
    raw = f"edgeloop-{role}-{socket.gethostname()}{suffix}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)


def _tls_context(settings: BrokerSettings) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"broker.tls_ca_file: cannot load CA bundle {settings.tls_ca_file}: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_cert_file is not None:
        try:
            ctx.load_cert_chain(
                str(settings.tls_cert_file), settings.tls_key_file and str(settings.tls_key_file)
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"broker.tls_cert_file/tls_key_file: cannot load client certificate "
                f"{settings.tls_cert_file}: {exc}"
            ) from exc
    return ctx


class _Client(mqtt.Client):
    """paho's client, minus a rescan that cost the edge a third of its CPU at QoS 1.

    On every PUBACK paho walks all unacknowledged messages looking for queued ones to send (up to
    1,000 with our in-flight limit). When every stored message is already in flight there is nothing
    to find, so the walk is skipped; otherwise paho's own code runs unchanged. Measured with
    ``edgeloop bench``: QoS 1 p99 at 5,000 msg/s from 1.3 s (a growing backlog) to 49 ms.
    """

    def _update_inflight(self) -> MQTTErrorCode:
        if len(self._out_messages) <= self._inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._update_inflight()


def make_client(
    settings: BrokerSettings,
    *,
    role: str,
    client_id: str | None = None,
    clean_start: bool | None = None,
    protocol: Protocol = "5",
) -> mqtt.Client:
    """A paho client configured from ``settings``; not yet connected (see :func:`connect`).

    ``clean_start`` only matters for MQTT 3.1.1, where the clean-session flag is fixed when the client
    is made (default True); with MQTT v5 it is chosen per connection by :func:`connect`.
    """
    if protocol not in _PROTOCOLS:
        raise ValueError(f"protocol must be '5' or '3.1.1', got {protocol!r}")
    v5 = protocol == "5"
    client = _Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or settings.client_id or default_client_id(role),
        clean_session=None if v5 else (True if clean_start is None else clean_start),
        protocol=_PROTOCOLS[protocol],
    )
    password = settings.resolved_password()
    if settings.username is not None:
        client.username_pw_set(settings.username, password)
    elif password is not None:
        log.warning("broker password is set but broker.username is not; connecting without credentials")
    if settings.tls:
        client.tls_set_context(_tls_context(settings))
        if settings.tls_insecure:
            client.tls_insecure_set(True)
    # paho annotates the delays as int but sleeps on floats; 0.5 s makes the first retry quick.
    client.reconnect_delay_set(RECONNECT_MIN_DELAY, settings.reconnect_max_delay)  # type: ignore[arg-type]
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(MAX_QUEUED)
    return client


_AUTH_CODES = {134, 135, 140}  # bad user name or password, not authorized, bad authentication method


def _refusal_message(where: str, reason: ReasonCode, username: str | None) -> str:
    text = f"broker at {where} refused the connection: {reason.getName()} (reason code {reason.value})"
    if reason.value in _AUTH_CODES and username is None:
        return text + ". It may require credentials: set broker.username and broker.password(_file)."
    if reason.value in _AUTH_CODES:
        return text + f". Check broker.username ({username!r}) and broker.password / broker.password_file."
    if reason.value == 133:  # client identifier not valid
        return text + ". Check broker.client_id."
    return text + "."


def _socket_error_message(where: str, exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate of the broker at {where} failed verification ({exc.verify_message}). "
            "Check broker.tls_ca_file names the CA that signed the broker's certificate and that the "
            "URL's host matches the certificate (broker.tls_insecure skips the host check; testing only)."
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake with {where} failed ({exc.reason or exc}). Check the port speaks TLS "
            "(mqtts://) and broker.tls_* files."
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve broker host of {where} ({exc.strerror}). Check broker.url."
    if isinstance(exc, ConnectionRefusedError):
        return f"connection to {where} refused. Check broker.url (host and port) and that the broker runs."
    if isinstance(exc, TimeoutError):
        return f"no answer from {where}. Check broker.url, the network and firewalls."
    return f"cannot connect to broker at {where}: {exc}. Check broker.url and the network."


def _clamp_inflight(client: mqtt.Client, properties: Properties | None) -> None:
    # paho 2.2 ignores the broker's Receive Maximum; sending more unacked QoS>0 messages than it
    # allows lets a strict MQTT v5 broker drop the connection (mosquitto 2.0 tolerates it). paho's
    # public setter refuses changes on an open connection, so set the field it reads per publish.
    receive_max = getattr(properties, "ReceiveMaximum", None)
    if receive_max and receive_max < client.max_inflight_messages:
        log.info("broker Receive Maximum is %d; limiting in-flight messages to it", receive_max)
        client._max_inflight_messages = receive_max


def connect(
    client: mqtt.Client,
    settings: BrokerSettings,
    *,
    clean_start: bool,
    session_expiry: int | None,
    timeout: float = 10,
) -> None:
    """Connect, start paho's network thread and wait for the broker's CONNACK.

    ``session_expiry`` (MQTT v5 only) is how long the broker keeps our session and queues QoS>0
    messages for us while we are away; with ``clean_start=False`` a reconnect resumes it. None means
    the session ends with the connection. With MQTT 3.1.1 both are ignored: the clean-session flag
    was fixed by :func:`make_client`. Raises :class:`BrokerError` naming what to check.
    """
    where = f"{settings.host}:{settings.port}"
    v5 = client.protocol == MQTTProtocolVersion.MQTTv5
    properties: Properties | None = None
    if v5 and session_expiry:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry
    outcome: dict[str, Any] = {}
    done = threading.Event()
    # The caller's own callbacks (e.g. MqttSession's) still run; they are typed as a union of paho's
    # callback API versions, and this client is VERSION2.
    user_on_connect: Callable[..., None] | None = client.on_connect
    user_on_disconnect: Callable[..., None] | None = client.on_disconnect

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if not reason.is_failure:
            _clamp_inflight(c, props)
        if user_on_connect is not None:
            user_on_connect(c, userdata, flags, reason, props)
        outcome.setdefault("reason", reason)
        done.set()

    def on_disconnect(c: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if user_on_disconnect is not None:
            user_on_disconnect(c, userdata, flags, reason, props)
        outcome.setdefault("closed", reason)
        done.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    try:
        client.connect_timeout = timeout
        kwargs: dict[str, Any] = {"clean_start": clean_start, "properties": properties} if v5 else {}
        try:
            client.connect(settings.host, settings.port, settings.keepalive, **kwargs)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(_socket_error_message(where, exc)) from exc
        client.loop_start()
        answered = done.wait(timeout)
    finally:
        client.on_connect, client.on_disconnect = user_on_connect, user_on_disconnect
    reason = outcome.get("reason")
    if reason is not None and not reason.is_failure:
        return
    # Stop paho from retrying a connection that cannot work.
    client.disconnect()
    client.loop_stop()
    if reason is not None:
        raise BrokerError(_refusal_message(where, reason, settings.username))
    if answered:
        raise BrokerError(
            f"broker at {where} closed the connection before answering ({outcome.get('closed')}). "
            "If it requires TLS use mqtts://; check it speaks MQTT"
            + (" v5" if v5 else "")
            + " and that broker.client_id is not rejected."
        )
    raise BrokerError(
        f"no MQTT answer from {where} within {timeout:g} s. Check broker.url points at an MQTT port "
        "(TLS ports need mqtts://)."
    )


class MqttSession:
    """Owns one paho client: connects, tracks ``connected``, and keeps subscriptions alive.

    When the broker did not keep our session across a reconnect (``session_present`` false), every
    wanted subscription is sent again. Exceptions raised by ``on_message`` are logged, not allowed to
    kill paho's network thread. Do not call :meth:`subscribe` from inside ``on_message`` (it waits
    for the SUBACK that this same thread would deliver).
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
    ) -> None:
        self.settings = settings
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.on_message = on_message
        self.client = make_client(
            settings, role=role, client_id=client_id, clean_start=clean_start, protocol=protocol
        )
        if not clean_start and session_expiry and not (client_id or settings.client_id):
            log.warning(
                "persistent MQTT session with a per-process client id: set broker.client_id so a restart "
                "resumes the session instead of leaving an orphan queue on the broker"
            )
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._wanted: dict[str, int] = {}  # topic filter -> qos
        self._active: set[str] = set()  # filters the broker holds for our current session
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._suback_cv = threading.Condition(self._lock)
        self._background_mids: dict[int, list[str]] = {}  # re-subscriptions sent by _on_connect
        self._attempt = 0
        self._closing = False
        self._last_publish: mqtt.MQTTMessageInfo | None = None
        self.disconnects = 0
        self.session_present: bool | None = None  # from the last successful CONNACK
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self, timeout: float = 10) -> Self:
        """Connect (raises :class:`BrokerError` when that fails); paho reconnects afterwards."""
        self._closing = False
        connect(
            self.client,
            self.settings,
            clean_start=self.clean_start,
            session_expiry=self.session_expiry,
            timeout=timeout,
        )
        return self

    def close(self, drain_timeout: float = 10.0) -> None:
        """Send what is still queued (up to ``drain_timeout`` s), disconnect, stop the network thread."""
        self._closing = True
        last = self._last_publish
        if last is not None and self.connected:
            # paho sends in order, so once the last publish is out, every earlier one is too. Not queued
            # (disconnected meanwhile): nothing to wait for.
            with contextlib.suppress(RuntimeError, ValueError):
                last.wait_for_publish(drain_timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self._connected.clear()

    def subscribe(
        self, filters: list[str], qos: int = 1, shared_group: str | None = None, *, timeout: float = 10
    ) -> None:
        """Subscribe now if connected (waits for the SUBACK) and again after any session loss.

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
            self._active.update(t for t, c in zip(topics, codes, strict=False) if not c.is_failure)
        if refused:
            raise BrokerError(f"broker refused subscription(s): {', '.join(refused)}")

    def publish(
        self, topic: str, payload: bytes | str, qos: int | None = None, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Publish (QoS defaults to ``broker.qos``); paho queues QoS>0 messages while disconnected."""
        info = self.client.publish(topic, payload, self.settings.qos if qos is None else qos, retain)
        self._last_publish = info
        return info

    # -- paho callbacks (run on paho's network thread) --------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused connection: %s (reason code %d)", reason.getName(), reason.value)
            return
        _clamp_inflight(client, props)
        self._attempt = 0
        self.session_present = bool(flags.session_present)
        with self._lock:
            if not flags.session_present:
                self._active.clear()
            missing = [(t, q) for t, q in self._wanted.items() if t not in self._active]
        if missing:
            rc, mid = client.subscribe(missing)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                with self._lock:
                    self._background_mids[mid] = [t for t, _ in missing]
                    self._active.update(t for t, _ in missing)
        log.info(
            "connected to %s:%d (session present: %s, re-subscribed: %d)",
            self.settings.host,
            self.settings.port,
            flags.session_present,
            len(missing),
        )
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._closing:
            log.debug("disconnected from broker on close")
            return
        if was_connected:
            self.disconnects += 1
            log.warning(
                "disconnected from broker: %s (reason code %d%s)",
                reason.getName(),
                reason.value,
                ", sent by broker" if flags.is_disconnect_packet_from_server else "",
            )
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
                for topic, code in zip(self._background_mids.pop(mid), codes, strict=False):
                    if code.is_failure:
                        self._active.discard(topic)
                        log.error("broker refused re-subscription to %s: %s", topic, code.getName())
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
