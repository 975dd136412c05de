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
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from edgeloop.errors import MessageError
from edgeloop.telemetry.typed import TypedDecoder

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

_TOPIC_CACHE_SIZE = 16_384  # topics whose device id is remembered; the cache starts over when full
_MAX_DEVICE_BYTES = 128  # UTF-8 bytes: also bounds topic levels and the file names built from a scope

# Characters a device id may not hold. Device ids become MQTT topic levels, and Mosquitto disconnects a
# client that publishes a topic with a control character, a non-character or a surrogate (MQTT 5 sec.
# 1.5.4), so such an id would take the edge off the air; / + # would change the topic's shape.
_BAD_DEVICE_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f/+#\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
    + "]"
)


def check_device(device: Any) -> str:
    """``device`` if it is a usable device id, else :class:`MessageError` ``bad_device``.

    A usable id is a non-empty string of at most 128 UTF-8 bytes without / + #, control characters
    (C0, DEL, C1), surrogates or Unicode non-characters: whatever passes makes a valid MQTT topic level.

    >>> check_device("Küche 1")
    'Küche 1'
    >>> check_device("dev" + chr(0xFFFE))
    Traceback (most recent call last):
    ...
    edgeloop.errors.MessageError: bad_device: device ids may not hold / + #, control characters or ...
    """
    if not isinstance(device, str) or not device:
        raise MessageError("bad_device", repr(device)[:40])
    if _BAD_DEVICE_CHARS.search(device) is not None:
        raise MessageError(
            "bad_device",
            f"device ids may not hold / + #, control characters or non-characters: {device[:40]!r}",
        )
    # A character is at most 4 UTF-8 bytes, so short ids need no encoding to check their size.
    if len(device) > _MAX_DEVICE_BYTES // 4 and len(device.encode()) > _MAX_DEVICE_BYTES:
        raise MessageError("bad_device", f"longer than {_MAX_DEVICE_BYTES} UTF-8 bytes: {device[:40]!r}")
    return device


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
                parsed = parsed.replace(tzinfo=UTC)
            ts = parsed.timestamp()
    else:
        raise ValueError(f"unsupported timestamp type {type(value).__name__}")
    if not math.isfinite(ts) or ts < 0 or ts > 1e11:
        raise ValueError("timestamp out of range")
    return ts


def format_ts(ts: float) -> str:
    """Epoch seconds as ISO-8601 UTC to the second, for what people read (reasons, MLflow params).

    >>> format_ts(1704067200.0)
    '2024-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class TelemetryParser:
    """Turns ``(topic, payload)`` into a :class:`Telemetry` or raises :class:`MessageError`.

    It reads the payload fields named by the mapping config, takes the device from the topic level
    ``device_level`` (a payload naming another device is dropped as ``device_mismatch``), else from the
    payload, else a default; ignores unknown fields; and checks every target value is a finite number
    inside its plausible range.

    With a ``wall_clock``, a timestamp more than ``max_future_s`` ahead of it (or, if set, more than
    ``max_past_s`` behind it) is dropped as ``ts_out_of_window``: one device with a clock in the year
    5107 would otherwise pin the event times of the whole stream. Without one (offline replays of old
    data), no window applies. ``clock`` stamps readings that carry no timestamp.
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
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
        max_future_s: float | None = None,
        max_past_s: float | None = None,
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
        self.default_device = check_device(default_device)
        self.max_payload_bytes = max_payload_bytes
        self.ranges = dict(ranges or {})
        self._clock = clock
        # Topic -> its checked device id: each device publishes on one topic, so split and check once.
        self._topic_devices: dict[str, str] = {}
        self._wall_clock = wall_clock if max_future_s is not None or max_past_s is not None else None
        self.max_future_s = max_future_s
        self.max_past_s = max_past_s
        # The fast path for well-formed readings (edgeloop.telemetry.typed); None when two fields
        # share a payload key, which a struct cannot express.
        keys = [self._device_key, self._ts_key, self._seq_key] + [key for _, key in self._target_keys]
        try:
            self._typed: TypedDecoder | None = TypedDecoder(
                keys,
                self.targets,
                ranges=self.ranges,
                clock=clock,
                wall_clock=self._wall_clock,
                max_future_s=max_future_s,
                max_past_s=max_past_s,
            )
        except ValueError:
            self._typed = None

    def parse(self, topic: str, payload: bytes) -> Telemetry:
        if len(payload) > self.max_payload_bytes:
            raise MessageError("oversize", f"{len(payload)} bytes > {self.max_payload_bytes}")
        device = self._topic_devices.get(topic)
        if device is not None and self._typed is not None:
            fast = self._typed.reading(payload, device)
            if fast is not None:
                return Telemetry(device, *fast)
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
        claimed = data.get(self._device_key)
        device = self._topic_devices.get(topic)
        if device is None and self.device_level is not None:
            levels = topic.split("/")
            if len(levels) > self.device_level:
                device = check_device(levels[self.device_level])
                if len(self._topic_devices) >= _TOPIC_CACHE_SIZE:
                    self._topic_devices.clear()
                self._topic_devices[topic] = device
        if device is not None:
            if claimed is not None and claimed != device:
                check_device(claimed)  # a malformed field is reported as such
                raise MessageError("device_mismatch", f"payload names {claimed[:40]!r} on {topic[:80]!r}")
            return device
        if claimed is None:
            return self.default_device
        return check_device(claimed)

    def _ts(self, data: dict[str, Any]) -> float:
        raw = data.get(self._ts_key)
        if raw is None:
            if self._clock is None:
                raise MessageError("bad_ts", "missing")
            return float(self._clock())
        try:
            ts = parse_ts(raw)
        except (ValueError, TypeError, OverflowError) as exc:
            raise MessageError("bad_ts", str(exc)[:80]) from None
        if self._wall_clock is not None:
            now = self._wall_clock()
            if self.max_future_s is not None and ts > now + self.max_future_s:
                raise MessageError("ts_out_of_window", f"{ts - now:.0f} s ahead of the edge's clock")
            if self.max_past_s is not None and ts < now - self.max_past_s:
                raise MessageError("ts_out_of_window", f"{now - ts:.0f} s behind the edge's clock")
        return ts

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


def parser_from_settings(
    settings: Any, *, wall_clock: Callable[[], float] | None = time.time
) -> TelemetryParser:
    """Build the parser that the edge, the evaluator and the tests share, from :class:`Settings`.

    ``wall_clock=None`` drops the timestamp window, for replays of old data in accelerated time.
    """
    limits = settings.limits
    return TelemetryParser(
        settings.model.targets,
        device_field=settings.mapping.device_field,
        ts_field=settings.mapping.ts_field,
        seq_field=settings.mapping.seq_field,
        rename=settings.mapping.fields,
        device_level=settings.topics.device_level,
        default_device=settings.mapping.default_device,
        max_payload_bytes=limits.max_payload_bytes,
        ranges=limits.ranges,
        wall_clock=wall_clock,
        max_future_s=limits.max_future_s,
        max_past_s=limits.max_past_s,
    )
