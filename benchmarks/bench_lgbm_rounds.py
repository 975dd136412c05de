"""LightGBM with early stopping against every round kept: trees, holdout RMSE and inference cost.

On each public series and target (the recordings of ``edgeloop evaluate``), at two points (its
start and its middle), a ``lgbm-delta`` model is fitted on the first 75 % of 4,000 readings, as
training fits it (early stopping on the last fifth of those rows), and once more with every one of
``--rounds`` trees; both forecast the remaining 25 %. Run::

    PYTHONPATH=src python benchmarks/bench_lgbm_rounds.py [--rounds 200]

Prints per fit the trees kept, both holdout RMSEs and their ratio, and the mean ratio; then the
microseconds per row of LightGBM's own batch prediction (the serving path, ``NativeBooster``, rows of
500) for the simulator's model at both sizes.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from edgeloop.engine.features import training_pairs
from edgeloop.evaluate.datasets import DatasetOptions, load_dataset
from edgeloop.models.forecasters import LightGBMForecaster, forecaster_from_text
from edgeloop.telemetry.simulator import Simulator

SPAN = 4000  # readings per fit: the default training window
LAGS = 5


def fit(x: np.ndarray, t: np.ndarray, rounds: int, *, stop: bool) -> LightGBMForecaster:
    return LightGBMForecaster(LAGS, "delta", rounds=rounds, early_stopping=stop).fit(x, t)


def rmse(model: LightGBMForecaster, x: np.ndarray, t: np.ndarray) -> float:
    return float(np.sqrt(np.mean((model.predict(x) - t) ** 2)))


def us_per_row(model: LightGBMForecaster, windows: np.ndarray, repeat: int = 20) -> float:
    served = forecaster_from_text("lgbm-delta", model.to_text(), LAGS)
    rows = windows[:500]
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        served.predict(rows)
        best = min(best, time.perf_counter() - started)
    return 1e6 * best / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.processor() or '?'}; Python {platform.python_version()}")
    ratios = []
    options = DatasetOptions()
    for name in ("air_quality", "occupancy", "nab"):
        data = load_dataset(name, options)
        for target in data.targets:
            values = data.frame[target].to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
            for start in (0, len(values) // 2):
                x, t = training_pairs(values[start : start + SPAN], LAGS)
                n = int(0.75 * len(t))
                stopped = fit(x[:n], t[:n], args.rounds, stop=True)
                full = fit(x[:n], t[:n], args.rounds, stop=False)
                a, b = rmse(stopped, x[n:], t[n:]), rmse(full, x[n:], t[n:])
                ratios.append(a / b)
                print(
                    f"{name:12} {target:14} @{start:>6}: {stopped.booster.num_trees():>3} trees, "
                    f"holdout RMSE {a:.4g} vs {b:.4g} with {args.rounds} ({a / b - 1:+.1%})"
                )
    spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
    print(f"mean ratio {np.mean(ratios):.4f} over {len(ratios)} fits (range {spread})")
    sim = Simulator(["train"], seed=1).frame(3000)["voc_ppb"].to_numpy(dtype=np.float64)
    x, t = training_pairs(sim, LAGS)
    for stop in (True, False):
        model = fit(x, t, args.rounds, stop=stop)
        print(f"simulator model, {model.booster.num_trees():>3} trees: {us_per_row(model, x):.2f} us per row")


if __name__ == "__main__":
    main()
