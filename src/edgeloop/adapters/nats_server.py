"""A private ``nats-server`` for tests and benchmarks, configured from the shipped template.

:func:`render_config` fills in the places ``deploy/nats/nats-server.conf`` marks as TEMPLATE (site
id, partition count, ports, store dir, users); :class:`NatsServer` runs the result on free ports of
127.0.0.1 with its JetStream store in a temp dir (never the machine's shared server on 4222).

>>> text = 'port: 4222\\nmappings = { "edgeloop.site-1.*.telemetry": "x.{{partition(8,1)}}" }'
>>> print(render_config(text, site="lab", partitions=3, port=1, mqtt_port=2, http_port=3,
...                     store_dir="/tmp/x", users="users = []"))
port: 1
mappings = { "edgeloop.lab.*.telemetry": "x.{{partition(3,1)}}" }
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from edgeloop.adapters.broker import find_free_port
from edgeloop.errors import BrokerError

TEMPLATE_SITE = "site-1"
_START_TIMEOUT = 20.0


def nats_server_binary() -> str | None:
    """Path of nats-server, or None. Debian installs it in /usr/sbin, often not on PATH."""
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in ("/usr/sbin/nats-server", "/usr/local/bin/nats-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def render_config(
    template: str,
    *,
    site: str,
    partitions: int,
    port: int,
    mqtt_port: int,
    http_port: int,
    store_dir: str,
    users: str,
    host: str = "127.0.0.1",
    server_name: str = "edgeloop-test",
) -> str:
    """The shipped server config with its TEMPLATE places filled in (``users`` replaces the include)."""
    text = template.replace(TEMPLATE_SITE, site)
    text = re.sub(r"\{\{partition\(\d+,", f"{{{{partition({partitions},", text)
    text = re.sub(r"(?m)^port: \d+", f"port: {port}", text)
    text = re.sub(r"(?m)^http_port: \d+", f"http_port: {http_port}", text)
    text = re.sub(r"(?m)^(\s+)port: 1883", rf"\g<1>port: {mqtt_port}", text)
    text = re.sub(r"(?m)^(\s*)host: 0\.0\.0\.0", rf"\g<1>host: {host}", text)
    text = re.sub(r'store_dir: "[^"]*"', f'store_dir: "{store_dir}"', text)
    text = re.sub(r"(?m)^server_name: \S+", f"server_name: {server_name}", text)
    return text.replace('include "users.conf"', users)


def render_users(
    template: str, *, site: str, devices: dict[str, str], edge_password: str, observer_password: str
) -> str:
    """The shipped ``users.conf`` for ``site`` with its device examples replaced by ``devices``."""
    head = template.split("# devices", 1)[0].replace(TEMPLATE_SITE, site)
    head = head.replace("$EDGELOOP_NATS_EDGE_PASSWORD", f'"{edge_password}"')
    head = head.replace("$EDGELOOP_NATS_OBSERVER_PASSWORD", f'"{observer_password}"')
    entries = "\n".join(device_user(site, d, pw) for d, pw in devices.items())
    return f"{head}{entries}\n]\n"


def device_user(site: str, device: str, password: str) -> str:
    """One device's entry of ``users``: it may publish only its own telemetry (see users.conf)."""
    return (
        f'{{user: "{device}", password: "{password}", permissions: {{'
        f'publish: ["edgeloop.{site}.p.*.{device}.telemetry"], '
        f'subscribe: ["edgeloop.{site}.{device}.>", "$MQTT.sub.>"]}}}}'
    )


def simulator_user(site: str, user: str, password: str) -> str:
    """A load generator's entry of ``users``: it may publish the telemetry of every device of the site.

    For ``edgeloop simulate`` (one connection for all devices) on test and staging sites only: it
    lifts the rule that a device publishes only its own telemetry.
    """
    return (
        f'{{user: "{user}", password: "{password}", permissions: {{'
        f'publish: ["edgeloop.{site}.p.*.*.telemetry"], subscribe: ["$MQTT.sub.>"]}}}}'
    )


class NatsServer:
    """A private nats-server started from a full config text; ``{store_dir}`` etc. already filled in."""

    def __init__(self, config: str, *, port: int, mqtt_port: int, binary: str | None = None) -> None:
        self.config = config
        self.port = port
        self.mqtt_port = mqtt_port
        self.host = "127.0.0.1"
        self.binary = binary or nats_server_binary()
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeloop-nats-")
        self.dir = Path(self._tmp.name)

    @classmethod
    def from_template(cls, template: str, *, site: str, partitions: int, users: str) -> NatsServer:
        """Render the shipped template on free ports with the store in a temp dir of its own."""
        port, mqtt_port, http_port = find_free_port(), find_free_port(), find_free_port()
        server = cls("", port=port, mqtt_port=mqtt_port)
        server.config = render_config(
            template,
            site=site,
            partitions=partitions,
            port=port,
            mqtt_port=mqtt_port,
            http_port=http_port,
            store_dir=str(server.dir / "jetstream"),
            users=users,
        )
        return server

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.host}:{self.mqtt_port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "nats-server.log"

    def start(self) -> Self:
        if self.binary is None:
            raise BrokerError("nats-server not found (Debian: apt install nats-server)")
        conf = self.dir / "nats-server.conf"
        conf.write_text(self.config)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"nats-server exited at start:\n{self.log_path.read_text()[-2000:]}")
            if all(_listening(self.host, p) for p in (self.port, self.mqtt_port)):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"nats-server did not listen within {_START_TIMEOUT:g} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
