"""What is known about a user's CSV: drift onsets, labelled windows, or "nothing drifts" (a control).

A small JSON file next to the CSV (``<csv>.labels.json``, or ``--labels FILE``)::

    {
      "control": false,
      "onsets":  [{"device": "boiler-1", "at_ts": "2024-03-01T12:00:00Z", "kind": "level_shift"}],
      "windows": [{"device": "boiler-2", "start_ts": "2024-03-04", "end_ts": "2024-03-04T18:00",
                   "target": "temp_c"}]
    }

- ``control: true``: no drift is known anywhere in the file; every alarm counts as a false alarm
  (then ``onsets`` and ``windows`` must be empty);
- an onset is a change from ``at_ts`` on: a first alarm within the detection horizon detects it;
- a window is a labelled stretch (a failure, an anomaly): a first alarm inside it detects it;
- ``device`` omitted: every device; ``target`` omitted: every target; ``kind`` is free text.

Times are ISO-8601 (without a zone they are UTC, as the CSV's own) or epoch seconds. A bare JSON
list is read as onsets alone: what ``edgeloop simulate --csv`` writes as ``<csv>.onsets.json``.
Every error names the file and the field: ``labels.json: onsets[1].at_ts: ...``.

>>> parse_time("2024-03-01T12:00:00Z", "at_ts"), parse_time(1709294400, "at_ts")
(1709294400.0, 1709294400.0)
>>> parse_time("2024-03-01 13:00+01:00", "at_ts")
1709294400.0
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_KEYS = {"control", "onsets", "windows", "description"}


@dataclass(frozen=True)
class Label:
    """Something known about a stretch of one device's stream.

    ``kind`` is a drift kind (an onset: ``end_ts`` None, scored over the detection horizon) or
    ``"anomaly"`` (a labelled window from ``start_ts`` to ``end_ts``). ``target`` None: every target.
    """

    device: str
    kind: str
    start_ts: float
    end_ts: float | None = None
    target: str | None = None


@dataclass
class GroundTruth:
    """The labels of one CSV and whether it is a control."""

    labels: list[Label] = field(default_factory=list)
    control: bool = False
    description: str = ""


def parse_time(value: Any, where: str) -> float:
    """Epoch seconds from epoch seconds or an ISO-8601 string (naive: UTC); ``where`` names the field."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{where}: expected an ISO-8601 time or epoch seconds, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not a time")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            # Strict ISO-8601: a lenient parser would read "5 March at 4" as some day in March.
            stamp = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{where}: {value!r} is not an ISO-8601 time (e.g. 2024-03-01T12:00:00Z)"
            ) from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    raise ValueError(f"{where}: expected an ISO-8601 time or epoch seconds, got {type(value).__name__}")


def load_labels(path: Path, devices: list[str], *, control: bool = False) -> GroundTruth:
    """Read a labels file (see the module docstring); ``devices`` expand a label without a device."""
    name = str(path)
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{name}: labels file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if isinstance(data, list):
        data = {"onsets": data}
    if not isinstance(data, dict):
        raise ValueError(f"{name}: expected an object with control/onsets/windows, or a list of onsets")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"{name}: unknown field {unknown[0]!r}; expected {', '.join(sorted(_KEYS))}")
    is_control = data.get("control", False)
    if not isinstance(is_control, bool):
        raise ValueError(f"{name}: control: expected true or false, got {is_control!r}")
    labels: list[Label] = []
    for section, time_keys in (("onsets", ("at_ts",)), ("windows", ("start_ts", "end_ts"))):
        items = data.get(section, [])
        if not isinstance(items, list):
            raise ValueError(f"{name}: {section}: expected a list")
        for i, item in enumerate(items):
            where = f"{name}: {section}[{i}]"
            labels.extend(_label(item, where, section, time_keys, devices))
    if (is_control or control) and labels:
        raise ValueError(f"{name}: a control has no onsets or windows (control: nothing is known to drift)")
    description = data.get("description", "")
    return GroundTruth(labels, is_control or control, str(description))


def _label(
    item: Any, where: str, section: str, time_keys: tuple[str, ...], devices: list[str]
) -> list[Label]:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
    missing = [k for k in time_keys if k not in item]
    if missing:
        raise ValueError(f"{where}: missing field {missing[0]!r}")
    times = [parse_time(item[k], f"{where}.{k}") for k in time_keys]
    if len(times) == 2 and times[1] < times[0]:
        raise ValueError(f"{where}: end_ts is before start_ts")
    device = item.get("device")
    if device is not None and str(device) not in devices:
        raise ValueError(f"{where}.device: no device {device!r} in the CSV; devices are {', '.join(devices)}")
    target = item.get("target")
    kind = str(item.get("kind", "onset" if section == "onsets" else "anomaly"))
    end = times[1] if len(times) == 2 else None
    if section == "windows":
        kind = "anomaly"  # scored as a window whatever it is called
    chosen = [str(device)] if device is not None else devices
    return [Label(d, kind, times[0], end, None if target is None else str(target)) for d in chosen]
