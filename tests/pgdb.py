"""Throwaway PostgreSQL databases for tests, on the shared server (127.0.0.1:5432, trust auth).

Each test gets a database of its own, created with a unique name and dropped afterwards (its
connections terminated first), so tests never see each other's rows and never touch other databases.
``EDGELOOP_TEST_PG`` points at another server (a URL without a database name). A server that does not
answer fails the test: these tests are what says the PostgreSQL store works.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

SERVER = os.environ.get("EDGELOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def admin() -> psycopg.Connection:
    try:
        return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"no PostgreSQL at {SERVER} (set EDGELOOP_TEST_PG): {exc}")


@contextmanager
def throwaway_db(prefix: str = "edgeloop_test") -> Iterator[str]:
    """The URL of a new, empty database, dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{SERVER}/{name}"
    finally:
        with admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
