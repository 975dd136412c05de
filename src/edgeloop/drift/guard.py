"""Warm-up, hysteresis and a retrain budget around any drift detector: noise can never cause a storm.

A detector says "the error stream looks wrong on this sample"; the guard decides whether that becomes
a retrain request. Three rules, applied in order:

1. warm-up: the first ``warmup`` errors after a model change are not even shown to the detector (a fresh
   model's first errors include lag features still filling and are not what it will do in steady state;
   and the detector's live calibration should start after them);
2. hysteresis: no alarm within ``min_gap`` samples of the previous passed alarm (a detector such as
   ``rmse-threshold`` alarms on every sample while the window is bad; one request is enough);
3. budget: at most ``budget`` passed alarms in any ``budget_window`` consecutive samples.

Hysteresis and budget deliberately survive :meth:`DriftGuard.model_changed`: a loop of
alarm -> retrain -> new model -> alarm is exactly the storm the budget exists to stop.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from edgeloop.drift.windowed import Detector

__all__ = ["DriftGuard"]

log = logging.getLogger(__name__)


class DriftGuard:
    """Passes a detector's alarm on only when warm-up, hysteresis and budget allow it.

    Sample indices count every error given to :meth:`update` (warm-up and non-finite ones included), from 0.

    >>> from edgeloop.drift.threshold import RmseThreshold
    >>> guard = DriftGuard(RmseThreshold(threshold=1.0, window=10), warmup=5, min_gap=20, budget=2,
    ...                    budget_window=100)
    >>> passed = [i for i in range(200) if guard.update(5.0)]  # every full window alarms
    >>> passed  # first full window ends at 5 + 10 - 1; then every 20 samples, 2 per 100 samples
    [14, 34, 114, 134]
    >>> guard.alarms, guard.suppressed > 0, guard.last_alarm_at, guard.in_warmup
    (4, True, 134, False)
    >>> guard.model_changed(reference_rmse=None)
    >>> guard.in_warmup
    True
    """

    def __init__(
        self, detector: Detector, *, warmup: int, min_gap: int, budget: int, budget_window: int
    ) -> None:
        if warmup < 0 or min_gap < 0:
            raise ValueError(f"warmup and min_gap must be >= 0, got {warmup}, {min_gap}")
        if budget < 1 or budget_window < 1:
            raise ValueError(f"budget and budget_window must be >= 1, got {budget}, {budget_window}")
        self.detector = detector
        self.warmup = int(warmup)
        self.min_gap = int(min_gap)
        self.budget = int(budget)
        self.budget_window = int(budget_window)
        self.samples = 0
        self.alarms = 0
        self.suppressed_by_gap = 0
        self.suppressed_by_budget = 0
        self.warmup_skipped = 0
        self.model_changes = 0
        self.last_alarm_at: int | None = None
        self._warmup_left = self.warmup
        # Sample indices of passed alarms still inside the budget window; never longer than `budget`.
        self._recent: deque[int] = deque(maxlen=self.budget)

    @property
    def in_warmup(self) -> bool:
        return self._warmup_left > 0

    @property
    def suppressed(self) -> int:
        """Detector alarms not passed on (hysteresis or budget); warm-up samples are not counted."""
        return self.suppressed_by_gap + self.suppressed_by_budget

    def update(self, error: float) -> bool:
        """Feed one forecast error; True when a retrain should be requested now."""
        index = self.samples
        self.samples += 1
        if self._warmup_left > 0:
            self._warmup_left -= 1
            self.warmup_skipped += 1
            return False
        if not self.detector.update(error):
            return False
        if self.last_alarm_at is not None and index - self.last_alarm_at < self.min_gap:
            self.suppressed_by_gap += 1
            return False
        recent = self._recent
        while recent and index - recent[0] >= self.budget_window:
            recent.popleft()
        if len(recent) >= self.budget:
            self.suppressed_by_budget += 1
            if self.suppressed_by_budget == 1 or self.suppressed_by_budget % 1000 == 0:
                log.warning(
                    "drift alarm suppressed by budget (%d per %d samples); %d suppressed so far",
                    self.budget,
                    self.budget_window,
                    self.suppressed_by_budget,
                )
            return False
        recent.append(index)
        self.alarms += 1
        self.last_alarm_at = index
        return True

    def model_changed(self, reference_rmse: float | None) -> None:
        """A new model serves: reset the detector with its validation RMSE and start a new warm-up.

        Hysteresis and budget are kept (see the module docstring).
        """
        self.detector.rebase(reference_rmse)
        self._warmup_left = self.warmup
        self.model_changes += 1

    def to_state(self) -> dict[str, Any]:
        """The guard's and its detector's state for a snapshot (JSON-able); see :meth:`from_state`."""
        return {
            "samples": self.samples,
            "alarms": self.alarms,
            "suppressed_by_gap": self.suppressed_by_gap,
            "suppressed_by_budget": self.suppressed_by_budget,
            "warmup_skipped": self.warmup_skipped,
            "model_changes": self.model_changes,
            "last_alarm_at": self.last_alarm_at,
            "warmup_left": self._warmup_left,
            "recent": list(self._recent),
            "detector": self.detector.to_state(),
        }

    def from_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`to_state` output. Hyperparameters stay as constructed (the config of this
        run wins); a state that does not fit raises ``ValueError``/``KeyError``/``TypeError`` and leaves
        the guard as freshly built (other than its detector's reference)."""
        samples = int(state["samples"])
        last = state["last_alarm_at"]
        recent = [int(i) for i in state["recent"]]
        warmup_left = min(int(state["warmup_left"]), self.warmup)
        if samples < 0 or warmup_left < 0 or any(not 0 <= i < samples for i in recent):
            raise ValueError("guard state out of range")
        try:
            self.detector.from_state(state["detector"])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError):
            self.detector.reset()
            raise
        self.samples = samples
        self.alarms = int(state["alarms"])
        self.suppressed_by_gap = int(state["suppressed_by_gap"])
        self.suppressed_by_budget = int(state["suppressed_by_budget"])
        self.warmup_skipped = int(state["warmup_skipped"])
        self.model_changes = int(state["model_changes"])
        self.last_alarm_at = None if last is None else int(last)
        self._warmup_left = warmup_left
        self._recent = deque(recent[-self.budget :], maxlen=self.budget)

    def state(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "alarms": self.alarms,
            "suppressed": self.suppressed,
            "suppressed_by_gap": self.suppressed_by_gap,
            "suppressed_by_budget": self.suppressed_by_budget,
            "last_alarm_at": self.last_alarm_at,
            "in_warmup": self.in_warmup,
            "warmup_left": self._warmup_left,
            "model_changes": self.model_changes,
            "budget": self.budget,
            "budget_window": self.budget_window,
            "min_gap": self.min_gap,
            "detector": self.detector.state(),
        }
