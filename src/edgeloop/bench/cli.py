"""The ``edgeloop bench`` command: options, the readable report, the JSON file.

Mount with ``app.command("bench")(bench)``.

>>> print(format_rate(12345.6), format_rate(None))
12,346 -
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeloop.errors import EdgeloopError


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


def _phase_row(r: dict[str, Any]) -> str:
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
                lines.append("  " + _phase_row(r))
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
    lines.append("targets:")
    for t in result.get("targets", []):
        mark = {True: "met ", False: "MISS", None: " -- "}[t["met"]]
        value = t["value"]
        shown = "-" if value is None else (f"{value:,.1f}" if isinstance(value, float) else f"{value:,}")
        note = f"  ({t['note']})" if t.get("note") else ""
        lines.append(f"  [{mark}] {t['target']}: {shown} (limit {t['limit']:,}){note}")
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


def bench(
    devices: Annotated[int, typer.Option(help="Simulated devices publishing round-robin.", min=1)] = 1000,
    qos: Annotated[
        list[int] | None,
        typer.Option(help="QoS level(s) to measure, in order; repeatable. Default: 1 then 0.", min=0, max=1),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            help="Use this broker (mqtt://host:port) instead of a private mosquitto on a free port."
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(help="Fixed mode: measure only at this rate (msg/s, total); no ceiling, max or search."),
    ] = None,
    during_retrain: Annotated[
        bool,
        typer.Option(
            "--during-retrain",
            help="Also retrain (edgeloop train on the edge's store) and swap mid-run under load at"
            " --retrain-rate, and report that window.",
        ),
    ] = False,
    retrain_rate: Annotated[
        float, typer.Option(help="Load (msg/s) during the retrain window.", min=1)
    ] = 5000.0,
    latency_rate: Annotated[float, typer.Option(help="Rate (msg/s) of the latency window.", min=1)] = 5000.0,
    latency_seconds: Annotated[
        float, typer.Option(help="Length of the latency (or --rate) window in seconds.", min=1)
    ] = 8.0,
    step_seconds: Annotated[
        float, typer.Option(help="Length of each fixed-rate window of the sustained-rate search.", min=1)
    ] = 5.0,
    steps: Annotated[
        int, typer.Option(help="Most fixed-rate windows in the sustained-rate search.", min=1)
    ] = 4,
    max_seconds: Annotated[
        float, typer.Option(help="Length of the closed-loop (as fast as answered) window.", min=1)
    ] = 5.0,
    ceiling_seconds: Annotated[
        float, typer.Option(help="Length of each do-nothing-subscriber ceiling window.", min=1)
    ] = 4.0,
    warmup_rate: Annotated[
        float, typer.Option(help="Load (msg/s) while the edge trains its first model.", min=1)
    ] = 5000.0,
    window: Annotated[
        int, typer.Option(help="Closed loop: most messages published but not yet answered.", min=10)
    ] = 2000,
    no_model: Annotated[
        bool,
        typer.Option("--no-model", help="Do not train a first model: the edge serves persistence (quicker)."),
    ] = False,
    mlflow: Annotated[
        bool, typer.Option(help="Let retrains log to MLflow (slower; off by default).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Write the JSON results here.")] = Path("build/bench.json"),
    keep: Annotated[bool, typer.Option(help="Keep the temp dir (edge logs, configs, stores).")] = False,
) -> None:
    """Benchmark the live edge end to end through a real broker: ceiling, throughput, latency, loss."""
    from edgeloop.bench.run import Bench, BenchOptions

    options = BenchOptions(
        devices=devices,
        qos=list(qos) if qos else [1, 0],
        broker=broker,
        rate=rate,
        ceiling_seconds=ceiling_seconds,
        max_seconds=max_seconds,
        step_seconds=step_seconds,
        steps=steps,
        latency_rate=latency_rate,
        latency_seconds=latency_seconds,
        during_retrain=during_retrain,
        retrain_rate=retrain_rate,
        warmup_rate=warmup_rate,
        train_model=not no_model,
        window=window,
        seed=seed,
        mlflow=mlflow,
        keep=keep,
    )
    try:
        result = Bench(options, progress=lambda text: typer.echo(text, err=True)).run()
    except EdgeloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    typer.echo(format_report(result))
    typer.echo(f"\nJSON: {out}")
