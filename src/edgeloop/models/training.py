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
    # The chosen kind's forecast errors on the validation readings (as scored: before any refit).
    holdout_errors: np.ndarray | None = None

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


def select(kinds: Sequence[str], sq_errors: dict[str, np.ndarray]) -> str:
    """The candidate to serve, from the squared errors of each on the same validation readings.

    The lowest mean wins, with one correction for small validation slices (the "one standard error"
    rule of cross-validated model selection): among the learned models, listed simplest first, the
    simplest whose mean squared error is within one standard error of the best one's (of the paired
    difference, reading by reading) is chosen. On a few hundred readings a LightGBM often beats a
    linear model by luck and then generalises worse; on thousands the standard error shrinks and the
    better model wins on merit. Persistence is not part of that preference: it wins only by being
    strictly best, since preferring it on a noisy slice is the failure this rule exists to prevent
    (and the promotion rule compares every winner with persistence anyway). Chosen over
    time-series cross-validation because it costs no extra fits, which matters in the trainer.

    >>> rng = np.random.default_rng(1)
    >>> lin, tree = rng.normal(0, 1, (2, 60)) ** 2  # 60 readings: the tree is 8% better by luck
    >>> kinds = ["persistence", "linear", "lgbm-delta"]
    >>> select(kinds, {"persistence": lin * 2, "linear": lin, "lgbm-delta": tree})
    'linear'
    >>> select(kinds, {"persistence": lin * 2, "linear": lin, "lgbm-delta": lin * 0.9})  # better everywhere
    'lgbm-delta'
    >>> select(kinds, {"persistence": lin * 0.5, "linear": lin, "lgbm-delta": tree})
    'persistence'
    """
    means = {k: float(np.mean(sq_errors[k])) for k in kinds}
    # Ties go to the simpler model: persistence first, then in the order given.
    best = min(kinds, key=lambda k: (round(means[k], 12), kinds.index(k)))
    if best == "persistence":
        return best
    n = len(sq_errors[best])
    for kind in kinds:
        if kind == "persistence" or kind == best:
            if kind == best:
                return best
            continue
        diff = sq_errors[kind] - sq_errors[best]
        se = float(np.std(diff, ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
        if means[kind] - means[best] <= se:
            return kind
    return best


class NotEnoughData(ValueError):
    """The scope has too few readings to train and validate."""


def split_series(
    series: Sequence[Series], lags: int, validation_fraction: float, min_validation: int = 0
) -> Split:
    """Time-ordered split per device; windows never cross devices or the train/validation boundary.

    Each device holds out its newest ``validation_fraction`` of readings, but at least
    ``min_validation`` (a short window would otherwise be judged on a few dozen readings, where
    noise decides), as long as the training part keeps ``lags + 20`` readings.
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("tx", "ty", "vx", "vy", "vm")}
    digest = hashlib.sha256()
    starts, ends, total = [], [], 0
    for s in series:
        values = s.values[np.isfinite(s.values)]
        n = len(values)
        n_val = min(max(int(n * validation_fraction), min_validation), n - lags - 20)
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
    min_validation: int = 0,
    refit: bool = True,
) -> TrainResult:
    """Fit every candidate on the training part, score it on the validation part, :func:`select` one.

    With ``refit`` the chosen kind is then fitted once more on the training *and* validation parts,
    and that is the model served: the validation part is the newest stretch of the window, the one
    most like the readings to come, and a model fitted without it starts out a quarter of a window
    stale. Its scores stay those of the first fit (the only honest holdout scores there are); a
    champion it is judged against later never saw that later holdout, because the newest readings
    of a later window come after this one's end.
    """
    split = split_series(series, lags, validation_fraction, min_validation)
    kinds = list(dict.fromkeys(["persistence", *candidates]))
    scores: dict[str, float] = {}
    fitted: dict[str, Forecaster] = {}
    sq_errors: dict[str, np.ndarray] = {}
    errors: dict[str, np.ndarray] = {}
    for kind in kinds:
        model = make_forecaster(kind, lags, rounds=rounds, seed=seed).fit(split.train_x, split.train_y)
        fitted[kind] = model
        # As each would serve: an online model learns through the holdout (holdout_forecast).
        diff = holdout_forecast(model, split.val_x, split.val_y) - split.val_y
        errors[kind] = diff
        sq_errors[kind] = diff * diff
        scores[kind] = float(np.sqrt(np.mean(sq_errors[kind]))) if len(diff) else float("nan")
    best = select(kinds, sq_errors)
    served = fitted[best]
    if refit and best != "persistence" and len(split.val_y):
        # A LightGBM kind stops early again: the trees are chosen on the newest fifth of these rows
        # (mostly the holdout, the stretch most like the readings to come). Keeping the first fit's
        # count instead moved the default policy's RMSE on the public series by -0.4 to +0.3 %.
        served = make_forecaster(best, lags, rounds=rounds, seed=seed).fit(
            np.vstack([split.train_x, split.val_x]), np.concatenate([split.train_y, split.val_y])
        )
    return TrainResult(
        forecaster=served,
        kind=best,
        scores=scores,
        persistence_rmse=scores["persistence"],
        mean_rmse=rmse(split.val_mean_forecast, split.val_y),
        split=split,
        fitted=fitted,
        holdout_errors=errors[best],
    )
