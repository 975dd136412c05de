"""Model calls of one wave (each device at most once): forecasts and online learning, vectorised.

A forecaster that declares ``online = True`` (``rls``, ``lgbm-rls``) learns per device: the engine
queues, per forecaster, each scored reading with the window that forecast it (:func:`_collect_online`)
and applies them in one vectorised ``update`` per forecaster before the wave's forecasts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeloop.engine.track import _Serving, _Track


class _Learn:
    """The (window, reading) pairs of one wave for one online forecaster: one vectorised update."""

    __slots__ = ("devices", "forecaster", "values", "windows")

    def __init__(self, forecaster: Any) -> None:
        self.forecaster = forecaster
        self.windows: list[list[float]] = []
        self.values: list[float] = []
        self.devices: list[str] = []

    def apply(self) -> None:
        self.forecaster.update(
            np.asarray(self.windows, dtype=np.float64), np.asarray(self.values), self.devices
        )


def _collect_online(
    learn: dict[int, _Learn], serving: _Serving, device: str, oldest: float, hist: list[float]
) -> None:
    """Queue the window that forecast ``hist[-1]`` for the serving model (and its probation shadow)."""
    for model in (serving.model, serving.previous):
        if model is None or not getattr(model.forecaster, "online", False):
            continue
        batch = learn.get(id(model.forecaster))
        if batch is None:
            batch = learn[id(model.forecaster)] = _Learn(model.forecaster)
        batch.windows.append([oldest, *hist[:-1]])
        batch.values.append(hist[-1])
        batch.devices.append(device)


def _predict(forecaster: Any, windows: np.ndarray, members: list[_Track]) -> np.ndarray:
    if getattr(forecaster, "online", False):
        return np.asarray(forecaster.predict(windows, [t.device for t in members]))
    return np.asarray(forecaster.predict(windows))
