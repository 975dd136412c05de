"""A device's sampling interval, learned from its readings, and the gaps in them.

Windows, waits and schedules are set in time (``1d``) and turned into readings with this interval, so
they mean the same at one reading every 10 s or every hour. A pause longer than ``gap_intervals``
intervals (and than ``MIN_GAP_S``) is a *gap*: the readings on either side are not consecutive, and
the engine empties the device's lag window instead of forecasting across the hole.

>>> c = Cadence()
>>> [c.observe(t) for t in (0.0, 60.0, 120.0, 181.0, 240.0, 300.0)]
[False, False, False, False, False, False]
>>> c.interval
60.0
>>> c.observe(300.0 + 6 * 3600), c.gaps, c.observe(300.0 + 6 * 3600 + 60)
(True, 1, False)
"""

from __future__ import annotations

import math
import statistics

__all__ = ["Cadence"]

FIRST_ESTIMATE = 5  # intervals before the first estimate
BLOCK = 32  # then one new estimate per this many intervals
# A pause shorter than this is never a gap: at 100 readings/s, five intervals are 50 ms, which a
# publisher's scheduling jitter or a GC pause exceeds; resetting the lag window on each would serve
# persistence for a few readings every time, for a hole that holds nothing to forecast across.
MIN_GAP_S = 10.0


class Cadence:
    """Median sampling interval of one device; see the module docstring."""

    __slots__ = ("_dts", "_gap_after", "gap_intervals", "gaps", "interval", "last_ts")

    def __init__(self, gap_intervals: float | None = 5.0) -> None:
        self.gap_intervals = gap_intervals
        self.interval: float | None = None
        self.last_ts: float | None = None
        self.gaps = 0
        self._dts: list[float] = []
        self._gap_after = math.inf  # a pause longer than this (seconds) is a gap; see _set_interval

    def to_state(self) -> dict[str, object]:
        return {"interval": self.interval, "last_ts": self.last_ts, "gaps": self.gaps, "dts": list(self._dts)}

    def from_state(self, state: dict[str, object]) -> None:
        interval, last_ts, dts = state["interval"], state["last_ts"], state["dts"]
        self._set_interval(None if interval is None else float(interval))  # type: ignore[arg-type]
        self.last_ts = None if last_ts is None else float(last_ts)  # type: ignore[arg-type]
        self.gaps = int(state["gaps"])  # type: ignore[call-overload]
        self._dts = [float(v) for v in dts]  # type: ignore[attr-defined]

    def observe(self, ts: float) -> bool:
        """Record a reading's time; True if it follows a gap (then it is not counted as an interval)."""
        last = self.last_ts
        if last is None or ts <= last:
            if last is None:
                self.last_ts = ts
            return False  # the first reading, or a repeated or out-of-order one: nothing to learn
        self.last_ts = ts
        dt = ts - last
        if dt > self._gap_after:
            self.gaps += 1
            return True
        dts = self._dts
        dts.append(dt)
        # A median is robust to jitter and to the odd late reading.
        if (self.interval is None and len(dts) >= FIRST_ESTIMATE) or len(dts) >= BLOCK:
            self._set_interval(float(statistics.median(dts)))
            if len(dts) >= BLOCK:
                dts.clear()
        return False

    def _set_interval(self, interval: float | None) -> None:
        # The gap limit changes only with the interval: worked out here, not on every reading.
        self.interval = interval
        if self.gap_intervals is None or interval is None:
            self._gap_after = math.inf
        else:
            self._gap_after = max(self.gap_intervals * interval, MIN_GAP_S)
