"""Output of an evaluation: metrics (:mod:`.metrics`), labelled windows (:mod:`.windows`), markdown
(:mod:`.markdown`), plots (:mod:`.plots`) and the JSON file, under one name for the CLI.

>>> rmse_of(np.array([1.0, -1.0, np.nan]))
1.0
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.evaluate.markdown import markdown
from edgeloop.evaluate.metrics import (
    check_targets,
    errors_of,
    rmse_of,
    run_metrics,
    score_windows,
    segment_labels,
)
from edgeloop.evaluate.plots import plot_summary, plot_target
from edgeloop.evaluate.runs import RunResult, TargetHeader
from edgeloop.evaluate.strategies import Strategy
from edgeloop.evaluate.windows import window_report

__all__ = [
    "check_targets",
    "errors_of",
    "markdown",
    "plot_summary",
    "plot_target",
    "rmse_of",
    "run_metrics",
    "score_windows",
    "segment_labels",
    "target_report",
    "window_report",
    "write_json",
]


def target_report(
    header: TargetHeader,
    runs: dict[str, RunResult],
    strategies: Sequence[Strategy],
    descriptions: dict[str, str],
) -> dict[str, Any]:
    """The JSON block of one data set and target: facts, the labelled windows with each strategy's first
    alarm in them (:mod:`.windows`), then every strategy's metrics."""
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
        "windows": window_report(header, runs, strategies),
        "segments": segment_labels(header),
        "initial_model": header.initial,
        "original_threshold": {"value": header.threshold, "rule": header.threshold_rule},
        "strategies": metrics,
    }


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
