"""Who may see the dashboard, and what it shows of itself: the login, the page icon, the broker URL.

Bound to loopback (the default) the dashboard needs no login: only this machine reaches it. Bound
to any other address it refuses to start without a secret file (``EDGELOOP_DASHBOARD_AUTH_FILE`` or
``--auth-file`` after ``--``), a token or password on its first line; every browser session then
asks for it once. ``EDGELOOP_DASHBOARD_LOGIN_BY_PROXY=true`` states instead that something in front
does the login or limits who reaches the port (the container manifests: a port published on the
host's loopback, a ClusterIP Service). The secret is compared in constant time and never logged or shown.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from PIL import Image, ImageDraw

from edgeloop.errors import ConfigError

AUTH_ENV = "EDGELOOP_DASHBOARD_AUTH_FILE"
# Set (to "true") where something in front already does the login or limits who reaches the port: an
# authenticating proxy, a container port published on the host's loopback, a ClusterIP Service.
PROXY_ENV = "EDGELOOP_DASHBOARD_LOGIN_BY_PROXY"


def login_by_proxy(environ: Mapping[str, str]) -> bool:
    return environ.get(PROXY_ENV, "").strip().lower() in ("1", "true", "yes")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only.

    >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "", "192.168.1.5")]
    [True, True, True, False, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:  # a name: loopback only if every address it resolves to is
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def read_secret(path: Path) -> str:
    """The first line of the secret file; :class:`ConfigError` naming the file (never its content)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"dashboard auth file {path}: cannot be read ({exc.__class__.__name__})") from None
    secret = lines[0].strip() if lines else ""
    if len(secret) < 8:
        raise ConfigError(f"dashboard auth file {path}: its first line must hold a secret of 8+ characters")
    return secret


def require_auth(host: str, auth_file: Path | None, *, by_proxy: bool = False) -> None:
    """Refuse (one :class:`ConfigError` line) to serve beyond loopback without a usable secret, unless
    ``by_proxy`` says the login happens in front of the dashboard."""
    if auth_file is not None:
        read_secret(auth_file)
    elif not is_loopback(host) and not by_proxy:
        raise ConfigError(
            f"refusing to serve the dashboard on {host} without a login: give a token or password file "
            f"with {AUTH_ENV}=FILE, or bind 127.0.0.1 (or set {PROXY_ENV}=true behind a login proxy)"
        )


def matches(given: str, secret: str) -> bool:
    """Constant-time comparison of what was typed with the secret."""
    return hmac.compare_digest(given.strip().encode(), secret.encode())


def redact_url(url: str) -> str:
    """``url`` without a password, as it may be shown.

    >>> redact_url("mqtts://edge:s3cret@broker.lan:8883"), redact_url("mqtt://127.0.0.1:1883")
    ('mqtts://edge:***@broker.lan:8883', 'mqtt://127.0.0.1:1883')
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@functools.cache
def page_icon() -> Image.Image:
    """The browser tab's icon, drawn here: the page fetches nothing from the internet."""
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    white = (255, 255, 255, 255)
    draw.rounded_rectangle((2, 2, 62, 62), radius=14, fill=(14, 165, 183, 255))
    draw.arc((12, 12, 52, 52), start=30, end=320, fill=white, width=6)  # the loop
    draw.polygon([(50, 20), (56, 36), (40, 32)], fill=white)
    draw.ellipse((26, 26, 38, 38), fill=white)  # the sensor
    return im


def exposed(address: str | None, host_header: str | None) -> bool:
    """Whether this server is reachable beyond this machine: bound to a non-loopback address, or to
    every interface (no address given) while serving real HTTP requests (a ``Host`` header)."""
    if address:
        return not is_loopback(address)
    return host_header is not None


def login_gate(auth_file: Path | None, *, by_proxy: bool = False) -> None:
    """Stop the page unless this session signed in, or no login is needed (loopback, no secret file)."""
    import time

    import streamlit as st

    if st.session_state.get("_signed_in"):
        return
    if auth_file is None:
        if not by_proxy and exposed(st.get_option("server.address"), st.context.headers.get("Host")):
            st.error(
                "This dashboard is reachable beyond this machine without a login. Restart it with "
                f"`{AUTH_ENV}=FILE` (a token or password on its first line), or bind 127.0.0.1.",
                icon=":material/lock:",
            )
            st.stop()
        return
    try:
        secret = read_secret(auth_file)
    except ConfigError as exc:
        st.error(str(exc), icon=":material/lock:")
        st.stop()
    with st.form("login"):
        st.markdown("#### :material/lock: edgeloop · sign in")
        given = st.text_input("Token or password", type="password", key="_login_secret")
        if st.form_submit_button("Sign in"):
            if matches(given, secret):
                st.session_state["_signed_in"] = True
                del st.session_state["_login_secret"]
                st.rerun()
            time.sleep(1.0)  # slows guessing
            st.error("Wrong token or password.")
    st.stop()
