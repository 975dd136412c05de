"""RLS with forgetting: equals batch least squares, stays finite on hard series, vectorised = looped,
round-trips through its JSON model file, and learns inside the engine after every scored reading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeloop.adapters.store import Series
from edgeloop.config import DriftSettings, Settings
from edgeloop.engine.features import design_matrix, training_pairs
from edgeloop.errors import ModelFileError
from edgeloop.models.forecasters import Persistence, forecaster_from_text, make_forecaster, rmse
from edgeloop.models.modelfile import MODEL_FILE, LoadedModel, load_model, save_model
from edgeloop.models.online import RlsForecaster
from edgeloop.models.training import train_candidates
from edgeloop.service.edge import build_engine
from edgeloop.telemetry.schema import Telemetry


def ar_series(n: int, seed: int = 0, level: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    for t in range(2, n):
        x[t] = 1.6 * x[t - 1] - 0.8 * x[t - 2] + rng.normal()
    return level + x


def batch_least_squares(windows: np.ndarray, next_values: np.ndarray, rls: RlsForecaster) -> np.ndarray:
    """Ridge on [lag differences, step, level, 1], scaled as the model scales them, solved directly."""
    X = np.hstack(
        [
            design_matrix(windows, "delta") / rls.scale,
            (windows[:, -1:] - rls.center) / rls.spread,
            np.ones((len(windows), 1)),
        ]
    )
    y = (next_values - windows[:, -1]) / rls.scale
    return np.linalg.solve(X.T @ X + rls.ridge * np.eye(X.shape[1]), X.T @ y)


def test_sequential_updates_equal_batch_least_squares_without_forgetting() -> None:
    x, t = training_pairs(ar_series(1200), 5)
    rls = RlsForecaster(5, forgetting=1.0, clip=None).fit(x[:300], t[:300])
    for i in range(300, len(t)):
        rls.update(x[i : i + 1], t[i : i + 1], ["d"])
    expected = batch_least_squares(x, t, rls)
    np.testing.assert_allclose(rls._theta[rls._index["d"]], expected, rtol=1e-6, atol=1e-9)
    # The closed-form fit over every window is the same model.
    whole = RlsForecaster(5, forgetting=1.0).fit(x, t)
    np.testing.assert_allclose(whole.coef, batch_least_squares(x, t, whole), rtol=1e-9)


def test_fit_with_forgetting_equals_running_rls_from_the_prior() -> None:
    x, t = training_pairs(ar_series(500, seed=3), 4)
    fitted = RlsForecaster(4, forgetting=0.99, clip=None).fit(x, t)
    # Same scale, prior of the fit, then RLS one window at a time from zero coefficients.
    running = RlsForecaster(4, forgetting=0.99, clip=None)
    running.scale, running.center, running.spread = fitted.scale, fitted.center, fitted.spread
    running.cov = np.eye(6) / running.ridge
    running._reset_devices()
    running._max_trace = np.inf  # pure RLS: the bound is what this package adds to it
    for i in range(len(t)):
        running.update(x[i : i + 1], t[i : i + 1], ["d"])
    # The fit's prior decays as lambda^n exactly like the running one's, down to the floor.
    np.testing.assert_allclose(running._theta[1], fitted.coef, rtol=1e-5, atol=1e-8)


def test_does_not_diverge_where_sgd_did() -> None:
    """A CO2-like series: flat for hours, then steps of hundreds of ppm, spikes, and a stuck stretch."""
    rng = np.random.default_rng(7)
    parts = [
        450 + rng.normal(0, 0.5, 3000),
        np.linspace(450, 1400, 400) + rng.normal(0, 20, 400),
        1400 + rng.normal(0, 30, 1000),
        np.full(3000, 1400.0),  # stuck: no excitation, the covariance must not wind up
        np.where(rng.random(2000) < 0.01, 5000.0, 600 + rng.normal(0, 5, 2000)),  # spikes
    ]
    y = np.concatenate(parts)
    x, t = training_pairs(y, 5)
    rls = RlsForecaster(5, forgetting=0.995).fit(x[:2000], t[:2000])
    forecasts = np.empty(len(t) - 2000)
    for i in range(2000, len(t)):
        forecasts[i - 2000] = rls.predict(x[i : i + 1], ["co2"])[0]
        rls.update(x[i : i + 1], t[i : i + 1], ["co2"])
    assert np.isfinite(forecasts).all()
    assert np.trace(rls._P[1]) <= rls.max_trace * (1 + 1e-9)
    persistence = rmse(x[2000:, -1], t[2000:])
    assert rmse(forecasts, t[2000:]) < 1.5 * persistence


def test_vectorised_update_equals_a_loop_per_device() -> None:
    lags, devices = 5, [f"d{k}" for k in range(7)]
    series = np.stack([ar_series(400, seed=k, level=10.0 * k) for k in range(len(devices))])
    x0, t0 = training_pairs(series[0], lags)
    together = RlsForecaster(lags, forgetting=0.99).fit(x0[:100], t0[:100])
    apart = {d: RlsForecaster.from_text(together.to_text(), lags) for d in devices}
    for i in range(100, 390):
        windows = series[:, i - lags : i]
        values = series[:, i]
        together.update(windows, values, devices)
        for k, d in enumerate(devices):
            apart[d].update(windows[k : k + 1], values[k : k + 1], [d])
    windows = series[:, -lags:]
    np.testing.assert_allclose(
        together.predict(windows, devices),
        [apart[d].predict(windows[k : k + 1], [d])[0] for k, d in enumerate(devices)],
        rtol=1e-12,
    )
    # A device never seen forecasts with the trained state.
    np.testing.assert_array_equal(together.predict(windows[:1], ["new"]), together.predict(windows[:1]))


def test_forgotten_devices_free_their_state_for_new_ones() -> None:
    lags = 5
    x, t = training_pairs(ar_series(300, seed=1), lags)
    model = RlsForecaster(lags).fit(x[:200], t[:200])
    fresh = RlsForecaster.from_text(model.to_text(), lags)
    for k in range(1_000):  # a churning fleet: each device seen once, then evicted
        model.update(x[200:201], t[200:201], [f"dev-{k}"])
        model.forget(f"dev-{k}")
    assert model.devices == 0 and len(model._theta) <= 2
    # A device that comes back starts again from the trained state.
    model.update(x[200:201], t[200:201], ["dev-0"])
    fresh.update(x[200:201], t[200:201], ["dev-0"])
    np.testing.assert_array_equal(model.predict(x[201:202], ["dev-0"]), fresh.predict(x[201:202], ["dev-0"]))


def test_non_finite_readings_are_skipped() -> None:
    x, t = training_pairs(ar_series(300), 5)
    rls = RlsForecaster(5).fit(x, t)
    rls.update(x[:2], np.array([np.nan, t[1]]), ["a", "b"])
    assert rls.devices == 1 and np.isfinite(rls.predict(x[:1], ["b"])).all()


def test_json_model_file_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    x, t = training_pairs(ar_series(800), 5)
    model = make_forecaster("rls", 5).fit(x, t)
    meta = {"scope": "voc_ppb", "target": "voc_ppb", "version": 1, "label": "voc_ppb:v1"}
    save_model(tmp_path / "v1", model, meta)
    loaded = load_model(tmp_path / "v1", expect_lags=5, expect_target="voc_ppb")
    assert loaded.forecaster.kind == "rls" and loaded.meta["kind"] == "rls"
    np.testing.assert_array_equal(loaded.forecaster.predict(x), model.predict(x))
    # Both learn the same way from the same readings afterwards.
    for m in (model, loaded.forecaster):
        m.update(x[:1], t[:1], ["d"])  # type: ignore[attr-defined]
    np.testing.assert_array_equal(
        loaded.forecaster.predict(x, ["d"] * len(x)), model.predict(x, ["d"] * len(x))
    )  # type: ignore[call-arg]
    text = (tmp_path / "v1" / MODEL_FILE).read_text()
    assert '"cov"' in text and '"forgetting"' in text


GOOD = {
    "forgetting": 0.99,
    "ridge": 1.0,
    "clip": None,
    "scale": 1.0,
    "center": 0.0,
    "spread": 1.0,
    "coef": [0.0, 0.0, 0.0],
    "cov": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"coef": [0.0, 0.0]}, "expected"),
        ({"cov": [[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]}, "not symmetric"),
        ({"forgetting": 1.5}, "forgetting factor"),
        ({"scale": 0.0}, "non-positive"),
        ({"center": None}, "not an rls model"),
        ({"coef": [0.0, "nan", 0.0]}, "not an rls model|non-finite"),
    ],
)
def test_bad_model_text_is_refused(change: dict[str, object], message: str) -> None:
    forecaster_from_text("rls", json.dumps(GOOD), lags=1)  # the unchanged one loads
    with pytest.raises(ModelFileError, match=message):
        forecaster_from_text("rls", json.dumps({**GOOD, **change}), lags=1)
    with pytest.raises(ModelFileError, match="not an rls model"):
        forecaster_from_text("rls", "not json", lags=1)


def test_rls_is_a_candidate_scored_as_it_would_serve() -> None:
    # A slowly changing AR process: a model that keeps learning through the holdout wins.
    rng = np.random.default_rng(2)
    n = 3000
    phi = np.linspace(0.2, 0.95, n)
    y = np.zeros(n)
    for i in range(1, n):
        y[i] = y[i - 1] + phi[i] * (y[i - 1] - y[i - 2] if i > 1 else 0) * 0.5 + rng.normal()
    res = train_candidates(
        [Series("d", np.arange(n, dtype=float), y)], lags=5, candidates=["persistence", "linear", "rls"]
    )
    assert set(res.scores) == {"persistence", "linear", "rls"}
    assert res.scores["rls"] < res.scores["persistence"]


def ar2(n: int, a: float, b: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    for t in range(2, n):
        x[t] = a * x[t - 1] + b * x[t - 2] + rng.normal()
    return x


def test_engine_updates_an_online_model_after_every_scored_reading() -> None:
    s = Settings(model={"lags": 5}, drift=DriftSettings(warmup=10, window=20, min_gap=50))  # type: ignore[arg-type]
    engine = build_engine(s, auto_train=False)
    # Trained on one dynamic, served on others: the fixed model stays wrong, RLS adapts per device.
    x, t = training_pairs(ar2(2000, 1.6, -0.8, seed=1), 5)
    model = RlsForecaster(5, forgetting=0.995).fit(x, t)
    fixed = RlsForecaster.from_text(model.to_text(), 5)
    engine.install("voc_ppb", LoadedModel("voc_ppb:v1", model, {}), probation=False)
    streams = {"a": ar2(3000, 0.3, 0.2, seed=2), "b": ar2(3000, -0.5, 0.0, seed=3)}
    forecasts: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(3000):
        out = engine.process(
            [Telemetry(d, float(i), i, {"voc_ppb": float(v[i])}) for d, v in streams.items()]
        )
        for row in out.samples:
            forecasts[row.device].append(np.nan if row.forecast is None else row.forecast)
    assert model.devices == 2
    for device, y in streams.items():
        online = np.array(forecasts[device])[1500:]
        windows, actual = training_pairs(y[1500 - 5 :], 5)
        assert np.allclose(actual, y[1500:])
        static = fixed.predict(windows)
        # The engine's forecasts are the adapted model's; far better than the trained one alone.
        assert rmse(online, actual) < 0.8 * rmse(static, actual), device
        assert rmse(online, actual) < rmse(Persistence(5).predict(windows), actual)
