"""Error bookkeeping for one device and target: rolling RMSE of the model and of the naive baselines.

>>> r = RollingRmse(window=3)
>>> for e in (1.0, 1.0, 1.0, 4.0):
...     r.add(e)
>>> round(r.value, 3)
2.449
"""

from __future__ import annotations

import math
from typing import Any

from edgeloop.packing import pack_floats, unpack_floats


class RollingRmse:
    """RMSE over the last ``window`` errors, O(1) per update."""

    __slots__ = ("_buf", "_i", "_n", "_sum", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self._buf = [0.0] * window
        self._i = 0
        self._n = 0
        self._sum = 0.0

    def add(self, error: float) -> None:
        sq = error * error
        self._sum += sq - self._buf[self._i]
        self._buf[self._i] = sq
        self._i = (self._i + 1) % self.window
        if self._n < self.window:
            self._n += 1
        # Re-sum now and then so float round-off from the running sum never accumulates.
        if self._i == 0:
            self._sum = math.fsum(self._buf[: self._n])

    @property
    def count(self) -> int:
        return self._n

    @property
    def value(self) -> float | None:
        if self._n == 0:
            return None
        return math.sqrt(max(self._sum, 0.0) / self._n)

    def reset(self) -> None:
        self._buf = [0.0] * self.window
        self._i = self._n = 0
        self._sum = 0.0

    def to_state(self) -> dict[str, Any]:
        return {"buf": pack_floats(self._buf), "i": self._i, "n": self._n, "sum": self._sum}

    def from_state(self, state: dict[str, Any]) -> None:
        """Load :meth:`to_state` output; ``ValueError`` (and no change) if it does not fit this window."""
        buf = unpack_floats(state["buf"], self.window)
        i, n, total = int(state["i"]), int(state["n"]), float(state["sum"])
        if not (0 <= i < self.window and 0 <= n <= self.window and math.isfinite(total)):
            raise ValueError("rolling RMSE state out of range")
        self._buf, self._i, self._n, self._sum = buf, i, n, total


class RunningMean:
    """Expanding mean of a device's readings: the 'mean' naive forecast."""

    __slots__ = ("n", "value")

    def __init__(self) -> None:
        self.n = 0
        self.value = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.value += (x - self.value) / self.n

    def to_state(self) -> list[float]:
        return [self.n, self.value]

    def from_state(self, state: list[float]) -> None:
        n, value = int(state[0]), float(state[1])
        if n < 0 or not math.isfinite(value):
            raise ValueError("running mean state out of range")
        self.n, self.value = n, value
