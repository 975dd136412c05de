"""River's adaptive random forest as a reference: a model that learns after every reading, no retrains.

:func:`arf_forecasts` runs ``river.forest.ARFRegressor`` (``n_models`` trees, the library's own
ADWIN drift and warning detectors per tree) on each device's stream in the change formulation the
engine's delta models use: inputs are the last ``lags`` readings relative to the newest one plus the
last step (:func:`~edgeloop.engine.features.design_matrix`), the output is the change to the next
reading. It learns from every reading of the training part, then forecasts each scored reading
before learning from it: the same readings every other strategy is scored on.

It is a reference, not a candidate: about 2 ms per reading on one core, where the engine spends
about 20 us (``benchmarks/bench_engine_online.py``).

>>> import numpy as np
>>> y = np.sin(np.arange(400) / 6.0)
>>> f = arf_forecasts(y, start=200, lags=3, n_models=2)
>>> bool(np.isnan(f[:200]).all()), bool(np.isfinite(f[200:]).all())
(True, True)
>>> bool(np.sqrt(np.mean((f[200:] - y[200:]) ** 2)) < np.sqrt(np.mean((y[199:-1] - y[200:]) ** 2)))
True
"""

from __future__ import annotations

import numpy as np

from edgeloop.engine.features import design_matrix

N_MODELS = 10


def arf_forecasts(
    values: np.ndarray, *, start: int, lags: int, n_models: int = N_MODELS, seed: int = 0
) -> np.ndarray:
    """One-step forecasts of ``values[start:]`` (NaN before), learning after every reading."""
    from river import forest  # heavy import, needed only by this reference strategy

    model = forest.ARFRegressor(n_models=n_models, seed=seed)
    values = np.asarray(values, dtype=np.float64)
    out = np.full(len(values), np.nan)
    if len(values) <= lags:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(values, lags)[:-1]  # window i forecasts i + lags
    features = design_matrix(windows, "delta")
    names = [f"x{k}" for k in range(features.shape[1])]
    for j, row in enumerate(features.tolist()):
        i = j + lags
        x = dict(zip(names, row, strict=True))
        last = values[i - 1]
        if i >= start:
            out[i] = last + float(model.predict_one(x))
        model.learn_one(x, float(values[i] - last))
    return out
