"""The promotion rule: does a challenger replace the champion? One rule for every caller.

A challenger is promoted only if, on the *same* newest holdout, its RMSE beats both the champion's
and persistence's by ``margin``. Beating the champion alone is not enough: a champion may itself have
fallen below the floor, and a model that does not beat repeating the last reading is never worth
serving (the edge already does that for free). Without a champion, persistence is the champion.

The margin over the *champion* may be smaller when the holdout says the difference is real
(:func:`champion_margin`): ``Z`` standard errors of the paired difference of squared errors, if that is
less than ``margin``. On a holdout of a thousand readings two models alike differ by well under 2 %,
and a challenger fitted on newer readings that is steadily 1 % better than the champion is
worth serving, yet a fixed 2 % kept it out (and, since the served challenger is refitted on its
holdout too, the holdout understates it). The margin over *persistence* never shrinks.

The trainer (:mod:`edgeloop.retrain.job`), ``edgeloop models promote`` (:mod:`edgeloop.retrain.admin`)
and the evaluator all call :func:`judge`, so what is measured is what runs.

>>> judge(9.0, champion_rmse=10.0, persistence_rmse=12.0, margin=0.02).promote
True
>>> j = judge(9.9, champion_rmse=10.0, persistence_rmse=12.0, margin=0.02)
>>> j.promote, j.reason
(False, 'challenger holdout RMSE 9.9 does not beat champion 10 by 2%')
>>> judge(9.0, champion_rmse=20.0, persistence_rmse=9.1, margin=0.02).reason
'challenger holdout RMSE 9 beats champion 20 but not persistence 9.1 by 2%'
>>> judge(9.9, champion_rmse=10.0, persistence_rmse=12.0, margin=0.02, champion_margin=0.005).reason
'challenger holdout RMSE 9.9 beats champion 10 by 0.5% and persistence 12 by 2%'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeloop.models.forecasters import Forecaster, Persistence, holdout_forecast, rmse

__all__ = ["MIN_EVIDENCE", "Judgement", "Z", "champion_margin", "judge", "judge_on_holdout"]

# Standard errors by which a challenger's holdout must beat the champion's to count as evidence,
# and the fewest holdout readings on which that is trusted (below it, only the fixed margin counts).
Z = 1.0
MIN_EVIDENCE = 500


@dataclass(frozen=True)
class Judgement:
    """The decision and the three scores it was made from (all on the same holdout)."""

    promote: bool
    reason: str
    candidate_rmse: float
    champion_rmse: float
    persistence_rmse: float
    margin: float


def judge(
    candidate_rmse: float,
    *,
    champion_rmse: float | None,
    persistence_rmse: float,
    margin: float,
    candidate: str = "challenger",
    champion: str = "champion",
    candidate_is_persistence: bool = False,
    champion_margin: float | None = None,
) -> Judgement:
    """Promote ``candidate`` iff it beats ``champion`` (persistence if None) by ``champion_margin``
    (``margin`` if None) and persistence by ``margin``."""
    if champion_rmse is None:
        champion, champion_rmse, champion_margin = "persistence", persistence_rmse, None
    over = margin if champion_margin is None else min(margin, max(champion_margin, 0.0))
    bar = 1.0 - margin
    scores = (candidate_rmse, champion_rmse, persistence_rmse, margin)
    if not all(math.isfinite(x) for x in (candidate_rmse, champion_rmse, persistence_rmse)):
        return Judgement(False, f"{candidate}: non-finite holdout RMSE", *scores)
    if candidate_is_persistence:
        # A "model" that repeats the last value is what the edge serves when nothing beats it.
        return Judgement(False, f"{candidate} is persistence: nothing beat the floor", *scores)
    head = f"{candidate} holdout RMSE {candidate_rmse:.4g}"
    if candidate_rmse >= champion_rmse * (1.0 - over):
        return Judgement(
            False, f"{head} does not beat {champion} {champion_rmse:.4g} by {_share(over)}", *scores
        )
    if candidate_rmse >= persistence_rmse * bar:
        reason = (
            f"{head} beats {champion} {champion_rmse:.4g} but not persistence {persistence_rmse:.4g} "
            f"by {margin:.0%}"
        )
        return Judgement(False, reason, *scores)
    if over < margin:
        reason = (
            f"{head} beats {champion} {champion_rmse:.4g} by {_share(over)} and persistence "
            f"{persistence_rmse:.4g} by {_share(margin)}"
        )
    else:
        reason = (
            f"{head} beats {champion} {champion_rmse:.4g} and persistence {persistence_rmse:.4g} "
            f"by more than {margin:.0%}"
        )
    return Judgement(True, reason, *scores)


def _share(x: float) -> str:
    return f"{x:.0%}" if round(x * 100, 6).is_integer() else f"{x:.1%}"


def champion_margin(candidate_errors: np.ndarray, champion_errors: np.ndarray, margin: float) -> float:
    """The share of the champion's holdout RMSE a challenger must beat it by: ``margin``, or less when
    the holdout is large enough to tell (see the module docstring).

    ``Z`` standard errors of the mean paired difference of squared errors, relative to the champion's
    mean squared error, turned into a share of RMSE; ``margin`` on fewer than ``MIN_EVIDENCE`` readings.

    >>> rng = np.random.default_rng(0)
    >>> champ = rng.normal(0, 1, 2000)
    >>> round(champion_margin(0.99 * champ + rng.normal(0, 0.05, 2000), champ, 0.02), 4)
    0.0012
    >>> champion_margin(champ[:100] * 0.99, champ[:100], 0.02)  # too few readings to tell
    0.02
    """
    cand = np.asarray(candidate_errors, dtype=np.float64)
    champ = np.asarray(champion_errors, dtype=np.float64)
    n = len(champ)
    if n < MIN_EVIDENCE or len(cand) != n:
        return margin
    diff = cand * cand - champ * champ
    ok = np.isfinite(diff)
    if ok.sum() < MIN_EVIDENCE:
        return margin
    champ_mse = float(np.mean(champ[ok] ** 2))
    if champ_mse <= 0.0:
        return margin
    se = float(np.std(diff[ok], ddof=1)) / math.sqrt(int(ok.sum()))
    share = 1.0 - math.sqrt(max(0.0, 1.0 - Z * se / champ_mse))
    return min(margin, share)


def judge_on_holdout(
    candidate: Forecaster,
    champion: Forecaster | None,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    margin: float,
    candidate_label: str = "challenger",
    champion_label: str = "champion",
) -> Judgement:
    """Score candidate, champion and persistence on one holdout, then :func:`judge`."""
    lags = val_x.shape[1]
    persistence = rmse(Persistence(lags).predict(val_x), val_y)
    # As each would serve: an online model learns through the holdout as it forecasts it.
    candidate_errors = holdout_forecast(candidate, val_x, val_y) - val_y
    champion_rmse, over = None, None
    if champion is not None:
        champion_errors = holdout_forecast(champion, val_x, val_y) - val_y
        champion_rmse = rmse(champion_errors + val_y, val_y)
        over = champion_margin(candidate_errors, champion_errors, margin)
    return judge(
        rmse(candidate_errors + val_y, val_y),
        champion_rmse=champion_rmse,
        persistence_rmse=persistence,
        margin=margin,
        candidate=candidate_label,
        champion=champion_label if champion is not None else "persistence",
        candidate_is_persistence=candidate.kind == "persistence",
        champion_margin=over,
    )
