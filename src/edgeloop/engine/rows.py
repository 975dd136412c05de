"""What the engine hands out besides predictions: store rows, and the model surface it serves.

These live with the engine (not with the store that writes them) so the engine imports no adapter or
file-format code: the store, the dashboard and the tests import them from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np


class SampleRow(NamedTuple):
    """One reading of one target, with what was forecast for it and what is forecast next."""

    device: str
    target: str
    ts: float
    seq: int | None
    value: float
    forecast: float | None
    persistence: float | None
    prediction: float | None
    model: str | None


class StatusRow(NamedTuple):
    """The live status of one device and target (the ``scope_status`` table)."""

    device: str
    target: str
    last_seen: float
    readings: int  # the column is named count
    rate: float
    rmse: float | None
    threshold: float | None
    persistence_rmse: float | None
    mean_rmse: float | None
    model: str
    status: str
    updated: float


class Predictor(Protocol):
    def predict(self, windows: np.ndarray) -> np.ndarray: ...


class ServedModel(Protocol):
    """What the engine needs of a model in service (``models.modelfile.LoadedModel`` is one)."""

    @property
    def label(self) -> str: ...

    @property
    def val_rmse(self) -> float | None: ...

    @property
    def forecaster(self) -> Predictor: ...

    @property
    def meta(self) -> Mapping[str, Any]: ...
