"""The store on PostgreSQL (``store.url: postgresql://...``): several edges on several hosts write one
database; trainers, the dashboard and the CLI read it.

Writes are one transaction per batch: readings go in with ``COPY`` (several times faster than row
inserts), status rows are upserted in key order (two edges upserting the same rows can then never
deadlock), events are inserted in one round trip. The schema is created and migrated by
:mod:`edgeloop.adapters.pg_schema` when a writer opens the store.

Retention keeps today's meaning: the newest ``store.retention_rows`` readings across the whole
database (ids come from one sequence shared by every edge), pruned by the primary key.

The connection is in autocommit mode: a read is never left "idle in transaction" holding back vacuum,
and ``with conn:`` opens an explicit transaction. A write that fails because the server went away
(restart, failover, ``pg_terminate_backend``) leaves the batch with the writer, which reconnects in
:meth:`PgStore.recover` and retries it.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql as psql

from edgeloop.adapters.pg_schema import migrate, schema_version
from edgeloop.adapters.store import BaseStore, Cursor
from edgeloop.adapters.store import describe as redact
from edgeloop.engine.rows import SampleRow, StatusRow
from edgeloop.errors import StoreError
from edgeloop.telemetry.schema import Event

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10  # seconds to reach the server before the start fails
SAMPLE_COLUMNS = ("device", "target", "ts", "seq", "value", "forecast", "persistence", "prediction", "model")
STATUS_COLUMNS = (
    "device", "target", "last_seen", "count", "rate", "rmse", "threshold", "persistence_rmse", "mean_rmse",
    "model", "status", "updated",
)  # fmt: skip

# SQLite's CAST(x AS INTEGER) truncates, PostgreSQL's rounds: trunc() keeps the dashboard's buckets.
_CAST_INTEGER = re.compile(r"CAST\((.+?) AS INTEGER\)")


@functools.lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """A query of the store in SQLite's dialect, as PostgreSQL runs it.

    >>> pg_sql("SELECT ts FROM samples WHERE device = ? AND instr(scope, ?) > 0")
    'SELECT ts FROM samples WHERE device = %s AND strpos(scope, %s) > 0'
    >>> pg_sql("SELECT MIN(ts) FROM samples GROUP BY CAST((ts - ?) / ? AS INTEGER)")
    'SELECT MIN(ts) FROM samples GROUP BY trunc((ts - %s) / %s)'
    """
    out = sql.replace("%", "%%").replace("?", "%s").replace("instr(", "strpos(")
    return _CAST_INTEGER.sub(r"trunc(\1)", out)


def pg_connect(url: str, *, application_name: str = "edgeloop") -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection to ``url``, or :class:`StoreError` in one line naming the store."""
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": application_name}
    if "connect_timeout" not in url:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT
    try:
        return psycopg.connect(url, **kwargs)
    except (psycopg.Error, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise StoreError(
            f"cannot open store {redact(url)}: {reason}; check store.url (EDGELOOP_STORE_URL) and that"
            " the server is up and accepts this host"
        ) from None


class PgConnection:
    """A psycopg connection that runs the store's SQLite-dialect queries (:func:`pg_sql`).

    It fits :class:`~edgeloop.adapters.store.StoreConnection`, so the dashboard's queries and the
    shared reads of :class:`~edgeloop.adapters.store.BaseStore` run on it unchanged.
    """

    def __init__(self, raw: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.raw = raw
        self._tx: list[AbstractContextManager[Any]] = []

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        try:
            return self.raw.execute(pg_sql(sql), tuple(parameters))
        except psycopg.Error as exc:  # one error type for readers of either backend
            raise StoreError(" ".join(str(exc).split()) or type(exc).__name__) from exc

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> PgConnection:
        tx = self.raw.transaction()
        tx.__enter__()
        self._tx.append(tx)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._tx.pop().__exit__(exc_type, exc, tb)


def _status_key(row: StatusRow) -> tuple[str, str]:
    return (row.device, row.target)


def _no_nan(x: float | None) -> float | None:
    # SQLite stores NaN as NULL; so does this store, so aggregates and reads agree between the two.
    return None if x is None or math.isnan(x) else x


def _sample_rows(samples: Sequence[SampleRow]) -> Iterator[tuple[Any, ...]]:
    for s in samples:
        yield (
            s.device, s.target, s.ts, s.seq, s.value,
            _no_nan(s.forecast), _no_nan(s.persistence), _no_nan(s.prediction), s.model,
        )  # fmt: skip


def open_reader(url: str) -> PgConnection | None:
    """A connection for reading only, or ``None`` while no edge has created the tables yet."""
    raw = pg_connect(url, application_name="edgeloop-reader")
    try:
        if schema_version(raw) == 0:
            raw.close()
            return None
    except psycopg.Error as exc:
        raw.close()
        raise StoreError(f"cannot read store {redact(url)}: {' '.join(str(exc).split())}") from None
    return PgConnection(raw)


class PgStore(BaseStore):
    """The store in a PostgreSQL database; a writer (not ``readonly``) migrates its schema at open."""

    def __init__(self, url: str, *, retention_rows: int = 2_000_000, readonly: bool = False) -> None:
        self.url = url
        self.retention_rows = retention_rows
        self.readonly = readonly
        self.conn: PgConnection = PgConnection(self._open())

    def _open(self) -> psycopg.Connection[tuple[Any, ...]]:
        raw = pg_connect(self.url)
        try:
            if self.readonly:
                version = schema_version(raw)
                if version == 0:
                    raise StoreError(
                        f"store {redact(self.url)} has no edgeloop tables yet: start an edge on it first"
                    )
            else:
                applied = migrate(raw)
                if applied:
                    log.info("store %s: applied schema steps %s", redact(self.url), applied)
        except psycopg.Error as exc:
            raw.close()
            raise StoreError(
                f"cannot prepare store {redact(self.url)}: {' '.join(str(exc).split())}"
            ) from None
        except StoreError:
            raw.close()
            raise
        return raw

    @property
    def location(self) -> str:
        return redact(self.url)

    def write(
        self,
        samples: Sequence[SampleRow] = (),
        events: Sequence[Event] = (),
        status: Sequence[StatusRow] = (),
    ) -> None:
        raw = self.conn.raw
        with raw.transaction(), raw.cursor() as cur:
            if samples:
                copy_sql = psql.SQL("COPY samples ({}) FROM STDIN").format(
                    psql.SQL(", ").join(map(psql.Identifier, SAMPLE_COLUMNS))
                )
                with cur.copy(copy_sql) as copy:
                    for row in _sample_rows(samples):
                        copy.write_row(row)
            if events:
                cur.executemany(
                    "INSERT INTO events (ts, kind, scope, reason, version, previous_version, metrics)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    self._event_rows(events),
                )
            if status:
                ordered: list[StatusRow] = sorted(status, key=_status_key)
                cur.executemany(_upsert("scope_status", STATUS_COLUMNS, ("device", "target")), ordered)

    def prune(self) -> int:
        # The sequence's last value, not max(id): no scan, and every edge draws ids from it.
        row = self.conn.raw.execute(
            "SELECT pg_sequence_last_value(pg_get_serial_sequence('samples', 'id'))"
        ).fetchone()
        if not row or row[0] is None:
            return 0
        cutoff = int(row[0]) - self.retention_rows
        if cutoff <= 0:
            return 0
        cur = self.conn.raw.execute("DELETE FROM samples WHERE id <= %s", (cutoff,))
        return cur.rowcount

    def record_model_version(self, **fields: Any) -> None:
        self.conn.raw.execute(
            _upsert("model_versions", tuple(fields), ("scope", "version")), self._version_values(fields)
        )

    def recover(self) -> None:
        raw = self.conn.raw
        if not raw.closed and not raw.broken:
            return  # autocommit: a failed transaction block has already rolled back
        try:
            self.conn = PgConnection(self._open())
        except StoreError as exc:  # still down: the writer retries with backoff
            log.debug("store reconnect failed: %s", exc)
            return
        raw.close()
        log.warning("store %s: reconnected", redact(self.url))


@functools.lru_cache(maxsize=32)
def _upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> psql.Composed:
    """``INSERT ... ON CONFLICT (key) DO UPDATE``: SQLite's ``INSERT OR REPLACE`` for these tables."""
    updates = [c for c in columns if c not in key]
    return psql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}").format(
        psql.Identifier(table),
        psql.SQL(", ").join(map(psql.Identifier, columns)),
        psql.SQL(", ").join(psql.Placeholder() * len(columns)),
        psql.SQL(", ").join(map(psql.Identifier, key)),
        psql.SQL(", ").join(psql.SQL("{0} = EXCLUDED.{0}").format(psql.Identifier(c)) for c in updates),
    )
