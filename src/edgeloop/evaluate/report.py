"""Metrics, JSON, markdown tables and PNG plots of an evaluation.

Definitions (all over the scored readings: each device's readings after its training part):

- RMSE: of the one-step forecast errors, pooled over devices; per segment between ground-truth
  onsets (simulator, CSV with onsets) or over fixed fifths (recordings).
- retrains: trainings run (drift, periodic); ``promoted`` of them served, ``rolled back`` failed probation.
- detection: a labelled window is an onset plus ``horizon`` readings (cut at the next onset) or a
  labelled anomaly window (NAB); its first alarm is a detection, with delay = alarm - window start.
- false alarms: alarms in no window, on data with ground truth (simulator, NAB, and controls, where
  every alarm is false); ``None`` where nothing is known (air_quality).

>>> rmse_of(np.array([1.0, -1.0, np.nan]))
1.0
>>> score_windows([5, 40, 90], [(10, 50, "level_shift")])
{'windows': 1, 'detected': 1, 'delays': [30], 'median_delay': 30.0, 'false_alarms': 2}
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.evaluate.replay import RunResult, TargetHeader
from edgeloop.evaluate.strategies import Strategy

SEGMENTS_FIFTHS = 5


def rmse_of(errors: np.ndarray) -> float | None:
    """RMSE of the finite errors; None if there are none."""
    errors = errors[np.isfinite(errors)]
    return float(np.sqrt(np.mean(errors * errors))) if len(errors) else None


def score_windows(alarms: Sequence[int], windows: Sequence[tuple[int, int, str]]) -> dict[str, Any]:
    """Detections and false alarms of one device's alarms against its labelled windows."""
    delays, used = [], set()
    for first, end, _ in windows:
        inside = [a for a in alarms if first <= a < end]
        if inside:
            delays.append(inside[0] - first)
            used.add(inside[0])
    in_any = [a for a in alarms if any(first <= a < end for first, end, _ in windows)]
    return {
        "windows": len(windows),
        "detected": len(delays),
        "delays": delays,
        "median_delay": float(np.median(delays)) if delays else None,
        "false_alarms": len(alarms) - len(in_any),
    }


def _segments(header: TargetHeader) -> list[list[tuple[int, int]]]:
    """Per device, the (first, end) of each segment; segment k of every device is pooled."""
    out = []
    for t in header.tracks:
        n = len(t.values)
        if header.segments == "onsets":
            cuts = [t.start, *[o for o in t.onsets if t.start < o < n], n]
        else:
            cuts = [t.start + (n - t.start) * j // SEGMENTS_FIFTHS for j in range(SEGMENTS_FIFTHS + 1)]
        out.append([(cuts[j], cuts[j + 1]) for j in range(len(cuts) - 1)])
    return out


def segment_labels(header: TargetHeader) -> list[str]:
    if header.segments == "fifths":
        return [f"Q{j + 1}" for j in range(SEGMENTS_FIFTHS)]
    longest = max(len(s) for s in _segments(header))
    return ["before"] + [f"after onset {j}" if longest > 2 else "after" for j in range(1, longest)]


def errors_of(header: TargetHeader, run: RunResult) -> list[np.ndarray]:
    """Per device, value - forecast over the scored readings (NaN where there was no forecast)."""
    return [t.values[t.start :] - run.forecasts[t.device][t.start :] for t in header.tracks]


def run_metrics(header: TargetHeader, run: RunResult, strategy: Strategy) -> dict[str, Any]:
    """Every metric of one strategy on one data set and target (see the module docstring)."""
    errors = errors_of(header, run)
    scored = int(sum(len(e) for e in errors))
    segs = _segments(header)
    n_seg = max(len(s) for s in segs)
    seg_rmse = []
    for j in range(n_seg):
        parts = [
            t.values[a:b] - run.forecasts[t.device][a:b]
            for t, s in zip(header.tracks, segs, strict=True)
            if j < len(s)
            for a, b in [s[j]]
        ]
        seg_rmse.append(rmse_of(np.concatenate(parts)) if parts else None)
    alarms = sum(len(a) for a in run.alarms.values())
    detection: dict[str, Any] = {"windows": 0, "detected": 0, "delays": [], "median_delay": None}
    false_alarms: int | None = None
    if strategy.alarms and header.has_ground_truth:
        false_alarms = 0
        for t in header.tracks:
            windows = [] if header.control else t.windows
            s = score_windows([a for a in run.alarms[t.device] if a >= t.start], windows)
            detection["windows"] += s["windows"]
            detection["detected"] += s["detected"]
            detection["delays"] += s["delays"]
            false_alarms += s["false_alarms"]
        delays = detection["delays"]
        detection["median_delay"] = float(np.median(delays)) if delays else None
    decisions = [r.decision for r in run.retrains]
    return {
        "strategy": strategy.name,
        "family": strategy.family,
        "default": strategy.default,
        "rmse": rmse_of(np.concatenate(errors)),
        "segments": seg_rmse,
        "scored": scored,
        "retrains": len(run.retrains),
        "promoted": decisions.count("promoted"),
        "rejected": decisions.count("rejected"),
        "failed": decisions.count("failed"),
        "rolled_back": len(run.rollbacks),
        "retrains_per_10k": 1e4 * len(run.retrains) / scored if scored else None,
        "alarms": alarms if strategy.alarms else None,
        "alarms_per_10k": 1e4 * alarms / scored if strategy.alarms and scored else None,
        "detection": detection if strategy.alarms and header.has_ground_truth else None,
        "false_alarms": false_alarms,
        "promoted_kinds": dict(Counter(r.kind for r in run.retrains if r.decision == "promoted")),
        "retrain_log": [
            {
                "device": r.device,
                "trigger": r.trigger,
                "requested_at": r.requested_at,
                "effective_at": r.effective_at,
                "decision": r.decision,
                "kind": r.kind,
                "val_rmse": r.val_rmse,
                "champion_rmse": r.champion_rmse,
                "n_samples": r.n_samples,
            }
            for r in run.retrains
        ],
        "rollbacks": [{"device": d, "at": at} for d, at in run.rollbacks],
        "seconds": round(run.seconds, 2),
    }


def target_report(
    header: TargetHeader,
    runs: dict[str, RunResult],
    strategies: Sequence[Strategy],
    descriptions: dict[str, str],
) -> dict[str, Any]:
    """The JSON block of one data set and target: facts, then every strategy's metrics."""
    metrics = {s.name: run_metrics(header, runs[s.name], s) for s in strategies if s.name in runs}
    ref = {k: metrics[k]["rmse"] for k in ("static", "persistence") if k in metrics}
    for m in metrics.values():
        for k, value in ref.items():
            m[f"rmse_vs_{k}"] = m["rmse"] / value if m["rmse"] is not None and value else None
        m["description"] = descriptions.get(m["strategy"], "")
    return {
        "dataset": header.dataset,
        "target": header.target,
        "description": header.description,
        "control": header.control,
        "devices": len(header.tracks),
        "readings": int(sum(len(t.values) for t in header.tracks)),
        "scored": int(sum(len(t.values) - t.start for t in header.tracks)),
        "onsets": [
            {"device": t.device, "at": w[0], "end": w[1], "kind": w[2]}
            for t in header.tracks
            for w in t.windows
        ],
        "segments": segment_labels(header),
        "initial_model": header.initial,
        "original_threshold": {"value": header.threshold, "rule": header.threshold_rule},
        "strategies": metrics,
    }


# -- the stated targets ---------------------------------------------------------------------------


def check_targets(blocks: Sequence[dict[str, Any]], default: str) -> list[dict[str, Any]]:
    """Each target of the issue, per data set and target, with the numbers behind pass/fail."""
    out: list[dict[str, Any]] = []
    for b in blocks:
        m = b["strategies"]
        d = m.get(default)
        if d is None or d["rmse"] is None:
            continue
        where = f"{b['dataset']}/{b['target']}"

        def add(check: str, ok: bool, detail: str, where: str = where) -> None:
            out.append({"where": where, "check": check, "pass": bool(ok), "detail": detail})

        public = not b["dataset"].startswith("sim:")
        if public:
            if "persistence" in m:
                p = m["persistence"]["rmse"]
                add(
                    "RMSE <= persistence",
                    d["rmse"] <= p,
                    f"{d['rmse']:.4g} vs {p:.4g} ({d['rmse'] / p:.3f}x)",
                )
            rivals = {k: m[k]["rmse"] for k in ("static", "periodic", "original") if k in m}
            if rivals:
                best = min(rivals, key=lambda k: rivals[k])
                add(
                    "RMSE <= best of static/periodic/original",
                    d["rmse"] <= rivals[best],
                    f"{d['rmse']:.4g} vs {best} {rivals[best]:.4g} ({d['rmse'] / rivals[best]:.3f}x)",
                )
            if "periodic" in m:
                add(
                    "fewer retrains than periodic",
                    d["retrains"] < m["periodic"]["retrains"],
                    f"{d['retrains']} vs {m['periodic']['retrains']}",
                )
        if b["dataset"] == "sim:stationary":
            rate = d["retrains_per_10k"] or 0.0
            add(
                "<= 1 retrain per 10,000 readings",
                rate <= 1.0,
                f"{d['retrains']} in {d['scored']} ({rate:.2f}/10k)",
            )
        if b["dataset"] == "sim:regime_change" and "river-ph" in m:
            r = m["river-ph"]
            dd, rd = d["detection"], r["detection"]
            dm, rm = dd["median_delay"], rd["median_delay"]
            ok = dm is not None and (rm is None or dm <= rm) and dd["detected"] >= rd["detected"]
            add(
                "median delay <= river-ph",
                ok,
                f"{_fmt(dm)} ({dd['detected']}/{dd['windows']}) "
                f"vs {_fmt(rm)} ({rd['detected']}/{rd['windows']})",
            )
            add(
                "false alarms <= river-ph",
                d["false_alarms"] <= r["false_alarms"],
                f"{d['false_alarms']} vs {r['false_alarms']}",
            )
    return out


# -- output files ---------------------------------------------------------------------------------


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 10):
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def _short(name: str) -> str:
    return {
        "rmse-threshold": "rmse-thr",
        "page-hinkley": "PH",
        "river-adwin": "river-ADWIN",
        "river-ph": "river-PH",
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
            "target is given in each section.",
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
        "| false alarms | alarms/10k |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in b["strategies"].items():
        det = m["detection"]
        delay = (
            f"{_fmt(det['median_delay'])} ({det['detected']}/{det['windows']})"
            if det and det["windows"]
            else "-"
        )
        segs = " / ".join(_fmt(v) for v in m["segments"])
        label = f"**{name}** *" if name == default else name
        lines.append(
            f"| {label} | {_fmt(m['rmse'])} | {_fmt(m.get('rmse_vs_static'), 3)} | "
            f"{_fmt(m.get('rmse_vs_persistence'), 3)} | {segs} | "
            f"{m['retrains']} ({m['promoted']}/{m['rolled_back']}) | "
            f"{_fmt(m['alarms'])} | {delay} | {_fmt(m['false_alarms'])} | {_fmt(m['alarms_per_10k'], 3)} |"
        )
    lines.append("")
    return lines


# -- plots ----------------------------------------------------------------------------------------

_COLORS = {
    "persistence": "#000000",
    "static": "#7f7f7f",
    "periodic": "#8c564b",
    "original": "#e377c2",
    "rmse-threshold": "#bcbd22",
    "relative": "#17becf",
    "page-hinkley": "#1f77b4",
    "adwin": "#2ca02c",
    "river-adwin": "#ff7f0e",
    "river-ph": "#d62728",
}


def slug(header: TargetHeader) -> str:
    return f"{header.dataset}_{header.target}".replace(":", "-").replace("/", "-").replace(".", "-")


def plot_target(
    header: TargetHeader,
    runs: dict[str, RunResult],
    strategies: Sequence[Strategy],
    out_dir: Path,
    *,
    focus: str,
) -> list[Path]:
    """Two PNGs: actual vs forecasts with onsets and retrain markers; rolling RMSE per strategy."""
    from matplotlib.figure import Figure  # the object API needs no global backend: always Agg-rendered
    from matplotlib.ticker import FormatStrFormatter

    out_dir.mkdir(parents=True, exist_ok=True)
    shown = header.tracks[:3]
    paths = []
    focus_run = runs.get(focus)
    if focus_run is not None:
        fig = Figure(figsize=(14, 3.4 * len(shown)), layout="constrained")
        axes = fig.subplots(len(shown), 2, squeeze=False, width_ratios=[3, 1])
        for row, t in enumerate(shown):
            for col, ax in enumerate(axes[row]):
                lo, hi = t.start, len(t.values)
                if col == 1:
                    lo, hi = _zoom(t, focus_run, lo, hi)
                x = np.arange(lo, hi)
                ax.plot(x, t.values[lo:hi], color="black", lw=0.7, label="actual")
                if "static" in runs and focus != "static":
                    static = runs["static"].forecasts[t.device][lo:hi]
                    ax.plot(x, static, color="#ff7f0e", lw=0.6, alpha=0.7, label="static forecast")
                forecast = focus_run.forecasts[t.device][lo:hi]
                ax.plot(x, forecast, color="#1f77b4", lw=0.6, alpha=0.8, label=f"{focus} forecast")
                _markers(ax, t, focus_run, lo, hi)
                ax.set_xlim(lo, hi - 1)
                ax.set_title(
                    f"{t.device}: {header.target}" + (" (zoom)" if col == 1 else f" - {header.dataset}"),
                    fontsize=9,
                )
                ax.tick_params(labelsize=7)
            axes[row][0].set_ylabel(header.target, fontsize=8)
        unique: dict[str, Any] = {}
        for ax in axes.flat:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                unique.setdefault(label, handle)
        # Outside the axes: inside, it would hide the alarm and retrain markers along the top edge.
        fig.legend(unique.values(), unique.keys(), loc="outside lower center", fontsize=8, ncol=len(unique))
        axes[-1][0].set_xlabel("reading", fontsize=8)
        path = out_dir / f"{slug(header)}_forecast.png"
        fig.savefig(path, dpi=90)
        paths.append(path)

    fig = Figure(figsize=(14, 3.0 * len(shown)), layout="constrained")
    axes1 = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
    for ax, t in zip(axes1, shown, strict=True):
        n = len(t.values) - t.start
        window = max(100, n // 60)
        x = np.arange(t.start, len(t.values))
        for s in strategies:
            run = runs.get(s.name)
            if run is None:
                continue
            err = t.values[t.start :] - run.forecasts[t.device][t.start :]
            roll = _rolling_rmse(err, window)
            ax.plot(
                x,
                roll,
                lw=2.0 if s.default else 0.9,
                ls="--" if s.name == "persistence" else "-",
                color=_COLORS.get(s.name),
                label=s.name + (" *" if s.default else ""),
            )
        for first, _, _kind in t.windows:
            ax.axvline(first, color="red", ls=":", lw=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=6)
        ax.set_xlim(x[0], x[-1])
        ax.set_title(
            f"{header.dataset} / {header.target} / {t.device}: rolling RMSE over {window} readings",
            fontsize=9,
        )
        ax.tick_params(labelsize=7)
    handles, labels = axes1[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, ncol=min(len(labels), 8))
    path = out_dir / f"{slug(header)}_rolling_rmse.png"
    fig.savefig(path, dpi=90)
    paths.append(path)
    return paths


def _zoom(track: Any, run: RunResult, lo: int, hi: int) -> tuple[int, int]:
    """Around the first onset, else the first retrain, else the first alarm, else the start."""
    anchors = [w[0] for w in track.windows if w[0] >= lo]
    anchors += [r.requested_at for r in run.retrains if r.device == track.device]
    anchors += run.alarms.get(track.device, [])
    centre = min(anchors) if anchors else lo + 300
    first = max(lo, centre - 300)
    return first, min(hi, first + 1000)


def _markers(ax: Any, track: Any, run: RunResult, lo: int, hi: int) -> None:
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top + 0.08 * (top - bottom))  # headroom for the markers above the data
    for first, end, kind in track.windows:
        if lo <= first < hi:
            ax.axvline(first, color="red", ls="--", lw=1)
        if kind == "anomaly":
            ax.axvspan(max(first, lo), min(end, hi), color="red", alpha=0.08)
    alarms = [a for a in run.alarms.get(track.device, []) if lo <= a < hi]
    if alarms:
        ax.plot(alarms, [top] * len(alarms), "|", color="orange", ms=10, mew=2, label="alarm")
    for r in run.retrains:
        if r.device != track.device or r.effective_at is None or not lo <= r.effective_at < hi:
            continue
        promoted = r.decision == "promoted"
        ax.plot(
            [r.effective_at],
            [top],
            "v",
            color="green" if promoted else "grey",
            ms=7,
            label="model installed" if promoted else "retrain rejected",
        )
    for device, at in run.rollbacks:
        if device == track.device and lo <= at < hi:
            ax.plot([at], [top], "x", color="red", ms=8, mew=2, label="rolled back")


def _rolling_rmse(err: np.ndarray, window: int) -> np.ndarray:
    sq = np.where(np.isfinite(err), err * err, 0.0)
    ok = np.isfinite(err).astype(float)
    c_sq = np.concatenate([[0.0], np.cumsum(sq)])
    c_n = np.concatenate([[0.0], np.cumsum(ok)])
    idx = np.arange(1, len(err) + 1)
    lo = np.maximum(0, idx - window)
    n = c_n[idx] - c_n[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((c_sq[idx] - c_sq[lo]) / n)


def plot_summary(blocks: Sequence[dict[str, Any]], names: Sequence[str], default: str, path: Path) -> Path:
    """A heat map of RMSE relative to static: data set and target by strategy."""
    from matplotlib.figure import Figure

    rows = [f"{b['dataset']} / {b['target']}" for b in blocks]
    data = np.array(
        [[b["strategies"].get(n, {}).get("rmse_vs_static") or np.nan for n in names] for b in blocks],
        dtype=float,
    )
    fig = Figure(figsize=(1.1 * len(names) + 4, 0.38 * len(rows) + 1.8), layout="constrained")
    ax = fig.subplots()
    shown = np.log2(np.clip(data, 0.25, 4.0))
    im = ax.imshow(shown, cmap="RdYlGn_r", vmin=-1, vmax=1, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(names)):
            if np.isfinite(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(
        range(len(names)),
        [n + (" *" if n == default else "") for n in names],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title("RMSE relative to the static model (green: better)", fontsize=10)
    fig.colorbar(im, ax=ax, label="log2(RMSE / static)", shrink=0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path
