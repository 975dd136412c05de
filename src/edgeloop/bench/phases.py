"""The measured windows of a bench run; each returns its figures as a dict and prints one line.

- :func:`ceiling`: a do-nothing subscriber fed closed loop, edge idle (the reference of the targets);
- :func:`window`: one fixed-rate or closed-loop window against the edge, drained and analysed;
- :func:`search`: fixed-rate windows around the closed-loop max, for the highest sustained rate;
- :func:`first_model`: load until the edge trained (its own worker) and swapped in its first model;
- :func:`forced_retrain`: ``edgeloop train`` on the edge's store under load, promotion, and the swap.

>>> round_rate(4_649.0), round_rate(12.0)
(4600.0, 100.0)
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from edgeloop.adapters.topics import topic_for
from edgeloop.bench import BenchError
from edgeloop.bench.analysis import analyze, passed
from edgeloop.bench.edge import EdgeProcess, clean_env
from edgeloop.bench.options import BenchOptions
from edgeloop.bench.report import phase_line
from edgeloop.bench.usage import Watch
from edgeloop.bench.workers import CEILING_SLOT, COLLECT_SLOT, Load, Worker, serve_counter
from edgeloop.registry.local import LocalRegistry
from edgeloop.scopes import version_label
from edgeloop.telemetry.schema import PERSISTENCE_VERSION


@dataclass
class Rig:
    """What every phase drives and reports to."""

    options: BenchOptions
    load: Load
    watch: Watch
    counters: Any
    say: Callable[[str], None]


def round_rate(rate: float) -> float:
    """To 100 msg/s, at least 100."""
    return float(max(100, round(rate / 100.0) * 100))


def ceiling(
    rig: Rig, qos: int, kind: str, *, site: str, broker: dict[str, Any], group: str
) -> dict[str, Any]:
    """The receive rate of a do-nothing ``kind`` subscriber (``paho`` or ``lean``) fed closed loop."""
    filters = [topic_for("edgeloop/{site}/+/telemetry", site=site)]
    counter = Worker(
        f"ceiling-{kind}", serve_counter, rig.counters, CEILING_SLOT, broker, filters, qos, kind, group
    )
    return count_closed_loop(
        rig, counter, qos=qos, site=site, label=f"QoS {qos} ({kind} do-nothing subscriber)"
    )


def count_closed_loop(rig: Rig, counter: Worker, *, qos: int, site: str, label: str) -> dict[str, Any]:
    """Feed the do-nothing ``counter`` (counting into the ceiling slot) closed loop; its receive rate.
    Closes the counter."""
    try:
        rig.watch.add("ceiling", counter.pid)
        sent = rig.load.run(
            site=site, qos=qos, duration=rig.options.ceiling_seconds, rate=None, slot=CEILING_SLOT
        )
        seconds = sent.ended - sent.started
        result = {
            "subscriber": counter.name.removeprefix("ceiling-"),
            "received": sent.answered,
            "seconds": round(seconds, 3),
            "rate": round(sent.answered / seconds, 1) if seconds > 0 else 0.0,
            "stalled": sent.stalled,
            **rig.watch.usage(sent.started, sent.ended),
        }
    finally:
        counter.close()
        rig.watch.remove("ceiling")
    rig.say(f"  ceiling {label}: {result['rate']:,.0f} msg/s")
    return result


def window(
    rig: Rig,
    edge: EdgeProcess,  # or an EdgeGroup (edge replicas on NATS)
    name: str,
    *,
    rate: float | None,
    duration: float,
    with_timeline: bool = False,
) -> dict[str, Any]:
    """One measured window against the running edge (closed loop when ``rate`` is None)."""
    base = edge.answered
    slot = COLLECT_SLOT if rate is None else None
    sent = rig.load.run(site=edge.site, qos=edge.qos, duration=duration, rate=rate, slot=slot)
    usage = rig.watch.usage(sent.started, sent.ended)
    # Silence is not loss: on two cores the edge's retrain worker or a snapshot can hold the edge
    # off for over a second after the generator stopped, so wait up to 5 s of silence before the
    # readings still unanswered are counted as lost (a complete window returns at once).
    edge.drain(base + sent.count, quiet=5.0)
    k, t = edge.arrays()
    origin = sent.started if with_timeline else None
    result = {"name": name, "offered_rate": rate, **analyze(sent, k, t, origin=origin), **usage}
    edge.check_alive(result)
    if rate is None:
        result["stalled"] = sent.stalled
    else:
        result["passed"] = passed(result, rate)
    rig.say(phase_line(result))
    return result


def search(rig: Rig, edge: EdgeProcess, top: float) -> tuple[list[dict[str, Any]], float | None]:
    """Fixed-rate windows around ``top`` (the closed-loop max): (every window, highest passing rate)."""
    o = rig.options
    # Start just under the closed-loop max (open-loop arrivals are burstier); step up by 10% while
    # windows pass, down by 25% while none has, then bisect; stop at 5% resolution.
    rate = round_rate(0.85 * top)
    lo: float | None = None
    hi: float | None = None
    steps = []
    for _ in range(o.steps):
        result = window(rig, edge, f"sustained@{rate:.0f}", rate=rate, duration=o.step_seconds)
        steps.append(result)
        if result["passed"]:
            lo = rate if lo is None else max(lo, rate)
            rate = round_rate(rate * 1.1 if hi is None else (rate + hi) / 2)
        else:
            hi = rate if hi is None else min(hi, rate)
            rate = round_rate(rate * 0.75 if lo is None else (lo + rate) / 2)
        if (lo is not None and hi is not None and hi - lo <= 0.05 * hi) or rate in (lo, hi):
            break
    return steps, lo


def first_model(rig: Rig, edge: EdgeProcess) -> dict[str, Any]:
    """Load at the warm-up rate until the edge trained (own worker) and swapped in its first model."""
    o = rig.options
    rig.say(f"  warm-up at {o.warmup_rate:,.0f} msg/s until the edge trained and swapped in a model")
    t0 = time.monotonic()
    run = rig.load.start(site=edge.site, qos=edge.qos, duration=300.0, rate=o.warmup_rate, slot=None)
    try:
        swap = edge.wait_label(t0 + 240.0, lambda label: label != PERSISTENCE_VERSION)
        if swap is not None:
            time.sleep(2.0)
    finally:
        sent = rig.load.finish(run)
    edge.drain(10**18)
    k, t = edge.arrays()
    requested = edge.event_time("retrain_requested", t0)
    result: dict[str, Any] = {
        "name": "first model swap (worker)",
        "offered_rate": o.warmup_rate,
        "model": swap[1] if swap else None,
        "retrain_requested_s": round(requested - t0, 3) if requested else None,
        "swapped_s": round(swap[0] - t0, 3) if swap else None,
        "train_to_swap_s": round(swap[0] - requested, 3) if swap and requested else None,
    }
    if swap is not None and requested is not None:
        span = (requested, swap[0] + 2.0)
        result.update(analyze(sent, k, t, between=span, origin=requested))
        result.update(rig.watch.usage(*span))
    else:
        result.update(analyze(sent, k, t))
        result["error"] = "no model was swapped in within 240 s; the figures serve persistence"
    rig.say(phase_line(result))
    return result


def _train(rig: Rig, edge: EdgeProcess, command: list[str]) -> list[str]:
    """``edgeloop train`` on the edge's store, niced like the edge's own worker; its first output lines."""
    cmd = [*command, "train", "--config", str(edge.config)]
    nice = shutil.which("nice")  # niced from its first instruction
    cmd = [nice, "-n", "10", *cmd] if nice else cmd
    trainer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=clean_env())
    if not nice:
        with contextlib.suppress(psutil.Error):
            psutil.Process(trainer.pid).nice(10)
    rig.watch.add("trainer", trainer.pid)
    output, _ = trainer.communicate(timeout=300)
    return output.decode(errors="replace").strip().splitlines()[:3]


def forced_retrain(rig: Rig, edge: EdgeProcess, command: list[str]) -> dict[str, Any]:
    """``edgeloop train`` on the edge's store while load flows, promote, and time the swap."""
    o = rig.options
    registry = LocalRegistry(edge.data_dir / "models")
    rig.say(f"  retrain + swap at {o.retrain_rate:,.0f} msg/s: `edgeloop train` on the edge's store")
    run = rig.load.start(site=edge.site, qos=edge.qos, duration=600.0, rate=o.retrain_rate, slot=None)
    result: dict[str, Any] = {"name": "retrain + swap (train CLI)", "offered_rate": o.retrain_rate}
    try:
        time.sleep(3.0)
        t_train = rig.watch.now()
        result["train_output"] = _train(rig, edge, command)
        t_trained = time.monotonic()
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
        swap = edge.wait_label(time.monotonic() + 30.0, lambda seen: seen == label)
        if swap is not None:
            time.sleep(2.0)
    finally:
        sent = rig.load.finish(run)
        rig.watch.remove("trainer")
    edge.drain(10**18)
    k, t = edge.arrays()
    result.update(
        {
            "model": label,
            "train_s": round(t_trained - t_train, 3),
            "promoted_s": round(t_promoted - t_train, 3),
            "swapped_s": round(swap[0] - t_train, 3) if swap else None,
            "promoted_to_swap_s": round(swap[0] - t_promoted, 3) if swap else None,
        }
    )
    span = (t_train, (swap[0] if swap else t_promoted) + 2.0)
    result.update(analyze(sent, k, t, between=span, origin=t_train))
    result.update(rig.watch.usage(*span))
    if swap is None:
        result["error"] = f"the edge did not serve {label} within 30 s of its promotion"
    rig.say(phase_line(result))
    return result
