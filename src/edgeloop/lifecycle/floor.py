"""The persistence floor at run time: is a device's model, right now, worse than repeating the last value?

Per device, :class:`Floor` watches the model's own one-step errors beside persistence's on the same
readings and says when to *demote* the model (serve persistence; the model keeps forecasting in the
shadow) and when to *restore* it.

- A one-sided CUSUM of the excess squared error, ``e_model^2 - (1 + margin)^2 e_persist^2``, demotes
  when it exceeds ``CUSUM_SHARE`` x ``window`` readings' worth of persistence's typical squared error
  (an exponentially weighted mean over ``window``). A CUSUM never banks past credit (it restarts from
  zero while the model wins), so a model that won a burst an hour ago is still demoted within tens of
  readings once it starts losing steadily; an exponential average of the two errors was dominated by
  that burst and reacted hundreds of readings late. The mirror CUSUM of ``e_persist^2 - e_model^2``
  restores it.
- A long view, both squared errors averaged over ``LONG_WINDOWS`` x ``window`` readings: a model
  behind persistence there (by any amount: the long view is slow enough not to flap) is demoted too
  and not restored, because on bursty signals (CO2 with occupancy) a model
  that wins the quiet hours and loses the bursts looks fine most of the time yet ends worse than
  persistence, RMSE being dominated by the bursts.

Nothing is decided before ``window`` readings. O(1) memory and a few float operations per reading.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> floor = Floor(margin=0.02, window=100)
>>> steps = rng.normal(0, 1, 2000)  # a random walk: persistence's error is the step
>>> [i for i, s in enumerate(steps[:400]) if floor.update(s - 2.0, s) == "demote"]  # a model off by 2
[99]
>>> # Then it halves persistence's error: restored once the long view has forgotten the bad spell.
>>> [i for i, s in enumerate(steps) if floor.update(0.5 * s, s) == "restore"]
[1074]
"""

from __future__ import annotations

__all__ = ["CUSUM_SHARE", "LONG_WINDOWS", "Floor"]

# The CUSUM threshold, as a share of `window` readings of persistence's squared error, and the
# length of the long view in windows.
CUSUM_SHARE = 0.2
LONG_WINDOWS = 10


class Floor:
    """The floor of one device and target; see the module docstring."""

    __slots__ = (
        "cusum",
        "demoted",
        "long_model",
        "long_persist",
        "long_view",
        "margin",
        "n",
        "scale",
        "window",
    )

    def __init__(self, margin: float, window: int) -> None:
        if margin < 0 or window < 1:
            raise ValueError(f"margin must be >= 0 and window >= 1, got {margin}, {window}")
        self.margin = margin
        self.window = window
        self.demoted = False
        self.long_view = False  # whether the last demotion came from the long view
        self.reset()

    def reset(self) -> None:
        """Another model serves: start undemoted, with a fresh comparison."""
        self.demoted = False
        self.n = 0
        self.cusum = 0.0
        self.scale = 0.0
        self.long_model = 0.0
        self.long_persist = 0.0

    def update(self, error: float, persistence_error: float) -> str | None:
        """One reading's errors (model, persistence): ``"demote"``, ``"restore"`` or None."""
        sq, p_sq = error * error, persistence_error * persistence_error
        bar = (1.0 + self.margin) ** 2  # on squared errors
        self.scale += (p_sq - self.scale) / self.window
        long = LONG_WINDOWS * self.window
        self.long_model += (sq - self.long_model) / long
        self.long_persist += (p_sq - self.long_persist) / long
        self.n += 1
        if self.demoted:
            self.cusum = max(0.0, self.cusum + p_sq - sq)
        else:
            self.cusum = max(0.0, self.cusum + sq - bar * p_sq)
        if self.n < self.window:
            return None
        limit = CUSUM_SHARE * self.window * self.scale
        # No margin in the long view: over LONG_WINDOWS windows a model that is behind persistence at
        # all is behind for real, and serving it there is what makes a run end above persistence.
        long_bad = self.long_model > self.long_persist
        if not self.demoted and (self.cusum > limit or long_bad):
            self.demoted, self.cusum, self.long_view = True, 0.0, long_bad
            return "demote"
        if self.demoted and self.cusum > limit and not long_bad:
            self.demoted, self.cusum = False, 0.0
            return "restore"
        return None

    def to_state(self) -> dict[str, float | int | bool]:
        return {
            "demoted": self.demoted,
            "long_view": self.long_view,
            "n": self.n,
            "cusum": self.cusum,
            "scale": self.scale,
            "long_model": self.long_model,
            "long_persist": self.long_persist,
        }

    def from_state(self, state: dict[str, float | int | bool]) -> None:
        self.demoted, self.long_view = bool(state["demoted"]), bool(state["long_view"])
        self.n = int(state["n"])
        self.cusum, self.scale = float(state["cusum"]), float(state["scale"])
        self.long_model, self.long_persist = float(state["long_model"]), float(state["long_persist"])

    def long_rmse(self) -> tuple[float, float]:
        """The long view's RMSE of the model and of persistence (for events)."""
        debias = 1.0 - (1.0 - 1.0 / (LONG_WINDOWS * self.window)) ** self.n if self.n else 1.0
        return (self.long_model / debias) ** 0.5, (self.long_persist / debias) ** 0.5
