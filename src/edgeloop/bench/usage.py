"""CPU and memory: of the bench's processes over any time window, of the machine, and what it is.

:class:`Watch` samples the processes of interest in a thread, so the usage of a window can be read
after it ended; :func:`machine_info` and :func:`idle_check` describe the machine a run was taken on.
"""

from __future__ import annotations

import contextlib
import platform
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edgeloop.adapters.broker import mosquitto_binary


class Watch:
    """Samples CPU time and RSS of the processes of interest every ``period`` s (a thread), so the
    usage of any time window can be read afterwards; the edge's children are tracked apart."""

    def __init__(self, period: float = 0.25) -> None:
        self.procs: dict[str, psutil.Process] = {}
        self.edge: psutil.Process | None = None
        self.period = period
        self._samples: list[tuple[float, dict[str, float], dict[str, float], float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, name: str, pid: int) -> None:
        with contextlib.suppress(psutil.Error), self._lock:
            self.procs[name] = psutil.Process(pid)

    def remove(self, name: str) -> None:
        with self._lock:
            self.procs.pop(name, None)

    def set_edge(self, pid: int | None) -> None:
        with self._lock:
            self.edge = psutil.Process(pid) if pid else None

    def _sample(self) -> tuple[float, dict[str, float], dict[str, float], float, float]:
        cpu: dict[str, float] = {}
        rss: dict[str, float] = {}
        with self._lock:
            procs, edge = dict(self.procs), self.edge
        for name, proc in procs.items():
            with contextlib.suppress(psutil.Error):
                c = proc.cpu_times()
                cpu[name] = c.user + c.system
        if edge is not None:
            with contextlib.suppress(psutil.Error):
                c = edge.cpu_times()
                cpu["edge"] = c.user + c.system
                rss["edge"] = edge.memory_info().rss / 2**20
                rss["edge_children"] = 0.0
                for child in edge.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        c = child.cpu_times()
                        cpu[f"child:{child.pid}"] = c.user + c.system
                        rss["edge_children"] += child.memory_info().rss / 2**20
        m = psutil.cpu_times()
        idle = m.idle + getattr(m, "iowait", 0.0)
        return time.monotonic(), cpu, rss, sum(m) - idle, sum(m)

    def _loop(self) -> None:
        while True:
            sample = self._sample()
            with self._lock:
                self._samples.append(sample)
            if self._stop.wait(self.period):
                return

    def now(self) -> float:
        """Take a sample now (a window edge) and return its time."""
        sample = self._sample()
        with self._lock:
            self._samples.append(sample)
            self._samples.sort(key=lambda s: s[0])
        return sample[0]

    def usage(self, t0: float, t1: float) -> dict[str, Any]:
        """CPU in % of one core per process, machine busy % and peak RSS (MB) between t0 and t1."""
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return {"cpu_pct": {}, "machine_busy_pct": None, "rss_mb": {}}
        times = [s[0] for s in samples]
        i0 = max(0, int(np.searchsorted(times, t0, side="right")) - 1)
        i1 = min(len(samples) - 1, int(np.searchsorted(times, t1, side="left")))
        (a, cpu0, _, busy0, total0), (b, _, _, busy1, total1) = samples[i0], samples[i1]
        wall = max(b - a, 1e-9)
        cpu: dict[str, float] = {}
        children = 0.0
        # A process may start (a retrain worker) or end (the trainer) inside the window: take each
        # one's last reading in the window against its first (or zero).
        last: dict[str, float] = {}
        for sample in samples[i0 : i1 + 1]:
            last.update(sample[1])
        for key, value in last.items():
            delta = value - cpu0.get(key, 0.0)
            if key.startswith("child:"):
                children += delta
            else:
                cpu[key] = round(100.0 * delta / wall, 1)
        if "edge" in cpu:
            cpu["edge_children"] = round(100.0 * children / wall, 1)
        peak: dict[str, float] = {}
        for s in samples[i0 : i1 + 1]:
            for key, value in s[2].items():
                peak[key] = round(max(peak.get(key, 0.0), value), 1)
        busy = (busy1 - busy0) / (total1 - total0) if total1 > total0 else None
        other = None
        if busy is not None:
            # Busy CPU of the whole machine not spent by the bench's processes: other programs on the
            # machine (the figures are only trustworthy when this is small) and kernel work such as
            # loopback networking in interrupt context.
            cores = psutil.cpu_count() or 1
            other = round(100.0 * busy * cores - sum(cpu.values()), 1)
        return {
            "cpu_pct": cpu,
            "machine_busy_pct": round(100.0 * busy, 1) if busy is not None else None,
            "unattributed_cpu_pct": other,
            "rss_mb": peak,
        }

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)


def machine_info() -> dict[str, Any]:
    """Platform, CPU, cores, memory, Python, paho and mosquitto versions."""
    import paho.mqtt

    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mosquitto = None
    binary = mosquitto_binary()
    if binary:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5, check=False)
            found = re.search(r"mosquitto version (\S+)", out.stdout + out.stderr)
            mosquitto = found.group(1) if found else None
    return {
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "paho_mqtt": paho.mqtt.__version__,
        "mosquitto": mosquitto,
    }


def idle_check(seconds: float = 1.0) -> dict[str, Any]:
    """How busy the machine is before the bench starts, and its busiest processes."""
    procs = list(psutil.process_iter(["name", "cmdline"]))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
    busy = psutil.cpu_percent(interval=seconds)
    top: list[tuple[float, str]] = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            pct = proc.cpu_percent(None)
            if pct >= 5.0:
                cmd = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])
                top.append((pct, f"{cmd[:60]} ({pct:.0f}%)"))
    return {"busy_pct": round(busy, 1), "top": [text for _, text in sorted(top, reverse=True)[:4]]}
