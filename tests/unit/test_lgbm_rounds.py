"""LightGBM's number of trees: early stopping on the last fifth of the training rows."""

from __future__ import annotations

import numpy as np

from edgeloop.engine.features import training_pairs
from edgeloop.models.forecasters import EARLY_STOP_MIN_ROUNDS, LightGBMForecaster


def ar1(n: int, phi: float = 0.9, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.zeros(n)
    for i in range(1, n):
        y[i] = phi * y[i - 1] + rng.normal()
    return 50.0 + y


def holdout_rmse(model: LightGBMForecaster, x: np.ndarray, t: np.ndarray) -> float:
    return float(np.sqrt(np.mean((model.predict(x) - t) ** 2)))


def test_noise_dominated_changes_keep_few_trees_and_forecast_as_well() -> None:
    x, t = training_pairs(ar1(5000), 5)
    fit, hold = slice(0, 4000), slice(4000, None)
    stopped = LightGBMForecaster(5, "delta", rounds=200).fit(x[fit], t[fit])
    full = LightGBMForecaster(5, "delta", rounds=200, early_stopping=False).fit(x[fit], t[fit])
    assert full.booster.num_trees() == 200
    assert EARLY_STOP_MIN_ROUNDS <= stopped.booster.num_trees() < 100
    assert holdout_rmse(stopped, x[hold], t[hold]) <= 1.01 * holdout_rmse(full, x[hold], t[hold])


def test_a_learnable_change_keeps_more_trees() -> None:
    # The next change depends on the lags non-linearly: the trees keep earning their place.
    rng = np.random.default_rng(1)
    x, _ = training_pairs(np.cumsum(rng.normal(0, 1, 4000)), 5)
    t = x[:, -1] + 3.0 * np.sign(x[:, -1] - x[:, -2]) + rng.normal(0, 0.1, len(x))
    assert LightGBMForecaster(5, "delta", rounds=200).fit(x, t).booster.num_trees() > 100


def test_small_training_sets_keep_every_round() -> None:
    x, t = training_pairs(ar1(400), 5)  # a fifth of ~400 rows is under EARLY_STOP_MIN_ROWS
    assert LightGBMForecaster(5, "delta", rounds=60).fit(x, t).booster.num_trees() == 60
    x, t = training_pairs(ar1(4000), 5)
    model = LightGBMForecaster(5, "delta", rounds=EARLY_STOP_MIN_ROUNDS).fit(x, t)
    assert model.booster.num_trees() == EARLY_STOP_MIN_ROUNDS
