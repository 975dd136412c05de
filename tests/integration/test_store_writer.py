"""The store writer against a real SQLite file: it survives write errors, retries, bounds its buffer."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from tests.integration.conftest import wait_until

from edgeloop.adapters.writer import StoreWriter, check_data_dir
from edgeloop.engine.rows import SampleRow
from edgeloop.errors import StoreError

pytestmark = pytest.mark.integration


def rows(n: int, start: int = 0) -> list[SampleRow]:
    return [
        SampleRow("d", "voc_ppb", float(i), i, 1.0, None, None, 1.0, "persistence")
        for i in range(start, start + n)
    ]


def count(path: Path) -> int:
    with sqlite3.connect(path, timeout=30) as db:
        return int(db.execute("SELECT count(*) FROM samples").fetchone()[0])


def test_a_locked_database_is_retried_and_writing_resumes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    errors: list[str] = []
    writer = StoreWriter(path, retention_rows=10_000, flush_interval=0.02, on_error=errors.append)
    writer._store.conn.execute("PRAGMA busy_timeout=50")  # fail fast instead of waiting 30 s
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    writer.put(samples=rows(100))
    wait_until(lambda: writer.errors >= 3, 10, "failed writes while the database is locked")
    # rows are back in the buffer between two attempts (or in flight during one)
    wait_until(lambda: writer.buffered == 100, 10, "the failed batch kept for a retry")
    assert writer.alive and errors[0] == "write"
    blocker.execute("COMMIT")
    blocker.close()
    writer.put(samples=rows(50, 100))
    wait_until(lambda: writer.buffered == 0, 10, "the retry to succeed")
    writer.close()
    assert count(path) == 150 and writer.rows_dropped == 0


def test_the_buffer_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    dropped: list[int] = []
    writer = StoreWriter(
        path, retention_rows=10_000, flush_interval=0.02, max_buffer_rows=1000, on_drop=dropped.append
    )
    writer._store.conn.execute("PRAGMA busy_timeout=50")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    for k in range(10):
        writer.put(samples=rows(300, 300 * k))
        time.sleep(0.01)
    # A batch in flight is put back after its failed attempt and the buffer trimmed again.
    wait_until(lambda: writer.rows_dropped == 2000, 10, "the oldest 2,000 rows dropped")
    wait_until(lambda: writer.buffered == 1000, 10, "1,000 rows waiting")
    assert sum(dropped) == 2000
    blocker.execute("COMMIT")
    blocker.close()
    writer.close()
    with sqlite3.connect(path) as db:
        seqs = [r[0] for r in db.execute("SELECT seq FROM samples ORDER BY seq")]
    assert seqs == list(range(2000, 3000))  # the newest were kept


def test_an_unusable_store_is_refused_at_construction(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is not a directory"):
        check_data_dir(tmp_path / "file")
    with pytest.raises(StoreError, match="cannot open store"):
        StoreWriter(tmp_path / "file" / "s.db", retention_rows=1000)
