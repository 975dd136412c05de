"""Which strategy alarmed inside which labelled window, and when: the per-window view of detection.

:func:`~edgeloop.evaluate.metrics.score_windows` counts detected windows per strategy; this lists
each labelled window (an onset plus the detection horizon, or a labelled anomaly window) with, per
strategy that raises alarms, the first scored alarm inside it. Both use the same rule
(:func:`~edgeloop.evaluate.metrics.first_inside` on the alarms of the scored readings, no windows
on a control), so a window has an alarm here exactly when it counts as detected there.

A window that starts before the device's first scored reading lies (partly) in the readings that
trained the initial model: it is marked ``in_initial_training``, and only its alarms on scored
readings count.

>>> from edgeloop.evaluate.datasets import Track
>>> from edgeloop.evaluate.runs import RunResult, TargetHeader
>>> from edgeloop.evaluate.strategies import parse_strategy
>>> track = Track("m", np.arange(100) * 300.0, np.zeros(100), 20, [(10, 50, "anomaly")])
>>> header = TargetHeader("nab", "t", "", False, "fifths", True, [track], {}, 1.0, "")
>>> run = RunResult("page-hinkley", {"m": np.zeros(100)}, {"m": [12, 42, 45]})
>>> (w,) = window_report(header, {"page-hinkley": run}, [parse_strategy("page-hinkley")])
>>> w["start"], w["end"], w["in_initial_training"]
('1970-01-01T00:50:00+00:00', '1970-01-01T04:05:00+00:00', True)
>>> w["first_alarm"]  # the alarm at reading 12 is in the training part: not scored
{'page-hinkley': {'ts': '1970-01-01T03:30:00+00:00', 'reading': 42, 'delay_readings': 32,
                  'delay_hours': 2.667}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeloop.evaluate.metrics import first_inside, iso_time, scored_alarms, scored_windows
from edgeloop.evaluate.runs import RunResult, TargetHeader
from edgeloop.evaluate.strategies import Strategy


def window_report(
    header: TargetHeader, runs: dict[str, RunResult], strategies: Sequence[Strategy]
) -> list[dict[str, Any]]:
    """Per labelled window (device by device): where it lies, and each alarming strategy's first alarm in it.

    ``start`` and ``end`` are the times of its first and last reading (``first_reading`` and
    ``last_reading``); ``first_alarm`` maps each strategy that raises alarms to its first alarm
    inside (time, reading, delay from the window's first reading in readings and hours) or None.
    Empty where nothing is known (no ground truth) and on a control.
    """
    if not header.has_ground_truth:
        return []
    alarming = [s.name for s in strategies if s.alarms and s.name in runs]
    out = []
    for t in header.tracks:
        alarms = {name: scored_alarms(t, runs[name]) for name in alarming}
        for first, end, kind in scored_windows(header, t):
            hits = {name: first_inside(alarms[name], first, end) for name in alarming}
            out.append(
                {
                    "device": t.device,
                    "kind": kind,
                    "start": iso_time(t.ts[first]),
                    "end": iso_time(t.ts[end - 1]),
                    "first_reading": first,
                    "last_reading": end - 1,
                    "in_initial_training": first < t.start,
                    "first_alarm": {
                        name: None if a is None else _alarm(t.ts, first, a) for name, a in hits.items()
                    },
                }
            )
    return out


def _alarm(ts: np.ndarray, first: int, at: int) -> dict[str, Any]:
    return {
        "ts": iso_time(ts[at]),
        "reading": at,
        "delay_readings": at - first,
        "delay_hours": round(float(ts[at] - ts[first]) / 3600.0, 3),
    }
