"""The engine, readings and models the lifecycle tests build (tests/unit/test_lifecycle.py, test_floor.py)."""

from __future__ import annotations

import numpy as np

from edgeloop.config import DriftSettings, Settings
from edgeloop.engine.engine import Engine, EngineOutput
from edgeloop.models.forecasters import LinearForecaster
from edgeloop.models.modelfile import LoadedModel
from edgeloop.service.edge import build_engine
from edgeloop.telemetry.schema import Telemetry


def engine(drift: DriftSettings | None = None, **model: object) -> Engine:
    s = Settings(
        model=model,  # type: ignore[arg-type]
        drift=drift or DriftSettings(warmup=10, window=20, min_gap=50),
    )
    return build_engine(s, auto_train=False)


def readings(
    device: str, values: np.ndarray, *, start: int = 0, interval: float = 60.0, t0: float = 0.0
) -> list[Telemetry]:
    return [
        Telemetry(device, t0 + (start + i) * interval, start + i, {"voc_ppb": float(v)})
        for i, v in enumerate(values)
    ]


def offset_model(offset: float, label: str = "voc_ppb:v1") -> LoadedModel:
    """Forecasts the last reading plus ``offset``: worse than persistence unless the series trends so."""
    lin = LinearForecaster(5)
    lin.coef, lin.intercept = np.array([0.0, 0.0, 0.0, 0.0, 1.0]), offset
    return LoadedModel(label, lin, {"scores": {"val_rmse": 1.0}})


def kinds(out: EngineOutput) -> list[str]:
    return [e.kind for e in out.events]
