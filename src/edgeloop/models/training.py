"""Train candidate forecasters on a scope's recent readings and pick the best by validation.

The split is by time within each device's series: the oldest share trains, the newest share
validates, so no future reading leaks into training. Persistence is always a candidate, so the
winner never forecasts worse than repeating the last value on the validation data.

>>> import numpy as np
>>> from edgeloop.adapters.store import Series
>>> rng = np.random.default_rng(0)
>>> y = 100 + np.cumsum(rng.normal(size=50)) * 0 + 10 * np.sin(np.arange(50) / 3)
>>> y = np.tile(y, 20)
>>> res = train_candidates([Series("d", np.arange(len(y), dtype=float), y)], lags=5,
...                        candidates=["persistence", "linear"])
>>> res.kind
'linear'
>>> res.scores["linear"] < res.scores["persistence"]
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeloop.adapters.store import Series
from edgeloop.engine.features import training_pairs
from edgeloop.models.forecasters import Forecaster, holdout_forecast, make_forecaster, rmse


@dataclass
class Split:
    """Training and validation windows of a scope, with the mean baseline's validation forecasts."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    val_mean_forecast: np.ndarray
    window_start: float
    window_end: float
    n_samples: int
    data_hash: str


@dataclass
class TrainResult:
    """The winning forecaster and every candidate's validation RMSE beside the naive baselines."""

    forecaster: Forecaster
    kind: str
    scores: dict[str, float]
    persistence_rmse: float
    mean_rmse: float
    split: Split
    fitted: dict[str, Forecaster] = field(default_factory=dict)

    @property
    def val_rmse(self) -> float:
        return self.scores[self.kind]

    def report(self) -> dict[str, Any]:
        return {
            "winner": self.kind,
            "val_rmse": self.val_rmse,
            "candidates": dict(self.scores),
            "persistence_rmse": self.persistence_rmse,
            "mean_rmse": self.mean_rmse,
            "n_train": len(self.split.train_y),
            "n_val": len(self.split.val_y),
        }


class NotEnoughData(ValueError):
    """The scope has too few readings to train and validate."""


def split_series(series: Sequence[Series], lags: int, validation_fraction: float) -> Split:
    """Time-ordered split per device; windows never cross devices or the train/validation boundary."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("tx", "ty", "vx", "vy", "vm")}
    digest = hashlib.sha256()
    starts, ends, total = [], [], 0
    for s in series:
        values = s.values[np.isfinite(s.values)]
        n = len(values)
        n_val = int(n * validation_fraction)
        if n - n_val < lags + 20 or n_val < lags + 5:
            continue
        digest.update(s.device.encode())
        digest.update(np.ascontiguousarray(values).tobytes())
        train, val = values[: n - n_val], values[n - n_val - lags :]
        tx, ty = training_pairs(train, lags)
        vx, vy = training_pairs(val, lags)
        parts["tx"].append(tx)
        parts["ty"].append(ty)
        parts["vx"].append(vx)
        parts["vy"].append(vy)
        parts["vm"].append(np.full(len(vy), train.mean()))
        starts.append(float(s.ts[0]))
        ends.append(float(s.ts[-1]))
        total += n
    if not parts["ty"]:
        raise NotEnoughData(f"need more than {lags + 25} readings per device to train and validate")
    return Split(
        train_x=np.vstack(parts["tx"]),
        train_y=np.concatenate(parts["ty"]),
        val_x=np.vstack(parts["vx"]),
        val_y=np.concatenate(parts["vy"]),
        val_mean_forecast=np.concatenate(parts["vm"]),
        window_start=min(starts),
        window_end=max(ends),
        n_samples=total,
        data_hash=digest.hexdigest(),
    )


def train_candidates(
    series: Sequence[Series],
    *,
    lags: int,
    candidates: Sequence[str] = ("persistence", "linear", "lgbm-level", "lgbm-delta"),
    validation_fraction: float = 0.25,
    rounds: int = 200,
    seed: int = 0,
) -> TrainResult:
    """Fit every candidate on the training part and score it on the validation part."""
    split = split_series(series, lags, validation_fraction)
    kinds = list(dict.fromkeys(["persistence", *candidates]))
    scores: dict[str, float] = {}
    fitted: dict[str, Forecaster] = {}
    for kind in kinds:
        model = make_forecaster(kind, lags, rounds=rounds, seed=seed).fit(split.train_x, split.train_y)
        fitted[kind] = model
        scores[kind] = rmse(holdout_forecast(model, split.val_x, split.val_y), split.val_y)
    # Ties go to the simpler model: persistence first, then in the order given.
    best = min(kinds, key=lambda k: (round(scores[k], 12), kinds.index(k)))
    return TrainResult(
        forecaster=fitted[best],
        kind=best,
        scores=scores,
        persistence_rmse=scores["persistence"],
        mean_rmse=rmse(split.val_mean_forecast, split.val_y),
        split=split,
        fitted=fitted,
    )
