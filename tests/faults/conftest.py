"""Fault-suite helpers: real faults against real components, and the Reliability table.

Each fault test causes its fault for real (kill -9, broker restart, full disk, corrupt file, hostile
payload), then calls :func:`report` with what it counted. ``report`` prints one ``RELIABILITY {...}``
line and appends it to ``build/reliability.jsonl``; at the end of the run the table is printed, so
``make faults`` shows the README's Reliability table from the suite's own output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
RELIABILITY_LOG = ROOT / "build" / "reliability.jsonl"
_rows: list[dict[str, Any]] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.faults)


def report(
    scenario: str,
    *,
    published: int,
    answered: int,
    lost: int,
    duplicated: int,
    recovery_s: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Record one row of the Reliability table (printed at the end of the run)."""
    row = {
        "scenario": scenario,
        "published": published,
        "answered": answered,
        "lost": lost,
        "duplicated": duplicated,
        "recovery_s": None if recovery_s is None else round(recovery_s, 2),
        "note": note,
    }
    line = orjson.dumps(row).decode()
    print(f"RELIABILITY {line}")
    RELIABILITY_LOG.parent.mkdir(parents=True, exist_ok=True)
    with RELIABILITY_LOG.open("a") as fh:
        fh.write(line + "\n")
    _rows.append(row)
    return row


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _rows:
        return
    tr = terminalreporter
    tr.section("Reliability (fault suite)")
    tr.write_line("| scenario | published | answered | lost | duplicated | recovery (s) |")
    tr.write_line("|---|---:|---:|---:|---:|---:|")
    for r in _rows:
        rec = "" if r["recovery_s"] is None else f"{r['recovery_s']:g}"
        tr.write_line(
            f"| {r['scenario']} | {r['published']:,} | {r['answered']:,} | {r['lost']:,} "
            f"| {r['duplicated']:,} | {rec} |"
        )


def count_answers(seqs_sent: Mapping[str, set[int]], answers: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(answered, lost, duplicated) of predictions against the (device, seq) pairs that were sent."""
    seen: dict[tuple[str, int], int] = {}
    for p in answers:
        key = (p["device"], p["seq"])
        seen[key] = seen.get(key, 0) + 1
    answered = lost = duplicated = 0
    for device, seqs in seqs_sent.items():
        for seq in seqs:
            n = seen.get((device, seq), 0)
            if n == 0:
                lost += 1
            else:
                answered += 1
                duplicated += n - 1
    return answered, lost, duplicated


class EdgeProcess:
    """``edgeloop edge`` as its own process (so it can be killed for real), configured by env."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: float | None = 30.0) -> EdgeProcess:
        fh = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop", "edge"], env=self.env, stdout=fh, stderr=subprocess.STDOUT
        )
        fh.close()
        if wait_ready:
            self.wait_log("edge up", wait_ready)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float, *, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"edge exited ({self.proc.returncode}) before {text!r}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the edge log within {timeout:g} s:\n{self.log()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 1e6

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Stuck: ask for every thread's stack (the edge prints them on SIGUSR1), then kill, and
            # show the log so the failure says where it hung.
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            self.proc.kill()
            code = self.proc.wait(10)
            print(f"edge did not stop within {timeout:g} s of SIGTERM; its log:\n{self.log()[-20000:]}")
            return code


@pytest.fixture
def edge_process(tmp_path: Path) -> Iterator[Callable[[Mapping[str, str]], EdgeProcess]]:
    """Start ``edgeloop edge`` processes from env settings; all are stopped at the end of the test."""
    started: list[EdgeProcess] = []

    def make(env: Mapping[str, str], *, start: bool = True) -> EdgeProcess:
        proc = EdgeProcess(env, tmp_path / f"edge-{len(started)}.log")
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.stop()
