"""The message contract: telemetry in, predictions and events out.

Telemetry (``edgeloop/<site>/<device>/telemetry``)::

    {"device": "dev-001", "ts": 1700000000.0, "seq": 42, "temp_c": 21.3, "humidity": 45.1, "voc_ppb": 180.2}

``ts`` is epoch seconds or ISO-8601; unknown fields are ignored; ``device`` may come from the topic.
When the topic carries a device id, it wins: a payload ``device`` naming another device is dropped
(``device_mismatch``), so a device the broker lets publish on its own topic only cannot feed another
device's history. A field mapping in the config renames a foreign publisher's fields onto these names.

Prediction (``edgeloop/<site>/<device>/prediction``), one per telemetry message answered::

    {"device": "dev-001", "seq": 42, "ts": 1700000000.0,
     "predictions": {"voc_ppb": {"value": 181.0, "model": "voc_ppb:v3"}}}

``value`` forecasts the target's *next* reading; ``model`` is the version that made it
(``persistence`` before any model exists).

Event (``edgeloop/<site>/events``)::

    {"kind": "drift_detected", "ts": ..., "site": "site-1", "scope": "voc_ppb@dev-001",
     "reason": "...", "metrics": {...}, "version": "...", "previous_version": "..."}

Events about a retrain request also carry its ``"request_id"`` (absent otherwise).

The parser that applies this contract is :mod:`edgeloop.telemetry.parser`; the device-id and
timestamp rules it shares with the rest of edgeloop are :mod:`edgeloop.telemetry.fields`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

EVENT_KINDS = (
    "drift_detected",
    "retrain_requested",
    "retrain_started",
    "retrain_finished",
    "retrain_failed",
    "model_promoted",
    "model_rejected",
    "model_rolled_back",
    "model_load_failed",
    "model_demoted",
    "model_restored",
)

PERSISTENCE_VERSION = "persistence"

# Rejection reasons, also the label values of the dropped-messages counter.
REJECT_REASONS = (
    "oversize",
    "not_json",
    "not_object",
    "bad_device",
    "device_mismatch",
    "bad_ts",
    "ts_out_of_window",
    "bad_seq",
    "bad_value",
    "not_finite",
    "out_of_range",
    "missing_target",
)


@dataclass(slots=True)
class Telemetry:
    """One validated reading of one device."""

    device: str
    ts: float
    seq: int | None
    values: dict[str, float]


@dataclass(slots=True)
class Forecast:
    """A forecast of a target's next value and the model version that made it."""

    value: float
    model: str


@dataclass(slots=True)
class Prediction:
    """The answer to one telemetry message."""

    device: str
    seq: int | None
    ts: float
    forecasts: dict[str, Forecast]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "device": self.device,
                "seq": self.seq,
                "ts": self.ts,
                "predictions": {t: {"value": f.value, "model": f.model} for t, f in self.forecasts.items()},
            }
        )


@dataclass(slots=True)
class Event:
    """A drift or model-lifecycle event."""

    kind: str
    scope: str
    ts: float
    reason: str = ""
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    version: str | None = None
    previous_version: str | None = None
    request_id: str | None = None  # the retrain request this event answers or reports on

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}")

    def to_dict(self, site: str) -> dict[str, Any]:
        data = {
            "kind": self.kind,
            "ts": self.ts,
            "site": site,
            "scope": self.scope,
            "reason": self.reason,
            "metrics": self.metrics,
            "version": self.version,
            "previous_version": self.previous_version,
        }
        if self.request_id is not None:
            data["request_id"] = self.request_id
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(
            kind=data["kind"],
            scope=data["scope"],
            ts=float(data["ts"]),
            reason=data.get("reason", ""),
            metrics=dict(data.get("metrics") or {}),
            version=data.get("version"),
            previous_version=data.get("previous_version"),
            request_id=data["request_id"] if isinstance(data.get("request_id"), str) else None,
        )
