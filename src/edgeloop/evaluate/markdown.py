"""The evaluation as markdown: targets, strategies, an overview matrix, one table per data set and target."""

from __future__ import annotations

from typing import Any

from edgeloop.evaluate.metrics import fmt


def _short(name: str) -> str:
    return {
        "rmse-threshold": "rmse-thr",
        "page-hinkley": "PH",
        "river-adwin": "river-ADWIN",
        "river-ph": "river-PH",
        "river-arf": "river-ARF",
    }.get(name, name)


def markdown(payload: dict[str, Any]) -> str:
    """The whole report as markdown: targets, an overview matrix, then one table per data set and target."""
    blocks = payload["results"]
    default = payload["default_policy"]
    lines = [
        "# edgeloop evaluate",
        "",
        f"Default policy: **{default}** (marked `*`). {payload['settings_note']}",
        "",
    ]
    checks = payload.get("targets", [])
    if checks:
        passed = sum(c["pass"] for c in checks)
        lines += [
            f"## Targets ({passed}/{len(checks)} met)",
            "",
            "| where | target | met | numbers |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {c['where']} | {c['check']} | {'yes' if c['pass'] else '**no**'} | {c['detail']} |"
            for c in checks
        ]
        lines.append("")
    names = [n for n in payload["strategies"]]
    descriptions = payload.get("descriptions", {})
    if descriptions:
        lines += ["## Strategies", "", "| strategy | what it does |", "|---|---|"]
        lines += [f"| {n}{' *' if n == default else ''} | {descriptions.get(n, '')} |" for n in names]
        lines += [
            "",
            "Every retrain, whoever asks, is the live trainer's: validated against the serving model on "
            "the same holdout, then served on probation with rollback. The original rule's threshold per "
            "target is given in each section. readings/s: replay cost of the whole run (training part and "
            "retrains included) per second, one core.",
            "",
        ]
    lines += [
        "## Overview: RMSE relative to static (retrains)",
        "",
        "Best per row in bold; `*` the default policy.",
        "",
        "| data set / target | " + _strategy_cells(names, default),
        "|---|" + "---:|" * len(names),
    ]
    for b in blocks:
        m = b["strategies"]
        rel = {n: m[n].get("rmse_vs_static") for n in names if n in m}
        valid = [v for v in rel.values() if v is not None]
        best = min(valid) if valid else None
        cells = []
        for n in names:
            if n not in m or rel.get(n) is None:
                cells.append("-")
                continue
            text = f"{rel[n]:.3f} ({m[n]['retrains']})"
            cells.append(f"**{text}**" if rel[n] == best else text)
        lines.append(f"| {b['dataset']} / {b['target']} | " + " | ".join(cells) + " |")
    lines.append("")
    for b in blocks:
        lines += _target_table(b, default)
    return "\n".join(lines) + "\n"


def _target_table(b: dict[str, Any], default: str) -> list[str]:
    init = b["initial_model"]
    lines = [
        f"## {b['dataset']} / {b['target']}",
        "",
        f"{b['description']}. {b['devices']} device(s), {b['scored']} scored readings of {b['readings']}. "
        f"Initial model: {init['kind']} (validation RMSE {init['val_rmse']:.4g}, "
        f"trained on {init['n_samples']} readings). "
        f"Original rule's threshold: {b['original_threshold']['rule']}.",
        "",
        f"| strategy | RMSE | x static | x persistence | per segment ({' / '.join(b['segments'])}) "
        "| retrains (promoted/rolled back) | alarms | median delay (detected/windows) "
        "| false alarms | alarms/10k | readings/s |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in b["strategies"].items():
        det = m["detection"]
        delay = (
            f"{fmt(det['median_delay'])} ({det['detected']}/{det['windows']})"
            if det and det["windows"]
            else "-"
        )
        segs = " / ".join(fmt(v) for v in m["segments"])
        label = f"**{name}** *" if name == default else name
        lines.append(
            f"| {label} | {fmt(m['rmse'])} | {fmt(m.get('rmse_vs_static'), 3)} | "
            f"{fmt(m.get('rmse_vs_persistence'), 3)} | {segs} | "
            f"{m['retrains']} ({m['promoted']}/{m['rolled_back']}) | "
            f"{fmt(m['alarms'])} | {delay} | {fmt(m['false_alarms'])} | {fmt(m['alarms_per_10k'], 3)} | "
            f"{fmt(m.get('readings_per_s'))} |"
        )
    lines.append("")
    return lines + _window_table(b.get("windows", []), default)


def _window_table(windows: list[dict[str, Any]], default: str) -> list[str]:
    """One row per labelled window: the first alarm of each alarming strategy inside it, or ``-``.

    >>> alarm = {"ts": "2013-12-16T18:35:00+00:00", "reading": 4000, "delay_readings": 12, "delay_hours": 1.0}
    >>> w = {"device": "m", "kind": "anomaly", "start": "2013-12-16T17:35:00+00:00",
    ...      "end": "2013-12-18T17:00:00+00:00", "in_initial_training": False,
    ...      "first_alarm": {"page-hinkley": alarm, "river-ph": None}}
    >>> print("\\n".join(_window_table([w], "page-hinkley")[-4:-1]))
    | window (device) | kind | start | end | PH* | river-PH |
    |---|---|---|---|---:|---:|
    | 1 (m) | anomaly | 2013-12-16T17:35 | 2013-12-18T17:00 | +1h (12) | - |
    """
    if not windows:
        return []
    names = list(windows[0]["first_alarm"])
    lines = [
        "First alarm inside each labelled window: hours (readings) after the window's first reading; "
        "`-`: no alarm inside. Windows marked *initial training* start in the readings that trained "
        "the initial model (only their scored readings count).",
        "",
        "| window (device) | kind | start | end | " + _strategy_cells(names, default),
        "|---|---|---|---|" + "---:|" * len(names),
    ]
    number: dict[str, int] = {}
    for w in windows:
        number[w["device"]] = number.get(w["device"], 0) + 1
        label = f"{number[w['device']]} ({w['device']})"
        if w["in_initial_training"]:
            label += ", *initial training*"
        cells = []
        for n in names:
            a = w["first_alarm"][n]
            cells.append("-" if a is None else f"+{fmt(a['delay_hours'], 3)}h ({a['delay_readings']})")
        lines.append(
            f"| {label} | {w['kind']} | {_when(w['start'])} | {_when(w['end'])} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    return lines


def _strategy_cells(names: list[str], default: str) -> str:
    """The strategy columns of a header row, the default marked ``*``."""
    return " | ".join(_short(n) + ("*" if n == default else "") for n in names) + " |"


def _when(iso: str | None) -> str:
    """An ISO-8601 UTC time for a table: no offset, no seconds when they are zero."""
    if iso is None:
        return "-"
    iso = iso.removesuffix("+00:00")
    return iso.removesuffix(":00") if len(iso) == 19 else iso
