"""Level rules on the rolling RMSE: an absolute threshold, and a factor over the calibrated live level."""

from __future__ import annotations

import math

from edgeloop.drift.windowed import RELATIVE_CAP, _Calibrating, _Windowed


class RmseThreshold(_Windowed):
    """Alarm while the RMSE of the last ``window`` errors exceeds an absolute ``threshold``.

    The original system's rule (W=100, threshold 75, in target units). Alarms only on a full window.
    The threshold is absolute, so it means nothing for another target and fires constantly on a
    target whose normal error is near it; prefer ``relative`` or ``page-hinkley``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = RmseThreshold(threshold=2.0, window=50)
    >>> [det.update(e) for e in rng.normal(0, 1, 200)].count(True)
    0
    >>> alarms = [det.update(e) for e in rng.normal(0, 4, 100)]
    >>> alarms.index(True) < 50, round(det.rolling_rmse, 1), det.threshold
    (True, 4.1, 2.0)
    """

    name = "rmse-threshold"

    def __init__(self, threshold: float, window: int = 100, reference_rmse: float | None = None) -> None:
        # reference_rmse is only reported (state, dashboard); the rule itself is absolute.
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold}")
        self._threshold = float(threshold)
        self._limit_sq = self._threshold**2
        super().__init__(window, reference_rmse)

    def _decide(self, error: float) -> bool:
        # Compare sums of squares: no sqrt on the hot path.
        rolling = self._rolling
        return rolling.count == self.window and rolling.sum_sq > self._limit_sq * self.window

    @property
    def threshold(self) -> float | None:
        return self._threshold


class RelativeRmse(_Calibrating):
    """Alarm while the rolling RMSE exceeds ``factor`` x the reference RMSE.

    The reference is the serving model's validation RMSE until the first full window of live errors,
    then that window's RMSE, bounded to [0.05x, 2x] the validation RMSE (see ``CALIBRATION_FLOOR`` and
    ``RELATIVE_CAP``). Calibrating live is what keeps the rule from going deaf when the validation
    slice was unrepresentative. Unit-free: scaling all errors by 1000 changes nothing.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> det = RelativeRmse(factor=2.0, window=100, reference_rmse=10.0)  # validation slice 10x too harsh
    >>> [det.update(e) for e in rng.normal(0, 1, 2000)].count(True), det.calibrated
    (0, True)
    >>> 0.7 < det.reference_rmse < 1.3, det.threshold == 2.0 * det.reference_rmse  # live, not 10.0
    (True, True)
    >>> alarms = [det.update(e) for e in rng.normal(0, 3, 200)]
    >>> 0 < alarms.index(True) < 100
    True
    """

    name = "relative"
    _cap = RELATIVE_CAP

    def __init__(
        self,
        factor: float = 2.0,
        window: int = 100,
        reference_rmse: float | None = None,
        *,
        calibration: int | None = None,
    ) -> None:
        if not factor > 1.0:
            raise ValueError(f"factor must be > 1, got {factor}")
        self.factor = float(factor)
        super().__init__(window, reference_rmse, calibration)

    def _decide(self, error: float) -> bool:
        rolling = self._rolling
        if rolling.count < self.window:
            return False
        if self._live_reference is None and not self._try_calibrate():
            return False
        limit = self.factor * self._live_reference  # type: ignore[operator]
        return rolling.sum_sq > limit * limit * self.window

    @property
    def threshold(self) -> float | None:
        ref = self.reference_rmse
        return None if ref is None else self.factor * ref
