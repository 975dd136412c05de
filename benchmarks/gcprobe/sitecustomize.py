"""Pauses of Python's garbage collector in every ``edgeloop edge`` process, written when it exits.

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``, so this directory on the path
measures the edges a command starts without changing them (``edgeloop bench`` runs its edge as a
child process, which inherits the environment):

    PYTHONPATH=benchmarks/gcprobe edgeloop bench --qos 1
    cat "${GCPROBE_DIR:-/tmp}"/gcprobe-*.txt

Per generation: collections, total, largest and 99th percentile pause, and how many took over 10 ms;
then every full (generation 2) collection as ``ms@s`` (pause, seconds since the process started).
Other processes are left alone (a callback runs, nothing is written).
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time
from typing import Any

_T0 = time.perf_counter()
_started = [0.0]
_pauses: list[tuple[int, float, float]] = []  # generation, pause s, seconds since start


def _callback(phase: str, info: dict[str, Any]) -> None:
    now = time.perf_counter()
    if phase == "start":
        _started[0] = now
    else:
        _pauses.append((int(info["generation"]), now - _started[0], now - _T0))


def _write() -> None:
    if sys.argv[1:2] != ["edge"]:  # `edgeloop edge ...` or `python -m edgeloop edge ...`
        return
    lines = [" ".join(sys.argv)]
    for gen in (0, 1, 2):
        pauses = sorted(p for g, p, _ in _pauses if g == gen)
        if pauses:
            p99 = pauses[int(0.99 * (len(pauses) - 1))]
            slow = sum(1 for p in pauses if p > 0.010)
            lines.append(
                f"gen{gen}: {len(pauses)} collections, total {1e3 * sum(pauses):.1f} ms, "
                f"max {1e3 * pauses[-1]:.2f} ms, p99 {1e3 * p99:.2f} ms, over 10 ms {slow}"
            )
    lines.append("full: " + " ".join(f"{1e3 * p:.1f}@{t:.0f}" for g, p, t in _pauses if g == 2))
    path = os.path.join(os.environ.get("GCPROBE_DIR", "/tmp"), f"gcprobe-{os.getpid()}.txt")
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")


gc.callbacks.append(_callback)
atexit.register(_write)
