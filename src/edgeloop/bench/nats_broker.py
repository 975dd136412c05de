"""The bench's private NATS server: the shipped ``deploy/nats`` config, one bench user, one site.

The server runs the shipped template (JetStream, the MQTT listener, the device-partition mapping) for
the bench's site, on free ports of 127.0.0.1, with its store in a temp dir. The template's per-device
users are replaced by one ``bench`` user without permission limits: the load generator publishes the
telemetry of every simulated device over one connection, which per-device users would forbid (the
per-device authorisation itself is tested in ``tests/integration/test_nats_transport.py``).

The mapping names one site, so every NATS window of a run uses that site; :meth:`BenchNats.reset`
deletes the edges' stream, consumers and lease bucket between configurations, so each starts empty
(no replay of an earlier configuration's readings).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path
from typing import Any, Self

import nats
import nats.js.errors

import edgeloop
from edgeloop.adapters.nats_server import NatsServer
from edgeloop.adapters.nats_subjects import Subjects, _name
from edgeloop.bench import BenchError

USER = "bench"
TELEMETRY_FILTER = "edgeloop/{site}/+/telemetry"


def deploy_dir() -> Path:
    """``deploy/nats`` of the source tree the running edgeloop comes from."""
    return Path(edgeloop.__file__).resolve().parents[2] / "deploy" / "nats"


class BenchNats:
    """A private nats-server for one bench site, and how the bench's clients reach it."""

    def __init__(self, workdir: Path, *, site: str, partitions: int) -> None:
        template = deploy_dir() / "nats-server.conf"
        if not template.exists():
            raise BenchError(f"--broker nats needs the shipped server config {template} (a source checkout)")
        self.site = site
        self.partitions = partitions
        self.subjects = Subjects(TELEMETRY_FILTER, site)
        self.password_file = workdir / "nats-bench-password"
        self.password = secrets.token_hex(12)
        self.password_file.write_text(self.password + "\n")
        self.password_file.chmod(0o600)
        users = f'users = [ {{user: "{USER}", password: "{self.password}"}} ]'
        self.server = NatsServer.from_template(
            template.read_text(), site=site, partitions=partitions, users=users
        )

    def start(self) -> Self:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.close()

    @property
    def pid(self) -> int:
        proc = self.server._proc
        return proc.pid if proc is not None else 0

    @property
    def url(self) -> str:
        return self.server.url

    # -- how clients reach it (plain dicts: they cross process boundaries) -----------------------------
    def mqtt_broker(self) -> dict[str, Any]:
        """Broker settings of the MQTT listener (the load generator; MQTT 3.1.1 only)."""
        return {"url": self.server.mqtt_url, "username": USER, "password_file": str(self.password_file)}

    def nats_broker(self) -> dict[str, Any]:
        """Broker settings of the NATS port (the edges)."""
        return {
            "url": self.server.url,
            "username": USER,
            "password_file": str(self.password_file),
            "partitions": self.partitions,
        }

    def client(self) -> dict[str, Any]:
        """``nats.connect`` keyword arguments for the bench's own nats-py clients."""
        return {"servers": [self.server.url], "user": USER, "password": self.password}

    @property
    def stream(self) -> str:
        """The edges' stream (named as :class:`~edgeloop.adapters.nats_transport.NatsTransport` names it)."""
        return f"EDGELOOP_{_name(self.site)}"

    def reset(self) -> None:
        """Delete the edges' stream (and its consumers) and lease bucket: the next edges start empty."""
        asyncio.run(self._reset())

    async def _reset(self) -> None:
        nc = await nats.connect(**self.client(), connect_timeout=5)
        try:
            js = nc.jetstream(timeout=10)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(self.stream)
            with contextlib.suppress(nats.js.errors.NotFoundError, nats.js.errors.BucketNotFoundError):
                await js.delete_key_value(f"edgeloop_leases_{_name(self.site)}")
        except (TimeoutError, nats.errors.Error) as exc:
            raise BenchError(f"could not reset the bench's NATS stream: {exc!r}") from exc
        finally:
            await nc.close()
