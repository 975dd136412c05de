"""What one :meth:`edgeloop.engine.engine.Engine.process` call hands back to its driver."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeloop.engine.rows import SampleRow
from edgeloop.telemetry.schema import Event, Prediction, Telemetry


@dataclass
class RetrainRequest:
    scope: str
    trigger: str  # initial | drift | consolidate | refresh | manual | periodic
    reason: str
    since_ts: float | None = None
    requested_ts: float = 0.0


@dataclass
class Rollback:
    scope: str
    restored: str | None  # label of the model serving again (None: the scope falls back)
    rejected: str


@dataclass
class EngineOutput:
    predictions: list[Prediction] = field(default_factory=list)
    samples: list[SampleRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    retrains: list[RetrainRequest] = field(default_factory=list)
    rollbacks: list[Rollback] = field(default_factory=list)
    # Readings the engine refused (reason ``device_full``); they get no prediction and no row.
    dropped: list[tuple[Telemetry, str]] = field(default_factory=list)
    evicted: int = 0  # devices evicted to make room for new ones
