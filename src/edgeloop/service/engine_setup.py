"""The engine as the live edge configures it, from the settings: shared by the edge, the offline
evaluator and the benchmarks, so what is measured is what runs."""

from __future__ import annotations

from edgeloop.config import Settings, Span
from edgeloop.drift import make_guarded
from edgeloop.engine.engine import Engine


def build_engine(settings: Settings, *, auto_train: bool = True) -> Engine:
    """The engine as the live edge configures it; the evaluator and benchmarks use this too."""
    drift = settings.drift
    return Engine(
        targets=settings.model.targets,
        lags=settings.model.lags,
        guard_factory=lambda reference: make_guarded(drift, reference),
        window=drift.window,
        min_train_samples=settings.model.min_train_samples,
        retrain_min_samples=settings.model.retrain_min_samples,
        probation_samples=settings.model.probation_samples,
        probation_tolerance=settings.model.probation_tolerance,
        auto_train=auto_train,
        floor_margin=settings.model.floor_margin,
        floor_window=settings.model.floor_window,
        floor_shrink=settings.model.floor_shrink,
        gap_intervals=settings.model.gap_intervals,
        consolidate_after=Span.parse(settings.model.consolidate_after),
        refresh_every=Span.parse(settings.model.refresh_every),
        train_window=settings.model.train_window,
        max_devices=settings.limits.max_devices,
        device_idle_s=settings.limits.device_idle_s,
    )
