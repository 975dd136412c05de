"""The parser's fast path: a well-formed reading decoded straight into a typed struct (msgspec).

:class:`edgeloop.telemetry.parser.TelemetryParser` validates a payload field by field from a dict that
``orjson.loads`` built: about 6 us per reading, most of it Python. msgspec decodes the same bytes into a
struct with the fields the parser reads, typed (``float`` for targets, ``int`` for ``seq``) and skips
every other field in C, about 0.5 us; the few checks left (device, timestamp window, ranges) are plain
comparisons. Measured on the bench's payloads (``python benchmarks/bench_parse.py``): full parser about
6 us, orjson alone 0.8-1.2 us, msgspec into the struct 0.3-0.8 us.

This path only ever *accepts*. Anything it does not accept in full (a type msgspec refuses, a value
out of range, a timestamp outside the window, a device the topic cache has not checked yet, a string
timestamp) goes through the full parser, which accepts or refuses it with the reason and detail it
always gave: the message contract and every drop reason stay those of one implementation.

Where the two JSON decoders disagree on bytes, the payload never reaches msgspec: orjson refuses
invalid UTF-8 and numbers that overflow a double anywhere in the document, msgspec only in the fields
it decodes. So only ASCII payloads with no exponent of three digits or more, no uppercase ``E`` and no run of
200 digits (the only ways to write a number beyond 1.8e308) take this path; tests/unit/test_schema.py checks
the two paths agree on arbitrary payloads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

# A number that might overflow: an exponent of 3+ digits, or 200+ digits in a row. Two searches, each
# starting with a literal (a character class first costs several microseconds per payload); an
# uppercase exponent is rare enough to send to the full parser whatever follows it.
_BIG_EXPONENT = re.compile(rb"e[-+]?\d\d\d")
_LONG_DIGITS = re.compile(rb"\d{200}")


class TypedDecoder:
    """Decodes the parser's fields into a struct; :meth:`reading` gives ``(ts, seq, values)`` or None.

    ``keys``: payload key of device, ts, seq, then of each target, in the parser's target order.
    """

    def __init__(
        self,
        keys: Sequence[str],
        targets: Sequence[str],
        *,
        ranges: Mapping[str, tuple[float, float]],
        clock: Callable[[], float] | None,
        wall_clock: Callable[[], float] | None,
        max_future_s: float | None,
        max_past_s: float | None,
    ) -> None:
        if len(set(keys)) != len(keys):
            raise ValueError("two fields read from the same payload key")
        names = ["device", "ts", "seq"] + [f"t{i}" for i in range(len(targets))]
        types: list[Any] = [str | None, float | str | None, int | None] + [float | None] * len(targets)
        struct = msgspec.defstruct(
            "TypedReading",
            [(name, kind, None) for name, kind in zip(names, types, strict=True)],
            rename=dict(zip(names, keys, strict=True)),
            gc=False,  # holds no containers: no cycle-collector tracking per message
        )
        self._decode = msgspec.json.Decoder(struct).decode
        # (target, struct field, range or None), in the parser's target order
        self._targets = tuple((t, f"t{i}", ranges.get(t)) for i, t in enumerate(targets))
        self._clock = clock
        self._wall_clock = wall_clock
        # The timestamp window as offsets from the wall clock (infinite: no bound that side).
        self._ahead = math.inf if max_future_s is None else max_future_s
        self._behind = math.inf if max_past_s is None else max_past_s

    def reading(self, payload: bytes, device: str) -> tuple[float, int | None, dict[str, float]] | None:
        """The reading of ``device`` (already checked, from the topic), or None: ask the full parser."""
        if (
            not isinstance(payload, bytes)
            or not payload.isascii()
            or b"E" in payload
            or _BIG_EXPONENT.search(payload)
            or (len(payload) >= 200 and _LONG_DIGITS.search(payload))
        ):
            return None
        try:
            data: Any = self._decode(payload)
        except Exception:  # any refusal (also msgspec's RecursionError): the full path says why
            return None
        claimed = data.device
        if claimed is not None and claimed != device:
            return None
        raw_ts = data.ts
        if raw_ts is None:
            if self._clock is None:
                return None
            ts = float(self._clock())
        elif type(raw_ts) is float and math.isfinite(raw_ts) and 0 <= raw_ts <= 1e11:
            ts = raw_ts
        else:
            return None
        if self._wall_clock is not None:
            now = self._wall_clock()
            if ts > now + self._ahead or ts < now - self._behind:
                return None
        seq = data.seq
        if seq is not None and not 0 <= seq < 2**63:
            return None
        values: dict[str, float] = {}
        for target, name, bounds in self._targets:
            value = getattr(data, name)
            if value is None:
                continue
            if not math.isfinite(value) or (bounds is not None and not bounds[0] <= value <= bounds[1]):
                return None
            values[target] = value
        if not values:
            return None
        return ts, seq, values
