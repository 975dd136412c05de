"""Store write rate through the edge's writer thread: SQLite vs PostgreSQL, measured in one run.

    python benchmarks/bench_store.py [--rows 200000] [--writers 1 2] [--pg postgresql://postgres@127.0.0.1:5432]

Each writer is a process with a :class:`~edgeloop.adapters.writer.StoreWriter` (the edge's, with its
default flush interval), fed rows of 100 devices in batches of 512 (the engine's batch) as fast as
it takes them; the rate is rows committed per second, from the first ``put`` until the last row is
committed, summed over the writers (several edges writing one store). SQLite writes a fresh file in a
temporary folder; PostgreSQL a throwaway database created on ``--pg`` and dropped afterwards. Also
prints the machine, and each backend's version.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from edgeloop.adapters.writer import StoreWriter
from edgeloop.engine.rows import SampleRow

BATCH = 512
DEVICES = 100


def _rows(n: int, offset: int) -> list[SampleRow]:
    t0 = 1_700_000_000.0
    return [
        SampleRow(f"dev-{i % DEVICES:03d}", "voc_ppb", t0 + (offset + i) / DEVICES, offset + i,
                  400.0 + i % 17, 401.0, 399.5, 402.0, "voc_ppb:v1")
        for i in range(n)
    ]  # fmt: skip


def _write(location: str, n: int, offset: int, start: mp.synchronize.Event, out: mp.Queue) -> None:  # type: ignore[type-arg,unused-ignore]
    rows = _rows(n, offset)
    writer = StoreWriter(location, retention_rows=10 * n + 1_000_000, max_buffer_rows=n + BATCH)
    start.wait()
    began = time.perf_counter()
    for i in range(0, n, BATCH):
        writer.put(rows[i : i + BATCH])
    while writer.rows_written < n:
        time.sleep(0.001)
    elapsed = time.perf_counter() - began
    writer.close()
    out.put((n, elapsed, writer.errors))


def run(location: str, rows: int, writers: int) -> tuple[float, int]:
    """Rows per second summed over ``writers`` processes, and their write errors."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_write, args=(location, rows, k * rows, start, out)) for k in range(writers)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # the writers import and open the store before the clock starts
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    total = sum(n for n, _, _ in results)
    return total / max(t for _, t, _ in results), sum(e for _, _, e in results)


def machine(pg: str) -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    with psycopg.connect(f"{pg}/postgres") as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, PostgreSQL {row[0] if row else '?'}"
        f" (psycopg {psycopg.__version__})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows per writer")
    ap.add_argument("--writers", type=int, nargs="+", default=[1, 2], help="writer counts to run")
    ap.add_argument("--reps", type=int, default=3, help="runs per case; the median is shown")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432", help="server URL, no database")
    args = ap.parse_args()
    print(f"machine: {machine(args.pg)}")
    print(f"{args.rows:,} rows per writer, batches of {BATCH}, {DEVICES} devices, median of {args.reps}")
    print(f"{'backend':<12}{'writers':>8}{'rows/s':>12}{'errors':>8}")
    for writers in args.writers:
        for backend in ("sqlite", "postgresql"):
            rates, errors = [], 0
            for _ in range(args.reps):
                with tempfile.TemporaryDirectory() as tmp:
                    if backend == "sqlite":
                        rate, err = run(str(Path(tmp) / "edgeloop.db"), args.rows, writers)
                    else:
                        rate, err = _on_pg(args.pg, args.rows, writers)
                rates.append(rate)
                errors += err
            print(f"{backend:<12}{writers:>8}{statistics.median(rates):>12,.0f}{errors:>8}", flush=True)


def _on_pg(server: str, rows: int, writers: int) -> tuple[float, int]:
    name = f"edgeloop_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        return run(f"{server}/{name}", rows, writers)
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
