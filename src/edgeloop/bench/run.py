"""``edgeloop bench``: the live edge measured end to end through a real broker.

One run starts a private mosquitto (or uses ``broker``), then per QoS level:

1. **Ceiling**: a do-nothing subscriber on the same broker, fed by the same load generator at the same
   QoS, closed loop (at most ``window`` messages unanswered); its receive rate. ``paho`` is built like
   the edge's receive side; ``lean`` (:class:`~edgeloop.bench.loadgen.LeanSubscriber`) shows what the
   broker and generator deliver to a client that costs almost nothing.
2. **Edge**: ``python -m edgeloop edge`` as a separate process with its own data dir and config.
   The first edge trains its first model itself (its retrain worker process) under load and hot-swaps
   it; later edges start with a copy of that model, so every figure is taken with a model serving.
3. **Max**: the generator closed loop on the predictions: as fast as the pipeline answers.
4. **Sustained**: fixed-rate windows searched around the max; a window passes when every message got
   exactly one prediction, the generator kept the rate and the backlog did not grow.
5. **Latency** at a fixed rate (5,000 messages/s by default).

``during_retrain`` adds, on the QoS 1 edge, a fixed-rate window in which ``edgeloop train`` retrains
the fleet model from the edge's store (niced, like the edge's own worker) and the new version is
promoted (forced if it did not win on its own); the edge swaps it in through its registry poll. The
first-model window (trained by the edge's own worker process) is reported too.

Latency is publish to prediction received: the generator keeps the monotonic send time of every
message ``k`` and the measuring subscriber (its own process) the receive time of its prediction
(``seq`` and ``device`` identify ``k``). CLOCK_MONOTONIC is system-wide, so the two processes' clocks
agree. CPU and RSS come from psutil, the edge's main process and its children apart.

>>> p = percentiles_ms(np.array([0.001, 0.002, 0.003, 0.004]))
>>> p["p50"], p["max"]
(2.5, 4.0)
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from edgeloop.adapters.broker import MosquittoBroker, mosquitto_binary
from edgeloop.adapters.mqtt import topic_for
from edgeloop.bench import loadgen
from edgeloop.bench.loadgen import SendLog
from edgeloop.config import BrokerSettings
from edgeloop.errors import EdgeloopError
from edgeloop.registry.local import LocalRegistry
from edgeloop.scopes import version_label
from edgeloop.telemetry.schema import PERSISTENCE_VERSION

log = logging.getLogger(__name__)

_STOP, _COLLECT, _CEILING = 0, 1, 2  # slots of the shared counters


class BenchError(EdgeloopError):
    """The bench could not run (a process died, the edge never answered, ...)."""


@dataclass
class BenchOptions:
    """Everything a bench run is parameterised by (the CLI's options)."""

    devices: int = 1000
    qos: list[int] = field(default_factory=lambda: [1, 0])
    broker: str | None = None
    rate: float | None = None  # fixed mode: measure only at this rate (no ceiling/max/search)
    ceiling_seconds: float = 4.0
    max_seconds: float = 5.0
    step_seconds: float = 5.0
    steps: int = 4
    latency_rate: float = 5000.0
    latency_seconds: float = 8.0
    during_retrain: bool = False
    retrain_rate: float = 5000.0
    warmup_rate: float = 5000.0
    train_model: bool = True
    window: int = 2000
    seed: int = 0
    interval: float = 5.0
    mlflow: bool = False
    keep: bool = False


# -- analysis -------------------------------------------------------------------------------------


def percentiles_ms(latency_s: np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99/max of latencies (seconds in, milliseconds out; None when empty)."""
    if len(latency_s) == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(latency_s, [50, 95, 99]) * 1000.0
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(latency_s.max()) * 1000.0, 3),
    }


def timeline(sent_at: np.ndarray, latency: np.ndarray, origin: float, step: float = 1.0) -> list[list[float]]:
    """Per ``step`` seconds of send time: [start (s from ``origin``), messages, p50 ms, max ms]."""
    if len(sent_at) == 0:
        return []
    bucket = ((sent_at - origin) // step).astype(np.int64)
    rows = []
    for b in np.unique(bucket):
        lat = latency[bucket == b] * 1000.0
        rows.append(
            [
                round(float(b * step), 1),
                len(lat),
                round(float(np.median(lat)), 1),
                round(float(lat.max()), 1),
            ]
        )
    return rows


def analyze(
    sent: SendLog,
    ks: np.ndarray,
    ts: np.ndarray,
    *,
    between: tuple[float, float] | None = None,
    origin: float | None = None,
) -> dict[str, Any]:
    """Loss, duplicates, throughput and latency of the messages of ``sent`` (optionally only those
    sent in the monotonic interval ``between``), given every prediction's ``k`` and receive time.
    With ``origin``, also a per-second latency timeline of answered messages (send time from origin)."""
    sent_at = sent.sent_at
    lo, hi = 0, len(sent_at)
    if between is not None:
        lo, hi = (int(i) for i in np.searchsorted(sent_at, between))
    n = hi - lo
    first = sent.first + lo
    mine = (ks >= first) & (ks < first + n)
    k, t = ks[mine] - first, ts[mine]
    counts = np.bincount(k, minlength=n) if n else np.zeros(0, dtype=np.int64)
    answered = int(np.count_nonzero(counts))
    order = np.argsort(t, kind="stable")
    uniq, where = np.unique(k[order], return_index=True)
    first_t = t[order][where]
    latency = first_t - sent_at[lo:hi][uniq]
    start = float(sent_at[lo]) if n else sent.started
    end = float(sent_at[hi - 1]) if n else sent.ended
    span = (end - start) if between is not None else (sent.ended - sent.started)
    last_answer = float(first_t.max()) if answered else start
    # Backlog growth: median latency of the last quarter of the window minus that of the second quarter.
    growth = None
    if answered >= 8:
        sent_first = sent_at[lo:hi][uniq]
        q = (end - start) / 4
        second = latency[(sent_first >= start + q) & (sent_first < start + 2 * q)]
        last = latency[sent_first >= start + 3 * q]
        if len(second) and len(last):
            growth = round(float(np.median(last) - np.median(second)) * 1000.0, 3)
    extra: dict[str, Any] = {}
    if origin is not None:
        extra["timeline"] = timeline(sent_at[lo:hi][uniq], latency, origin)
    # Backlog at the end: messages of the window still unanswered when its last message was sent,
    # in seconds of load (a pipeline that keeps up holds only its batching delay in flight).
    pending = (n - answered) + int(np.count_nonzero(first_t > end))
    backlog_s = round(pending / (n / span), 3) if n and span > 0 else None
    return {
        "sent": n,
        "seconds": round(span, 3),
        "send_rate": round(n / span, 1) if span > 0 else 0.0,
        "answered": answered,
        "answer_rate": round(answered / (last_answer - start), 1) if last_answer > start else 0.0,
        "lost": n - answered,
        "duplicated": int((counts - 1).clip(min=0).sum()) if n else 0,
        "latency_ms": percentiles_ms(latency),
        "backlog_growth_ms": growth,
        "backlog_end_s": backlog_s,
        **extra,
    }


def passed(
    result: dict[str, Any], offered: float, *, max_growth_ms: float = 25.0, max_backlog_s: float = 0.5
) -> bool:
    """Sustained at ``offered``: all answered exactly once, the generator kept the rate, and the backlog
    neither grew during the window nor stood at more than ``max_backlog_s`` of load at its end."""
    growth, backlog = result["backlog_growth_ms"], result["backlog_end_s"]
    return (
        result["sent"] > 0
        and result["lost"] == 0
        and result["duplicated"] == 0
        and result["send_rate"] >= 0.97 * offered
        and growth is not None
        and growth <= max_growth_ms
        and backlog is not None
        and backlog <= max_backlog_s
    )


# -- processes ------------------------------------------------------------------------------------


class Worker:
    """A bench client in its own (spawned) process, driven over a pipe; see ``loadgen.serve_*``."""

    def __init__(self, name: str, target: Any, *args: Any, timeout: float = 60.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), name=f"bench-{name}", daemon=True)
        self.proc.start()
        child.close()
        self.info: dict[str, Any] = self._reply(timeout)

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)

    def send(self, name: str, **kwargs: Any) -> None:
        self.conn.send((name, kwargs))

    def _reply(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise BenchError(f"bench {self.name} process did not answer within {timeout:g} s")
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise BenchError(f"bench {self.name} process died (exit code {self.proc.exitcode})") from None
        if status == "error":
            raise BenchError(f"bench {self.name} process failed: {value}")
        return value

    def result(self, timeout: float = 600.0) -> Any:
        return self._reply(timeout)

    def call(self, name: str, timeout: float = 600.0, **kwargs: Any) -> Any:
        self.send(name, **kwargs)
        return self._reply(timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.is_alive():
                self.call("close", timeout=10)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


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


# -- the run --------------------------------------------------------------------------------------


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


def _round_rate(rate: float) -> float:
    return float(max(100, round(rate / 100.0) * 100))


def _clean_env() -> dict[str, str]:
    # The bench's config must win: EDGELOOP_* variables of the caller would override it in the edge.
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}


@dataclass
class _Edge:
    qos: int
    site: str
    data_dir: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes]
    collector: Worker
    started: float
    target: str


class Bench:
    """One bench run; :meth:`run` returns the results as plain data (see the module docstring)."""

    def __init__(self, options: BenchOptions, progress: Any = None) -> None:
        self.o = options
        self.say = progress or (lambda _text: None)
        self.run_id = uuid.uuid4().hex[:6]
        self.group = f"bench{self.run_id}"
        self.counters: Any = multiprocessing.get_context("spawn").RawArray("q", 4)
        self.watch = Watch()
        self.broker: MosquittoBroker | None = None
        self.broker_settings = BrokerSettings(url=options.broker or "mqtt://127.0.0.1:1883")
        self.load: Worker | None = None
        self.devices: list[str] = []
        self.seed_models: Path | None = None
        self._tmp = Path(tempfile.gettempdir())  # a private dir is made by run()
        self._run_no = 0
        self._k: list[np.ndarray] = []
        self._t: list[np.ndarray] = []
        self._models: list[tuple[float, int, str]] = []
        self._events: list[tuple[float, dict[str, Any]]] = []
        self._edge: _Edge | None = None
        # How the edge and `edgeloop train` are started (a seam for profiling a patched edge).
        self.edgeloop_command = [sys.executable, "-m", "edgeloop"]

    # -- set-up -----------------------------------------------------------------------------------
    def _broker_dict(self) -> dict[str, Any]:
        return self.broker_settings.model_dump(mode="json")

    def _setup(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="edgeloop-bench-"))
        self.watch.start()
        if self.o.broker is None:
            self.broker = MosquittoBroker().start()
            self.broker_settings = self.broker.settings()
            if self.broker._proc is not None:
                self.watch.add("broker", self.broker._proc.pid)
            self.say(f"private mosquitto on {self.broker.url}")
        self.watch.add("bench", os.getpid())
        o = self.o
        self.load = Worker(
            "load", loadgen.serve_load, self.counters, self._broker_dict(), o.devices, o.seed, o.interval
        )
        self.devices = list(self.load.info["devices"])
        self.watch.add("loadgen", self.load.pid)

    def _teardown(self) -> None:
        if self._edge is not None:
            self._stop_edge()
        if self.load is not None:
            self.load.close()
        if self.broker is not None:
            self.broker.stop()
        self.watch.close()
        if not self.o.keep and self._tmp.name.startswith("edgeloop-bench-"):
            shutil.rmtree(self._tmp, ignore_errors=True)

    # -- load -------------------------------------------------------------------------------------
    def _start_load(
        self, *, site: str, qos: int, duration: float, rate: float | None, slot: int | None
    ) -> int:
        assert self.load is not None
        self._run_no += 1
        self.load.send(
            "run",
            site=site,
            qos=qos,
            duration=duration,
            rate=rate,
            slot=slot,
            window=self.o.window,
            run_id=self._run_no,
        )
        return self._run_no

    def _finish_load(self, run_no: int | None = None) -> SendLog:
        assert self.load is not None
        if run_no is not None:
            self.counters[_STOP] = run_no
        sent: SendLog = self.load.result()
        return sent

    def _take(self) -> None:
        assert self._edge is not None
        got = self._edge.collector.call("take", timeout=60)
        if not got["alive"]:
            raise BenchError("the measuring subscriber lost its broker connection")
        self._k.append(np.frombuffer(got["k"], dtype=np.int64))
        self._t.append(np.frombuffer(got["t"], dtype=np.float64))
        self._models.extend(got["models"])
        self._events.extend(got["events"])

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        k = np.concatenate(self._k) if self._k else np.zeros(0, dtype=np.int64)
        t = np.concatenate(self._t) if self._t else np.zeros(0)
        self._k, self._t = [k], [t]
        return k, t

    def _drain(self, expected: int, quiet: float = 1.5, limit: float = 30.0) -> None:
        """Wait until the collector counted ``expected`` answers, or none came for ``quiet`` s."""
        deadline = time.monotonic() + limit
        last, since = self.counters[_COLLECT], time.monotonic()
        while self.counters[_COLLECT] < expected and time.monotonic() < deadline:
            time.sleep(0.05)
            now_count = self.counters[_COLLECT]
            if now_count != last:
                last, since = now_count, time.monotonic()
            elif time.monotonic() - since > quiet:
                break
        self._take()

    def _phase(
        self, name: str, *, rate: float | None, duration: float, with_timeline: bool = False
    ) -> dict[str, Any]:
        """One measured window against the running edge, drained and analysed."""
        edge = self._edge
        assert edge is not None
        base = self.counters[_COLLECT]
        slot = _COLLECT if rate is None else None
        self._start_load(site=edge.site, qos=edge.qos, duration=duration, rate=rate, slot=slot)
        sent = self._finish_load(None)
        usage = self.watch.usage(sent.started, sent.ended)
        self._drain(base + sent.count)
        k, t = self._arrays()
        origin = sent.started if with_timeline else None
        result = {"name": name, "offered_rate": rate, **analyze(sent, k, t, origin=origin), **usage}
        self._check_alive(result)
        if rate is None:
            result["stalled"] = sent.stalled
        else:
            result["passed"] = passed(result, rate)
        self.say(_phase_line(result))
        return result

    # -- ceiling ----------------------------------------------------------------------------------
    def _ceiling(self, qos: int, kind: str) -> dict[str, Any]:
        site = f"bench-{self.run_id}-ceiling"
        filters = [topic_for("edgeloop/{site}/+/telemetry", site=site)]
        counter = Worker(
            f"ceiling-{kind}",
            loadgen.serve_counter,
            self.counters,
            _CEILING,
            self._broker_dict(),
            filters,
            qos,
            kind,
            self.group,
        )
        try:
            self.watch.add("ceiling", counter.pid)
            self._start_load(site=site, qos=qos, duration=self.o.ceiling_seconds, rate=None, slot=_CEILING)
            sent = self._finish_load(None)
            seconds = sent.ended - sent.started
            result = {
                "subscriber": kind,
                "received": sent.answered,
                "seconds": round(seconds, 3),
                "rate": round(sent.answered / seconds, 1) if seconds > 0 else 0.0,
                "stalled": sent.stalled,
                **self.watch.usage(sent.started, sent.ended),
            }
        finally:
            counter.close()
            self.watch.remove("ceiling")
        self.say(f"  ceiling QoS {qos} ({kind} do-nothing subscriber): {result['rate']:,.0f} msg/s")
        return result

    # -- the edge process -------------------------------------------------------------------------
    def _start_edge(self, qos: int) -> _Edge:
        o = self.o
        site = f"bench-{self.run_id}-q{qos}"
        data_dir = self._tmp / f"edge-q{qos}"
        data_dir.mkdir(parents=True)
        if self.seed_models is not None:
            shutil.copytree(self.seed_models, data_dir / "models")
        config: dict[str, Any] = {
            "site": site,
            "data_dir": str(data_dir),
            "log_level": "INFO",
            "broker": {
                **{k: v for k, v in self._broker_dict().items() if v is not None},
                "qos": qos,
                "session_expiry": 0,
                "shared_group": self.group,
            },
            "model": {"min_train_samples": o.devices * 50 if o.train_model else 10**12},
            "edge": {"model_poll_interval": 1.0},
            "mlflow": {"enabled": o.mlflow},
        }
        config["broker"].pop("password", None)
        path = self._tmp / f"edge-q{qos}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        log_path = self._tmp / f"edge-q{qos}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [*self.edgeloop_command, "edge", "--config", str(path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
            )
        self.watch.set_edge(proc.pid)
        self.counters[_COLLECT] = 0
        filters = [topic_for("edgeloop/{site}/+/prediction", site=site)]
        events = topic_for("edgeloop/{site}/events", site=site)
        try:
            collector = Worker(
                "collector",
                loadgen.serve_collector,
                self.counters,
                _COLLECT,
                self._broker_dict(),
                filters,
                events,
                qos,
                self.devices,
            )
        except BaseException:
            proc.terminate()
            raise
        self.watch.add("collector", collector.pid)
        self._k, self._t, self._models, self._events = [], [], [], []
        self._edge = _Edge(qos, site, data_dir, path, log_path, proc, collector, time.monotonic(), "voc_ppb")
        self._wait_edge()
        return self._edge

    def _check_alive(self, result: dict[str, Any]) -> None:
        """A window with nothing answered means the edge died or hung: stop measuring this edge."""
        edge = self._edge
        if edge is None or result["sent"] == 0 or result["answered"] > 0:
            return
        state = "exited" if edge.proc.poll() is not None else "is running but answered nothing"
        raise BenchError(f"the edge {state} during {result['name']}; its log ends:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        if self._edge is None or not self._edge.log.exists():
            return ""
        return "\n".join(self._edge.log.read_text(errors="replace").splitlines()[-lines:])

    def _wait_edge(self, timeout: float = 90.0) -> None:
        edge = self._edge
        assert edge is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if edge.proc.poll() is not None:
                raise BenchError(f"the edge exited with code {edge.proc.returncode}:\n{self._log_tail()}")
            base = self.counters[_COLLECT]
            self._start_load(site=edge.site, qos=edge.qos, duration=0.3, rate=100.0, slot=None)
            self._finish_load(None)
            time.sleep(0.3)
            if self.counters[_COLLECT] > base:
                self._drain(10**18, quiet=0.5)
                self.say(f"  edge up (QoS {edge.qos}, pid {edge.proc.pid})")
                return
        raise BenchError(f"the edge did not answer within {timeout:g} s:\n{self._log_tail()}")

    def _stop_edge(self) -> None:
        edge, self._edge = self._edge, None
        if edge is None:
            return
        if edge.proc.poll() is None:
            edge.proc.send_signal(signal.SIGTERM)
            try:
                edge.proc.wait(30)
            except subprocess.TimeoutExpired:
                edge.proc.kill()
                edge.proc.wait(10)
        edge.collector.close()
        self.watch.set_edge(None)
        self.watch.remove("collector")
        models = edge.data_dir / "models"
        if self.seed_models is None and LocalRegistry(models).champion(edge.target) is not None:
            self.seed_models = self._tmp / "seed-models"
            shutil.copytree(models, self.seed_models)

    def _current_label(self) -> str:
        return self._models[-1][2] if self._models else PERSISTENCE_VERSION

    def _wait_label(self, until: float, accept: Any) -> tuple[float, str] | None:
        """Poll the collector until a prediction's model label satisfies ``accept``; (time, label)."""
        seen = len(self._models)
        edge = self._edge
        assert edge is not None
        count, progress = self.counters[_COLLECT], time.monotonic()
        while time.monotonic() < until:
            time.sleep(0.25)
            self._take()
            if self.counters[_COLLECT] != count:
                count, progress = self.counters[_COLLECT], time.monotonic()
            elif edge.proc.poll() is not None or time.monotonic() - progress > 15.0:
                state = "exited" if edge.proc.poll() is not None else "stopped answering for 15 s"
                raise BenchError(f"the edge {state} under load; its log ends:\n{self._log_tail()}")
            for t, _k, label in self._models[seen:]:
                if accept(label):
                    return t, label
            seen = len(self._models)
        return None

    def _event_time(self, kind: str, after: float) -> float | None:
        times = [t for t, e in self._events if e.get("kind") == kind and t >= after]
        return min(times) if times else None

    # -- phases with a retrain --------------------------------------------------------------------
    def _first_model(self) -> dict[str, Any] | None:
        """Load at the warm-up rate until the edge trained (own worker) and swapped in its first model."""
        edge = self._edge
        assert edge is not None
        if self._current_label() != PERSISTENCE_VERSION or self.seed_models is not None:
            return None
        if not self.o.train_model:
            return None
        o = self.o
        self.say(f"  warm-up at {o.warmup_rate:,.0f} msg/s until the edge trained and swapped in a model")
        t0 = time.monotonic()
        run = self._start_load(site=edge.site, qos=edge.qos, duration=300.0, rate=o.warmup_rate, slot=None)
        try:
            swap = self._wait_label(t0 + 240.0, lambda label: label != PERSISTENCE_VERSION)
            if swap is not None:
                time.sleep(2.0)
        finally:
            sent = self._finish_load(run)
        self._drain(10**18)
        k, t = self._arrays()
        requested = self._event_time("retrain_requested", t0)
        result: dict[str, Any] = {
            "name": "first model swap (worker)",
            "offered_rate": o.warmup_rate,
            "model": swap[1] if swap else None,
            "retrain_requested_s": round(requested - t0, 3) if requested else None,
            "swapped_s": round(swap[0] - t0, 3) if swap else None,
            "train_to_swap_s": round(swap[0] - requested, 3) if swap and requested else None,
        }
        if swap is not None and requested is not None:
            window = (requested, swap[0] + 2.0)
            result.update(analyze(sent, k, t, between=window, origin=requested))
            result.update(self.watch.usage(*window))
        else:
            result.update(analyze(sent, k, t))
            result["error"] = "no model was swapped in within 240 s; the figures serve persistence"
        self.say(_phase_line(result))
        return result

    def _forced_retrain(self) -> dict[str, Any]:
        """``edgeloop train`` on the edge's store while load flows, promote, and time the swap."""
        edge = self._edge
        assert edge is not None
        o = self.o
        registry = LocalRegistry(edge.data_dir / "models")
        self.say(f"  retrain + swap at {o.retrain_rate:,.0f} msg/s: `edgeloop train` on the edge's store")
        run = self._start_load(site=edge.site, qos=edge.qos, duration=600.0, rate=o.retrain_rate, slot=None)
        result: dict[str, Any] = {"name": "retrain + swap (train CLI)", "offered_rate": o.retrain_rate}
        try:
            time.sleep(3.0)
            t_train = self.watch.now()
            cmd = [*self.edgeloop_command, "train", "--config", str(edge.config)]
            nice = shutil.which("nice")  # niced from its first instruction, like the edge's own worker
            cmd = [nice, "-n", "10", *cmd] if nice else cmd
            trainer = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_clean_env()
            )
            if not nice:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(trainer.pid).nice(10)
            self.watch.add("trainer", trainer.pid)
            output, _ = trainer.communicate(timeout=300)
            t_trained = time.monotonic()
            result["train_output"] = output.decode(errors="replace").strip().splitlines()[:3]
            versions = registry.versions(edge.target)
            if not versions:
                raise BenchError(f"`edgeloop train` made no model: {result['train_output']}")
            label = version_label(edge.target, max(versions))
            result["trained_decision"] = (
                "promoted" if registry.champion(edge.target) == max(versions) else "rejected"
            )
            if result["trained_decision"] == "rejected":
                # Force the swap the bench is about: the registry pointer is what `edgeloop models
                # promote --force` writes (without that command's seconds of imports on the CPU).
                registry.promote(edge.target, max(versions), "edgeloop bench: forced swap under load")
            # When the champion pointer was written (by `edgeloop train` itself, or just now), on the
            # monotonic clock: the edge's registry poll swaps from there.
            t_promoted = time.monotonic() - (time.time() - registry.pointer_mtime(edge.target))
            swap = self._wait_label(time.monotonic() + 30.0, lambda seen: seen == label)
            if swap is not None:
                time.sleep(2.0)
        finally:
            sent = self._finish_load(run)
            self.watch.remove("trainer")
        self._drain(10**18)
        k, t = self._arrays()
        result.update(
            {
                "model": label,
                "train_s": round(t_trained - t_train, 3),
                "promoted_s": round(t_promoted - t_train, 3),
                "swapped_s": round(swap[0] - t_train, 3) if swap else None,
                "promoted_to_swap_s": round(swap[0] - t_promoted, 3) if swap else None,
            }
        )
        window = (t_train, (swap[0] if swap else t_promoted) + 2.0)
        result.update(analyze(sent, k, t, between=window, origin=t_train))
        result.update(self.watch.usage(*window))
        if swap is None:
            result["error"] = f"the edge did not serve {label} within 30 s of its promotion"
        self.say(_phase_line(result))
        return result

    # -- per QoS ----------------------------------------------------------------------------------
    def _search(self, top: float) -> tuple[list[dict[str, Any]], float | None]:
        o = self.o
        # Start just under the closed-loop max (open-loop arrivals are burstier); step up by 10% while
        # windows pass, down by 25% while none has, then bisect; stop at 5% resolution.
        rate = _round_rate(0.85 * top)
        lo: float | None = None
        hi: float | None = None
        steps = []
        for _ in range(o.steps):
            result = self._phase(f"sustained@{rate:.0f}", rate=rate, duration=o.step_seconds)
            steps.append(result)
            if result["passed"]:
                lo = rate if lo is None else max(lo, rate)
                rate = _round_rate(rate * 1.1 if hi is None else (rate + hi) / 2)
            else:
                hi = rate if hi is None else min(hi, rate)
                rate = _round_rate(rate * 0.75 if lo is None else (lo + rate) / 2)
            if (lo is not None and hi is not None and hi - lo <= 0.05 * hi) or rate in (lo, hi):
                break
        return steps, lo

    def _run_qos(self, qos: int) -> dict[str, Any]:
        o = self.o
        self.say(f"QoS {qos}")
        out: dict[str, Any] = {"qos": qos}
        if o.rate is None:
            out["ceiling"] = {kind: self._ceiling(qos, kind) for kind in ("paho", "lean")}
        edge = self._start_edge(qos)
        try:
            self._measure_edge(out)
        except BenchError as exc:
            # This edge could not be measured: keep what was, say why, go on with the next QoS.
            out["error"] = str(exc)
            self.say(f"  error: {exc}")
        finally:
            out["model"] = self._current_label()
            whole = self.watch.usage(edge.started, time.monotonic())
            kinds: dict[str, int] = {}
            for _t, event in self._events:
                kinds[event.get("kind", "?")] = kinds.get(event.get("kind", "?"), 0) + 1
            out["edge"] = {"rss_peak_mb": whole["rss_mb"], "events": kinds, "pid": edge.proc.pid}
            if o.keep:
                out["edge"]["log"] = str(edge.log)
            self._stop_edge()
        return out

    def _measure_edge(self, out: dict[str, Any]) -> None:
        o, edge = self.o, self._edge
        assert edge is not None
        out["first_model"] = self._first_model()
        if o.rate is not None:
            out["fixed"] = self._phase(f"fixed@{o.rate:.0f}", rate=o.rate, duration=o.latency_seconds)
        else:
            out["max"] = self._phase("max (closed loop)", rate=None, duration=o.max_seconds)
            # Peak RSS before any deliberately overloaded window (the search's failing steps let
            # paho's queue of unsent predictions grow, and freed memory is rarely returned).
            out["rss_steady_mb"] = self.watch.usage(edge.started, time.monotonic())["rss_mb"]
            out["steps"], out["sustained_rate"] = self._search(out["max"]["answer_rate"])
            out["latency"] = self._phase(
                f"latency@{o.latency_rate:.0f}",
                rate=o.latency_rate,
                duration=o.latency_seconds,
                with_timeline=True,
            )
        if o.during_retrain and edge.qos == self._retrain_qos():
            out["retrain"] = self._forced_retrain()

    def _retrain_qos(self) -> int:
        return 1 if 1 in self.o.qos else self.o.qos[0]

    def run(self) -> dict[str, Any]:
        """Run the whole bench; always stops every process it started."""
        t0 = time.monotonic()
        result: dict[str, Any] = {
            "machine": machine_info(),
            "options": asdict(self.o),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "qos": {},
        }
        result["idle_check"] = idle_check()
        if result["idle_check"]["busy_pct"] > 10:
            self.say(
                f"warning: the machine is {result['idle_check']['busy_pct']:.0f}% busy before the bench:"
                f" {', '.join(result['idle_check']['top'])}"
            )
        try:
            self._setup()
            result["broker"] = self.broker_settings.url
            for qos in self.o.qos:
                result["qos"][str(qos)] = self._run_qos(qos)
        finally:
            self._teardown()
        result["seconds"] = round(time.monotonic() - t0, 1)
        result["targets"] = evaluate_targets(result)
        if self.o.keep:
            result["workdir"] = str(self._tmp)
        return result


def _phase_line(r: dict[str, Any]) -> str:
    lat = r.get("latency_ms") or {}
    p99 = lat.get("p99")
    verdict = {True: " pass", False: " FAIL"}.get(bool(r["passed"]), "") if "passed" in r else ""
    return (
        f"  {r['name']:<26} sent {r.get('send_rate', 0):>9,.0f}/s"
        f"  answered {r.get('answer_rate', 0):>9,.0f}/s"
        f"  lost {r.get('lost', '-')}  dup {r.get('duplicated', '-')}"
        f"  p99 {p99 if p99 is not None else '-'} ms{verdict}"
    )


# -- targets --------------------------------------------------------------------------------------


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value, the limit and whether it is met."""
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, higher_is_better: bool, note: str = "") -> None:
        met = None if value is None else (value >= limit if higher_is_better else value <= limit)
        targets.append({"target": name, "value": value, "limit": limit, "met": met, "note": note})

    for key, run in result.get("qos", {}).items():
        sustained = run.get("sustained_rate")
        ceiling = run.get("ceiling") or {}
        for kind in ("paho", "lean"):
            if kind in ceiling and "max" in run:
                limit = round(0.5 * ceiling[kind]["rate"], 1)
                add(f"QoS {key}: sustained >= 50% of {kind} do-nothing subscriber", sustained, limit, True)
        if key == "0" and "max" in run:
            add("QoS 0: sustained >= 20,000 msg/s", sustained, 20000.0, True)
        lat = run.get("latency")
        if lat is not None:
            p99 = lat["latency_ms"]["p99"]
            lossless = lat["lost"] == 0 and lat["duplicated"] == 0
            add(
                f"QoS {key}: p99 at {lat['offered_rate']:,.0f} msg/s <= 50 ms",
                p99 if lossless else None,
                50.0,
                False,
                "" if lossless else f"{lat['lost']} lost, {lat['duplicated']} duplicated",
            )
        for name in ("first_model", "retrain"):
            window = run.get(name)
            if not window or "lost" not in window:
                continue
            label = "first model swap" if name == "first_model" else "retrain + swap"
            add(f"QoS {key}, {label}: lost == 0", window["lost"], 0, False)
            add(f"QoS {key}, {label}: duplicated == 0", window["duplicated"], 0, False)
            add(f"QoS {key}, {label}: p99 <= 100 ms", window["latency_ms"]["p99"], 100.0, False)
        steady = "rss_steady_mb" in run
        rss = (run.get("rss_steady_mb") or (run.get("edge") or {}).get("rss_peak_mb") or {}).get("edge")
        devices = result.get("options", {}).get("devices")
        note = "main process, up to the end of the max window" if steady else "main process, whole run"
        add(
            f"QoS {key}: edge RSS <= 200 MB with {devices:,} devices",
            rss,
            200.0,
            False,
            note if devices == 1000 else "the target is stated for 1,000 devices",
        )
    return targets
