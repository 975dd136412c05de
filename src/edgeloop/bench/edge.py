"""The edge under test: ``python -m edgeloop edge`` as a separate process, and what it answered.

:class:`EdgeProcess` writes the edge's config (its own data dir, the bench's broker, QoS and shared
group), starts it, and starts the measuring subscriber (:func:`~edgeloop.bench.workers.serve_collector`)
on its predictions and events. What the subscriber recorded is fetched with :meth:`EdgeProcess.take`
and kept here: the message number ``k`` and receive time of every prediction, each change of the
serving model's label, and every event.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgeloop.adapters.topics import topic_for
from edgeloop.bench import BenchError
from edgeloop.bench.options import BenchOptions
from edgeloop.bench.usage import Watch
from edgeloop.bench.workers import COLLECT_SLOT, Load, Worker, serve_collector
from edgeloop.telemetry.schema import PERSISTENCE_VERSION

TARGET = "voc_ppb"  # the simulator's target, whose model the phases wait for


def clean_env() -> dict[str, str]:
    # The bench's config must win: EDGELOOP_* variables of the caller would override it in the edge.
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}


def edge_config(
    *, site: str, data_dir: Path, broker: dict[str, Any], qos: int, group: str, options: BenchOptions
) -> dict[str, Any]:
    """The edge's config: the bench's broker, QoS and shared group; everything else at its defaults."""
    config: dict[str, Any] = {
        "site": site,
        "data_dir": str(data_dir),
        "log_level": "INFO",
        "broker": {
            **{k: v for k, v in broker.items() if v is not None},
            "qos": qos,
            "session_expiry": 0,
            "shared_group": group,
        },
        "model": {"min_train_samples": options.devices * 50 if options.train_model else 10**12},
        "edge": {"model_poll_interval": 1.0},
        "mlflow": {"enabled": options.mlflow},
    }
    if options.candidates:
        config["model"]["candidates"] = options.candidates
    if not options.reliability:
        # With bench/unreliable.py's ack on receipt: no snapshots, and nothing bounds the readings
        # taken in but the edge's pace (the broker's flow control never fills, the inbox is unbounded).
        config["edge"].update(snapshot_interval=0, inbox_max=10**9)
        config["broker"]["receive_maximum"] = 65535
    config["broker"].pop("password", None)
    return config


class EdgeProcess:
    """One edge process under test and its measuring subscriber (see the module docstring)."""

    def __init__(
        self,
        *,
        qos: int,
        site: str,
        workdir: Path,
        broker: dict[str, Any],
        group: str,
        options: BenchOptions,
        devices: list[str],
        counters: Any,
        watch: Watch,
        command: list[str],
        seed_models: Path | None = None,
    ) -> None:
        self.qos, self.site, self.target = qos, site, TARGET
        self.counters, self.watch = counters, watch
        self.data_dir = workdir / f"edge-q{qos}"
        self.data_dir.mkdir(parents=True)
        if seed_models is not None:
            shutil.copytree(seed_models, self.data_dir / "models")
        config = edge_config(
            site=site, data_dir=self.data_dir, broker=broker, qos=qos, group=group, options=options
        )
        self.config = workdir / f"edge-q{qos}.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / f"edge-q{qos}.log"
        with self.log.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [*command, "edge", "--config", str(self.config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )
        watch.set_edge(self.proc.pid)
        counters[COLLECT_SLOT] = 0
        filters = [topic_for("edgeloop/{site}/+/prediction", site=site)]
        events = topic_for("edgeloop/{site}/events", site=site)
        try:
            self.collector = Worker(
                "collector", serve_collector, counters, COLLECT_SLOT, broker, filters, events, qos, devices
            )
        except BaseException:
            self.proc.terminate()
            raise
        watch.add("collector", self.collector.pid)
        self._k: list[np.ndarray] = []
        self._t: list[np.ndarray] = []
        self.models: list[tuple[float, int, str]] = []  # (receive time, k, label) at each label change
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.started = time.monotonic()

    @property
    def answered(self) -> int:
        """Predictions the measuring subscriber received so far (shared memory, always current)."""
        return int(self.counters[COLLECT_SLOT])

    # -- what the subscriber recorded -------------------------------------------------------------
    def take(self) -> None:
        """Fetch what the measuring subscriber recorded since the last call."""
        got = self.collector.call("take", timeout=60)
        if not got["alive"]:
            raise BenchError("the measuring subscriber lost its broker connection")
        self._k.append(np.frombuffer(got["k"], dtype=np.int64))
        self._t.append(np.frombuffer(got["t"], dtype=np.float64))
        self.models.extend(got["models"])
        self.events.extend(got["events"])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every prediction's ``k`` and receive time so far."""
        k = np.concatenate(self._k) if self._k else np.zeros(0, dtype=np.int64)
        t = np.concatenate(self._t) if self._t else np.zeros(0)
        self._k, self._t = [k], [t]
        return k, t

    def drain(self, expected: int, quiet: float = 1.5, limit: float = 30.0) -> None:
        """Wait until ``expected`` answers were counted, or none came for ``quiet`` s; then :meth:`take`."""
        deadline = time.monotonic() + limit
        last, since = self.answered, time.monotonic()
        while self.answered < expected and time.monotonic() < deadline:
            time.sleep(0.05)
            now_count = self.answered
            if now_count != last:
                last, since = now_count, time.monotonic()
            elif time.monotonic() - since > quiet:
                break
        self.take()

    def current_label(self) -> str:
        """The model the edge serves: the newest label other than persistence in its predictions.

        Not the last prediction's label: a device the persistence floor demoted is answered by
        persistence while the model serves the others, so the labels alternate.
        """
        for _t, _k, label in reversed(self.models):
            if label != PERSISTENCE_VERSION:
                return label
        return PERSISTENCE_VERSION

    def wait_label(self, until: float, accept: Callable[[str], bool]) -> tuple[float, str] | None:
        """Poll until a prediction's model label satisfies ``accept``: (receive time, label), or None."""
        seen = len(self.models)
        count, progress = self.answered, time.monotonic()
        while time.monotonic() < until:
            time.sleep(0.25)
            self.take()
            if self.answered != count:
                count, progress = self.answered, time.monotonic()
            elif self.proc.poll() is not None or time.monotonic() - progress > 15.0:
                state = "exited" if self.proc.poll() is not None else "stopped answering for 15 s"
                raise BenchError(f"the edge {state} under load; its log ends:\n{self.log_tail()}")
            for t, _k, label in self.models[seen:]:
                if accept(label):
                    return t, label
            seen = len(self.models)
        return None

    def event_time(self, kind: str, after: float) -> float | None:
        """When the first event of ``kind`` at or after ``after`` was received."""
        times = [t for t, e in self.events if e.get("kind") == kind and t >= after]
        return min(times) if times else None

    def event_counts(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for _t, event in self.events:
            kinds[event.get("kind", "?")] = kinds.get(event.get("kind", "?"), 0) + 1
        return kinds

    # -- the process ------------------------------------------------------------------------------
    def log_tail(self, lines: int = 15) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self, result: dict[str, Any]) -> None:
        """A window with nothing answered means the edge died or hung: stop measuring this edge."""
        if result["sent"] == 0 or result["answered"] > 0:
            return
        state = "exited" if self.proc.poll() is not None else "is running but answered nothing"
        raise BenchError(f"the edge {state} during {result['name']}; its log ends:\n{self.log_tail()}")

    def wait_answering(self, load: Load, timeout: float = 90.0) -> None:
        """Send short trickles of load until the edge answers one (it is up and subscribed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the edge exited with code {self.proc.returncode}:\n{self.log_tail()}")
            base = self.answered
            load.run(site=self.site, qos=self.qos, duration=0.3, rate=100.0, slot=None)
            time.sleep(0.3)
            if self.answered > base:
                self.drain(10**18, quiet=0.5)
                return
        raise BenchError(f"the edge did not answer within {timeout:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after 30 s; then the measuring subscriber."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.collector.close()
        self.watch.set_edge(None)
        self.watch.remove("collector")
