"""The engine's state on disk: one JSON file per edge, replaced atomically, read once at start.

A snapshot is written to a temporary file in the same directory, flushed and fsynced, then renamed
over the previous one (and the directory fsynced), so a crash at any moment leaves either the old or
the new snapshot, never a torn one. Serialising and writing run on a background thread: the loop only
pays for :meth:`~edgeloop.engine.engine.Engine.export_state`. A snapshot that cannot be read is
ignored with one warning: the edge then starts as it always did, from nothing but its models.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from edgeloop.atomic import write_atomic

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL = 60.0  # seconds between two log lines about failing snapshots


def read_snapshot(path: Path) -> Any | None:
    """The decoded snapshot, or None (with one warning) if it is missing, unreadable or not JSON."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("ignored state snapshot %s: %s; starting without it", path, exc)
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        log.warning("ignored state snapshot %s: not valid JSON (%s); starting without it", path, exc)
        return None


class SnapshotWriter:
    """Writes the latest submitted state on a background thread; older unwritten states are skipped."""

    def __init__(self, path: Path, *, on_error: Callable[[], None] | None = None) -> None:
        self.path = path
        self._on_error = on_error
        self._cond = threading.Condition()
        self._pending: dict[str, Any] | bytes | list[bytes] | None = None
        self._stop = False
        self.written = 0
        self.errors = 0
        self.last_bytes = 0
        self.last_seconds = 0.0
        self._last_error_log = 0.0
        self._thread = threading.Thread(target=self._run, name="edgeloop-snapshot", daemon=True)
        self._thread.start()

    def submit(self, state: dict[str, Any] | bytes | list[bytes]) -> None:
        """Write ``state`` (a JSON-able dict, or its JSON already, whole or in parts) next; a newer one
        replaces it."""
        with self._cond:
            self._pending = state
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                state, self._pending = self._pending, None
                if state is None:  # stopping and nothing left
                    return
            self._write(state)

    def _write(self, state: dict[str, Any] | bytes | list[bytes]) -> None:
        t0 = time.perf_counter()
        try:
            data = orjson.dumps(state) if isinstance(state, dict) else state
            write_atomic(self.path, data)
        except (OSError, TypeError, orjson.JSONEncodeError) as exc:
            self.errors += 1
            if self._on_error is not None:
                self._on_error()
            now = time.monotonic()
            if now - self._last_error_log >= ERROR_LOG_INTERVAL:
                self._last_error_log = now
                log.error("state snapshot to %s failed (%d so far): %s", self.path, self.errors, exc)
            return
        self.written += 1
        self.last_bytes = len(data) if isinstance(data, bytes) else sum(map(len, data))
        self.last_seconds = time.perf_counter() - t0

    def close(self, final: dict[str, Any] | None = None, timeout: float = 30.0) -> None:
        """Write ``final`` (if given) and whatever is pending, then stop."""
        with self._cond:
            if final is not None:
                self._pending = final
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)
