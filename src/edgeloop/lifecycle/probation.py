"""The probation rule: does a newly installed model keep serving, or is the model it replaced restored?

A promoted model serves on probation for ``model.probation_samples`` scored readings while the model
it replaced keeps forecasting the same readings in the shadow and persistence is scored beside both.
At the end, on those same readings:

- worse than the model it replaced by more than ``tolerance``: roll back;
- worse than persistence by more than ``tolerance`` *and* the model it replaced did better: roll back
  (the restored model is then judged by the floor like any other);
- worse than persistence but better than the model it replaced: keep it, since restoring the old one
  would serve something worse still, and let the persistence floor (:mod:`edgeloop.lifecycle.floor`)
  serve persistence while the new model loses.

Pure: the engine keeps the sums of squared errors and applies the verdict
(:func:`edgeloop.engine.decisions.probation`).

>>> judge_probation(new_rmse=1.0, previous_rmse=1.0, persistence_rmse=1.5, samples=200, tolerance=1.1).keep
True
>>> worse = judge_probation(new_rmse=1.2, previous_rmse=1.0, persistence_rmse=1.5, samples=200, tolerance=1.1)
>>> print(worse.reason)
live RMSE 1.2 on probation > 1.1 x 1 of the model it replaced, on the same 200 readings
>>> judge_probation(new_rmse=1.2, previous_rmse=1.3, persistence_rmse=1.0, samples=200, tolerance=1.1).keep
True
>>> judge_probation(new_rmse=1.2, previous_rmse=1.15, persistence_rmse=1.0, samples=200, tolerance=1.1).keep
False
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ProbationVerdict", "judge_probation", "probation_rmses"]


@dataclass(frozen=True)
class ProbationVerdict:
    """Keep the new model or restore the one it replaced, with the scores it was decided from."""

    keep: bool
    reason: str | None  # why it is rolled back (None when kept)
    new_rmse: float
    previous_rmse: float
    persistence_rmse: float
    samples: int

    @property
    def metrics(self) -> dict[str, float | int | None]:
        return {
            "probation_rmse": self.new_rmse,
            "previous_rmse": self.previous_rmse,
            "persistence_rmse": self.persistence_rmse,
            "samples": self.samples,
        }


def probation_rmses(
    sq_new: float, sq_previous: float, sq_persistence: float, samples: int
) -> tuple[float, ...]:
    """RMSEs of the new model, the one it replaced and persistence from their sums of squared errors."""
    n = max(samples, 1)
    return (sq_new / n) ** 0.5, (sq_previous / n) ** 0.5, (sq_persistence / n) ** 0.5


def judge_probation(
    *, new_rmse: float, previous_rmse: float, persistence_rmse: float, samples: int, tolerance: float
) -> ProbationVerdict:
    """The probation rule; see the module docstring."""
    reason = None
    if new_rmse > previous_rmse * tolerance:
        reason = (
            f"live RMSE {new_rmse:.4g} on probation > {tolerance:g} x {previous_rmse:.4g} of the model it "
            f"replaced, on the same {samples} readings"
        )
    elif new_rmse > persistence_rmse * tolerance and previous_rmse < new_rmse:
        reason = (
            f"live RMSE {new_rmse:.4g} on probation > {tolerance:g} x persistence's {persistence_rmse:.4g}, "
            f"and the model it replaced did better ({previous_rmse:.4g}), on the same {samples} readings"
        )
    return ProbationVerdict(reason is None, reason, new_rmse, previous_rmse, persistence_rmse, samples)
