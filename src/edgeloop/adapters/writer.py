"""The store writer: batches rows on a background thread so the message loop never waits on the disk.

Storage fails in ordinary ways (a full disk, a database locked by another process, an I/O error), and
none of them may stop the edge or the writer: a failed commit is kept and retried with backoff, every
failure is counted and logged at most every ``ERROR_LOG_INTERVAL`` seconds, and the rows waiting in
memory are bounded (the oldest beyond ``max_buffer_rows`` are dropped and counted). Once the disk has
room again the next retry commits and writing carries on.

What can be checked before the edge says it is up is checked then: :func:`check_data_dir` and
opening the store in the constructor raise :class:`~edgeloop.errors.StoreError` with one line naming
the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from edgeloop.adapters.store import open_store
from edgeloop.engine.rows import SampleRow, StatusRow
from edgeloop.errors import StoreError
from edgeloop.telemetry.schema import Event

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL = 30.0  # seconds between two log lines about failing writes
MAX_BACKOFF = 5.0  # seconds between retries while writes fail
PRUNE_INTERVAL = 10.0  # seconds between retention prunes
PROBE_BYTES = 256 * 1024  # written and removed at start: a data dir without this much room is refused


def check_data_dir(path: Path) -> None:
    """Refuse a data dir the edge could not keep its store, models and snapshots in.

    It must be a directory (created if missing), writable, with room for a small file. Raises
    :class:`StoreError` with one line naming the path and what to do.
    """
    path = Path(path)
    hint = "set data_dir (EDGELOOP_DATA_DIR) to a writable directory with free space"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(f"data dir {path} exists and is not a directory: {hint}") from None
    except OSError as exc:
        raise StoreError(f"data dir {path} cannot be created ({exc.strerror}): {hint}") from None
    if not path.is_dir():
        raise StoreError(f"data dir {path} is not a directory: {hint}")
    probe = path / f".edgeloop-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            free = shutil.disk_usage(path).free
            raise StoreError(
                f"data dir {path} has no space left ({free:,} bytes free): free space there or {hint}"
            ) from None
        raise StoreError(f"data dir {path} is not writable ({exc.strerror}): {hint}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class StoreWriter:
    """A background thread that commits batches of rows every ``flush_interval`` seconds.

    ``location`` is a SQLite file or a ``postgresql://`` URL (:func:`~edgeloop.adapters.store.open_store`).
    ``put`` is cheap and thread-safe. The store is opened in the constructor (a store that cannot be
    opened raises :class:`StoreError` there, not later in the thread). ``close`` flushes what is left,
    trying for at most ``close_timeout`` seconds.
    """

    def __init__(
        self,
        location: Path | str,
        *,
        retention_rows: int,
        flush_interval: float = 0.25,
        max_buffer_rows: int = 200_000,
        on_error: Callable[[str], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._interval = flush_interval
        self.max_buffer_rows = max_buffer_rows
        self._on_error = on_error
        self._on_drop = on_drop
        self._store = open_store(location, retention_rows=retention_rows)
        self._lock = threading.Lock()
        self._samples: list[SampleRow] = []
        self._events: list[Event] = []
        self._status: dict[tuple[str, str], StatusRow] = {}
        self._stop = threading.Event()
        self.rows_written = 0
        self.rows_dropped = 0
        self.errors = 0
        self.failing_since: float | None = None
        self.last_error = ""
        self.last_success = time.time()
        self.heartbeat = time.monotonic()  # refreshed every pass of the loop, failing or not
        self._last_error_log = 0.0
        self._thread = threading.Thread(target=self._run, name="edgeloop-store-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def buffered(self) -> int:
        return len(self._samples) + len(self._events)

    def put(
        self,
        samples: Iterable[SampleRow] = (),
        events: Iterable[Event] = (),
        status: Iterable[StatusRow] = (),
    ) -> None:
        with self._lock:
            self._samples.extend(samples)
            self._events.extend(events)
            for row in status:
                self._status[(row.device, row.target)] = row
            if len(self._samples) + len(self._events) > self.max_buffer_rows:
                self._trim()

    def _trim(self) -> None:
        # Called with the lock held. The oldest rows go first: the newest matter most for training.
        over = len(self._samples) + len(self._events) - self.max_buffer_rows
        dropped = min(over, len(self._samples))
        del self._samples[:dropped]
        if over > dropped:
            del self._events[: over - dropped]
            dropped = over
        self.rows_dropped += dropped
        if self._on_drop is not None:
            self._on_drop(dropped)

    def _take(self) -> tuple[list[SampleRow], list[Event], list[StatusRow]]:
        with self._lock:
            batch = (self._samples, self._events, list(self._status.values()))
            self._samples, self._events, self._status = [], [], {}
        return batch

    def _put_back(self, samples: list[SampleRow], events: list[Event], status: list[StatusRow]) -> None:
        with self._lock:
            self._samples[:0] = samples
            self._events[:0] = events
            for row in status:  # a newer status row put meanwhile wins
                self._status.setdefault((row.device, row.target), row)
            if len(self._samples) + len(self._events) > self.max_buffer_rows:
                self._trim()

    def _run(self) -> None:
        last_prune = time.monotonic()
        backoff = 0.0
        try:
            while True:
                stopping = self._stop.wait(backoff or self._interval)
                self.heartbeat = time.monotonic()
                ok = self._flush()
                # Pruned even while writes fail: the pages it frees are room the next commit can reuse.
                if time.monotonic() - last_prune > PRUNE_INTERVAL:
                    ok = self._prune() and ok
                    last_prune = time.monotonic()
                backoff = 0.0 if ok else min(max(backoff * 2, self._interval * 2), MAX_BACKOFF)
                if stopping:
                    return
        finally:
            self._store.close()

    def _flush(self) -> bool:
        samples, events, status = self._take()
        if not (samples or events or status):
            return True
        try:
            self._store.write(samples, events, status)
        except Exception as exc:  # whatever the storage does, the writer must live on
            self._put_back(samples, events, status)
            self._failed("write", exc)
            return False
        self.rows_written += len(samples)
        self._succeeded()
        return True

    def _prune(self) -> bool:
        try:
            self._store.prune()
        except Exception as exc:  # pruning on a full disk fails too; retried at the next interval
            self._failed("prune", exc)
            return False
        return True

    def _succeeded(self) -> None:
        self.last_success = time.time()
        if self.failing_since is not None:
            log.warning(
                "store writes resumed after %.0f s (%d errors so far, %d rows dropped)",
                time.monotonic() - self.failing_since,
                self.errors,
                self.rows_dropped,
            )
            self.failing_since = None

    def _failed(self, op: str, exc: Exception) -> None:
        self.errors += 1
        self.last_error = f"{op}: {exc}"
        if self._on_error is not None:
            self._on_error(op)
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        self._store.recover()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL:
            self._last_error_log = now
            log.error(
                "store %s failed (%s): %d errors so far, %d rows waiting, %d dropped; retrying",
                op,
                exc,
                self.errors,
                self.buffered,
                self.rows_dropped,
            )

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout)
        if self.buffered:
            log.error("store writer stopped with %d rows not written (%s)", self.buffered, self.last_error)
