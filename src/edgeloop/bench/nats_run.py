"""``edgeloop bench --broker nats``: the NATS JetStream windows, after the Mosquitto ones of the same run.

A private nats-server runs the shipped ``deploy/nats`` config (JetStream, the MQTT listener, the
device-partition mapping into ``nats_partitions`` partitions) for one site. The load generator runs
in a process of its own. Devices publish MQTT, so the first ceiling is fed by the Mosquitto path's
generator (paho, MQTT 3.1.1 at QoS 1 to the server's MQTT listener). Every other window is fed by
nats-py core publishes to ``edgeloop.<site>.<device>.telemetry`` (``nats_load="nats"``, the
default; :mod:`~edgeloop.bench.nats_loadgen`): on two shared cores, the MQTT generator and the
server's MQTT listener cost more CPU per reading than the edge spends answering it, so MQTT
publishing, not the edge, would be the limit. ``nats_load="mqtt"`` feeds every window over MQTT.
Then:

1. **Ceilings**, closed loop: a do-nothing nats-py core subscriber on the partitioned subjects (what
   the server delivers, nothing stored); a do-nothing durable consumer on the edges' stream config
   read exactly as the edge reads it (pull loop, inbox bound, ack-all: the reference of the 50 %
   target); the same acknowledging each message (what per-message acks cost).
2. Per R in ``nats_replicas`` (1, 2, 3): R edge replicas (``edge.replicas=R``, ordinals 0..R-1)
   answering every reading durably (JetStream, acknowledged after the prediction was published),
   closed loop as fast as they answer, with the CPU of every process.
3. With one edge also: the sustained-rate search (every reading answered, latency bounded; the same
   search and pass rule as Mosquitto's), the latency window, and **overload**: ``overload_factor``
   times the sustained rate for ``overload_seconds``; the stream absorbs what the edge cannot take at
   once, and the window reports the backlog when the generator stopped, how long it took to drain,
   and that nothing was lost or duplicated.

Between configurations the stream, its consumers and the lease bucket are deleted, so every
configuration starts empty (see :mod:`~edgeloop.bench.nats_broker`).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from edgeloop.adapters.nats_server import nats_server_binary
from edgeloop.bench import BenchError, phases
from edgeloop.bench.analysis import analyze, backlog_drain
from edgeloop.bench.nats_broker import BenchNats
from edgeloop.bench.nats_clients import serve_nats_counter
from edgeloop.bench.nats_edges import EdgeGroup
from edgeloop.bench.nats_loadgen import serve_nats_load
from edgeloop.bench.phases import Rig, round_rate
from edgeloop.bench.report import phase_line
from edgeloop.bench.workers import CEILING_SLOT, STOP_SLOT, Load, Worker

if TYPE_CHECKING:
    from edgeloop.bench.run import Bench

LOAD_QOS = 1  # devices publish QoS 1 to the MQTT listener: the server acknowledges each reading
LOADS = {
    "mqtt": "paho (MQTT 3.1.1, QoS 1) to the NATS MQTT listener",
    "nats": "nats-py core publishes to edgeloop.<site>.<device>.telemetry",
}
CEILINGS = {
    "core-mqtt": "core NATS subscriber, MQTT publisher",
    "core": "core NATS subscriber, NATS publisher",
    "jetstream": "durable pull consumer, ack-all as the edge",
    "jetstream-each": "durable pull consumer, acking each",
}


def nats_server_version() -> str | None:
    binary = nats_server_binary()
    if binary is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5, check=False)
        return (out.stdout or out.stderr).strip().removeprefix("nats-server: ") or None
    return None


def run_nats(bench: Bench) -> dict[str, Any]:
    """The NATS section of a bench run (see the module docstring); stops everything it started."""
    o = bench.o
    site = f"bench-{bench.run_id}-nats"
    out: dict[str, Any] = {
        "partitions": o.nats_partitions,
        "load": LOADS[o.nats_load],
        "nats_server": nats_server_version(),
        "nats_py": version("nats-py"),
        "edges": {},
    }
    bench.say(f"NATS JetStream ({o.nats_partitions} partitions; load: {LOADS[o.nats_load]})")
    server = BenchNats(bench._tmp, site=site, partitions=o.nats_partitions).start()
    load: Load | None = None
    try:
        out["url"] = server.url
        bench.watch.add("broker", server.pid)  # from here on, broker% is nats-server's
        bench.counters[STOP_SLOT] = 0  # the Mosquitto generator's run numbers must not stop this one's
        sizes: dict[str, Any] = {
            "devices": o.devices,
            "seed": o.seed,
            "interval": o.interval,
            "window": o.window,
        }
        # The MQTT generator first: the core ceiling as devices feed it (MQTT into the MQTT listener).
        load = Load(bench.counters, server.mqtt_broker(), protocol="3.1.1", **sizes)
        bench.watch.add("loadgen", load.pid)
        rig = Rig(o, load, bench.watch, bench.counters, bench.say)
        out["ceiling"] = {"core-mqtt": _ceiling(rig, server, "core", "core-mqtt")}
        if o.nats_load == "nats":
            load.close()
            load = Load(bench.counters, server.client(), serve=serve_nats_load, **sizes)
            bench.watch.add("loadgen", load.pid)
            rig = Rig(o, load, bench.watch, bench.counters, bench.say)
            out["ceiling"]["core"] = _ceiling(rig, server, "core", "core")
        for kind in ("jetstream", "jetstream-each"):
            out["ceiling"][kind] = _ceiling(rig, server, kind, kind)
        for replicas in o.nats_replicas:
            out["edges"][str(replicas)] = _edges(bench, rig, server, replicas, full=replicas == 1)
            server.reset()
    finally:
        if load is not None:
            load.close()
        server.stop()
    return out


def _ceiling(rig: Rig, server: BenchNats, kind: str, name: str) -> dict[str, Any]:
    counter = Worker(
        f"ceiling-{kind}",
        serve_nats_counter,
        rig.counters,
        CEILING_SLOT,
        server.client(),
        kind,
        server.subjects.stream,
        server.stream,
    )
    result = phases.count_closed_loop(
        rig, counter, qos=LOAD_QOS, site=server.site, label=f"NATS ({CEILINGS[name]})"
    )
    server.reset()  # the next ceiling (or the edges) start on an empty stream
    return result


def _edges(bench: Bench, rig: Rig, server: BenchNats, replicas: int, *, full: bool) -> dict[str, Any]:
    """R replicas: the closed-loop aggregate; with ``full``, also the search, latency and overload."""
    o = bench.o
    assert rig.load is not None
    bench.say(f"  {replicas} edge replica(s)")
    group = EdgeGroup(
        replicas=replicas,
        nats=server,
        workdir=bench._tmp,
        options=o,
        devices=rig.load.devices,
        counters=bench.counters,
        watch=bench.watch,
        command=bench.edgeloop_command,
        seed_models=bench.seed_models,
    )
    out: dict[str, Any] = {"replicas": replicas, "pids": group.pids()}
    try:
        group.wait_answering(rig.load)
        out["max"] = phases.window(
            rig, group, f"max R={replicas} (closed loop)", rate=None, duration=o.max_seconds
        )
        if full:
            out["steps"], out["sustained_rate"] = phases.search(rig, group, out["max"]["answer_rate"])
            out["latency"] = phases.window(
                rig,
                group,
                f"latency@{o.latency_rate:.0f}",
                rate=o.latency_rate,
                duration=o.latency_seconds,
                with_timeline=True,
            )
            # Past the limit: above the highest rate the edge answered in any window so far.
            top = max(out["sustained_rate"] or 0.0, out["max"]["answer_rate"])
            out["overload"] = overload(rig, group, round_rate(o.overload_factor * top), o.overload_seconds)
    except BenchError as exc:
        out["error"] = str(exc)
        bench.say(f"  error: {exc}")
    finally:
        out["model"] = group.current_label()
        out["rss_peak_mb"] = bench.watch.usage(group.started, time.monotonic())["rss_mb"]
        if o.keep:
            out["logs"] = [str(log) for log in group.logs]
        group.stop()
    return out


def overload(rig: Rig, edge: EdgeGroup, rate: float, duration: float) -> dict[str, Any]:
    """``rate`` above what the edge sustains: the stream holds the excess; wait for the drain."""
    base = edge.answered
    sent = rig.load.run(site=edge.site, qos=edge.qos, duration=duration, rate=rate, slot=None)
    usage = rig.watch.usage(sent.started, sent.ended)
    # The backlog may be several seconds of load: wait until every reading was answered (or none
    # came for 10 s, which the window then reports as lost).
    edge.drain(base + sent.count, quiet=10.0, limit=max(120.0, 20 * duration))
    k, t = edge.arrays()
    result = {
        "name": f"overload@{rate:.0f}",
        "offered_rate": rate,
        **analyze(sent, k, t),
        **backlog_drain(sent, k, t),
        **usage,
    }
    edge.check_alive(result)
    rig.say(
        phase_line(result)
        + f"; backlog {result['backlog_at_stop']:,} at the stop, drained in {result['drain_s']} s"
    )
    return result
