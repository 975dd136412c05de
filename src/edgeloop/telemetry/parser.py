"""The telemetry parser: ``(topic, payload)`` in, a validated :class:`Telemetry` reading out.

It applies the message contract of :mod:`edgeloop.telemetry.schema` and the device-id and timestamp
rules of :mod:`edgeloop.telemetry.fields` to each payload, with the field mapping and limits of the
config; a payload it cannot accept raises :class:`~edgeloop.errors.MessageError` naming one of
:data:`~edgeloop.telemetry.schema.REJECT_REASONS`.

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
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from edgeloop.errors import MessageError
from edgeloop.telemetry.fields import check_device, parse_ts
from edgeloop.telemetry.schema import Telemetry
from edgeloop.telemetry.typed import TypedDecoder

_TOPIC_CACHE_SIZE = 16_384  # topics whose device id is remembered; the cache starts over when full


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
