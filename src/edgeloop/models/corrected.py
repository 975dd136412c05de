"""A batch model that keeps adapting between retrains: LightGBM's change forecast, corrected online by RLS.

A LightGBM model of the change from the last reading (``lgbm-delta``) learns the shape of a
sensor's dynamics from thousands of readings, but stays as trained until the next retrain; on a
slowly moving process (a season, an ageing sensor) it falls a little further behind every day, and
retraining often enough to follow costs a training each time. ``lgbm-rls`` serves the tree's
forecast plus a linear correction that recursive least squares
(:class:`~edgeloop.models.online.RlsForecaster`, same numerics: scaled inputs, symmetric and
trace-bounded covariance, clipped residuals) learns per device after every reading, from the same
inputs as ``rls`` and the tree's own forecast (so it can also shrink or amplify the tree where its
confidence no longer holds).

The correction starts at zero with a prior worth about ``PRIOR`` readings, not fitted on the
training readings: the tree's residuals there are in-sample and too small, so a correction fitted
on them would learn nothing and be too sure of it to move later. It then learns through the
validation holdout exactly as it would serve (:meth:`holdout_forecast`), so the candidate is judged
by the promotion rule on what it would do. A stretch where the tree is right costs a little noise
from the correction (about ``d / memory`` of the squared error, under 1 % with its 8 inputs and
a memory of 1,000 readings); the validation decides whether that is worth it.

Serving predicts the tree once per wave for every device it serves, and remembers each device's
tree output and window, so the update after the next reading reuses it instead of running the tree
again (the engine updates a device with the window it forecast from).

>>> import numpy as np
>>> from edgeloop.engine.features import training_pairs
>>> rng = np.random.default_rng(0)
>>> y = 20 + np.cumsum(np.sin(np.arange(3000) / 7.0)) + rng.normal(0, 0.1, 3000)
>>> X, t = training_pairs(y, lags=5)
>>> model = CorrectedForecaster(lags=5, rounds=20).fit(X[:2000], t[:2000])
>>> clone = CorrectedForecaster.from_text(model.to_text(), lags=5)
>>> bool(np.allclose(clone.holdout_forecast(X[2000:], t[2000:]), model.holdout_forecast(X[2000:], t[2000:])))
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from edgeloop.engine.features import design_matrix, from_output
from edgeloop.errors import ModelFileError
from edgeloop.models.lgbm_native import NativeBooster
from edgeloop.models.online import CLIP, RlsForecaster

__all__ = ["CORRECTION_FORGETTING", "PRIOR", "CorrectedForecaster"]

PRIOR = 100.0  # the correction's prior precision, in readings of unit-scaled inputs
CORRECTION_FORGETTING = 0.999  # memory of about 1,000 readings: it is there to follow change


class CorrectedForecaster(RlsForecaster):
    """``lgbm-rls``: see the module docstring."""

    kind = "lgbm-rls"
    extra_features = 1  # the tree's change forecast

    def __init__(
        self,
        lags: int,
        *,
        forgetting: float = CORRECTION_FORGETTING,
        ridge: float = PRIOR,
        clip: float | None = CLIP,
        rounds: int = 200,
        seed: int = 0,
        booster: Any = None,
    ) -> None:
        # The tree output and window each device's state row last forecast from (see _base_change).
        self._cache_window = np.zeros((1, lags))
        self._cache_base = np.zeros(1)
        self._cached = np.zeros(1, dtype=bool)
        super().__init__(lags, forgetting=forgetting, ridge=ridge, clip=clip)
        self.rounds = rounds
        self.seed = seed
        self.booster = booster

    def fit(self, windows: np.ndarray, next_values: np.ndarray) -> CorrectedForecaster:
        from edgeloop.models.forecasters import LightGBMForecaster

        windows = np.asarray(windows, dtype=np.float64)
        values = np.asarray(next_values, dtype=np.float64)
        ok = np.isfinite(values) & np.isfinite(windows).all(axis=1)
        windows, values = windows[ok], values[ok]
        tree = LightGBMForecaster(self.lags, "delta", rounds=self.rounds, seed=self.seed).fit(windows, values)
        self.booster = tree.booster
        change = values - windows[:, -1]
        spread = float(np.std(change)) if len(change) > 1 else 0.0
        self.scale = spread if np.isfinite(spread) and spread > 1e-12 else 1.0
        last = windows[:, -1]
        self.center = float(np.mean(last)) if len(last) else 0.0
        level_spread = float(np.std(last)) if len(last) > 1 else 0.0
        self.spread = level_spread if np.isfinite(level_spread) and level_spread > 1e-12 else self.scale
        d = len(self.coef)
        self.coef = np.zeros(d)
        self.cov = np.eye(d) / self.ridge
        self._reset_devices()
        return self

    def to_text(self) -> str:
        return orjson.dumps({**self._state(), "tree": str(self.booster.model_to_string())}).decode()

    @classmethod
    def from_text(cls, text: str, lags: int) -> CorrectedForecaster:
        try:
            data = orjson.loads(text)
            tree = data["tree"]
            if not isinstance(tree, str):
                raise TypeError(f"tree is a {type(tree).__name__}, not LightGBM model text")
            booster = NativeBooster(tree)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelFileError(f"not an lgbm-rls model: {exc}") from exc
        if booster.num_feature() != lags:
            raise ModelFileError(f"lgbm-rls tree has {booster.num_feature()} features, expected {lags}")
        model = cls._from_state(data, lags, booster=booster)
        assert isinstance(model, CorrectedForecaster)
        return model

    # -- the base model's forecast, remembered per device ---------------------------------------
    def _tree_change(self, windows: np.ndarray) -> np.ndarray:
        out = self.booster.predict(design_matrix(windows, "delta"), num_threads=1)
        return np.asarray(from_output(out, windows, "delta")) - windows[:, -1]

    def _base_change(self, windows: np.ndarray, rows: np.ndarray | None, *, remember: bool) -> np.ndarray:
        if rows is None or not len(windows):
            return self._tree_change(windows)
        if remember:
            base = self._tree_change(windows)
            known = rows > 0  # row 0 is the trained state, shared by devices not seen yet
            self._cache_window[rows[known]] = windows[known]
            self._cache_base[rows[known]] = base[known]
            self._cached[rows[known]] = True
            return base
        base = self._cache_base[rows].copy()
        fresh = self._cached[rows] & (self._cache_window[rows] == windows).all(axis=1)
        if not fresh.all():
            stale = ~fresh
            base[stale] = self._tree_change(windows[stale])
        return base

    def _reset_devices(self) -> None:
        super()._reset_devices()
        self._grow_cache()

    def _row(self, device: str) -> int:
        fresh = device not in self._index
        row = super()._row(device)
        self._grow_cache()
        if fresh:
            self._cached[row] = False
        return row

    def forget(self, device: str) -> None:
        row = self._index.get(device)
        super().forget(device)
        if row is not None:
            self._cached[row] = False

    def _grow_cache(self) -> None:
        n = len(self._theta)
        if len(self._cached) == n:
            return
        lags = self.lags
        window, base, cached = np.zeros((n, lags)), np.zeros(n), np.zeros(n, dtype=bool)
        keep = min(n, len(self._cached))
        window[:keep], base[:keep], cached[:keep] = (
            self._cache_window[:keep],
            self._cache_base[:keep],
            self._cached[:keep],
        )
        self._cache_window, self._cache_base, self._cached = window, base, cached
