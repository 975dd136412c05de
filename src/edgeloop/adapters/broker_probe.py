"""Is an MQTT broker there: a free local port, and a CONNECT/CONNACK probe of a host and port.

>>> port = find_free_port()
>>> 1024 <= port <= 65535
True
>>> broker_answers("127.0.0.1", port, timeout=0.2)
False
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import ssl
import struct

_START_TIMEOUT = 10.0  # seconds a private broker may take to answer after it started


def find_free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _probe_connect_packet() -> bytes:
    # A minimal MQTT 3.1.1 CONNECT (clean session, keepalive 10 s) with a random client id.
    client_id = f"edgeloop-probe-{secrets.token_hex(4)}".encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"
    payload = struct.pack("!H", len(client_id)) + client_id
    body = variable + payload
    return bytes([0x10, len(body)]) + body


def broker_answers(
    host: str, port: int, timeout: float = 1.0, ssl_context: ssl.SSLContext | None = None
) -> bool:
    """True if an MQTT broker answers on host:port: TCP connect plus a CONNECT/CONNACK round trip.

    Any CONNACK counts, even "not authorized", so a broker requiring a password still answers;
    a port that accepts TCP but does not speak MQTT does not. Pass ``ssl_context`` for a TLS port.
    """
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
            if ssl_context is not None:
                sock = stack.enter_context(ssl_context.wrap_socket(sock, server_hostname=host))
            sock.sendall(_probe_connect_packet())
            answer = sock.recv(4)
            if answer[:1] == b"\x20":
                sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
                return True
            return False
    except (OSError, ssl.SSLError):
        return False
