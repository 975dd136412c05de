"""The message contract: telemetry in, predictions and events out.

Telemetry (``edgeloop/<site>/<device>/telemetry``)::

    {"device": "dev-001", "ts": 1700000000.0, "seq": 42, "temp_c": 21.3, "humidity": 45.1, "voc_ppb": 180.2}

``ts`` is epoch seconds or ISO-8601; unknown fields are ignored; ``device`` may come from the topic.
A field mapping in the config renames a foreign publisher's fields onto these names.

Prediction (``edgeloop/<site>/<device>/prediction``), one per telemetry message answered::

    {"device": "dev-001", "seq": 42, "ts": 1700000000.0,
     "predictions": {"voc_ppb": {"value": 181.0, "model": "voc_ppb:v3"}}}

``value`` forecasts the target's *next* reading; ``model`` is the version that made it
(``persistence`` before any model exists).

Event (``edgeloop/<site>/events``)::

    {"kind": "drift_detected", "ts": ..., "site": "site-1", "scope": "voc_ppb@dev-001",
     "reason": "...", "metrics": {...}, "version": "...", "previous_version": "..."}

>>> p = TelemetryParser(targets=["voc_ppb"])
>>> r = p.parse("edgeloop/s/dev-9/telemetry", b'{"ts": 10, "seq": 1, "voc_ppb": 150.5}')
>>> (r.device, r.ts, r.seq, r.values)
('dev-9', 10.0, 1, {'voc_ppb': 150.5})
>>> p.parse("t", b"not json")
Traceback (most recent call last):
...
edgeloop.errors.MessageError: not_json: ...
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from edgeloop.errors import MessageError

EVENT_KINDS = (
    "drift_detected",
    "retrain_requested",
    "retrain_started",
    "retrain_finished",
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
    "bad_ts",
    "bad_seq",
    "bad_value",
    "not_finite",
    "out_of_range",
    "missing_target",
)

_MAX_DEVICE_LEN = 128


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

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}")

    def to_dict(self, site: str) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ts": self.ts,
            "site": site,
            "scope": self.scope,
            "reason": self.reason,
            "metrics": self.metrics,
            "version": self.version,
            "previous_version": self.previous_version,
        }

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
        )


def parse_ts(value: Any) -> float:
    """Epoch seconds (int/float/numeric string) or ISO-8601 to epoch seconds.

    >>> parse_ts("2024-01-01T00:00:00Z")
    1704067200.0
    >>> parse_ts(5)
    5.0
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        try:
            ts = float(value)
        except ValueError:
            text = value.strip()
            if text.endswith("Z"):
                text = text[:-1] + "+00:00"
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                # Naive ISO timestamps are taken as UTC, never as the edge's local time.
                from datetime import UTC

                parsed = parsed.replace(tzinfo=UTC)
            ts = parsed.timestamp()
    else:
        raise ValueError(f"unsupported timestamp type {type(value).__name__}")
    if not math.isfinite(ts) or ts < 0 or ts > 1e11:
        raise ValueError("timestamp out of range")
    return ts


class TelemetryParser:
    """Turns ``(topic, payload)`` into a :class:`Telemetry` or raises :class:`MessageError`.

    It reads the payload fields named by the mapping config, takes the device from the payload, else
    from a topic level, else a default; ignores unknown fields; and checks every target value is a
    finite number inside its plausible range.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        device_field: str = "device",
        ts_field: str = "ts",
        seq_field: str = "seq",
        rename: Mapping[str, str] | None = None,
        device_level: int | None = 2,
        default_device: str = "default",
        max_payload_bytes: int = 8192,
        ranges: Mapping[str, tuple[float, float]] | None = None,
        clock: Any = None,
    ) -> None:
        self.targets = tuple(targets)
        self.rename = dict(rename or {})
        # Lookup names in the payload for each canonical field.
        inverse = {canonical: src for src, canonical in self.rename.items()}
        self._device_key = inverse.get("device", device_field)
        self._ts_key = inverse.get("ts", ts_field)
        self._seq_key = inverse.get("seq", seq_field)
        self._target_keys = tuple((t, inverse.get(t, t)) for t in self.targets)
        self.device_level = device_level
        self.default_device = default_device
        self.max_payload_bytes = max_payload_bytes
        self.ranges = dict(ranges or {})
        self._clock = clock

    def parse(self, topic: str, payload: bytes) -> Telemetry:
        if len(payload) > self.max_payload_bytes:
            raise MessageError("oversize", f"{len(payload)} bytes > {self.max_payload_bytes}")
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise MessageError("not_json", str(exc)[:80]) from None
        if not isinstance(data, dict):
            raise MessageError("not_object", type(data).__name__)
        return Telemetry(
            device=self._device(topic, data),
            ts=self._ts(data),
            seq=self._seq(data),
            values=self._values(data),
        )

    def _device(self, topic: str, data: dict[str, Any]) -> str:
        device = data.get(self._device_key)
        if device is None and self.device_level is not None:
            levels = topic.split("/")
            if len(levels) > self.device_level:
                device = levels[self.device_level]
        if device is None:
            return self.default_device
        if not isinstance(device, str) or not device or len(device) > _MAX_DEVICE_LEN:
            raise MessageError("bad_device", repr(device)[:40])
        if any(c in device for c in "/+#\x00"):
            raise MessageError("bad_device", "device ids may not contain / + # or NUL")
        return device

    def _ts(self, data: dict[str, Any]) -> float:
        raw = data.get(self._ts_key)
        if raw is None:
            if self._clock is None:
                raise MessageError("bad_ts", "missing")
            return float(self._clock())
        try:
            return parse_ts(raw)
        except (ValueError, TypeError, OverflowError) as exc:
            raise MessageError("bad_ts", str(exc)[:80]) from None

    def _seq(self, data: dict[str, Any]) -> int | None:
        raw = data.get(self._seq_key)
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int) or not (0 <= raw < 2**63):
            raise MessageError("bad_seq", repr(raw)[:40])
        return raw

    def _values(self, data: dict[str, Any]) -> dict[str, float]:
        values: dict[str, float] = {}
        for target, key in self._target_keys:
            raw = data.get(key)
            if raw is None:
                continue
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise MessageError("bad_value", f"{key}={raw!r}"[:60])
            value = float(raw)
            if not math.isfinite(value):
                raise MessageError("not_finite", key)
            bounds = self.ranges.get(target)
            if bounds is not None and not (bounds[0] <= value <= bounds[1]):
                raise MessageError("out_of_range", f"{key}={value} outside {bounds}")
            values[target] = value
        if not values:
            raise MessageError("missing_target", f"none of {list(self.targets)}")
        return values


def parser_from_settings(settings: Any) -> TelemetryParser:
    """Build the parser that the edge, the evaluator and the tests share, from :class:`Settings`."""
    return TelemetryParser(
        settings.model.targets,
        device_field=settings.mapping.device_field,
        ts_field=settings.mapping.ts_field,
        seq_field=settings.mapping.seq_field,
        rename=settings.mapping.fields,
        device_level=settings.topics.device_level,
        default_device=settings.mapping.default_device,
        max_payload_bytes=settings.limits.max_payload_bytes,
        ranges=settings.limits.ranges,
    )
