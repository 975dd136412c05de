"""The edges under test on NATS: R ``edgeloop edge`` replicas of one site and their measuring subscriber.

:class:`EdgeGroup` is an :class:`~edgeloop.bench.edge.EdgeProcess` for the phases (they drive and read
it the same way), but starts R edge processes, replica r of R (``edge.replicas``/``edge.ordinal``),
each owning the partitions p with p mod R == r of the bench's NATS server, and one measuring
subscriber on the predictions and events they publish as core NATS. The CPU of replica 0 is the
bench's ``edge`` (with its children); replicas 1.. are ``edge1``, ``edge2``, ...
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgeloop.bench import BenchError
from edgeloop.bench.edge import TARGET, EdgeProcess, clean_env, edge_config
from edgeloop.bench.nats_broker import BenchNats
from edgeloop.bench.nats_clients import serve_nats_collector
from edgeloop.bench.options import BenchOptions
from edgeloop.bench.usage import Watch
from edgeloop.bench.workers import COLLECT_SLOT, Load, Worker

TAKEN_OVER = "took over partition"  # the transport's log line once a partition is consumed


def nats_edge_config(
    *, site: str, data_dir: Path, nats: BenchNats, replicas: int, ordinal: int, options: BenchOptions
) -> dict[str, Any]:
    """Replica ``ordinal`` of ``replicas`` on the bench's NATS server; no training of its own (it
    serves the model the Mosquitto path trained, or persistence), so every window measures serving."""
    config = edge_config(
        site=site, data_dir=data_dir, broker=nats.nats_broker(), qos=1, group="unused", options=options
    )
    config["broker"].pop("shared_group", None)
    config["edge"].update({"replicas": replicas, "ordinal": ordinal})
    config["model"]["min_train_samples"] = 10**12
    return config


class EdgeGroup(EdgeProcess):
    """R edge replicas on NATS and one measuring subscriber (see the module docstring)."""

    def __init__(
        self,
        *,
        replicas: int,
        nats: BenchNats,
        workdir: Path,
        options: BenchOptions,
        devices: list[str],
        counters: Any,
        watch: Watch,
        command: list[str],
        seed_models: Path | None = None,
    ) -> None:
        self.qos, self.site, self.target = 1, nats.site, TARGET
        self.counters, self.watch = counters, watch
        self.replicas = replicas
        self.partitions = nats.partitions
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.configs: list[Path] = []
        try:
            for r in range(replicas):
                name = f"nats-r{replicas}-e{r}"
                data_dir = workdir / name
                data_dir.mkdir(parents=True)
                if seed_models is not None:
                    shutil.copytree(seed_models, data_dir / "models")
                config = nats_edge_config(
                    site=nats.site,
                    data_dir=data_dir,
                    nats=nats,
                    replicas=replicas,
                    ordinal=r,
                    options=options,
                )
                path = workdir / f"{name}.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False))
                log = workdir / f"{name}.log"
                with log.open("wb") as log_file:
                    proc = subprocess.Popen(
                        [*command, "edge", "--config", str(path)],
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        env=clean_env(),
                    )
                self.procs.append(proc)
                self.logs.append(log)
                self.configs.append(path)
                if r == 0:
                    watch.set_edge(proc.pid)
                else:
                    watch.add(f"edge{r}", proc.pid)
            self.proc, self.log, self.config = self.procs[0], self.logs[0], self.configs[0]
            self.data_dir = workdir / f"nats-r{replicas}-e0"
            counters[COLLECT_SLOT] = 0
            predictions = nats.subjects.of_topic(f"edgeloop/{nats.site}/*/prediction")
            events = nats.subjects.of_topic(f"edgeloop/{nats.site}/events")
            self.collector = Worker(
                "collector",
                serve_nats_collector,
                counters,
                COLLECT_SLOT,
                nats.client(),
                predictions,
                events,
                devices,
            )
        except BaseException:
            for proc in self.procs:
                proc.kill()
            raise
        watch.add("collector", self.collector.pid)
        self._k: list[np.ndarray] = []
        self._t: list[np.ndarray] = []
        self.models: list[tuple[float, int, str]] = []
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.started = time.monotonic()

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def log_tail(self, lines: int = 15) -> str:
        tails = []
        for r, log in enumerate(self.logs):
            if log.exists():
                text = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                tails.append(f"[replica {r}]\n{text}")
        return "\n".join(tails)

    def check_alive(self, result: dict[str, Any]) -> None:
        dead = [r for r, proc in enumerate(self.procs) if proc.poll() is not None]
        if dead:
            raise BenchError(f"edge replica(s) {dead} exited during {result['name']}:\n{self.log_tail()}")
        super().check_alive(result)

    def wait_answering(self, load: Load, timeout: float = 120.0) -> None:
        """Wait until the replicas took over every partition, then until a trickle is answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [r for r, proc in enumerate(self.procs) if proc.poll() is not None]
            if dead:
                raise BenchError(f"edge replica(s) {dead} exited at start:\n{self.log_tail()}")
            taken = sum(log.read_text(errors="replace").count(TAKEN_OVER) for log in self.logs)
            if taken >= self.partitions:
                break
            time.sleep(0.25)
        else:
            raise BenchError(
                f"the replicas did not take over all partitions in {timeout:g} s:\n{self.log_tail()}"
            )
        super().wait_answering(load, timeout=max(5.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """SIGTERM every replica (a clean stop releases its partitions), SIGKILL after 30 s."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.collector.close()
        self.watch.set_edge(None)
        self.watch.remove("collector")
        for r in range(1, self.replicas):
            self.watch.remove(f"edge{r}")
