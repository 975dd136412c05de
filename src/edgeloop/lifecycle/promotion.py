"""The promotion rule: does a challenger replace the champion? One rule for every caller.

A challenger is promoted only if, on the *same* newest holdout, its RMSE beats both the champion's
and persistence's by ``margin``. Beating the champion alone is not enough: a champion may itself have
fallen below the floor, and a model that does not beat repeating the last reading is never worth
serving (the edge already does that for free). Without a champion, persistence is the champion.

The trainer (:mod:`edgeloop.retrain.job`), ``edgeloop models promote`` (:mod:`edgeloop.retrain.admin`)
and the evaluator all call :func:`judge`, so what is measured is what runs.

>>> judge(9.0, champion_rmse=10.0, persistence_rmse=12.0, margin=0.02).promote
True
>>> j = judge(9.9, champion_rmse=10.0, persistence_rmse=12.0, margin=0.02)
>>> j.promote, j.reason
(False, 'challenger holdout RMSE 9.9 does not beat champion 10 by 2%')
>>> judge(9.0, champion_rmse=20.0, persistence_rmse=9.1, margin=0.02).reason
'challenger holdout RMSE 9 beats champion 20 but not persistence 9.1 by 2%'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeloop.models.forecasters import Forecaster, Persistence, holdout_forecast, rmse

__all__ = ["Judgement", "judge", "judge_on_holdout"]


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
) -> Judgement:
    """Promote ``candidate`` iff it beats ``champion`` (persistence if None) and persistence by ``margin``."""
    if champion_rmse is None:
        champion, champion_rmse = "persistence", persistence_rmse
    bar = 1.0 - margin
    scores = (candidate_rmse, champion_rmse, persistence_rmse, margin)
    if not all(math.isfinite(x) for x in (candidate_rmse, champion_rmse, persistence_rmse)):
        return Judgement(False, f"{candidate}: non-finite holdout RMSE", *scores)
    if candidate_is_persistence:
        # A "model" that repeats the last value is what the edge serves when nothing beats it.
        return Judgement(False, f"{candidate} is persistence: nothing beat the floor", *scores)
    head = f"{candidate} holdout RMSE {candidate_rmse:.4g}"
    if candidate_rmse >= champion_rmse * bar:
        return Judgement(
            False, f"{head} does not beat {champion} {champion_rmse:.4g} by {margin:.0%}", *scores
        )
    if candidate_rmse >= persistence_rmse * bar:
        reason = (
            f"{head} beats {champion} {champion_rmse:.4g} but not persistence {persistence_rmse:.4g} "
            f"by {margin:.0%}"
        )
        return Judgement(False, reason, *scores)
    reason = (
        f"{head} beats {champion} {champion_rmse:.4g} and persistence {persistence_rmse:.4g} "
        f"by more than {margin:.0%}"
    )
    return Judgement(True, reason, *scores)


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
    return judge(
        rmse(holdout_forecast(candidate, val_x, val_y), val_y),
        champion_rmse=rmse(holdout_forecast(champion, val_x, val_y), val_y) if champion is not None else None,
        persistence_rmse=persistence,
        margin=margin,
        candidate=candidate_label,
        champion=champion_label if champion is not None else "persistence",
        candidate_is_persistence=candidate.kind == "persistence",
    )
