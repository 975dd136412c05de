"""The rolling RMSE over the last ``window`` forecast errors: one ring buffer of squares, O(1) per error.

The engine keeps three per device and target (model, persistence, mean baselines), every windowed
drift detector keeps one for its window, and the evaluator's reference detectors one for plots, so
they all agree on what "rolling RMSE" means and it is kept exact in one place.

>>> r = RollingRmse(window=3)
>>> for e in (1.0, 1.0, 1.0, 4.0):
...     r.add(e)
>>> round(r.value, 3), r.count, r.full
(2.449, 3, True)
>>> r.add(1e9)  # a glitch...
>>> for e in (1.0, 1.0, 1.0):  # ...that has left the window: exactly 1.0, not rounding noise
...     r.add(e)
>>> r.value
1.0
"""

from __future__ import annotations

import math
from typing import Any

from edgeloop.packing import pack_floats, unpack_floats


class RollingRmse:
    """RMSE over the last ``window`` errors (fewer until the window fills).

    ``count`` (errors in the window) and ``sum_sq`` (their sum of squares) are plain attributes, not
    properties, because the detectors compare them on every update; treat them as read-only.
    """

    __slots__ = ("_buf", "_i", "count", "sum_sq", "window")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = int(window)
        self.reset()

    def reset(self) -> None:
        """Forget every error."""
        self._buf = [0.0] * self.window
        self._i = 0
        self.count = 0
        self.sum_sq = 0.0

    def add(self, error: float) -> None:
        sq = error * error
        buf = self._buf
        i = self._i
        old = buf[i]
        buf[i] = sq
        total = self.sum_sq + (sq - old)
        i += 1
        window = self.window
        if i == window:
            # Add/subtract keeps accumulating rounding error; an exact re-sum once per lap bounds it at
            # O(1) amortised cost.
            self._i = 0
            if self.count < window:
                self.count += 1
            self.sum_sq = math.fsum(buf[: self.count])
            return
        self._i = i
        if self.count < window:
            self.count += 1
        elif total < old * 1e-3:
            # A glitch leaving the window (its square dwarfing everything else) leaves the running sum
            # as mostly rounding error: re-sum exactly now rather than at the end of the lap.
            total = math.fsum(buf)
        self.sum_sq = total

    @property
    def full(self) -> bool:
        return self.count == self.window

    @property
    def value(self) -> float | None:
        """The RMSE, None before any error."""
        if self.count == 0:
            return None
        return math.sqrt(max(self.sum_sq, 0.0) / self.count)

    def squares_oldest_first(self) -> list[float]:
        """The squared errors in the window, oldest first."""
        buf, i = self._buf, self._i
        ordered = buf[i:] + buf[:i] if self.count == self.window else buf
        return ordered[: self.count]

    def to_state(self) -> dict[str, Any]:
        return {"buf": pack_floats(self._buf), "i": self._i, "n": self.count, "sum": self.sum_sq}

    def from_state(self, state: dict[str, Any]) -> None:
        """Load :meth:`to_state` output; ``ValueError`` (and no change) if it does not fit this window."""
        total = float(state["sum"])
        if not math.isfinite(total):
            raise ValueError("rolling RMSE state out of range")
        self.restore(state["buf"], int(state["i"]), int(state["n"]), total)

    def restore(self, packed: str, pos: int, count: int, sum_sq: float) -> None:
        """Continue from a saved buffer (as :func:`~edgeloop.packing.pack_floats` text), position, count
        and sum of squares, whatever snapshot format they came in; ``ValueError`` (and no change) if
        they do not fit this window.
        """
        buf = unpack_floats(packed, self.window)
        if not (0 <= pos < self.window and 0 <= count <= self.window):
            raise ValueError("rolling RMSE state out of range")
        self._buf, self._i, self.count, self.sum_sq = buf, pos, count, sum_sq
