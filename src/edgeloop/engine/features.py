"""The one feature function, shared by training and serving.

A forecaster sees a *window*: the last ``lags`` readings of one device and target, oldest first,
and forecasts the next reading. Training builds every window of a series with :func:`lag_windows`;
the edge keeps each device's last ``lags`` readings and stacks them into the same matrix. Both then
call :func:`design_matrix`, so the model sees the same numbers in both places (the original system
reversed the lag order at serving time and silently degraded its own model).

>>> import numpy as np
>>> w = lag_windows(np.array([1.0, 2.0, 4.0, 7.0]), lags=3)
>>> w.tolist()
[[1.0, 2.0, 4.0], [2.0, 4.0, 7.0]]
>>> design_matrix(w, "delta").tolist()
[[-3.0, -2.0, 2.0], [-5.0, -3.0, 3.0]]
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Formulation = Literal["level", "delta"]


def lag_windows(values: np.ndarray, lags: int) -> np.ndarray:
    """Every window of ``lags`` consecutive readings, oldest first: shape (n - lags + 1, lags)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < lags:
        return np.empty((0, lags))
    return sliding_window_view(values, lags)


def training_pairs(values: np.ndarray, lags: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows and the reading that followed each: what a one-step forecaster learns from."""
    values = np.asarray(values, dtype=np.float64)
    windows = lag_windows(values, lags)[:-1]
    return windows, values[lags:]


def design_matrix(windows: np.ndarray, formulation: Formulation) -> np.ndarray:
    """Model inputs for a batch of windows.

    ``level``: the raw readings. ``delta``: each older reading relative to the newest, plus the last
    step; with the target also taken relative to the newest reading (see :func:`to_target`), a tree
    never has to extrapolate beyond levels it saw, so a level shift does not break it.
    """
    windows = np.asarray(windows, dtype=np.float64)
    if formulation == "level":
        return windows
    last = windows[:, -1:]
    relative = windows[:, :-1] - last
    step = windows[:, -1:] - windows[:, -2:-1] if windows.shape[1] > 1 else np.zeros_like(last)
    return np.hstack([relative, step])


def to_target(next_values: np.ndarray, windows: np.ndarray, formulation: Formulation) -> np.ndarray:
    """What the model is trained to output for each window."""
    if formulation == "level":
        return np.asarray(next_values, dtype=np.float64)
    return np.asarray(next_values, dtype=np.float64) - windows[:, -1]


def from_output(output: np.ndarray, windows: np.ndarray, formulation: Formulation) -> np.ndarray:
    """Turn model outputs back into forecasts of the next reading."""
    if formulation == "level":
        return np.asarray(output, dtype=np.float64)
    return np.asarray(output, dtype=np.float64) + windows[:, -1]
