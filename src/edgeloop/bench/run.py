"""``edgeloop bench``: the live edge measured end to end through a real broker.

One run starts a private mosquitto (or uses ``broker``), then per QoS level:

1. **Ceiling**: a do-nothing subscriber on the same broker, fed by the same load generator at the same
   QoS, closed loop (at most ``window`` messages unanswered); its receive rate. ``paho`` is built like
   the edge's receive side; ``lean`` (:class:`~edgeloop.bench.lean.LeanSubscriber`) shows what the
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

This module is the run's order and bookkeeping; the windows are in :mod:`~edgeloop.bench.phases`,
the processes in :mod:`~edgeloop.bench.edge` and :mod:`~edgeloop.bench.workers`, the figures in
:mod:`~edgeloop.bench.analysis`.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.bench import BenchError, phases
from edgeloop.bench.analysis import evaluate_targets
from edgeloop.bench.edge import EdgeProcess
from edgeloop.bench.options import BenchOptions
from edgeloop.bench.phases import Rig
from edgeloop.bench.usage import Watch, idle_check, machine_info
from edgeloop.bench.workers import SLOTS, Load
from edgeloop.config import BrokerSettings
from edgeloop.registry.local import LocalRegistry
from edgeloop.telemetry.schema import PERSISTENCE_VERSION

__all__ = ["Bench", "BenchError", "BenchOptions"]


class Bench:
    """One bench run; :meth:`run` returns the results as plain data (see the module docstring)."""

    def __init__(self, options: BenchOptions, progress: Callable[[str], None] | None = None) -> None:
        self.o = options
        self.say = progress or (lambda _text: None)
        self.run_id = uuid.uuid4().hex[:6]
        self.group = f"bench{self.run_id}"
        self.counters: Any = multiprocessing.get_context("spawn").RawArray("q", SLOTS)
        self.watch = Watch()
        self.broker: MosquittoBroker | None = None
        self.broker_settings = BrokerSettings(url=options.broker or "mqtt://127.0.0.1:1883")
        self.load: Load | None = None
        self.seed_models: Path | None = None  # the first edge's models, copied into later edges
        self._tmp = Path(tempfile.gettempdir())  # a private dir is made by run()
        self._edge: EdgeProcess | None = None
        # How the edge and `edgeloop train` are started (a seam for profiling a patched edge).
        self.edgeloop_command = [
            sys.executable,
            "-m",
            "edgeloop" if options.reliability else "edgeloop.bench.unreliable",
        ]

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
        self.load = Load(
            self.counters,
            self._broker_dict(),
            devices=o.devices,
            seed=o.seed,
            interval=o.interval,
            window=o.window,
        )
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

    def _rig(self) -> Rig:
        assert self.load is not None
        return Rig(self.o, self.load, self.watch, self.counters, self.say)

    # -- the edge process -------------------------------------------------------------------------
    def _start_edge(self, qos: int) -> EdgeProcess:
        assert self.load is not None
        self._edge = EdgeProcess(
            qos=qos,
            site=f"bench-{self.run_id}-q{qos}",
            workdir=self._tmp,
            broker=self._broker_dict(),
            group=self.group,
            options=self.o,
            devices=self.load.devices,
            counters=self.counters,
            watch=self.watch,
            command=self.edgeloop_command,
            seed_models=self.seed_models,
        )
        self._edge.wait_answering(self.load)
        self.say(f"  edge up (QoS {qos}, pid {self._edge.proc.pid})")
        return self._edge

    def _stop_edge(self) -> None:
        edge, self._edge = self._edge, None
        if edge is None:
            return
        edge.stop()
        models = edge.data_dir / "models"
        if self.seed_models is None and LocalRegistry(models).champion(edge.target) is not None:
            self.seed_models = self._tmp / "seed-models"
            shutil.copytree(models, self.seed_models)

    # -- per QoS ----------------------------------------------------------------------------------
    def _run_qos(self, qos: int) -> dict[str, Any]:
        o = self.o
        self.say(f"QoS {qos}")
        out: dict[str, Any] = {"qos": qos}
        if o.rate is None:
            site = f"bench-{self.run_id}-ceiling"
            out["ceiling"] = {
                kind: phases.ceiling(
                    self._rig(), qos, kind, site=site, broker=self._broker_dict(), group=self.group
                )
                for kind in ("paho", "lean")
            }
        edge = self._start_edge(qos)
        try:
            self._measure_edge(edge, out)
        except BenchError as exc:
            # This edge could not be measured: keep what was, say why, go on with the next QoS.
            out["error"] = str(exc)
            self.say(f"  error: {exc}")
        finally:
            out["model"] = edge.current_label()
            whole = self.watch.usage(edge.started, time.monotonic())
            out["edge"] = {
                "rss_peak_mb": whole["rss_mb"],
                "events": edge.event_counts(),
                "pid": edge.proc.pid,
            }
            if o.keep:
                out["edge"]["log"] = str(edge.log)
            self._stop_edge()
        return out

    def _measure_edge(self, edge: EdgeProcess, out: dict[str, Any]) -> None:
        o, rig = self.o, self._rig()
        untrained = edge.current_label() == PERSISTENCE_VERSION and self.seed_models is None
        out["first_model"] = phases.first_model(rig, edge) if untrained and o.train_model else None
        if o.rate is not None:
            out["fixed"] = phases.window(
                rig, edge, f"fixed@{o.rate:.0f}", rate=o.rate, duration=o.latency_seconds
            )
        else:
            out["max"] = phases.window(rig, edge, "max (closed loop)", rate=None, duration=o.max_seconds)
            # Peak RSS before any deliberately overloaded window (the search's failing steps let
            # paho's queue of unsent predictions grow, and freed memory is rarely returned).
            out["rss_steady_mb"] = self.watch.usage(edge.started, time.monotonic())["rss_mb"]
            out["steps"], out["sustained_rate"] = phases.search(rig, edge, out["max"]["answer_rate"])
            out["latency"] = phases.window(
                rig,
                edge,
                f"latency@{o.latency_rate:.0f}",
                rate=o.latency_rate,
                duration=o.latency_seconds,
                with_timeline=True,
            )
        if o.during_retrain and edge.qos == self._retrain_qos():
            out["retrain"] = phases.forced_retrain(rig, edge, self.edgeloop_command)

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
            if self.o.nats:
                from edgeloop.bench.nats_run import run_nats  # nats-py only when asked for

                result["nats"] = run_nats(self)
        finally:
            self._teardown()
        result["seconds"] = round(time.monotonic() - t0, 1)
        result["targets"] = evaluate_targets(result)
        if self.o.keep:
            result["workdir"] = str(self._tmp)
        return result
