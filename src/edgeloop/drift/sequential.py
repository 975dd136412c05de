"""The sequential change tests behind the ``page-hinkley`` and ``adwin`` policies, without River's imports.

``import river.drift`` imports pandas, SciPy and scikit-learn (about 150 MB in the edge process) for
two small algorithms. Page-Hinkley is a few lines and is written here, step for step as River's
``drift.PageHinkley`` (so the same stream gives the same alarms: tests/unit/test_drift.py checks it
against River), with its state as plain numbers that the edge can snapshot. ADWIN's reference
implementation is River's compiled core, ``river._river_rust.drift.AdaptiveWindowing``, which
``river.drift.ADWIN`` wraps; it is imported here without the rest of River. Its state lives in the
compiled object and is not snapshotted: after a restart an ADWIN detector re-arms from calibration.

>>> ph = PageHinkleyTest(min_instances=30, delta=0.005, threshold=50.0)
>>> alarms = [ph.update(x) for x in [0.0] * 100 + [5.0] * 20]
>>> alarms.index(True)
110
"""

from __future__ import annotations

import math
from typing import Any


class PageHinkleyTest:
    """Page-Hinkley test for an increase of the mean (River's ``PageHinkley(mode="up")``).

    After a detection the test restarts on the next value, so the new level becomes the baseline.
    """

    def __init__(
        self,
        *,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 1e-4,
    ) -> None:
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.drift_detected = False
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._mean = 0.0
        self._sum = 0.0
        self._min = math.inf

    def update(self, x: float) -> bool:
        if self.drift_detected:
            self._reset()
        self._n += 1
        self._mean += (x - self._mean) / self._n
        self._sum = self.alpha * self._sum + (x - self._mean) - self.delta
        if self._sum < self._min:
            self._min = self._sum
        self.drift_detected = self._n >= self.min_instances and self._sum - self._min > self.threshold
        return self.drift_detected

    def to_state(self) -> dict[str, Any]:
        return {
            "n": self._n,
            "mean": self._mean,
            "sum": self._sum,
            "min": None if math.isinf(self._min) else self._min,
            "drift_detected": self.drift_detected,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self._n = int(state["n"])
        self._mean = float(state["mean"])
        self._sum = float(state["sum"])
        self._min = math.inf if state["min"] is None else float(state["min"])
        self.drift_detected = bool(state["drift_detected"])


class AdwinTest:
    """ADWIN (Bifet and Gavalda, 2007) on River's compiled core; same alarms as ``river.drift.ADWIN``."""

    def __init__(
        self,
        *,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        self._args = (delta, clock, max_buckets, min_window_length, grace_period)
        self.drift_detected = False
        self._reset()

    def _reset(self) -> None:
        from river._river_rust.drift import AdaptiveWindowing  # the compiled core only, not river.drift

        self._core: Any = AdaptiveWindowing(*self._args)

    @property
    def estimation(self) -> float:
        width = self._core.get_width()
        return float(self._core.get_total()) / width if width else 0.0

    def update(self, x: float) -> bool:
        if self.drift_detected:
            self._reset()
        self.drift_detected = bool(self._core.update(float(x)))
        return self.drift_detected
