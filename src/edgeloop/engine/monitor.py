"""Error bookkeeping for one device and target: rolling RMSE of the model and of the naive baselines.

>>> r = RollingRmse(window=3)
>>> for e in (1.0, 1.0, 1.0, 4.0):
...     r.add(e)
>>> round(r.value, 3)
2.449
"""

from __future__ import annotations

import math


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


class RunningMean:
    """Expanding mean of a device's readings: the 'mean' naive forecast."""

    __slots__ = ("n", "value")

    def __init__(self) -> None:
        self.n = 0
        self.value = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.value += (x - self.value) / self.n
