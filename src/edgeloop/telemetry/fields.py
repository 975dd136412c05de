"""The rules for the two fields every reading must get right: its device id and its timestamp.

A device id becomes an MQTT topic level and part of file names, and a timestamp orders the stream, so
each has one rule of its own, tested on its own. :mod:`edgeloop.telemetry.parser` applies them to
payloads; :func:`format_ts` also serves every place that writes a time for people (event reasons,
MLflow params).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from edgeloop.errors import MessageError

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
