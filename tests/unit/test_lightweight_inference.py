"""Serving without the heavy libraries: LightGBM through its C library, our own sequential tests.

Each is checked against the reference it replaces on the same data: identical predictions, identical
alarms. If a LightGBM or River upgrade changes either, these fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from river import drift as river_drift

from edgeloop.drift.sequential import AdwinTest, PageHinkleyTest
from edgeloop.engine.features import design_matrix, training_pairs
from edgeloop.models.forecasters import LightGBMForecaster, forecaster_from_text
from edgeloop.models.lgbm_native import NativeBooster
from edgeloop.telemetry.simulator import Simulator


def _series() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    sim = Simulator(devices=1, seed=3)
    voc = np.array([p["voc_ppb"] for _ in range(3000) for p in sim.step()])
    return {
        "random walk": np.cumsum(rng.normal(size=3000)),
        "sine + noise": 10 * np.sin(np.arange(3000) / 15) + rng.normal(0, 0.5, 3000),
        "simulator voc": voc,
        "level step": np.concatenate([rng.normal(0, 1, 1500), rng.normal(50, 1, 1500)]),
    }


@pytest.mark.parametrize("formulation", ["delta", "level"])
@pytest.mark.parametrize("name", list(_series()))
def test_native_booster_predicts_exactly_what_lightgbm_predicts(formulation: str, name: str) -> None:
    y = _series()[name]
    windows, nxt = training_pairs(y, lags=5)
    trained = LightGBMForecaster(5, formulation, rounds=60).fit(windows, nxt)
    served = forecaster_from_text(f"lgbm-{formulation}", trained.to_text(), lags=5)
    assert isinstance(served.booster, NativeBooster)
    probe = np.vstack([windows, windows * 1.5 + 3, -windows])  # also outside the training range
    reference = trained.booster.predict(design_matrix(probe, formulation), num_threads=1)
    assert np.array_equal(served.booster.predict(design_matrix(probe, formulation)), reference)
    assert np.array_equal(served.predict(probe), trained.predict(probe))


def test_native_booster_refuses_garbage() -> None:
    from edgeloop.errors import ModelFileError

    with pytest.raises(ModelFileError):
        NativeBooster("tree\nversion=v4\nnot a model")


def _error_stream() -> np.ndarray:
    rng = np.random.default_rng(1)
    parts = [
        rng.normal(0, 1, 20_000),
        rng.normal(0, 3, 2_000),
        rng.normal(0, 1, 5_000),
        rng.standard_t(3, 20_000),
    ]
    return np.abs(np.concatenate(parts))


@pytest.mark.parametrize(("delta", "threshold"), [(0.5, 50.0), (0.5, 150.0), (0.005, 50.0)])
def test_page_hinkley_gives_rivers_alarms(delta: float, threshold: float) -> None:
    ours = PageHinkleyTest(min_instances=30, delta=delta, threshold=threshold, alpha=1 - 1e-4)
    ref = river_drift.PageHinkley(
        min_instances=30, delta=delta, threshold=threshold, alpha=1 - 1e-4, mode="up"
    )
    alarms_ours, alarms_ref = [], []
    for x in _error_stream():
        alarms_ours.append(ours.update(float(x)))
        ref.update(float(x))
        alarms_ref.append(ref.drift_detected)
    assert sum(alarms_ref) > 0
    assert alarms_ours == alarms_ref


def test_page_hinkley_state_round_trip_continues_identically() -> None:
    xs = _error_stream()[:30_000]
    whole, first = PageHinkleyTest(delta=0.005), PageHinkleyTest(delta=0.005)
    expected = [whole.update(float(x)) for x in xs]
    got = [first.update(float(x)) for x in xs[:21_000]]
    second = PageHinkleyTest(delta=0.005)
    second.load_state(first.to_state())
    got += [second.update(float(x)) for x in xs[21_000:]]
    assert got == expected and sum(expected) > 0


def test_adwin_gives_rivers_alarms() -> None:
    ours, ref = AdwinTest(delta=0.002, clock=32), river_drift.ADWIN(delta=0.002, clock=32)
    alarms_ours, alarms_ref = [], []
    for x in _error_stream():
        alarms_ours.append(ours.update(float(x)))
        ref.update(float(x))
        alarms_ref.append(ref.drift_detected)
        assert ours.estimation == ref.estimation
    assert sum(alarms_ref) > 0
    assert alarms_ours == alarms_ref


def test_edge_serving_a_lightgbm_model_imports_no_pandas_scipy_or_sklearn(tmp_path: Path) -> None:
    y = _series()["sine + noise"]
    windows, nxt = training_pairs(y, lags=5)
    model_file = tmp_path / "model.txt"
    model_file.write_text(LightGBMForecaster(5, "delta", rounds=20).fit(windows, nxt).to_text())
    probe = f"""
import sys
import subprocess
import sys
from pathlib import Path

import numpy as np
import edgeloop.service.edge
from edgeloop.models.forecasters import forecaster_from_text
model = forecaster_from_text("lgbm-delta", open({str(model_file)!r}).read(), lags=5)
assert np.isfinite(model.predict(np.ones((3, 5)))).all()
heavy = [m for m in ("pandas", "scipy", "sklearn", "lightgbm", "river.drift", "mlflow") if m in sys.modules]
print(",".join(heavy))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
