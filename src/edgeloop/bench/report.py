"""The bench's words: the one-line progress of each window, and the whole run as a readable report.

>>> print(format_rate(12345.6), format_rate(None))
12,346 -
>>> print(phase_line({"name": "latency@5000", "send_rate": 4998.2, "answer_rate": 4990.0, "lost": 0,
...                   "duplicated": 0, "latency_ms": {"p99": 12.5}, "passed": True}))
  latency@5000               sent     4,998/s  answered     4,990/s  lost 0  dup 0  p99 12.5 ms pass
"""

from __future__ import annotations

from typing import Any


def format_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


_COLUMNS = (
    ("phase", 28),
    ("offered/s", 10),
    ("sent/s", 9),
    ("answered/s", 11),
    ("lost", 6),
    ("dup", 5),
    ("p50 ms", 8),
    ("p95 ms", 8),
    ("p99 ms", 8),
    ("max ms", 8),
    ("growth", 7),
    ("bklg s", 7),
    ("edge%", 6),
    ("child%", 7),
    ("load%", 6),
    ("broker%", 8),
    ("other%", 7),
    ("busy%", 6),
    ("RSS MB", 7),
    ("", 5),
)


def _row(cells: list[str]) -> str:
    out = []
    for (_, width), cell in zip(_COLUMNS, cells, strict=True):
        out.append(cell.ljust(width) if width == _COLUMNS[0][1] else cell.rjust(width))
    return " ".join(out).rstrip()


def phase_line(r: dict[str, Any]) -> str:
    """One window as a progress line (printed while the bench runs)."""
    lat = r.get("latency_ms") or {}
    p99 = lat.get("p99")
    verdict = {True: " pass", False: " FAIL"}.get(bool(r["passed"]), "") if "passed" in r else ""
    return (
        f"  {r['name']:<26} sent {r.get('send_rate', 0):>9,.0f}/s"
        f"  answered {r.get('answer_rate', 0):>9,.0f}/s"
        f"  lost {r.get('lost', '-')}  dup {r.get('duplicated', '-')}"
        f"  p99 {p99 if p99 is not None else '-'} ms{verdict}"
    )


def phase_row(r: dict[str, Any]) -> str:
    lat = r.get("latency_ms") or {}
    cpu = r.get("cpu_pct") or {}
    rss = (r.get("rss_mb") or {}).get("edge")
    verdict = {True: "pass", False: "FAIL"}[bool(r["passed"])] if "passed" in r else ""
    if r.get("stalled"):
        verdict = "stall"
    return _row(
        [
            str(r["name"])[:28],
            format_rate(r.get("offered_rate")) if r.get("offered_rate") else "max",
            format_rate(r.get("send_rate")),
            format_rate(r.get("answer_rate")),
            str(r.get("lost", "-")),
            str(r.get("duplicated", "-")),
            _ms(lat.get("p50")),
            _ms(lat.get("p95")),
            _ms(lat.get("p99")),
            _ms(lat.get("max")),
            _ms(r.get("backlog_growth_ms")),
            "-" if r.get("backlog_end_s") is None else f"{r['backlog_end_s']:.2f}",
            _ms(cpu.get("edge")),
            _ms(cpu.get("edge_children")),
            _ms(cpu.get("loadgen")),
            _ms(cpu.get("broker")),
            _ms(r.get("unattributed_cpu_pct")),
            _ms(r.get("machine_busy_pct")),
            _ms(rss),
            verdict,
        ]
    )


def format_report(result: dict[str, Any]) -> str:
    """The bench result as a readable table (the JSON holds everything)."""
    m = result["machine"]
    o = result["options"]
    lines = [
        f"edgeloop bench, {result.get('started', '')}, {result.get('seconds', '?')} s,"
        f" broker {result.get('broker')}",
        f"machine: {m['platform']}; {m['cpu']}; {m['cores_logical']} logical cores; {m['memory_gb']} GB; "
        f"Python {m['python']}; paho-mqtt {m['paho_mqtt']}; mosquitto {m['mosquitto']}",
        f"load: {o['devices']:,} devices, closed-loop window {o['window']:,} messages",
        "",
    ]
    header = _row([name for name, _ in _COLUMNS])
    for key, run in result.get("qos", {}).items():
        lines.append(f"QoS {key} (model serving: {run.get('model')})")
        for kind, c in (run.get("ceiling") or {}).items():
            cpu = c["cpu_pct"]
            lines.append(
                f"  ceiling: do-nothing {kind} subscriber receives {format_rate(c['rate'])} msg/s"
                f" (CPU: loadgen {_ms(cpu.get('loadgen'))}%, broker {_ms(cpu.get('broker'))}%,"
                f" subscriber {_ms(cpu.get('ceiling'))}%, other {_ms(c.get('unattributed_cpu_pct'))}%;"
                f" machine busy {_ms(c['machine_busy_pct'])}%)"
            )
        lines.append("  " + header)
        phases = [run.get("max"), *(run.get("steps") or []), run.get("latency"), run.get("fixed")]
        phases += [run.get("first_model"), run.get("retrain")]
        for r in phases:
            if r and "sent" in r:
                lines.append("  " + phase_row(r))
        if "sustained_rate" in run:
            sustained = run["sustained_rate"]
            ceil = run.get("ceiling") or {}
            shares = [
                f"{100.0 * sustained / c['rate']:.0f}% of the {kind} ceiling"
                for kind, c in ceil.items()
                if sustained and c.get("rate")
            ]
            lines.append(
                f"  sustained, every message answered: {format_rate(sustained)} msg/s"
                + (f" ({', '.join(shares)})" if shares else "")
            )
        for name in ("first_model", "retrain"):
            r = run.get(name)
            if r:
                keys = (
                    "retrain_requested_s",
                    "train_to_swap_s",
                    "train_s",
                    "promoted_s",
                    "promoted_to_swap_s",
                )
                timing = ", ".join(f"{k} {r[k]}" for k in keys if r.get(k) is not None)
                lines.append(
                    f"  {r['name']}: {r.get('model')} ({timing}){' ' + r['error'] if 'error' in r else ''}"
                )
        edge = run.get("edge") or {}
        rss = edge.get("rss_peak_mb") or {}
        steady = (run.get("rss_steady_mb") or {}).get("edge")
        upto = f"{_ms(steady)} MB up to the max window, " if steady is not None else ""
        lines.append(
            f"  edge RSS: main {upto}{_ms(rss.get('edge'))} MB peak;"
            f" children {_ms(rss.get('edge_children'))} MB peak; events seen: {edge.get('events') or 'none'}"
        )
        if run.get("error"):
            lines.append(f"  ERROR: {run['error']}")
        lines.append("")
    if "nats" in result:
        from edgeloop.bench.nats_report import format_nats

        lines.extend(format_nats(result, header))
    lines.append("targets:")
    for t in result.get("targets", []):
        mark = {True: "met ", False: "MISS", None: " -- "}[t["met"]]
        value = t["value"]
        shown = "-" if value is None else (f"{value:,.1f}" if isinstance(value, float) else f"{value:,}")
        note = f"  ({t['note']})" if t.get("note") else ""
        limit = "-" if t["limit"] is None else f"{t['limit']:,}"
        lines.append(f"  [{mark}] {t['target']}: {shown} (limit {limit}){note}")
    lines.append(
        "columns: growth = median latency of the window's last quarter minus its second quarter (ms);"
        " bklg s = messages unanswered when the window's last one was sent, in seconds of load;"
        " edge%/child%/load%/broker% = CPU in % of one core (edge main process, its children, load"
        " generator, mosquitto); other% = busy CPU of the machine not spent by the bench's processes"
        " (other programs, kernel networking); busy% = whole machine; RSS = edge main process peak."
    )
    idle = result.get("idle_check") or {}
    if idle.get("busy_pct") is not None and idle["busy_pct"] > 10:
        lines.append(
            f"WARNING: the machine was {idle['busy_pct']:.0f}% busy before the bench started; other programs"
            " compete for the CPU and the figures understate what edgeloop does on an idle machine."
        )
    return "\n".join(lines)
