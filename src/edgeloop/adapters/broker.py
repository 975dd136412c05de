"""Private MQTT brokers for tests, demos and benchmarks, plus small broker helpers.

:class:`MosquittoBroker` runs a private ``mosquitto`` on a free port of 127.0.0.1 with its own
config file (never the machine's shared broker on 1883). :class:`EmbeddedBroker` is the fallback when
no mosquitto binary exists: an in-process amqtt broker, which speaks MQTT 3.1.1 only.

>>> port = find_free_port()
>>> 1024 <= port <= 65535
True
>>> broker_answers("127.0.0.1", port, timeout=0.2)
False
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import getpass
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from edgeloop.config import BrokerSettings
from edgeloop.errors import BrokerError

log = logging.getLogger(__name__)

_START_TIMEOUT = 10.0


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS listener: the CA that signed the server cert, the cert and its key."""

    ca: Path
    cert: Path
    key: Path


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


def mosquitto_binary() -> str | None:
    """Path of the mosquitto binary, or None. Debian installs it in /usr/sbin, often not on PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def mosquitto_password_line(username: str, password: str) -> str:
    """One password-file line in mosquitto 2's PBKDF2-SHA512 format (what ``mosquitto_passwd`` writes).

    Writing it ourselves avoids depending on the ``mosquitto_passwd`` tool.

    >>> mosquitto_password_line("edge", "pw").startswith("edge:$7$101$")
    True
    """
    iterations = 101  # mosquitto_passwd's default
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{username}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class MosquittoBroker:
    """A private mosquitto on a free port of 127.0.0.1, with its own config in a temp dir.

    ``users`` turns on password auth (anonymous clients are refused); ``tls`` makes the listener
    TLS-only (``mqtts://``). ``port`` pins the port (to restart a broker where clients expect it);
    by default a free one is picked. The config raises ``max_queued_messages`` far above mosquitto's default
    of 1000 so a QoS 1 backlog for an offline persistent session is not dropped.
    """

    protocol = "5"

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        binary: str | None = None,
        port: int | None = None,
        max_queued_messages: int = 100_000,
        max_inflight_messages: int = 1000,
        extra_config: str = "",
        persistence: bool = False,
        autosave_interval: int = 1800,
    ) -> None:
        self.persistence = persistence
        self.autosave_interval = autosave_interval
        self.users = dict(users or {})
        self.tls = tls
        self.binary = binary or mosquitto_binary()
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.extra_config = extra_config
        self.host = "127.0.0.1"
        self._fixed_port = port
        self.port = port or 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return Path(self._tmp.name) / "mosquitto.log" if self._tmp else None

    def settings(self, **overrides: Any) -> BrokerSettings:
        """BrokerSettings pointing at this broker (URL and, with TLS, the CA); overrides win."""
        values: dict[str, Any] = {"url": self.url}
        if self.tls:
            values["tls_ca_file"] = self.tls.ca
        values.update(overrides)
        return BrokerSettings(**values)

    def _config(self, workdir: Path) -> str:
        lines = [
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            *(
                [
                    "persistence true",
                    f"persistence_location {workdir}/",
                    f"autosave_interval {self.autosave_interval}",
                ]
                if self.persistence
                else ["persistence false"]
            ),
            f"max_queued_messages {self.max_queued_messages}",
            "max_queued_bytes 0",
            f"max_inflight_messages {self.max_inflight_messages}",
            "set_tcp_nodelay true",
            f"log_dest file {workdir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # As root mosquitto drops to the 'mosquitto' user, who cannot read our temp dir.
            f"user {getpass.getuser()}",
        ]
        if self.users:
            passwd = workdir / "passwd"
            passwd.write_text("".join(mosquitto_password_line(u, p) + "\n" for u, p in self.users.items()))
            passwd.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.cert}",
                f"keyfile {self.tls.key}",
                "tls_version tlsv1.2",
                "require_certificate false",
            ]
        return "\n".join(lines) + "\n" + self.extra_config + "\n"

    def _probe_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls.ca))
        ctx.check_hostname = False  # liveness probe only; clients verify properly
        return ctx

    def start(self) -> Self:
        """Start mosquitto; after :meth:`kill` it comes back on the same port with the same files."""
        if self._proc is not None:
            return self
        if self.binary is None:
            raise BrokerError(
                "no mosquitto binary found on PATH or in /usr/sbin: install mosquitto "
                "(apt-get install mosquitto) or use EmbeddedBroker"
            )
        restart = self._tmp is not None
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgeloop-mosquitto-")
        workdir = Path(self._tmp.name)
        last_error = ""
        for _attempt in range(3):  # the free port can be taken between probe and bind
            if not restart:
                self.port = self._fixed_port or find_free_port()
            conf = workdir / "mosquitto.conf"
            conf.write_text(self._config(workdir))
            stderr = (workdir / "stderr.log").open("wb")
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr
            )
            stderr.close()
            deadline = time.monotonic() + _START_TIMEOUT
            while time.monotonic() < deadline and self._proc.poll() is None:
                if broker_answers(self.host, self.port, timeout=0.5, ssl_context=self._probe_context()):
                    log.info("private mosquitto (pid %d) listening on %s", self._proc.pid, self.url)
                    return self
                time.sleep(0.05)
            last_error = self._log_tail()
            self._terminate()
            if restart or self._fixed_port or "Address already in use" not in last_error:
                break
        self._cleanup_tmp()
        raise BrokerError(f"private mosquitto did not start within {_START_TIMEOUT:.0f} s:\n{last_error}")

    def _log_tail(self, lines: int = 20) -> str:
        text = ""
        if self._tmp:
            for name in ("stderr.log", "mosquitto.log"):
                path = Path(self._tmp.name) / name
                if path.exists():
                    text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _cleanup_tmp(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def kill(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop mosquitto with ``sig`` and wait for it, keeping port, config and persistence files.

        SIGTERM lets mosquitto write its persistence file; SIGKILL keeps only the last autosave
        (``autosave_interval``). :meth:`start` brings it back.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self, sig: signal.Signals = signal.SIGTERM, down: float = 0.0) -> Self:
        """:meth:`kill` with ``sig``, stay down ``down`` seconds, start again on the same port."""
        self.kill(sig)
        time.sleep(down)
        return self.start()

    def stop(self) -> None:
        """Terminate mosquitto and wait for it; remove its temp dir."""
        self._terminate()
        self._cleanup_tmp()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedBroker:
    """An in-process amqtt broker on a free port of 127.0.0.1, run by its own asyncio loop in a thread.

    The fallback when no mosquitto binary exists. amqtt speaks **MQTT 3.1.1 only** (no v5 session
    expiry, no shared subscriptions), so clients must connect with ``protocol="3.1.1"``: read
    :attr:`protocol` and pass it to ``make_client``. Anonymous access only.
    """

    protocol = "3.1.1"
    tls = None

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def settings(self, **overrides: Any) -> BrokerSettings:
        """BrokerSettings pointing at this broker; overrides win."""
        return BrokerSettings(**{"url": self.url, **overrides})

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # Only anonymous auth: the default plugin set adds a $SYS publisher and packet logging.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    async def _serve(self) -> None:
        from amqtt.broker import Broker  # imported lazily: amqtt is heavy and only a fallback

        self._stop = asyncio.Event()
        broker = Broker(self._config())
        try:
            await broker.start()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await broker.shutdown()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    def start(self) -> Self:
        if self._thread is not None:
            return self
        self.port = find_free_port()
        self._started.clear()
        self._thread = threading.Thread(target=self._run, name=f"amqtt-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT) or self._error is not None:
            self.stop()
            raise BrokerError(f"embedded amqtt broker did not start on {self.url}: {self._error}")
        deadline = time.monotonic() + _START_TIMEOUT
        while not broker_answers(self.host, self.port, timeout=0.5):
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"embedded amqtt broker on {self.url} does not answer")
            time.sleep(0.05)
        log.info("embedded amqtt broker listening on %s (MQTT 3.1.1)", self.url)
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_broker(prefer: Literal["auto", "mosquitto", "amqtt"] = "auto") -> MosquittoBroker | EmbeddedBroker:
    """Start a private broker: mosquitto if its binary exists (or ``prefer="mosquitto"``), else amqtt.

    The caller stops it (or uses it as a context manager). Check ``.protocol`` before connecting.
    """
    if prefer not in ("auto", "mosquitto", "amqtt"):
        raise ValueError(f"prefer must be auto, mosquitto or amqtt, got {prefer!r}")
    if prefer == "mosquitto" or (prefer == "auto" and mosquitto_binary() is not None):
        return MosquittoBroker().start()
    return EmbeddedBroker().start()


def make_test_certs(directory: Path, hostname: str = "localhost") -> TlsFiles:
    """A self-signed CA and a server cert for ``hostname`` and 127.0.0.1, written to ``directory``.

    For tests only (short-lived, unprotected keys). Uses the ``cryptography`` package when importable,
    else the ``openssl`` CLI.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        _certs_with_openssl(files, hostname)
    else:
        _certs_with_cryptography(files, hostname)
    files.key.chmod(0o600)
    return files


def _certs_with_cryptography(files: TlsFiles, hostname: str) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeloop test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _certs_with_openssl(files: TlsFiles, hostname: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BrokerError("making test certificates needs the cryptography package or the openssl CLI")
    work = files.ca.parent
    ca_key, csr, ext = work / "ca.key", work / "server.csr", work / "server.ext"
    ext.write_text(
        f"subjectAltName=DNS:{hostname},IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    commands = [
        [openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(files.ca), "-days", "2",
         "-subj", "/CN=edgeloop test CA", "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-new", *ec, "-keyout", str(files.key), "-out", str(csr),
         "-subj", f"/CN={hostname}"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(files.ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(files.cert), "-days", "2", "-extfile", str(ext)],
    ]  # fmt: skip
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BrokerError(f"openssl failed making test certificates: {done.stderr.strip()}")
