"""lgbm-rls (a LightGBM change model corrected online by RLS) and online state that survives a restart:
the holdout is scored exactly as serving forecasts, the correction follows a change the tree cannot,
the tree runs once per reading in the engine, and a device's learnt state goes through the snapshot."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from edgeloop.config import DriftSettings, Settings
from edgeloop.engine.features import training_pairs
from edgeloop.errors import ModelFileError
from edgeloop.models.corrected import CorrectedForecaster
from edgeloop.models.forecasters import forecaster_from_text, make_forecaster, rmse
from edgeloop.models.modelfile import LoadedModel
from edgeloop.models.online import RlsForecaster
from edgeloop.service.edge import build_engine
from edgeloop.telemetry.schema import Telemetry


def drifting(n: int, seed: int = 0) -> np.ndarray:
    """A daily-like cycle with noise whose level pulls back to a mean that starts moving at n/2."""
    rng = np.random.default_rng(seed)
    mean = np.where(np.arange(n) < n // 2, 0.0, np.arange(n) - n // 2) * 0.05
    y = np.zeros(n)
    for t in range(1, n):
        y[t] = y[t - 1] + 0.2 * (mean[t] - y[t - 1]) + np.sin(t / 9.0) + rng.normal(0, 0.3)
    return 50 + y


@pytest.mark.parametrize("kind", ["rls", "lgbm-rls"])
def test_holdout_forecast_is_predict_then_update_reading_by_reading(kind: str) -> None:
    x, t = training_pairs(drifting(3000), 5)
    model = make_forecaster(kind, 5, rounds=30).fit(x[:1500], t[:1500])
    fast = model.holdout_forecast(x[1500:], t[1500:])
    served = np.empty(len(fast))
    for i in range(1500, len(t)):
        served[i - 1500] = model.predict(x[i : i + 1], ["d"])[0]
        model.update(x[i : i + 1], t[i : i + 1], ["d"])
    np.testing.assert_allclose(fast, served, rtol=1e-9, atol=1e-9)


def test_the_correction_follows_a_change_the_tree_was_not_trained_on() -> None:
    # A gain change: from reading 2000 on every movement is 2.5 times as large. The tree's leaves
    # cannot forecast changes larger than it saw; the correction learns to scale its forecast up.
    y = drifting(4000, seed=1)
    y = np.where(np.arange(4000) < 2000, y, 50 + 2.5 * (y - 50))
    x, t = training_pairs(y, 5)
    model = CorrectedForecaster(5, rounds=50).fit(x[:1900], t[:1900])
    tree_only = model._tree_change(x[2000:]) + x[2000:, -1]
    corrected = model.holdout_forecast(x[2000:], t[2000:])
    assert rmse(corrected, t[2000:]) < 0.9 * rmse(tree_only, t[2000:])


def test_the_engine_runs_the_tree_once_per_reading() -> None:
    s = Settings(model={"lags": 5}, drift=DriftSettings(warmup=10, window=20, min_gap=50))
    engine = build_engine(s, auto_train=False)
    x, t = training_pairs(drifting(2000), 5)
    model = CorrectedForecaster(5, rounds=20).fit(x, t)
    calls = [0]
    tree = model._tree_change

    def counted(windows: np.ndarray) -> np.ndarray:
        calls[0] += len(windows)
        return tree(windows)

    model._tree_change = counted  # type: ignore[method-assign]
    engine.install("voc_ppb", LoadedModel("voc_ppb:v1", model, {}), probation=False)
    y = drifting(600, seed=4)
    devices = ["a", "b", "c"]
    for i in range(600):
        engine.process(
            [Telemetry(d, float(i), i, {"voc_ppb": float(y[i] + k)}) for k, d in enumerate(devices)]
        )
    forecasts = 3 * (600 - 4)  # from the fifth reading on, every device is forecast once per reading
    # Each device's first update has no remembered tree output (it had no state row when forecast).
    assert calls[0] == forecasts + len(devices)
    assert model.devices == 3


def test_model_text_round_trips_and_refuses_a_broken_tree() -> None:
    x, t = training_pairs(drifting(1500), 5)
    model = CorrectedForecaster(5, rounds=20).fit(x, t)
    model.update(x[:1], t[:1], ["d"])
    clone = forecaster_from_text("lgbm-rls", model.to_text(), 5)
    np.testing.assert_allclose(clone.predict(x[-50:]), model.predict(x[-50:]))
    data = orjson.loads(model.to_text())
    with pytest.raises(ModelFileError, match="lgbm-rls"):
        forecaster_from_text("lgbm-rls", orjson.dumps({**data, "tree": 3}).decode(), 5)
    with pytest.raises(ModelFileError, match="features"):
        forecaster_from_text("lgbm-rls", model.to_text(), 4)


@pytest.mark.parametrize("kind", ["rls", "lgbm-rls"])
def test_device_state_loads_into_a_fresh_copy_and_bad_state_is_refused(kind: str) -> None:
    x, t = training_pairs(drifting(2500, seed=2), 5)
    model = make_forecaster(kind, 5, rounds=20).fit(x[:1000], t[:1000])
    for i in range(1000, 2000):
        model.predict(x[i : i + 1], ["d"])
        model.update(x[i : i + 1], t[i : i + 1], ["d"])
    state = orjson.loads(orjson.dumps(model.device_state("d")))
    fresh = forecaster_from_text(kind, model.to_text(), 5)
    assert isinstance(fresh, RlsForecaster)
    assert fresh.load_device_state("d", state)
    np.testing.assert_allclose(fresh.predict(x[2000:2001], ["d"]), model.predict(x[2000:2001], ["d"]))
    assert model.device_state("never-seen") is None
    bad = {"theta": state["theta"][:-1], "cov": state["cov"]}
    huge = {"theta": state["theta"], "cov": (np.eye(len(state["theta"])) * 1e9).tolist()}
    for broken in (bad, huge, {"theta": "x"}, {}):
        assert not fresh.load_device_state("e", broken)
    assert fresh.device_state("e") is None


def test_an_online_models_device_state_survives_an_engine_restart() -> None:
    s = Settings(model={"lags": 5}, drift=DriftSettings(warmup=10, window=20, min_gap=50))
    x, t = training_pairs(drifting(2000), 5)
    trained = RlsForecaster(5, forgetting=0.995).fit(x, t).to_text()

    def start() -> tuple[object, RlsForecaster]:
        engine = build_engine(s, auto_train=False)
        model = RlsForecaster.from_text(trained, 5)
        engine.install("voc_ppb", LoadedModel("voc_ppb:v1", model, {}), probation=False)
        return engine, model

    y = drifting(3000, seed=5) * 1.5  # other dynamics than trained on: the device's state moves
    before, model = start()
    for i in range(1500):
        before.process([Telemetry("d", float(i), i, {"voc_ppb": float(y[i])})])  # type: ignore[attr-defined]
    snapshot = orjson.loads(orjson.dumps(before.export_state()))  # type: ignore[attr-defined]
    after, restored = start()
    after.import_state(snapshot)  # type: ignore[attr-defined]
    np.testing.assert_allclose(restored._theta[restored._index["d"]], model._theta[model._index["d"]])
    for i in range(1500, 1600):
        message = [Telemetry("d", float(i), i, {"voc_ppb": float(y[i])})]
        a = before.process(message).samples[0].forecast  # type: ignore[attr-defined]
        b = after.process(message).samples[0].forecast  # type: ignore[attr-defined]
        assert a == pytest.approx(b, rel=1e-9)
