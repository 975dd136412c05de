"""Drift detectors on one scope's stream of one-step forecast errors ``e = actual - forecast``.

One small class per ``drift.policy``. Every detector has the same surface (:class:`Detector`):
``update(error) -> bool`` (True: alarm on this sample), ``reset()``, ``rebase(reference_rmse)`` (new
serving model: new validation RMSE, fresh state), and read-only ``rolling_rmse`` / ``threshold`` /
``reference_rmse`` / ``calibrated`` for dashboards, plus ``state()`` for status.

Detectors know nothing about warm-up, hysteresis or retrain budgets: :class:`edgeloop.drift.guard.DriftGuard`
adds those around any of them. Errors arrive in target units, which vary by orders of magnitude between
targets (VOC in hundreds of ppb, temperature in tenths of a degree), so every policy except the absolute
``rmse-threshold`` (kept for parity with the original system) works on a unit-free scale calibrated from
the serving model's own live errors.

State is O(window); ``update`` is on the hot path, so it does plain float arithmetic, no numpy.

This module holds that surface and the rolling window (:class:`~edgeloop.drift.rolling.RollingRmse`)
and calibration every policy shares; the
policies are in :mod:`edgeloop.drift.threshold` (absolute and relative levels) and
:mod:`edgeloop.drift.normalised` (Page-Hinkley, ADWIN).
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

from edgeloop.drift.rolling import RollingRmse

# A calibrated reference may sit far below the validation RMSE: a validation slice that happened to
# hold an event (a door opened, a sensor glitch) overstates the error, and trusting it is exactly how
# a relative rule "went deaf". The floor only stops a degenerate calibration window (a stuck or
# quantised sensor giving ~zero errors) from collapsing the reference towards zero, after which any
# ordinary error would alarm.
CALIBRATION_FLOOR = 0.05
# Relative policy only: a first live window much worse than validation means the new model is broken
# or was validated on a too-easy slice. Adopting that level as "normal" would make the rule blind to
# a bad start forever; capping the reference at 2x validation keeps an alarm reachable (with k=2 it
# fires once live RMSE exceeds 4x the validation RMSE).
RELATIVE_CAP = 2.0
# Normalised |e| fed to Page-Hinkley and ADWIN is clipped: one sensor glitch (a 1000-sigma error) must
# not trip a sequential test on its own. At 10 it takes several extreme samples in a row to cross the
# default Page-Hinkley threshold of 50, while a real 3x error increase (mean |e|/scale 0.8 -> 2.4) is
# not affected by the clip at all.
NORMALISED_CLIP = 10.0


@runtime_checkable
class Detector(Protocol):
    """What the guard, the engine and the dashboard rely on."""

    name: str

    def update(self, error: float) -> bool: ...

    def reset(self) -> None: ...

    def rebase(self, reference_rmse: float | None) -> None: ...

    @property
    def rolling_rmse(self) -> float | None: ...

    @property
    def threshold(self) -> float | None: ...

    @property
    def reference_rmse(self) -> float | None: ...

    @property
    def calibrated(self) -> bool: ...

    def state(self) -> dict[str, Any]: ...

    def to_state(self) -> dict[str, Any]: ...

    def from_state(self, state: dict[str, Any]) -> None: ...


def _check_reference(reference_rmse: float | None) -> float | None:
    if reference_rmse is None:
        return None
    ref = float(reference_rmse)
    if not math.isfinite(ref) or ref <= 0.0:
        # A model whose validation RMSE is 0, NaN or inf gives no usable scale; calibrate live instead.
        return None
    return ref


class _Windowed:
    """Rolling RMSE over the last ``window`` finite errors (:class:`~edgeloop.drift.rolling.RollingRmse`)."""

    name = "windowed"

    def __init__(self, window: int, reference_rmse: float | None = None) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.window = int(window)
        self._validation_rmse = _check_reference(reference_rmse)
        self._rolling = RollingRmse(self.window)
        self._clear()

    def _clear(self) -> None:
        self._rolling.reset()
        self._samples = 0
        self._ignored = 0
        self._alarms = 0

    def _push(self, error: float) -> None:
        self._rolling.add(error)

    def _abs_errors_oldest_first(self) -> list[float]:
        return [math.sqrt(sq) for sq in self._rolling.squares_oldest_first()]

    def update(self, error: float) -> bool:
        """Feed one forecast error; True when this sample raises an alarm."""
        error = float(error)
        if not math.isfinite(error):
            self._ignored += 1
            return False
        self._samples += 1
        self._push(error)
        alarm = self._decide(error)
        if alarm:
            self._alarms += 1
        return alarm

    def _decide(self, error: float) -> bool:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every error seen; behave exactly as freshly built with the same reference."""
        self._clear()

    def rebase(self, reference_rmse: float | None) -> None:
        """A new model serves: take its validation RMSE as the provisional reference and reset."""
        self._validation_rmse = _check_reference(reference_rmse)
        self.reset()

    @property
    def window_full(self) -> bool:
        return self._rolling.full

    @property
    def rolling_rmse(self) -> float | None:
        """RMSE of the last ``window`` errors (fewer until the window fills); None before any error."""
        return self._rolling.value

    @property
    def threshold(self) -> float | None:
        return None

    @property
    def reference_rmse(self) -> float | None:
        return self._validation_rmse

    @property
    def validation_rmse(self) -> float | None:
        return self._validation_rmse

    @property
    def calibrated(self) -> bool:
        return False

    def to_state(self) -> dict[str, Any]:
        """Everything :meth:`from_state` needs to continue exactly where this detector is (JSON-able)."""
        # The window's fields stay flat under their own names (not RollingRmse.to_state's): snapshots
        # written before the window became a RollingRmse load unchanged.
        rolling = self._rolling.to_state()
        return {
            "policy": self.name,
            "window": self.window,
            "squares": rolling["buf"],
            "pos": rolling["i"],
            "count": rolling["n"],
            "sum_sq": rolling["sum"],
            "samples": self._samples,
            "ignored": self._ignored,
            "alarms": self._alarms,
            "validation_rmse": self._validation_rmse,
        }

    def from_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`to_state` output of a detector of the same policy and window.

        Raises ``ValueError`` (or ``KeyError``/``TypeError`` for a malformed state) when it does not fit;
        the detector may then be half loaded, so the caller should :meth:`reset` it or build a new one.
        """
        if state["policy"] != self.name or int(state["window"]) != self.window:
            found = f"{state['policy']}/{state['window']}"
            raise ValueError(f"detector state of {found} does not fit {self.name}/{self.window}")
        self._rolling.restore(
            state["squares"], int(state["pos"]), int(state["count"]), float(state["sum_sq"])
        )
        self._samples = int(state["samples"])
        self._ignored = int(state["ignored"])
        self._alarms = int(state["alarms"])
        self._validation_rmse = _check_reference(state["validation_rmse"])

    def state(self) -> dict[str, Any]:
        return {
            "policy": self.name,
            "window": self.window,
            "samples": self._samples,
            "ignored_nonfinite": self._ignored,
            "alarms": self._alarms,
            "rolling_rmse": self.rolling_rmse,
            "threshold": self.threshold,
            "reference_rmse": self.reference_rmse,
            "validation_rmse": self._validation_rmse,
            "calibrated": self.calibrated,
        }


class _Calibrating(_Windowed):
    """Reference scale: validation RMSE until the first full window of live errors, then that live RMSE.

    The guard feeds nothing during warm-up, so the first full window is the serving model's own
    post-warm-up errors. The calibrated reference is bounded below by ``CALIBRATION_FLOOR`` x validation
    RMSE (subclasses may add an upper bound). Without a validation RMSE it is the live RMSE alone; a
    window of exactly-zero errors postpones calibration until an error is non-zero.
    """

    _cap: float | None = None

    def __init__(
        self, window: int, reference_rmse: float | None = None, calibration: int | None = None
    ) -> None:
        # Errors whose RMSE becomes the reference; longer than the window when errors swing with a
        # cycle (day and night): a calm hour must not set the scale for a busy day.
        self.calibration = max(int(calibration or window), window)
        super().__init__(window, reference_rmse)

    def _clear(self) -> None:
        super()._clear()
        self._live_reference: float | None = None
        self._cal_sum = 0.0
        self._cal_n = 0

    def _push(self, error: float) -> None:
        self._rolling.add(error)
        if self._live_reference is None:
            self._cal_sum += error * error
            self._cal_n += 1

    def _try_calibrate(self) -> bool:
        rolling = self._rolling
        if self._live_reference is not None or rolling.count < self.window or self._cal_n < self.calibration:
            return False
        if self.calibration == self.window:
            live = math.sqrt(max(rolling.sum_sq, 0.0) / rolling.count)
        else:
            live = math.sqrt(max(self._cal_sum, 0.0) / self._cal_n)
        val = self._validation_rmse
        if val is not None:
            live = max(live, CALIBRATION_FLOOR * val)
            if self._cap is not None:
                live = min(live, self._cap * val)
        if live <= 0.0:
            return False
        self._live_reference = live
        return True

    def to_state(self) -> dict[str, Any]:
        out = super().to_state()
        out.update(live_reference=self._live_reference, cal_sum=self._cal_sum, cal_n=self._cal_n)
        return out

    def from_state(self, state: dict[str, Any]) -> None:
        super().from_state(state)
        self._live_reference = _check_reference(state["live_reference"])
        self._cal_sum = float(state["cal_sum"])
        self._cal_n = int(state["cal_n"])

    @property
    def reference_rmse(self) -> float | None:
        """The live-calibrated reference once calibrated, else the validation RMSE (or None)."""
        return self._live_reference if self._live_reference is not None else self._validation_rmse

    @property
    def calibrated(self) -> bool:
        return self._live_reference is not None
