"""Private MQTT brokers for tests, demos and benchmarks, plus small broker helpers.

:class:`MosquittoBroker` runs a private ``mosquitto`` on a free port of 127.0.0.1 with its own
config file (never the machine's shared broker on 1883). :class:`EmbeddedBroker`
(:mod:`edgeloop.adapters.embedded_broker`) is the fallback when no mosquitto binary exists: an
in-process amqtt broker, which speaks MQTT 3.1.1 only. :func:`start_broker` picks one. The probes
(:mod:`edgeloop.adapters.broker_probe`) and test certificates (:mod:`edgeloop.adapters.certs`) are
importable from here too.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from edgeloop.adapters.broker_probe import _START_TIMEOUT, broker_answers, find_free_port
from edgeloop.adapters.certs import TlsFiles, make_test_certs
from edgeloop.adapters.embedded_broker import EmbeddedBroker
from edgeloop.config import BrokerSettings
from edgeloop.errors import BrokerError

__all__ = [
    "EmbeddedBroker",
    "MosquittoBroker",
    "TlsFiles",
    "broker_answers",
    "find_free_port",
    "make_test_certs",
    "mosquitto_binary",
    "mosquitto_password_line",
    "start_broker",
]

log = logging.getLogger(__name__)


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
    def pid(self) -> int | None:
        """The running mosquitto's process id (tests freeze and kill it)."""
        return self._proc.pid if self._proc is not None else None

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


def start_broker(prefer: Literal["auto", "mosquitto", "amqtt"] = "auto") -> MosquittoBroker | EmbeddedBroker:
    """Start a private broker: mosquitto if its binary exists (or ``prefer="mosquitto"``), else amqtt.

    The caller stops it (or uses it as a context manager). Check ``.protocol`` before connecting.
    """
    if prefer not in ("auto", "mosquitto", "amqtt"):
        raise ValueError(f"prefer must be auto, mosquitto or amqtt, got {prefer!r}")
    if prefer == "mosquitto" or (prefer == "auto" and mosquitto_binary() is not None):
        return MosquittoBroker().start()
    return EmbeddedBroker().start()
