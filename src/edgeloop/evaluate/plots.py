"""PNG plots of an evaluation: forecasts with markers, rolling RMSE per strategy, a summary heat map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.evaluate.runs import RunResult, TargetHeader
from edgeloop.evaluate.strategies import Strategy

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
    "river-arf": "#9467bd",
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
                    ax.plot(x, static, color="#ff7f0e", lw=0.6, ls=(0, (3, 2)), label="static forecast")
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

    paths.append(_rolling_figure(header, runs, strategies, out_dir))
    return paths


# Ratios shown on the rolling-RMSE panels: a log axis whose every tick is labelled and readable.
_RATIO_TICKS = (0.25, 0.5, 1.0, 2.0, 4.0)  # evenly spaced on the log axis, so labels never collide
_RATIO_TICKS_NARROW = (0.5, 0.75, 1.0, 1.5, 2.0)  # when every ratio lies within [0.5, 2]


def _rolling_figure(
    header: TargetHeader, runs: dict[str, RunResult], strategies: Sequence[Strategy], out_dir: Path
) -> Path:
    """Small multiples, one row per strategy and one column per device (first three), so no strategy
    hides another: rolling RMSE relative to persistence on the same readings (below 1: better than
    repeating the last value), the static model in grey for reference, labelled windows shaded."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

    shown = header.tracks[:3]
    rows = [s for s in strategies if s.name != "persistence" and s.name in runs]
    if "persistence" not in runs or not rows:
        rows = [s for s in strategies if s.name in runs]
    fig = Figure(figsize=(max(10.0, 5.2 * len(shown) + 1.5), 1.35 * len(rows) + 1.2), layout="constrained")
    shown_ratios: list[np.ndarray] = []
    axes = fig.subplots(len(rows), len(shown), squeeze=False, sharex="col", sharey=True)
    for col, t in enumerate(shown):
        n = len(t.values) - t.start
        window = max(100, n // 60)
        x = np.arange(t.start, len(t.values))
        actual = t.values[t.start :]

        def rolling(name: str, t: Any = t, actual: np.ndarray = actual, window: int = window) -> np.ndarray:
            return _rolling_rmse(actual - runs[name].forecasts[t.device][t.start :], window)

        base = rolling("persistence") if "persistence" in runs else None
        static = rolling("static") if "static" in runs else None
        for row, s in enumerate(rows):
            ax = axes[row][col]
            ratio = rolling(s.name) if base is None else _ratio(rolling(s.name), base)
            shown_ratios.append(ratio)
            if static is not None and s.name != "static" and base is not None:
                ax.plot(x, _ratio(static, base), color="#9a9a9a", lw=0.8, label="static")
            ax.plot(
                x, ratio, color=_COLORS.get(s.name, "#1f77b4"), lw=1.4 if s.default else 1.0, label="strategy"
            )
            ax.axhline(1.0, color="black", ls="--", lw=0.7)
            for first, end, kind in t.windows:
                if kind == "anomaly":
                    ax.axvspan(first, end, color="red", alpha=0.12, lw=0)
                else:
                    ax.axvline(first, color="red", ls=":", lw=1)
            for r in runs[s.name].retrains:
                if r.device == t.device and r.decision == "promoted" and r.effective_at is not None:
                    ax.axvline(r.effective_at, color="green", lw=0.6, alpha=0.6)
            ax.set_xlim(x[0], x[-1])
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel(s.name + (" *" if s.default else ""), fontsize=8, rotation=0, ha="right")
            if row == 0:
                ax.set_title(f"{t.device}: rolling RMSE over {window} readings", fontsize=9)
        axes[-1][col].set_xlabel("reading", fontsize=8)
    if "persistence" in runs:
        ax0 = axes[0][0]
        ax0.set_yscale("log")
        every = np.concatenate(shown_ratios) if shown_ratios else np.array([1.0])
        every = every[np.isfinite(every)]
        narrow = not len(every) or (np.quantile(every, 0.005) >= 0.5 and np.quantile(every, 0.995) <= 2.0)
        ticks = _RATIO_TICKS_NARROW if narrow else _RATIO_TICKS
        ax0.set_ylim(ticks[0], ticks[-1])
        ax0.yaxis.set_major_locator(FixedLocator(ticks))
        ax0.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax0.yaxis.set_minor_locator(NullLocator())
    fig.suptitle(
        f"{header.dataset} / {header.target}: rolling RMSE / persistence's on the same readings "
        "(below 1: better)\ngrey: static; red: onsets and labelled windows; green: a model installed",
        fontsize=9,
    )
    path = out_dir / f"{slug(header)}_rolling_rmse.png"
    fig.savefig(path, dpi=80)
    return path


def _ratio(values: np.ndarray, base: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        out = values / base
    return np.clip(np.where(np.isfinite(out), out, np.nan), _RATIO_TICKS[0], _RATIO_TICKS[-1])


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
