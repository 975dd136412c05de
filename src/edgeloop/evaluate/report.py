"""Output of an evaluation: metrics (:mod:`.metrics`), markdown (:mod:`.markdown`), plots (:mod:`.plots`)
and the JSON file, under one name for the CLI.

>>> rmse_of(np.array([1.0, -1.0, np.nan]))
1.0
"""

from __future__ import annotations

import json
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
    target_report,
)
from edgeloop.evaluate.plots import plot_summary, plot_target

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
    "write_json",
]


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
