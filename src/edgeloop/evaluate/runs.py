"""The plain data of a replay: its knobs in (:class:`ReplayConfig`), what one run reports out.

:class:`RunResult` (with its :class:`RetrainRecord` list) is what one strategy did on one data set and
target; :class:`TargetHeader` is what the report needs of that data set and target besides the runs.
Kept apart from the replay loop in :mod:`edgeloop.evaluate.replay` that produces them: these are what
the metrics, plots and report read, and they read none of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeloop.evaluate.datasets import Track


@dataclass(frozen=True)
class ReplayConfig:
    """Knobs of the replay itself (the engine's own come from :class:`~edgeloop.config.Settings`)."""

    retrain_delay: int = 50  # steps between a retrain request and the new model serving
    periodic_every: int = 1000  # readings between two retrains of the periodic strategy
    # Absolute thresholds of the original rule per target ("*": any target); others: factor x initial
    # validation RMSE.
    original_thresholds: tuple[tuple[str, float], ...] = (("voc_ppb", 75.0),)
    original_factor: float = 1.5
    river_input: str = "abs"
    horizon: int = 1000  # readings after an onset in which a first alarm counts as its detection
    arf_on_sim: bool = False  # run river-arf on simulator scenarios too (about 2 ms a reading)

    def threshold_for(self, target: str, initial_val_rmse: float) -> tuple[float, str]:
        """The original rule's threshold for ``target`` and how it was chosen."""
        fixed = dict(self.original_thresholds)
        for key in (target, "*"):  # "*": one absolute threshold for every target
            if key in fixed:
                return fixed[key], f"{fixed[key]:g} (absolute, given)"
        value = self.original_factor * initial_val_rmse
        return value, f"{value:.4g} = {self.original_factor:g} x initial model's validation RMSE"


@dataclass
class RetrainRecord:
    """One retrain: who asked, on which readings, what the judge decided, when it took effect."""

    scope: str
    trigger: str
    device: str | None
    requested_at: int  # reading index of the device (step for a fleet scope)
    effective_at: int | None  # reading index at which it was installed or dropped
    decision: str  # promoted | rejected | failed
    kind: str | None = None
    val_rmse: float | None = None
    champion_rmse: float | None = None
    n_samples: int = 0
    requested_ts: float | None = None  # stream time of the request
    effective_ts: float | None = None  # stream time at which it was installed or dropped


@dataclass
class RunResult:
    """What one strategy did on one data set and target."""

    strategy: str
    forecasts: dict[str, np.ndarray]  # per device: forecast of each reading (NaN: none)
    alarms: dict[str, list[int]]  # per device: reading indices of drift alarms (guard passed)
    retrains: list[RetrainRecord] = field(default_factory=list)
    rollbacks: list[tuple[str, int]] = field(default_factory=list)  # (device, reading index)
    seconds: float = 0.0


@dataclass
class TargetHeader:
    """The data and shared facts of one data set and target (what the report needs besides the runs)."""

    dataset: str
    target: str
    description: str
    control: bool
    segments: str
    has_ground_truth: bool
    tracks: list[Track]
    initial: dict[str, Any]
    threshold: float
    threshold_rule: str
