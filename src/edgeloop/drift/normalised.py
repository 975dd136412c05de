"""Sequential tests on normalised errors: the ``page-hinkley`` and ``adwin`` policies.

The tests themselves are in :mod:`edgeloop.drift.sequential` (without River's heavy imports); the
classes here calibrate the error scale, normalise and clip errors, and keep state for snapshots.
"""

from __future__ import annotations

import math
from typing import Any

from edgeloop.drift.sequential import AdwinTest, PageHinkleyTest
from edgeloop.drift.windowed import CALIBRATION_FLOOR, NORMALISED_CLIP, _Calibrating

# RMSE / mean |e| of Gaussian errors: the scale is this times the calibration window's mean |e|.
GAUSSIAN_RMSE_PER_MAE = math.sqrt(math.pi / 2)


class _Sequential(_Calibrating):
    """Feeds ``min(|e| / scale, NORMALISED_CLIP)`` to a sequential test once the scale is calibrated.

    |e|/scale rather than (e/scale)^2: squares make one outlier worth hundreds of normal samples.
    The test is armed only at calibration, primed with the calibration window itself (so its
    baseline is the new model's live error level and no second window is lost); before that the
    validation RMSE alone is not trusted as a scale, since a scale 10x too small is exactly what makes
    a sequential test storm. The cost is a blind spot of one window after warm-up, which the relative
    level checks and the model's probation cover.

    The scale is the calibration window's mean |e| x sqrt(pi/2) (its RMSE for Gaussian errors), and
    never more than its RMSE: with heavy-tailed errors (bursts, spikes) the RMSE is dominated by a few
    large errors, so |e|/RMSE averages ~0.5 instead of ~0.8 and ``delta`` (in the same units) would
    tolerate twice the intended rise of the error level. The mean |e| keeps the normal level of the
    normalised errors, and so the meaning of ``delta`` and ``threshold``, the same for every tail.
    """

    def _clear(self) -> None:
        super()._clear()
        self._inv_scale = 0.0
        self._scale: float | None = None
        self._armed = False
        self._new_test()

    def _arm_scale(self) -> float:
        """The normalising scale at calibration (see the class docstring); the RMSE reference bounds it."""
        reference = self._live_reference
        assert reference is not None
        if self.calibration == self.window:
            abs_errors = self._abs_errors_oldest_first()
            mean_abs = sum(abs_errors) / len(abs_errors) if abs_errors else 0.0
        else:
            mean_abs = self._cal_abs_sum / self._cal_n if self._cal_n else 0.0
        scale = min(reference, GAUSSIAN_RMSE_PER_MAE * mean_abs)
        val = self._validation_rmse
        if val is not None:
            scale = max(scale, CALIBRATION_FLOOR * val)
        return scale if scale > 0.0 else reference

    def _new_test(self) -> None:
        raise NotImplementedError

    def _feed(self, x: float) -> bool:
        raise NotImplementedError

    def _test_state(self) -> dict[str, Any] | None:
        """The sequential test's state, or None when it cannot be saved (then it is re-primed)."""
        return None

    def _load_test(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def to_state(self) -> dict[str, Any]:
        out = super().to_state()
        out.update(armed=self._armed, test=self._test_state() if self._armed else None, scale=self._scale)
        return out

    def from_state(self, state: dict[str, Any]) -> None:
        super().from_state(state)
        self._new_test()
        self._armed = False
        self._scale = None
        if not state["armed"]:
            return
        if self._live_reference is None:
            raise ValueError("an armed detector state without a scale")
        # Snapshots from before the scale was kept normalised by the RMSE reference.
        scale = float(state.get("scale") or self._live_reference)
        if not math.isfinite(scale) or scale <= 0.0:
            raise ValueError(f"an armed detector state with scale {scale}")
        self._scale = scale
        self._inv_scale = 1.0 / scale
        self._armed = True
        if state.get("test") is not None:
            self._load_test(state["test"])
        else:
            # Re-prime from the errors in the window, as at calibration: the test restarts on the
            # current error level instead of waiting for a new calibration cycle.
            for abs_error in self._abs_errors_oldest_first():
                self._feed(min(abs_error * self._inv_scale, NORMALISED_CLIP))

    def update(self, error: float) -> bool:
        """Feed one forecast error; True when this sample raises an alarm."""
        # _Windowed.update with _push and _decide inlined: this runs for every reading of every device.
        error = float(error)
        if not math.isfinite(error):
            self._ignored += 1
            return False
        self._samples += 1
        self._rolling.add(error)
        if self._armed:
            alarm = self._feed(min(abs(error) * self._inv_scale, NORMALISED_CLIP))
        else:
            if self._live_reference is None:
                self._cal_sum += error * error
                self._cal_abs_sum += abs(error)
                self._cal_n += 1
            # Calibration needs `calibration` errors at least: most samples before it stop here.
            alarm = self._cal_n >= self.calibration and self._decide(error)
        if alarm:
            self._alarms += 1
        return alarm

    def _decide(self, error: float) -> bool:
        if not self._armed:
            if not self._try_calibrate():
                return False
            self._scale = self._arm_scale()
            self._inv_scale = 1.0 / self._scale
            self._armed = True
            alarm = False
            for abs_error in self._abs_errors_oldest_first():
                alarm = self._feed(min(abs_error * self._inv_scale, NORMALISED_CLIP)) or alarm
            return alarm
        return self._feed(min(abs(error) * self._inv_scale, NORMALISED_CLIP))

    @property
    def scale(self) -> float | None:
        """The error scale used to normalise (see the class docstring), None until armed."""
        return self._scale


class PageHinkley(_Sequential):
    """Page-Hinkley test (River's, mode "up": :mod:`edgeloop.drift.sequential`) on errors ``|e| / scale``.

    ``threshold`` and ``delta`` are in normalised units, so the same values serve every target: with
    |e|/scale the normal mean is ~0.8 (Gaussian errors); ``delta`` is the tolerated increase of that
    mean and ``threshold`` the accumulated excess that alarms. Defaults (50, 0.5): a 3x error increase
    is flagged in ~30-50 samples, a 2x one in ~120, a 1.5x one mostly not at all (delta tolerates ~60%
    more mean |e|); no false alarm in 200,000 i.i.d. Gaussian, Student-t(3) or Laplace errors. Strongly
    autocorrelated errors (AR(1), phi=0.9) give ~1 false alarm per 10,000 samples: the guard's job.
    The test restarts after each detection, so the new level becomes the baseline.

    >>> import numpy as np
    >>> rng = np.random.default_rng(2)
    >>> det = PageHinkley(threshold=50.0, delta=0.5, window=100)
    >>> [det.update(e) for e in 1000 * rng.normal(0, 1, 5000)].count(True), det.calibrated
    (0, True)
    >>> alarms = [det.update(e) for e in 1000 * rng.normal(0, 3, 500)]
    >>> 20 < alarms.index(True) < 150
    True
    """

    name = "page-hinkley"

    def __init__(
        self,
        threshold: float = 50.0,
        delta: float = 0.5,
        window: int = 100,
        reference_rmse: float | None = None,
        *,
        min_instances: int = 30,
        alpha: float = 1 - 1e-4,
        calibration: int | None = None,
    ) -> None:
        if not threshold > 0 or not delta >= 0:
            raise ValueError(f"need threshold > 0 and delta >= 0, got {threshold}, {delta}")
        self.ph_threshold = float(threshold)
        self.ph_delta = float(delta)
        self.min_instances = int(min_instances)
        self.alpha = float(alpha)
        super().__init__(window, reference_rmse, calibration)

    def _new_test(self) -> None:
        self._ph = PageHinkleyTest(
            min_instances=self.min_instances,
            delta=self.ph_delta,
            threshold=self.ph_threshold,
            alpha=self.alpha,
        )

    def _feed(self, x: float) -> bool:
        return self._ph.update(x)

    def _test_state(self) -> dict[str, Any] | None:
        return self._ph.to_state()

    def _load_test(self, state: dict[str, Any]) -> None:
        self._ph.load_state(state)

    def state(self) -> dict[str, Any]:
        out = super().state()
        out.update(ph_threshold=self.ph_threshold, ph_delta=self.ph_delta, alpha=self.alpha, scale=self.scale)
        return out


class Adwin(_Sequential):
    """ADWIN (River's compiled core) on normalised errors ``|e| / scale``; alarms only on an increase.

    ADWIN flags a change of the window mean in either direction; a drop in error is no reason to
    retrain, so a detection alarms only if the mean of the kept (recent) sub-window is above the mean
    before the cut. Normalising matters for ADWIN too: its cut bound assumes values of order one.

    >>> import numpy as np
    >>> rng = np.random.default_rng(3)
    >>> det = Adwin(delta=0.002, window=100)
    >>> [det.update(e) for e in 0.01 * rng.normal(0, 1, 5000)].count(True)
    0
    >>> alarms = [det.update(e) for e in 0.01 * rng.normal(0, 3, 500)]
    >>> 0 < alarms.index(True) < 150
    True
    >>> [det.update(e) for e in 0.01 * rng.normal(0, 1, 3000)].count(True)  # error drops: no alarm
    0
    """

    name = "adwin"

    def __init__(
        self,
        delta: float = 0.002,
        window: int = 100,
        reference_rmse: float | None = None,
        *,
        clock: int = 32,
        calibration: int | None = None,
    ) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.adwin_delta = float(delta)
        self.clock = int(clock)
        super().__init__(window, reference_rmse, calibration)

    def _new_test(self) -> None:
        self._adwin = AdwinTest(delta=self.adwin_delta, clock=self.clock)
        self._increases = 0
        self._decreases = 0

    def _feed(self, x: float) -> bool:
        adwin = self._adwin
        before = adwin.estimation
        if not adwin.update(x):
            return False
        # After a cut ADWIN keeps only the recent sub-window, so its estimation is the recent mean.
        if adwin.estimation > before:
            self._increases += 1
            return True
        self._decreases += 1
        return False

    def state(self) -> dict[str, Any]:
        out = super().state()
        out.update(
            adwin_delta=self.adwin_delta,
            scale=self.scale,
            changes_up=self._increases,
            changes_down=self._decreases,
        )
        return out
