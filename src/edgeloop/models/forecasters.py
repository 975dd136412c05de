"""One-step forecasters: persistence, a linear model on lags, LightGBM in two formulations, and RLS.

All take a batch of windows (``(n, lags)``, oldest reading first) and return ``n`` forecasts of the
next reading, in one call. ``online`` forecasters (:mod:`edgeloop.models.online`) also learn after
every scored reading, per device, and take device keys in ``predict``. Each serialises to text that
is data, never code: LightGBM's own model text format, or JSON coefficients. Nothing here unpickles anything.

>>> import numpy as np
>>> from edgeloop.engine.features import training_pairs
>>> y = np.sin(np.arange(300) / 5.0)
>>> X, t = training_pairs(y, lags=3)
>>> lin = LinearForecaster(lags=3).fit(X, t)
>>> bool(rmse(lin.predict(X), t) < rmse(Persistence(lags=3).predict(X), t))
True
>>> clone = forecaster_from_text("linear", lin.to_text(), lags=3)
>>> bool(np.allclose(clone.predict(X), lin.predict(X)))
True
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import orjson

from edgeloop.engine.features import Formulation, design_matrix, from_output, to_target
from edgeloop.errors import ModelFileError
from edgeloop.models.corrected import CorrectedForecaster
from edgeloop.models.lgbm_native import NativeBooster
from edgeloop.models.online import RlsForecaster

KINDS = ("persistence", "linear", "lgbm-level", "lgbm-delta", "rls", "lgbm-rls")


def rmse(forecast: np.ndarray, actual: np.ndarray) -> float:
    diff = np.asarray(forecast, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff))) if len(diff) else float("nan")


class Forecaster(Protocol):
    kind: str
    lags: int
    online: bool  # learns after every reading: see RlsForecaster.update

    def predict(self, windows: np.ndarray) -> np.ndarray: ...

    def to_text(self) -> str: ...


class Persistence:
    """Repeat the last reading: the floor every model must beat."""

    kind = "persistence"
    online = False

    def __init__(self, lags: int) -> None:
        self.lags = lags

    def fit(self, windows: np.ndarray, next_values: np.ndarray) -> Persistence:
        return self

    def predict(self, windows: np.ndarray) -> np.ndarray:
        return np.asarray(windows, dtype=np.float64)[:, -1].copy()

    def to_text(self) -> str:
        return "{}"


class LinearForecaster:
    """Ridge regression on the raw lags with an intercept: cheap, and it extrapolates."""

    kind = "linear"
    online = False

    def __init__(self, lags: int, alpha: float = 1e-3) -> None:
        self.lags = lags
        self.alpha = alpha
        self.coef = np.zeros(lags)
        self.intercept = 0.0

    def fit(self, windows: np.ndarray, next_values: np.ndarray) -> LinearForecaster:
        X = np.asarray(windows, dtype=np.float64)
        y = np.asarray(next_values, dtype=np.float64)
        # Centre first so the ridge penalty does not shrink the intercept.
        x_mean, y_mean = X.mean(axis=0), y.mean()
        Xc, yc = X - x_mean, y - y_mean
        scale = max(float(np.mean(Xc * Xc)), 1e-12)
        gram = Xc.T @ Xc + self.alpha * scale * len(X) * np.eye(X.shape[1])
        self.coef = np.linalg.solve(gram, Xc.T @ yc)
        self.intercept = float(y_mean - x_mean @ self.coef)
        return self

    def predict(self, windows: np.ndarray) -> np.ndarray:
        return np.asarray(windows, dtype=np.float64) @ self.coef + self.intercept

    def to_text(self) -> str:
        return orjson.dumps({"coef": self.coef.tolist(), "intercept": self.intercept}).decode()

    @classmethod
    def from_text(cls, text: str, lags: int) -> LinearForecaster:
        data = orjson.loads(text)
        model = cls(lags)
        coef = np.asarray(data["coef"], dtype=np.float64)
        if coef.shape != (lags,) or not np.all(np.isfinite(coef)):
            raise ModelFileError(f"linear model has {coef.shape} coefficients, expected {lags}")
        model.coef, model.intercept = coef, float(data["intercept"])
        return model


# Early stopping (LightGBMForecaster.fit): from this many rows in the last fifth of a training set,
# stop adding trees after this many rounds without improvement there, and never keep fewer than
# this many (at learning rate 0.05 fewer trees barely move the forecast off the last reading).
EARLY_STOP_MIN_ROWS = 100
EARLY_STOP_PATIENCE = 20
EARLY_STOP_MIN_ROUNDS = 20


class LightGBMForecaster:
    """LightGBM on lag features, forecasting the level itself or the change from the last reading."""

    online = False

    def __init__(
        self,
        lags: int,
        formulation: Formulation,
        *,
        rounds: int = 200,
        seed: int = 0,
        early_stopping: bool = True,
    ) -> None:
        self.lags = lags
        self.formulation: Formulation = formulation
        self.kind = f"lgbm-{formulation}"
        self.rounds = rounds
        self.seed = seed
        self.early_stopping = early_stopping  # False: exactly `rounds` trees
        self.booster: Any = None

    def fit(self, windows: np.ndarray, next_values: np.ndarray) -> LightGBMForecaster:
        import lightgbm as lgb

        X = design_matrix(windows, self.formulation)
        y = to_target(next_values, windows, self.formulation)
        params = {
            "objective": "regression",
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_data_in_leaf": 20,
            "feature_fraction": 1.0,
            "lambda_l2": 1.0,
            "num_threads": 1,  # training runs beside the edge on a small machine; never take every core
            "seed": self.seed,
            "deterministic": True,
            "verbosity": -1,
        }
        rounds = self.rounds
        n_stop = len(y) // 5
        if self.early_stopping and n_stop >= EARLY_STOP_MIN_ROWS and rounds > EARLY_STOP_MIN_ROUNDS:
            # How many trees the data supports, judged on the last fifth of the rows given (a
            # device's newest readings; with several devices, the last devices'), never on the
            # caller's holdout; then all rows again with that many trees. The change from the last
            # reading is mostly noise: on the public series 20-193 trees forecast their holdouts
            # 2 % better than 200 on average and serve up to 10x faster (bench_lgbm_rounds.py).
            fit, stop = slice(0, len(y) - n_stop), slice(len(y) - n_stop, None)
            probe = lgb.train(
                params,
                lgb.Dataset(X[fit], y[fit]),
                num_boost_round=rounds,
                valid_sets=[lgb.Dataset(X[stop], y[stop])],
                callbacks=[lgb.early_stopping(EARLY_STOP_PATIENCE, verbose=False)],
            )
            rounds = max(int(probe.best_iteration or rounds), EARLY_STOP_MIN_ROUNDS)
        self.booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=rounds)
        return self

    def predict(self, windows: np.ndarray) -> np.ndarray:
        windows = np.asarray(windows, dtype=np.float64)
        out = self.booster.predict(design_matrix(windows, self.formulation), num_threads=1)
        return from_output(out, windows, self.formulation)

    def to_text(self) -> str:
        return str(self.booster.model_to_string())

    @classmethod
    def from_text(cls, text: str, lags: int, formulation: Formulation) -> LightGBMForecaster:
        # Serving loads through LightGBM's C library directly: same predictions as lightgbm.Booster,
        # without the pandas/SciPy/scikit-learn imports of the Python package (about 145 MB).
        model = cls(lags, formulation)
        try:
            model.booster = NativeBooster(text)
        except ModelFileError as exc:
            raise ModelFileError(f"not a LightGBM model: {exc}") from exc
        # design_matrix keeps one column per lag in both formulations.
        if model.booster.num_feature() != lags:
            raise ModelFileError(f"model has {model.booster.num_feature()} features, expected {lags}")
        return model


def make_forecaster(kind: str, lags: int, *, rounds: int = 200, seed: int = 0) -> Any:
    if kind == "persistence":
        return Persistence(lags)
    if kind == "linear":
        return LinearForecaster(lags)
    if kind in ("lgbm-level", "lgbm-delta"):
        return LightGBMForecaster(
            lags, "level" if kind == "lgbm-level" else "delta", rounds=rounds, seed=seed
        )
    if kind == "rls":
        return RlsForecaster(lags)
    if kind == "lgbm-rls":
        return CorrectedForecaster(lags, rounds=rounds, seed=seed)
    raise ValueError(f"unknown model kind {kind!r}; choose from {KINDS}")


def forecaster_from_text(kind: str, text: str, lags: int) -> Forecaster:
    """Rebuild a forecaster from its saved text (never code)."""
    if kind == "persistence":
        return Persistence(lags)
    if kind == "linear":
        return LinearForecaster.from_text(text, lags)
    if kind in ("lgbm-level", "lgbm-delta"):
        return LightGBMForecaster.from_text(text, lags, "level" if kind == "lgbm-level" else "delta")
    if kind == "rls":
        return RlsForecaster.from_text(text, lags)
    if kind == "lgbm-rls":
        return CorrectedForecaster.from_text(text, lags)
    raise ModelFileError(f"unknown model kind {kind!r}")


def holdout_forecast(model: Forecaster, windows: np.ndarray, next_values: np.ndarray) -> np.ndarray:
    """Forecasts over a holdout as serving would make them: an online model learns after each reading."""
    if isinstance(model, RlsForecaster):
        return model.holdout_forecast(windows, next_values)
    return model.predict(windows)
