"""Drift detection on forecast-error streams: detectors per policy, and the guard around them.

>>> from edgeloop.config import DriftSettings
>>> guard = make_guarded(DriftSettings(policy="relative"), reference_rmse=12.5)
>>> type(guard.detector).__name__, guard.detector.reference_rmse, guard.in_warmup
('RelativeRmse', 12.5, True)
"""

from __future__ import annotations

from edgeloop.config import DriftSettings
from edgeloop.drift.guard import DriftGuard
from edgeloop.drift.normalised import Adwin, PageHinkley
from edgeloop.drift.threshold import RelativeRmse, RmseThreshold
from edgeloop.drift.windowed import Detector
from edgeloop.errors import ConfigError

__all__ = [
    "Adwin",
    "Detector",
    "DriftGuard",
    "PageHinkley",
    "RelativeRmse",
    "RmseThreshold",
    "make_detector",
    "make_guarded",
]


def make_detector(settings: DriftSettings, reference_rmse: float | None = None) -> Detector:
    """The detector for ``settings.policy``; ``reference_rmse`` is the serving model's validation RMSE.

    ``rmse-threshold`` only reports ``reference_rmse``; its threshold is absolute.
    """
    policy = settings.policy
    if policy == "rmse-threshold":
        if settings.threshold is None:
            raise ConfigError("drift.threshold is required when drift.policy is rmse-threshold")
        return RmseThreshold(
            threshold=settings.threshold, window=settings.window, reference_rmse=reference_rmse
        )
    if policy == "relative":
        return RelativeRmse(
            factor=settings.relative_factor,
            window=settings.window,
            reference_rmse=reference_rmse,
            calibration=settings.calibration,
        )
    if policy == "page-hinkley":
        return PageHinkley(
            threshold=settings.ph_threshold,
            delta=settings.ph_delta,
            window=settings.window,
            reference_rmse=reference_rmse,
            calibration=settings.calibration,
        )
    if policy == "adwin":
        return Adwin(
            delta=settings.adwin_delta,
            window=settings.window,
            reference_rmse=reference_rmse,
            calibration=settings.calibration,
        )
    raise ConfigError(f"drift.policy: unknown policy {policy!r}")


def make_guarded(settings: DriftSettings, reference_rmse: float | None = None) -> DriftGuard:
    """:func:`make_detector` wrapped in a :class:`DriftGuard` with the settings' warm-up, gap and budget."""
    return DriftGuard(
        make_detector(settings, reference_rmse),
        warmup=settings.warmup,
        min_gap=settings.min_gap,
        budget=settings.budget,
        budget_window=settings.budget_window,
    )
