"""The in-process amqtt broker: the fallback when no mosquitto binary exists (MQTT 3.1.1 only)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from types import TracebackType
from typing import Any, Self

from edgeloop.adapters.broker_probe import _START_TIMEOUT, broker_answers, find_free_port
from edgeloop.config import BrokerSettings
from edgeloop.errors import BrokerError

log = logging.getLogger(__name__)


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
