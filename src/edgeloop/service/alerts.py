"""Alerts for the on-call engineer: a webhook (JSON POST) and an MQTT topic, rate limited.

The edge hands every event it emits to :func:`offer`; the kinds in ``alerts.kinds`` become alerts
(``drift_detected``, ``model_rolled_back``, ``model_demoted``, ``retrain_failed``, and
``device_silent``, which :class:`SilenceWatch` raises when a device stops reporting). Kinds are
matched by name, so an event kind added later needs only a config entry.

Sending never blocks the message loop: :meth:`Alerter.offer` rate-limits and puts the alert on a
bounded queue; one background thread sends. A full queue drops the alert and counts it
(``Alerter.dropped``). Per (kind, scope) at most one alert goes out per ``alerts.min_interval_s``;
the ones held back are counted and reported as ``suppressed`` in the next one.

An alert::

    {"alert": "drift_detected", "site": "site-1", "scope": "voc_ppb@dev-001",
     "time": "2026-12-02T16:07:00+00:00", "reason": "...", "version": "voc_ppb:v3",
     "previous_version": null, "suppressed": 0}
"""

from __future__ import annotations

import contextlib
import logging
import queue
import statistics
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from edgeloop.config import Settings
from edgeloop.telemetry.schema import Event

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Any]
SILENT = "device_silent"
RECENT_GAPS = 32  # per device: enough for a stable median, small enough to follow a new cadence


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class Alerter:
    """Rate-limits alerts and sends them from one background thread (start with :meth:`start`)."""

    def __init__(
        self,
        settings: Settings,
        publish: Publish | None = None,
        *,
        clock: Callable[[], float] = time.time,
        owner: weakref.ref[Any] | None = None,
    ) -> None:
        cfg = settings.alerts
        self.site = settings.site
        self.kinds = frozenset(cfg.kinds)
        self.min_interval = cfg.min_interval_s
        self.webhook_url = cfg.webhook_url
        self.webhook_timeout = cfg.webhook_timeout_s
        self.topic = settings.topics.alerts.format(site=settings.site) if cfg.mqtt else None
        self.publish = publish if self.topic else None
        # Ends the sending thread once the owner (the edge service) is gone.
        self._owner = owner
        self.clock = clock
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(cfg.queue_size)
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self._limit_lock = threading.Lock()  # the message loop and the silence watch both raise alerts
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.suppressed = 0

    @property
    def enabled(self) -> bool:
        return bool(self.kinds) and (self.webhook_url is not None or self.publish is not None)

    def start(self) -> Alerter:
        if self._thread is None and self.enabled:
            self._thread = threading.Thread(target=self._run, name="edgeloop-alerts", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``), then stop the thread."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def offer(self, events: Iterable[Event]) -> None:
        """Turn the alerting kinds among ``events`` into alerts; cheap, never blocks, never raises."""
        if not self.enabled:
            return
        for event in events:
            if event.kind in self.kinds:
                self.raise_alert(event.kind, event.scope, event.reason, event.version, event.previous_version)

    def raise_alert(
        self,
        kind: str,
        scope: str,
        reason: str,
        version: str | None = None,
        previous_version: str | None = None,
    ) -> bool:
        """Queue one alert unless (kind, scope) alerted within ``min_interval``; True if queued."""
        now = self.clock()
        key = (kind, scope)
        with self._limit_lock:
            last = self._last.get(key)
            if last is not None and now - last < self.min_interval:
                self._held[key] = self._held.get(key, 0) + 1
                self.suppressed += 1
                return False
            alert = {
                "alert": kind,
                "site": self.site,
                "scope": scope,
                "time": _iso(now),
                "reason": reason,
                "version": version,
                "previous_version": previous_version,
                "suppressed": self._held.get(key, 0),
            }
            try:
                self._queue.put_nowait(alert)
            except queue.Full:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning(
                        "alert queue full (the webhook is slow or down): %d alerts dropped", self.dropped
                    )
                return False
            self._held.pop(key, None)
            self._last[key] = now
            return True

    def _run(self) -> None:
        while True:
            try:
                alert = self._queue.get(timeout=1.0)
            except queue.Empty:
                if self._owner is not None and self._owner() is None:
                    return
                continue
            if alert is None:
                return
            body = orjson.dumps(alert)
            if self.publish is not None and self.topic is not None:
                try:
                    self.publish(self.topic, body)
                except Exception as exc:  # one sink's failure must not stop the other or the thread
                    self.failed += 1
                    log.warning("alert %s not published on MQTT: %s", alert["alert"], exc)
            if self.webhook_url is not None:
                self._post(body, alert["alert"])
            self.sent += 1

    def _post(self, body: bytes, kind: str) -> None:
        # The scheme is checked to be http(s) when the settings load (AlertSettings).
        request = urllib.request.Request(  # noqa: S310
            self.webhook_url or "", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.webhook_timeout) as response:  # noqa: S310
                response.read(1024)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.failed += 1
            # The URL is not logged: webhook URLs often carry their token.
            log.warning("alert %s not delivered to the webhook: %s", kind, exc)


class SilenceWatch:
    """Calls a device silent after ``factor`` x its own median reporting interval without a reading.

    Fed with each device's reading count at wall-clock times (:meth:`observe`); the interval is
    learned from how fast the count grows, so a device reporting once a minute and one reporting
    50 times a second are each judged by their own cadence. One alert per silence: a device must
    report again before it can be silent again.
    """

    def __init__(self, factor: float, floor_s: float) -> None:
        self.factor = factor
        self.floor = floor_s  # below the check interval a gap is not observable
        self._count: dict[str, int] = {}
        self._changed: dict[str, float] = {}
        self._gaps: dict[str, deque[float]] = {}
        self._silent: set[str] = set()

    def observe(self, counts: dict[str, int], now: float) -> list[tuple[str, float]]:
        """Update with ``counts`` seen at ``now``; the devices that just became silent, with their gap."""
        newly = []
        for device, count in counts.items():
            before = self._count.get(device)
            self._count[device] = count
            if before is None:
                self._changed[device] = now
                continue
            if count != before:
                if count > before:
                    per_reading = (now - self._changed[device]) / (count - before)
                    self._gaps.setdefault(device, deque(maxlen=RECENT_GAPS)).append(per_reading)
                self._changed[device] = now
                self._silent.discard(device)
                continue
            gaps = self._gaps.get(device)
            if not gaps or device in self._silent:
                continue
            allowed = max(self.factor * statistics.median(gaps), self.floor)
            quiet = now - self._changed[device]
            if quiet > allowed:
                self._silent.add(device)
                newly.append((device, quiet))
        return newly


def _device_counts(location: Path | str) -> dict[str, int]:
    from edgeloop.adapters.store import open_store

    store = open_store(location, readonly=True)
    try:
        rows = store.conn.execute("SELECT device, MAX(count) FROM scope_status GROUP BY device").fetchall()
    finally:
        store.close()
    return {str(device): int(count or 0) for device, count in rows}


def _watch_silence(alerter: Alerter, settings: Settings, owner: weakref.ref[Any]) -> None:
    period = settings.alerts.silence_check_s
    watch = SilenceWatch(settings.alerts.silent_factor, floor_s=2 * period)
    while owner() is not None:
        time.sleep(period)
        try:
            counts = _device_counts(settings.store_location)
        except Exception as exc:  # the store may not exist yet or be busy: try again next round
            log.debug("silence check skipped: %s", exc)
            continue
        for device, quiet in watch.observe(counts, time.time()):
            alerter.raise_alert(SILENT, device, f"no reading for {quiet:.0f} s (wall time)")


def _weak_publish(ref: weakref.WeakMethod[Any]) -> Publish:
    def publish(topic: str, body: bytes) -> Any:
        method = ref()
        if method is None:
            raise RuntimeError("the edge that owned this alert has stopped")
        return method(topic, body)

    return publish


_ALERTERS: weakref.WeakKeyDictionary[Any, Alerter] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def offer(owner: Any, settings: Settings, events: list[Event], publish: Publish | None = None) -> None:
    """The edge's hook: alerts for ``events``, from an :class:`Alerter` made on first use for ``owner``.

    ``owner`` (the edge service) keys the alerter and its threads: they end when it is gone.
    """
    alerter = _ALERTERS.get(owner)
    if alerter is None:
        with _LOCK:
            alerter = _ALERTERS.get(owner)
            if alerter is None:
                # The publish method is held weakly: the alerter must not keep the edge (its key) alive.
                weak_publish = publish
                if publish is not None and hasattr(publish, "__self__"):
                    weak_publish = _weak_publish(weakref.WeakMethod(publish))
                alerter = Alerter(settings, weak_publish, owner=weakref.ref(owner)).start()
                _ALERTERS[owner] = alerter
                if alerter.enabled and SILENT in alerter.kinds and settings.alerts.silence_check_s > 0:
                    threading.Thread(
                        target=_watch_silence,
                        args=(alerter, settings, weakref.ref(owner)),
                        name="edgeloop-silence",
                        daemon=True,
                    ).start()
    alerter.offer(events)
