"""Recursive least squares with a forgetting factor: a linear change model that learns after every reading.

:class:`RlsForecaster` predicts the change from the last reading, ``y[t+1] - y[t]``, from the same
inputs as the other delta models (:func:`~edgeloop.engine.features.design_matrix`, ``"delta"``),
the last reading's level relative to the training mean, and an intercept: the span of the
``linear`` candidate's raw lags, so it can pull back towards a level, while forgetting lets it
follow that level when it moves. Training fits it in one weighted least-squares solve, exactly what
running RLS over the training windows would give; serving then keeps one copy of the coefficients and their
covariance per device and updates every copy that saw a reading in one vectorised numpy call, so
the cost per reading is a few hundred floating-point operations whatever the fleet size.

Why it stays finite where online SGD diverged (occupancy CO2: SGD's RMSE was 596,570):

- RLS needs no step size: the gain comes from the covariance, so a large input cannot overshoot;
- inputs and target are divided by the training data's step size, so the covariance is well
  conditioned whatever the target's units (ppm, degrees, counts);
- the covariance is kept symmetric after every update, and its trace is capped at the larger of
  the prior's and the trained model's (:attr:`max_trace`), so
  a sensor that stops moving (no excitation) cannot wind the covariance up (``1/lambda`` per
  reading) into a huge gain for its next change;
- a residual is clipped at ``clip`` training step sizes, so one spike moves the model by a bounded
  amount; a device whose state is ever non-finite is reset to the trained state.

>>> import numpy as np
>>> from edgeloop.engine.features import training_pairs
>>> y = 20 + np.cumsum(np.sin(np.arange(2000) / 7.0))
>>> X, t = training_pairs(y, lags=5)
>>> rls = RlsForecaster(lags=5).fit(X[:1000], t[:1000])
>>> before = rls.predict(X[1000:1001], ["a"])
>>> rls.update(X[1000:1001], t[1000:1001], ["a"])
>>> bool(np.isfinite(rls.predict(X[1001:1002], ["a"])).all()), rls.devices
(True, 1)
>>> clone = RlsForecaster.from_text(rls.to_text(), lags=5)
>>> bool(np.array_equal(clone.predict(X), rls.predict(X)))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from edgeloop.engine.features import design_matrix
from edgeloop.errors import ModelFileError

FORGETTING = 0.9995  # memory of about 1 / (1 - lambda) = 2,000 readings
RIDGE = 1.0  # prior precision of each coefficient, in units of the training step size
CLIP = 8.0  # largest residual one update learns from, in training step sizes
# Ridge never shrinks below this share of RIDGE however long the training window: with forgetting
# the prior's weight decays like lambda^n and would leave a rank-deficient window singular.
_RIDGE_FLOOR = 1e-6


class RlsForecaster:
    """See the module docstring. ``predict``/``update`` with device keys use each device's own state."""

    kind = "rls"
    online = True
    extra_features = 0  # inputs beyond the lags' changes, the level and the intercept (a base model's)

    def __init__(
        self, lags: int, *, forgetting: float = FORGETTING, ridge: float = RIDGE, clip: float | None = CLIP
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting factor must be in (0, 1], got {forgetting}")
        if ridge <= 0:
            raise ValueError(f"ridge must be > 0, got {ridge}")
        self.lags = lags
        self.forgetting = forgetting
        self.ridge = ridge
        self.clip = clip
        d = lags + 2 + self.extra_features
        self.scale = 1.0
        self.center = 0.0  # the level term: (last reading - center) / spread
        self.spread = 1.0
        self.coef = np.zeros(d)
        self.cov = np.eye(d) / ridge
        self._reset_devices()

    # -- batch fit ----------------------------------------------------------------------------
    def fit(self, windows: np.ndarray, next_values: np.ndarray) -> RlsForecaster:
        """Weighted ridge on the training windows (oldest first): RLS run over them, in closed form."""
        windows = np.asarray(windows, dtype=np.float64)
        target = np.asarray(next_values, dtype=np.float64) - windows[:, -1]
        ok = np.isfinite(target) & np.isfinite(windows).all(axis=1)
        windows, target = windows[ok], target[ok]
        spread = float(np.std(target)) if len(target) > 1 else 0.0
        self.scale = spread if np.isfinite(spread) and spread > 1e-12 else 1.0
        last = windows[:, -1]
        self.center = float(np.mean(last)) if len(last) else 0.0
        level_spread = float(np.std(last)) if len(last) > 1 else 0.0
        self.spread = level_spread if np.isfinite(level_spread) and level_spread > 1e-12 else self.scale
        X = self._features(windows)
        y = target / self.scale
        n, d = X.shape
        lam = self.forgetting
        weights = lam ** np.arange(n - 1, -1, -1, dtype=np.float64)
        prior = self.ridge * max(lam**n, _RIDGE_FLOOR)
        gram = (X * weights[:, None]).T @ X + prior * np.eye(d)
        self.coef = np.linalg.solve(gram, (X * weights[:, None]).T @ y)
        self.cov = _symmetric(np.linalg.inv(gram))
        self._reset_devices()
        return self

    # -- serving ------------------------------------------------------------------------------
    @property
    def max_trace(self) -> float:
        """Bound on the trace of every device's covariance: never more uncertain than before the
        data (the prior) or than training left it, so no stretch without excitation winds it up."""
        return self._max_trace

    @property
    def devices(self) -> int:
        """Devices with their own online state."""
        return len(self._index)

    def predict(self, windows: np.ndarray, devices: Sequence[str] | None = None) -> np.ndarray:
        """Forecasts of the next reading: the trained coefficients, or each device's own if keys are given."""
        windows = np.asarray(windows, dtype=np.float64)
        rows = (
            None
            if devices is None
            else np.fromiter((self._index.get(d, 0) for d in devices), dtype=np.intp, count=len(devices))
        )
        base = self._base_change(windows, rows, remember=rows is not None)
        X = self._features(windows, base)
        change = X @ self.coef if rows is None else np.einsum("ij,ij->i", X, self._theta[rows])
        out = windows[:, -1] + self.scale * change
        return out if base is None else out + base

    def update(self, windows: np.ndarray, next_values: np.ndarray, devices: Sequence[str]) -> None:
        """Learn from one reading per device (each device at most once per call), all in one numpy pass."""
        windows = np.asarray(windows, dtype=np.float64)
        target = np.asarray(next_values, dtype=np.float64) - windows[:, -1]
        ok = np.isfinite(target) & np.isfinite(windows).all(axis=1)
        if not ok.all():
            windows, target = windows[ok], target[ok]
            devices = [d for d, keep in zip(devices, ok.tolist(), strict=True) if keep]
        if not len(target):
            return
        rows = np.array([self._row(d) for d in devices], dtype=np.intp)
        base = self._base_change(windows, rows, remember=False)
        if base is not None:
            target = target - base
        X = self._features(windows, base)
        theta, P = self._theta[rows], self._P[rows]
        lam = self.forgetting
        error = target / self.scale - np.einsum("ij,ij->i", X, theta)
        if self.clip is not None:
            error = np.clip(error, -self.clip, self.clip)
        Px = np.einsum("ijk,ik->ij", P, X)
        gain = Px / (lam + np.einsum("ij,ij->i", X, Px))[:, None]
        theta = theta + gain * error[:, None]
        P = (P - gain[:, :, None] * Px[:, None, :]) / lam
        P = 0.5 * (P + P.transpose(0, 2, 1))
        trace = np.einsum("ijj->i", P)
        over = trace > self.max_trace
        if over.any():
            P[over] *= (self.max_trace / trace[over])[:, None, None]
        bad = ~(np.isfinite(theta).all(axis=1) & np.isfinite(P).all(axis=(1, 2)) & (trace > 0))
        if bad.any():
            theta[bad], P[bad] = self.coef, self.cov
        self._theta[rows], self._P[rows] = theta, P

    def holdout_forecast(self, windows: np.ndarray, next_values: np.ndarray) -> np.ndarray:
        """Forecasts over a holdout as serving makes them: each before learning from its reading.

        Exactly :meth:`predict` then :meth:`update` for one device, reading by reading, on local
        copies of the trained state (this model is left as it was); the inputs are built once.
        """
        windows = np.asarray(windows, dtype=np.float64)
        values = np.asarray(next_values, dtype=np.float64)
        base = self._base_change(windows, None, remember=False)
        X = self._features(windows, base)
        target = (values - windows[:, -1] - (0.0 if base is None else base)) / self.scale
        theta, P = self.coef.copy(), self.cov.copy()
        lam, clip, cap = self.forgetting, self.clip, self.max_trace
        change = np.empty(len(values))
        for i in range(len(values)):
            x = X[i]
            change[i] = x @ theta
            if not (np.isfinite(target[i]) and np.isfinite(x).all()):
                continue
            error = target[i] - change[i]
            if clip is not None:
                error = min(max(error, -clip), clip)
            Px = P @ x
            gain = Px / (lam + x @ Px)
            new_theta = theta + gain * error
            new_P = (P - np.outer(gain, Px)) / lam
            new_P = 0.5 * (new_P + new_P.T)
            trace = float(np.trace(new_P))
            if trace > cap:
                new_P *= cap / trace
            if np.isfinite(new_theta).all() and np.isfinite(new_P).all() and trace > 0:
                theta, P = new_theta, new_P
            else:
                theta, P = self.coef.copy(), self.cov.copy()
        out = windows[:, -1] + self.scale * change
        return out if base is None else out + base

    # -- per-device state as data (the engine's snapshot) -------------------------------------
    def device_state(self, device: str) -> dict[str, list[float] | list[list[float]]] | None:
        """What ``device`` has learnt since the trained state (None: nothing yet), as JSON-able data."""
        row = self._index.get(device)
        if row is None:
            return None
        return {"theta": self._theta[row].tolist(), "cov": self._P[row].tolist()}

    def load_device_state(self, device: str, state: dict[str, Any]) -> bool:
        """Continue ``device`` from :meth:`device_state` output; False (nothing loaded) if it does not fit."""
        try:
            theta = np.asarray(state["theta"], dtype=np.float64)
            P = np.asarray(state["cov"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            return False
        d = len(self.coef)
        if theta.shape != (d,) or P.shape != (d, d):
            return False
        if not (np.isfinite(theta).all() and np.isfinite(P).all()):
            return False
        if not np.allclose(P, P.T) or np.trace(P) <= 0 or np.trace(P) > self.max_trace * (1 + 1e-9):
            return False
        row = self._row(device)
        self._theta[row], self._P[row] = theta, P
        return True

    # -- data, never code ---------------------------------------------------------------------
    def to_text(self) -> str:
        return orjson.dumps(self._state()).decode()

    def _state(self) -> dict[str, Any]:
        return {
            "forgetting": self.forgetting,
            "ridge": self.ridge,
            "clip": self.clip,
            "scale": self.scale,
            "center": self.center,
            "spread": self.spread,
            "coef": self.coef.tolist(),
            "cov": self.cov.tolist(),
        }

    @classmethod
    def from_text(cls, text: str, lags: int) -> RlsForecaster:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ModelFileError(f"not an rls model: {exc}") from exc
        return cls._from_state(data, lags)

    @classmethod
    def _from_state(cls, data: Any, lags: int, **extra: Any) -> RlsForecaster:
        try:
            model = cls(
                lags,
                forgetting=float(data["forgetting"]),
                ridge=float(data["ridge"]),
                clip=None if data["clip"] is None else float(data["clip"]),
                **extra,
            )
            coef = np.asarray(data["coef"], dtype=np.float64)
            cov = np.asarray(data["cov"], dtype=np.float64)
            scale = float(data["scale"])
            center, spread = float(data["center"]), float(data["spread"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"not an rls model: {exc}") from exc
        d = lags + 2 + model.extra_features
        if coef.shape != (d,) or cov.shape != (d, d):
            raise ModelFileError(
                f"rls model has {coef.shape} coefficients and {cov.shape} covariance, "
                f"expected ({d},) and ({d}, {d}) for {lags} lags"
            )
        numbers = np.array([scale, center, spread])
        if not (np.isfinite(coef).all() and np.isfinite(cov).all() and np.isfinite(numbers).all()):
            raise ModelFileError("rls model holds non-finite numbers")
        if scale <= 0 or spread <= 0:
            raise ModelFileError("rls model has a non-positive scale")
        if not np.allclose(cov, cov.T):
            raise ModelFileError("rls covariance is not symmetric")
        model.coef, model.cov, model.scale, model.center, model.spread = coef, cov, scale, center, spread
        model._reset_devices()
        return model

    # -- internals ----------------------------------------------------------------------------
    def _features(self, windows: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
        X = design_matrix(windows, "delta") / self.scale
        level = (windows[:, -1:] - self.center) / self.spread
        columns = [X, level, np.ones((len(X), 1))]
        if base is not None:
            columns.append(base[:, None] / self.scale)
        return np.hstack(columns)

    def _base_change(
        self, windows: np.ndarray, rows: np.ndarray | None, *, remember: bool
    ) -> np.ndarray | None:
        """The change a base model forecasts, which the coefficients correct (None: no base model).

        ``rows``: the devices' state rows; ``remember``: keep the result for their next update.
        """
        return None

    def _reset_devices(self) -> None:
        self._max_trace = max(len(self.coef) / self.ridge, float(np.trace(self.cov)))
        # Row 0 is the trained state: devices not seen yet forecast with it; rows 1.. are devices.
        self._index: dict[str, int] = {}
        self._free: list[int] = []  # rows of forgotten devices, reused before the arrays grow
        self._theta = self.coef[None, :].copy()
        self._P = self.cov[None, :, :].copy()

    def forget(self, device: str) -> None:
        """Drop a device's learned state (the engine evicted it); its row is reused by the next device."""
        row = self._index.pop(device, None)
        if row is not None:
            self._free.append(row)

    def _row(self, device: str) -> int:
        row = self._index.get(device)
        if row is None:
            row = self._free.pop() if self._free else len(self._index) + 1
            if row >= len(self._theta):  # grow by doubling: amortised O(1) per new device
                grow = len(self._theta)
                self._theta = np.concatenate([self._theta, np.repeat(self.coef[None], grow, axis=0)])
                self._P = np.concatenate([self._P, np.repeat(self.cov[None], grow, axis=0)])
            self._theta[row], self._P[row] = self.coef, self.cov
            self._index[device] = row
        return row


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    return 0.5 * (matrix + matrix.T)
