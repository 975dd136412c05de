"""The persistence floor at run time: is a device's model, right now, worse than repeating the last value?

Per device, :class:`Floor` watches the model's own one-step errors beside persistence's on the same
readings and says when to *demote* the model (serve persistence; the model keeps forecasting in the
shadow) and when to *restore* it.

- A one-sided CUSUM of the excess squared error, ``e_model^2 - (1 + margin)^2 e_persist^2``, flags a
  model that loses when it exceeds ``CUSUM_SHARE`` x ``window`` readings' worth of persistence's typical
  squared error. A CUSUM never banks past credit (it restarts from zero while the model wins), so a
  model that won a burst an hour ago is still caught within tens of readings once it starts losing
  steadily; an exponential average of the two errors was dominated by that burst and reacted hundreds
  of readings late. The mirror CUSUM of ``e_persist^2 - e_model^2`` flags a recovery.
- Hysteresis: a CUSUM flag alone decides nothing. Demoting also needs the model's mean squared error
  over the last ``window`` readings (exponentially weighted) above persistence's by the margin *and*
  by ``Z`` standard errors of that difference (paired, reading by reading); restoring needs it below
  persistence's by the margin and ``Z`` standard errors, and at least ``window`` readings since the
  demotion. Over 300 readings the two mean squared errors of models alike differ by 10-15 % by chance
  alone, far more than a 2 % margin: without the standard errors such a device was demoted and
  restored over and over on noise. A model about as good as persistence now sits inside the band and
  keeps its state. A new model ends a demotion at once (:meth:`reset`).
- A long view, both squared errors averaged over ``LONG_WINDOWS`` x ``window`` readings: above the
  margin (and ``Z`` standard errors: early on it holds only a window of readings) it demotes too and
  blocks restoring, because on bursty signals (CO2 with occupancy) a model
  that wins the quiet hours and loses the bursts looks fine most of the time yet ends worse than
  persistence, RMSE being dominated by the bursts.

Between the two, a soft floor (``shrink``): the device is served the last reading plus the model's
forecast change times ``weight``, the least-squares weight of the model's forecast changes against
the actual changes over the last ``window`` readings (exponentially weighted), clipped to [0, 1]. A
model that predicts the direction of change but overshoots it is pulled towards the last value by
as much as its own recent errors show; one that adds nothing but noise gets a weight near 0 and
serves close to persistence before the floor has the evidence to demote it (on bursty CO2 the
hard floor alone left the default 0.02 % behind persistence). Clipped at 1: the weight never
amplifies a model's change. It is 1 (the model as validated) for the first ``window`` readings of
each model, and nothing else (demotion, drift, probation) sees it: they judge the model itself.

Nothing is decided before ``window`` readings. O(1) memory and a few float operations per reading.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> floor = Floor(margin=0.02, window=100)
>>> steps = rng.normal(0, 1, 2000)  # a random walk: persistence's error is the step
>>> [i for i, s in enumerate(steps[:400]) if floor.update(s - 2.0, s) == "demote"]  # a model off by 2
[99]
>>> # Then it halves persistence's error: restored once the long view stops holding the bad spell.
>>> [i for i, s in enumerate(steps) if floor.update(0.5 * s, s) == "restore"]
[759]
>>> # A model as good as persistence (its own noise of the same size) is never demoted.
>>> floor = Floor(margin=0.02, window=100)
>>> [i for i, s in enumerate(steps) if floor.update(rng.normal(0, 1), s)]
[]
>>> round(float(floor.weight), 1)  # and its errors are its own: half of each is served
0.5
>>> floor = Floor(margin=0.02, window=100)
>>> noise = rng.normal(0, 1, 2000)  # forecast changes unrelated to the actual ones
>>> _ = [floor.update(s - c, s) for s, c in zip(steps, noise)]
>>> abs(floor.weight) < 0.2
True
>>> floor = Floor(margin=0.02, window=100)
>>> _ = [floor.update(-0.5 * s, s) for s in steps]  # forecasts 1.5x the actual change
>>> round(float(floor.weight), 2)
0.67
"""

from __future__ import annotations

__all__ = ["CUSUM_SHARE", "LONG_WINDOWS", "Floor", "Z"]

# The CUSUM threshold, as a share of `window` readings of persistence's squared error, and the
# length of the long view in windows.
CUSUM_SHARE = 0.2
LONG_WINDOWS = 10
# Standard errors by which the window's difference of mean squared errors must clear the margin.
Z = 3.0


class Floor:
    """The floor of one device and target; see the module docstring."""

    __slots__ = (
        "_bar",
        "cross",
        "cusum",
        "demoted",
        "diff_sq",
        "long_diff_sq",
        "long_model",
        "long_persist",
        "long_view",
        "margin",
        "n",
        "scale",
        "short_model",
        "shrink",
        "since",
        "spread",
        "weight",
        "window",
    )

    def __init__(self, margin: float, window: int, *, shrink: bool = True) -> None:
        if margin < 0 or window < 1:
            raise ValueError(f"margin must be >= 0 and window >= 1, got {margin}, {window}")
        self.margin = margin
        self.window = window
        self._bar = (1.0 + margin) ** 2  # the margin on squared errors
        self.shrink = shrink
        self.demoted = False
        self.long_view = False  # whether the last demotion came from the long view
        self.reset()

    def reset(self) -> None:
        """Another model serves: start undemoted, with a fresh comparison."""
        self.demoted = False
        self.n = 0
        self.cusum = 0.0
        self.scale = 0.0  # persistence's squared error, exponentially weighted over `window`
        self.short_model = 0.0  # the model's, the same way
        self.diff_sq = 0.0  # (e_model^2 - e_persist^2)^2, the same way: the spread of the difference
        self.since = 0  # readings since the last demotion
        self.long_model = 0.0
        self.long_persist = 0.0
        self.long_diff_sq = 0.0
        self.cross = 0.0  # actual change x the model's forecast change, exponentially weighted
        self.spread = 0.0  # the model's forecast change squared, the same way
        self.weight = 1.0  # the share of the model's forecast change served (see the module docstring)

    def update(self, error: float, persistence_error: float) -> str | None:
        """One reading's errors (model, persistence): ``"demote"``, ``"restore"`` or None."""
        # Runs for every reading of every device: state is read into locals once and written back once,
        # and a standard error is only computed when the difference it bounds is positive (``x > noise``
        # with ``noise >= 0`` is false for ``x <= 0``), the same arithmetic in the same order as ever.
        window = self.window
        sq, p_sq = error * error, persistence_error * persistence_error
        bar = self._bar
        self.scale = scale = self.scale + (p_sq - self.scale) / window
        self.short_model = short_model = self.short_model + (sq - self.short_model) / window
        diff = sq - p_sq
        diff2 = diff * diff
        self.diff_sq += (diff2 - self.diff_sq) / window
        self.since = since = self.since + 1
        long = LONG_WINDOWS * window
        self.long_model = long_model = self.long_model + (sq - self.long_model) / long
        self.long_persist = long_persist = self.long_persist + (p_sq - self.long_persist) / long
        self.long_diff_sq = long_diff_sq = self.long_diff_sq + (diff2 - self.long_diff_sq) / long
        self.n = n = self.n + 1
        if self.shrink:
            # The actual change is persistence's error; the model's forecast change is that minus its own.
            change = persistence_error - error
            self.cross = cross = self.cross + (persistence_error * change - self.cross) / window
            self.spread = spread = self.spread + (change * change - self.spread) / window
            if n >= window and spread > 0.0:
                self.weight = min(1.0, max(0.0, cross / spread))
        demoted = self.demoted
        cusum = self.cusum + p_sq - sq if demoted else self.cusum + sq - bar * p_sq
        self.cusum = cusum = max(0.0, cusum)
        if n < window:
            return None
        limit = CUSUM_SHARE * window * scale
        long_excess = long_model - bar * long_persist
        if not demoted:
            if long_excess > 0.0:
                long_bad = long_excess > _noise(long_model - long_persist, long_diff_sq, min(n, 2 * long - 1))
            else:
                long_bad = False
            if long_bad or (cusum > limit and self._beyond_noise(short_model - bar * scale, n)):
                self.demoted, self.cusum, self.long_view, self.since = True, 0.0, long_bad, 0
                return "demote"
            return None
        if (
            cusum > limit
            and since >= window
            and not (
                long_excess > 0.0
                and long_excess > _noise(long_model - long_persist, long_diff_sq, min(n, 2 * long - 1))
            )
            and self._beyond_noise(scale - bar * short_model, n)
        ):
            self.demoted, self.cusum = False, 0.0
            return "restore"
        return None

    def _beyond_noise(self, excess: float, n: int) -> bool:
        """Whether ``excess`` (of one mean squared error over the other, over the window) clears ``Z``
        standard errors of their difference."""
        return excess > 0.0 and excess > _noise(
            self.short_model - self.scale, self.diff_sq, min(n, 2 * self.window - 1)
        )

    def to_state(self) -> dict[str, float | int | bool]:
        return {
            "demoted": self.demoted,
            "long_view": self.long_view,
            "n": self.n,
            "cusum": self.cusum,
            "scale": self.scale,
            "short_model": self.short_model,
            "diff_sq": self.diff_sq,
            "long_diff_sq": self.long_diff_sq,
            "since": self.since,
            "long_model": self.long_model,
            "long_persist": self.long_persist,
            "cross": self.cross,
            "spread": self.spread,
            "weight": self.weight,
        }

    def from_state(self, state: dict[str, float | int | bool]) -> None:
        self.demoted, self.long_view = bool(state["demoted"]), bool(state["long_view"])
        self.n = int(state["n"])
        self.cusum, self.scale = float(state["cusum"]), float(state["scale"])
        self.long_model, self.long_persist = float(state["long_model"]), float(state["long_persist"])
        # Snapshots from before the hysteresis lack these: take the model as level with persistence
        # over the window, and the demotion (if any) as a window old.
        self.short_model = float(state.get("short_model", self.scale))
        self.diff_sq = float(state.get("diff_sq", 2.0 * self.scale * self.scale))
        self.long_diff_sq = float(state.get("long_diff_sq", 2.0 * self.long_persist * self.long_persist))
        self.since = int(state.get("since", self.window))
        # Snapshots from before the soft floor: the model served whole until a window of new readings.
        self.cross, self.spread = float(state.get("cross", 0.0)), float(state.get("spread", 0.0))
        weight = float(state.get("weight", 1.0))
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"floor weight {weight} outside [0, 1]")
        self.weight = weight if self.shrink else 1.0

    def long_rmse(self) -> tuple[float, float]:
        """The long view's RMSE of the model and of persistence (for events)."""
        debias = 1.0 - (1.0 - 1.0 / (LONG_WINDOWS * self.window)) ** self.n if self.n else 1.0
        return (self.long_model / debias) ** 0.5, (self.long_persist / debias) ** 0.5


def _noise(mean_diff: float, diff_sq: float, readings: int) -> float:
    """``Z`` standard errors of a mean difference of squared errors from its exponential moments.

    An exponential window of ``w`` readings holds about ``2w - 1`` readings' worth of information.
    """
    return Z * (max(diff_sq - mean_diff * mean_diff, 0.0) / readings) ** 0.5
