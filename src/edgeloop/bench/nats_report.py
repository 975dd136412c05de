"""The NATS section of a bench run in words: its targets, its tables, and what limits the aggregate.

>>> window = {"answer_rate": 9000.0, "machine_busy_pct": 97.0,
...           "cpu_pct": {"edge": 99.0, "broker": 40.0, "loadgen": 45.0, "collector": 10.0},
...           "unattributed_cpu_pct": 0.0}
>>> print(what_limits(window, replicas=1))
CPU: both cores busy (97% of the machine); edge 0 at one core (99%), the most one edge's loop can use
"""

from __future__ import annotations

from typing import Any

from edgeloop.bench.report import format_rate, phase_row

CEILINGS = {
    "core-mqtt": "core NATS subscriber (MQTT publisher into the MQTT listener)",
    "core": "core NATS subscriber (NATS publisher)",
    "jetstream": "durable pull consumer (ack-all, read as the edge reads)",
    "jetstream-each": "durable pull consumer (acking each message)",
}

SATURATED = 90.0  # % busy (machine) or % of one core (a process) counted as the limit


def _target(
    name: str, value: float | None, limit: float | None, higher: bool, note: str = ""
) -> dict[str, Any]:
    met = None if value is None or limit is None else (value >= limit if higher else value <= limit)
    return {
        "target": name,
        "value": value,
        "limit": limit,
        "met": met,
        "note": note,
    }


def nats_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One edge on NATS (durable, acked) against Mosquitto QoS 1 of the same run and the durable
    do-nothing consumer; the overload window loses and duplicates nothing."""
    section = result["nats"]
    one = section.get("edges", {}).get("1") or {}
    sustained = one.get("sustained_rate")
    mosquitto = (result.get("qos", {}).get("1") or {}).get("sustained_rate")
    durable = (section.get("ceiling") or {}).get("jetstream", {}).get("rate")
    targets = [
        _target(
            "NATS, one edge: sustained (durable, acked) >= 2.5x Mosquitto QoS 1 sustained",
            sustained,
            round(2.5 * mosquitto, 1) if mosquitto else None,
            True,
            "" if mosquitto else "no Mosquitto QoS 1 sustained rate in this run",
        ),
        _target(
            "NATS, one edge: sustained >= 50% of the do-nothing durable consumer (ack-all)",
            sustained,
            round(0.5 * durable, 1) if durable else None,
            True,
        ),
    ]
    over = one.get("overload")
    if over:
        note = f"backlog {over['backlog_at_stop']:,} at the stop, drained in {over['drain_s']} s"
        targets.append(_target("NATS overload: lost == 0", over["lost"], 0, False, note))
        targets.append(_target("NATS overload: duplicated == 0", over["duplicated"], 0, False))
    return targets


def _edge_cpu(cpu: dict[str, float], replicas: int) -> list[float]:
    return [cpu.get("edge" if r == 0 else f"edge{r}", 0.0) for r in range(replicas)]


def cpu_per_reading_us(window: dict[str, Any] | None, replicas: int = 1) -> float | None:
    """The edges' CPU time per answered reading in a window, in microseconds: what answering a
    reading costs, which other programs on a shared machine slow but do not change much.

    >>> cpu_per_reading_us({"answer_rate": 5000.0, "cpu_pct": {"edge": 50.0}})
    100.0
    """
    if not window or not window.get("answer_rate"):
        return None
    used = sum(_edge_cpu(window.get("cpu_pct") or {}, replicas)) / 100.0
    return round(used / window["answer_rate"] * 1e6, 1)


def what_limits(window: dict[str, Any], replicas: int) -> str:
    """Which resource the closed-loop aggregate of ``replicas`` edges ran into, from its CPU split."""
    cpu = window.get("cpu_pct") or {}
    busy = window.get("machine_busy_pct") or 0.0
    edges = _edge_cpu(cpu, replicas)
    hot = [f"edge {r} at one core ({pct:.0f}%)" for r, pct in enumerate(edges) if pct >= SATURATED]
    if busy >= SATURATED:
        other = window.get("unattributed_cpu_pct") or 0.0
        return (
            f"CPU: both cores busy ({busy:.0f}% of the machine)"
            + (f"; {', '.join(hot)}, the most one edge's loop can use" if hot else "")
            + (f"; other programs took {other:.0f}% of a core" if other >= 25.0 else "")
        )
    if hot:
        return f"CPU of one process: {', '.join(hot)}, the most one edge's loop can use"
    return (
        f"not the CPU ({busy:.0f}% of the machine busy, no edge at one core): the closed loop's window of"
        " unanswered messages or the round trip through the server"
    )


def _aggregate_lines(edges: dict[str, Any]) -> list[str]:
    lines = [
        "  aggregate, closed loop (every reading answered, durable, acked); CPU in % of one core:",
        "    R  answered/s  lost  dup   edges (each)              edges  nats-server  loadgen  collector"
        "  other  busy%  edge us/reading",
    ]
    for key, run in edges.items():
        w = run.get("max")
        if not w:
            lines.append(f"    {key}  {run.get('error', 'not measured')}")
            continue
        cpu = w.get("cpu_pct") or {}
        each = _edge_cpu(cpu, int(key))
        lines.append(
            f"    {key}  {format_rate(w['answer_rate']):>10}  {w['lost']:>4}  {w['duplicated']:>3}"
            f"   {' + '.join(f'{c:.0f}' for c in each):<24}  {sum(each):5.0f}"
            f"  {cpu.get('broker', 0.0):11.0f}  {cpu.get('loadgen', 0.0):7.0f}"
            f"  {cpu.get('collector', 0.0):9.0f}  {w.get('unattributed_cpu_pct') or 0.0:5.0f}"
            f"  {w.get('machine_busy_pct') or 0.0:5.0f}  {cpu_per_reading_us(w, int(key)) or 0.0:15.1f}"
        )
        lines.append(f"       limit: {what_limits(w, int(key))}")
    return lines


def format_nats(result: dict[str, Any], header: str) -> list[str]:
    """The NATS section of ``result`` as report lines (``header``: the phase table's column names)."""
    section = result["nats"]
    lines = [
        f"NATS JetStream ({section.get('nats_server')}, nats-py {section.get('nats_py')};"
        f" {section['partitions']} partitions; load: {section['load']})"
    ]
    for kind, c in (section.get("ceiling") or {}).items():
        cpu = c["cpu_pct"]
        what = CEILINGS.get(kind, kind)
        lines.append(
            f"  ceiling: do-nothing {what} receives {format_rate(c['rate'])} msg/s (CPU: loadgen"
            f" {cpu.get('loadgen', 0):.0f}%, nats-server {cpu.get('broker', 0):.0f}%, consumer"
            f" {cpu.get('ceiling', 0):.0f}%; machine busy {c.get('machine_busy_pct') or 0:.0f}%)"
        )
    edges = section.get("edges") or {}
    one = edges.get("1") or {}
    if one:
        lines.append(f"  one edge (model serving: {one.get('model')})")
        lines.append("  " + header)
        for r in [one.get("max"), *(one.get("steps") or []), one.get("latency"), one.get("overload")]:
            if r and "sent" in r:
                lines.append("  " + phase_row(r))
        if "sustained_rate" in one:
            durable = (section.get("ceiling") or {}).get("jetstream", {}).get("rate")
            sustained = one["sustained_rate"]
            share = (
                f" ({100.0 * sustained / durable:.0f}% of the durable consumer)"
                if sustained and durable
                else ""
            )
            lines.append(
                f"  sustained, every reading answered (durable, acked): {format_rate(sustained)} msg/s{share}"
            )
        nats_us = cpu_per_reading_us(one.get("max"))
        mosquitto_us = cpu_per_reading_us((result.get("qos", {}).get("1") or {}).get("max"))
        if nats_us is not None:
            versus = f" (Mosquitto QoS 1 edge in this run: {mosquitto_us} us)" if mosquitto_us else ""
            lines.append(f"  edge CPU per reading answered at the closed-loop max: {nats_us} us{versus}")
        over = one.get("overload")
        if over:
            offered, sent = format_rate(over["offered_rate"]), format_rate(over["send_rate"])
            during, drain = format_rate(over["answered_during_load_rate"]), format_rate(over["drain_rate"])
            lines.append(
                f"  overload at {offered} msg/s offered ({sent} sent) for {over['seconds']} s: answered"
                f" {during} msg/s meanwhile; backlog {over['backlog_at_stop']:,} readings in the stream"
                f" at the stop, drained in {over['drain_s']} s ({drain} msg/s); lost {over['lost']},"
                f" duplicated {over['duplicated']}"
            )
        if one.get("error"):
            lines.append(f"  ERROR: {one['error']}")
    lines.extend(_aggregate_lines(edges))
    lines.append("")
    return lines
