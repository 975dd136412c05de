"""Per-device and per-scope state of the engine: a device's track of one target, a model in service."""

from __future__ import annotations

from dataclasses import dataclass

from edgeloop.drift import DriftGuard
from edgeloop.engine.cadence import Cadence
from edgeloop.engine.monitor import RollingRmse, RunningMean
from edgeloop.engine.rows import ServedModel
from edgeloop.lifecycle.floor import Floor
from edgeloop.scopes import scope_of
from edgeloop.telemetry.schema import PERSISTENCE_VERSION


@dataclass
class _Serving:
    """A model in service for one scope, with its probation against the model it replaced."""

    model: ServedModel
    previous: ServedModel | None = None
    probation_left: int = 0
    sq_new: float = 0.0
    sq_old: float = 0.0
    n: int = 0
    sq_persist: float = 0.0


class _Track:
    """State of one device and target."""

    __slots__ = (  # noqa: RUF023 - lifecycle fields last, so parallel additions merge cleanly
        "alarm_count",
        "alarm_ts",
        "count",
        "device",
        "guard",
        "hist",
        "last_forecast",
        "last_model",
        "last_ts",
        "mean",
        "mean_rmse",
        "model_rmse",
        "persist_rmse",
        "shadow_forecast",
        "since_alarm",
        "since_model",
        "status",
        "target",
        "cadence",
        "floor",
        "model_forecast",
        "regime_n",
        "regime_ts",
        "own_scope",
        "quiet_until",
    )

    def __init__(
        self, device: str, target: str, window: int, guard: DriftGuard, floor: Floor | None, cadence: Cadence
    ) -> None:
        self.device = device
        self.target = target
        self.hist: list[float] = []
        self.last_forecast: float | None = None
        self.shadow_forecast: float | None = None
        self.last_model = PERSISTENCE_VERSION
        self.last_ts = 0.0
        self.count = 0
        self.mean = RunningMean()
        self.model_rmse = RollingRmse(window)
        self.persist_rmse = RollingRmse(window)
        self.mean_rmse = RollingRmse(window)
        self.guard = guard
        self.status = "healthy"
        self.alarm_ts: float | None = None
        self.alarm_count = 0
        self.since_alarm = 0
        # Scored readings and squared errors (model, persistence, mean) since the serving model changed.
        self.since_model = [0, 0.0, 0.0, 0.0]
        # The model's own forecast of the next reading, served or (while demoted) in the shadow.
        self.model_forecast: float | None = None
        self.floor = floor  # None: no floor (the evaluator's baselines)
        self.cadence = cadence
        # Start of the regime an alarm announced, and readings since: for the consolidation retrain.
        self.regime_ts: float | None = None
        self.regime_n = 0
        self.own_scope = scope_of(target, device)  # the device's own model's scope, built once
        # Stream time before which an alarm starts no retrain: the device's last one kept its model.
        self.quiet_until: float | None = None

    @property
    def demoted(self) -> bool:
        return self.floor is not None and self.floor.demoted

    @property
    def interval(self) -> float | None:
        return self.cadence.interval
