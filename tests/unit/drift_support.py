"""Detectors under test and the error streams they are tried on, shared by the drift unit tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeloop.drift import Adwin, Detector, PageHinkley, RelativeRmse, RmseThreshold

Factory = Callable[[float | None], Detector]

# rmse-threshold is absolute: for N(0, 1) errors, 2.0 sits between the normal RMSE (1) and a 3x one.
FACTORIES: dict[str, Factory] = {
    "rmse-threshold": lambda ref: RmseThreshold(threshold=2.0, window=100),
    "relative": lambda ref: RelativeRmse(factor=2.0, window=100, reference_rmse=ref),
    "page-hinkley": lambda ref: PageHinkley(threshold=50.0, delta=0.5, window=100, reference_rmse=ref),
    "adwin": lambda ref: Adwin(delta=0.002, window=100, reference_rmse=ref),
}
UNIT_FREE = ["relative", "page-hinkley", "adwin"]


def run(det: Detector, errors: np.ndarray) -> list[int]:
    """Indices of the samples that alarmed."""
    return [i for i, e in enumerate(errors.tolist()) if det.update(e)]


def step_errors(seed: int, n_before: int = 3000, n_after: int = 1000, factor: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, n_before), rng.normal(0, factor, n_after)])
