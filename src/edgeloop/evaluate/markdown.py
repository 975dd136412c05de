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
        "| data set / target | "
        + " | ".join(_short(n) + ("*" if n == default else "") for n in names)
        + " |",
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
    return lines
