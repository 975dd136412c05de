"""Error bookkeeping for one device and target: rolling RMSE of the model and of the naive baselines.

:class:`RollingRmse` lives in :mod:`edgeloop.drift.rolling` (the drift detectors keep the same one for
their window); it is re-exported here for the engine. :class:`RunningMean` is the 'mean' baseline.

>>> m = RunningMean()
>>> for x in (1.0, 2.0, 6.0):
...     m.add(x)
>>> m.n, m.value
(3, 3.0)
"""

from __future__ import annotations

import math

from edgeloop.drift.rolling import RollingRmse

__all__ = ["RollingRmse", "RunningMean"]


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
