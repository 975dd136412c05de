"""Building and connecting one paho-mqtt 2 client, with errors that say what to check.

``make_client`` configures a client from :class:`BrokerSettings`; ``connect`` connects it, starts
paho's network thread and waits for the CONNACK. Failures raise :class:`BrokerError`; the ones worth
waiting out (nothing listens yet, no answer, broker busy) raise its subclass :class:`BrokerUnavailable`,
so a service can wait for a broker that boots after it while a wrong password or an untrusted
certificate still fails at once.

The client is paho's with the stand-ins of :mod:`edgeloop.adapters.paho_internals` on the paho
versions they were verified with; :func:`_clamp_inflight` also lowers paho's in-flight limit to the
broker's Receive Maximum on an open connection (a private field, which paho's public setter refuses),
under the same guard.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeloop.adapters.backoff import RECONNECT_MIN_DELAY
from edgeloop.adapters.paho_internals import (
    PAHO_VERSION,
    PRIVATE_API_OK,
    _Client,
    _use_lean_stand_ins,
)
from edgeloop.config import BrokerSettings
from edgeloop.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)

MAX_INFLIGHT = 1000  # QoS>0 messages on the wire at once; paho's default of 20 caps throughput
MAX_QUEUED = 100_000  # beyond the in-flight window; publish() returns MQTT_ERR_QUEUE_SIZE past this
Protocol = Literal["5", "3.1.1"]
PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached right now (refused, no answer, busy); waiting may help."""


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


def default_client_id(role: str, *, stable: bool = False) -> str:
    """``edgeloop-<role>-<host>-<pid>-<random>`` restricted to characters every broker accepts.

    Two clients with one id take the connection from each other, so transient clients get a random
    suffix. ``stable`` leaves out pid and suffix: a service with a persistent session must come back
    under the same id after a restart, or the broker keeps an orphaned session queueing its share.

    >>> default_client_id("edge-lab", stable=True) == "edgeloop-edge-lab-" + re.sub(
    ...     r"[^A-Za-z0-9_-]", "-", socket.gethostname())
    True
    """
    suffix = "" if stable else f"-{os.getpid()}-{secrets.token_hex(3)}"
    raw = f"edgeloop-{role}-{socket.gethostname()}{suffix}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)


def make_client(
    settings: BrokerSettings,
    *,
    role: str,
    client_id: str | None = None,
    clean_start: bool | None = None,
    protocol: Protocol = "5",
    manual_ack: bool = False,
) -> mqtt.Client:
    """A paho client configured from ``settings``; not yet connected (see :func:`connect`).

    ``clean_start`` only matters for MQTT 3.1.1, where the clean-session flag is fixed when the client
    is made (default True); with MQTT v5 it is chosen per connection by :func:`connect`. With
    ``manual_ack`` QoS>0 deliveries are acknowledged only by ``client.ack(mid, qos)``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be '5' or '3.1.1', got {protocol!r}")
    v5 = protocol == "5"
    _use_lean_stand_ins()
    client = _Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or settings.client_id or default_client_id(role),
        clean_session=None if v5 else (True if clean_start is None else clean_start),
        protocol=PROTOCOLS[protocol],
        manual_ack=manual_ack,
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
_BUSY_CODES = {136, 137}  # server unavailable, server busy: worth waiting for
SESSION_TAKEN_OVER = 142


def _refusal_message(where: str, reason: ReasonCode, username: str | None) -> str:
    text = f"broker at {where} refused the connection: {reason.getName()} (reason code {reason.value})"
    if reason.value in _AUTH_CODES and username is None:
        return text + ". It may require credentials: set broker.username and broker.password(_file)."
    if reason.value in _AUTH_CODES:
        return text + f". Check broker.username ({username!r}) and broker.password / broker.password_file."
    if reason.value == 133:  # client identifier not valid
        return text + ". Check broker.client_id."
    return text + "."


def _socket_error(where: str, exc: BaseException) -> BrokerError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BrokerError(
            f"TLS certificate of the broker at {where} failed verification ({exc.verify_message}). "
            "Check broker.tls_ca_file names the CA that signed the broker's certificate and that the "
            "URL's host matches the certificate (broker.tls_insecure skips the host check; testing only)."
        )
    if isinstance(exc, ssl.SSLError):
        return BrokerError(
            f"TLS handshake with {where} failed ({exc.reason or exc}). Check the port speaks TLS "
            "(mqtts://) and broker.tls_* files."
        )
    if isinstance(exc, socket.gaierror):
        return BrokerError(f"cannot resolve broker host of {where} ({exc.strerror}). Check broker.url.")
    if isinstance(exc, ConnectionRefusedError):
        return BrokerUnavailable(
            f"connection to {where} refused. Check broker.url (host and port) and that the broker runs."
        )
    if isinstance(exc, TimeoutError):
        return BrokerUnavailable(f"no answer from {where}. Check broker.url, the network and firewalls.")
    return BrokerUnavailable(f"cannot connect to broker at {where}: {exc}. Check broker.url and the network.")


def _clamp_inflight(client: mqtt.Client, properties: Properties | None) -> None:
    # paho 2.2 ignores the broker's Receive Maximum; sending more unacked QoS>0 messages than it
    # allows lets a strict MQTT v5 broker drop the connection (mosquitto 2.0 tolerates it). paho's
    # public setter refuses changes on an open connection, so set the field it reads per publish.
    receive_max = getattr(properties, "ReceiveMaximum", None)
    if receive_max and receive_max < client.max_inflight_messages:
        if not PRIVATE_API_OK:
            log.warning("broker Receive Maximum is %d; paho %s cannot honour it", receive_max, PAHO_VERSION)
            return
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
    the session ends with the connection. ``broker.receive_maximum`` bounds the QoS>0 deliveries the
    broker leaves unacknowledged with us (its flow control). With MQTT 3.1.1 these are ignored: the
    clean-session flag was fixed by :func:`make_client`. Raises :class:`BrokerError` naming what to
    check (:class:`BrokerUnavailable` when waiting may help).
    """
    where = f"{settings.host}:{settings.port}"
    v5 = client.protocol == MQTTProtocolVersion.MQTTv5
    properties: Properties | None = None
    if v5:
        properties = Properties(PacketTypes.CONNECT)
        properties.ReceiveMaximum = settings.receive_maximum
        if session_expiry:
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
        if client.connect_timeout != timeout:  # paho refuses the setter after a failed attempt
            client.connect_timeout = timeout
        kwargs: dict[str, Any] = {"clean_start": clean_start, "properties": properties} if v5 else {}
        try:
            client.connect(settings.host, settings.port, settings.keepalive, **kwargs)
        except (OSError, ssl.SSLError) as exc:
            raise _socket_error(where, exc) from exc
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
        error = BrokerUnavailable if reason.value in _BUSY_CODES else BrokerError
        raise error(_refusal_message(where, reason, settings.username))
    if answered:
        raise BrokerError(
            f"broker at {where} closed the connection before answering ({outcome.get('closed')}). "
            "If it requires TLS use mqtts://; check it speaks MQTT"
            + (" v5" if v5 else "")
            + " and that broker.client_id is not rejected."
        )
    raise BrokerUnavailable(
        f"no MQTT answer from {where} within {timeout:g} s. Check broker.url points at an MQTT port "
        "(TLS ports need mqtts://)."
    )
