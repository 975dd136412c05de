"""The engine: online features equal offline features, waves, scoring, drift, probation, rollback."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.config import DriftSettings, Settings
from edgeloop.engine.engine import Engine
from edgeloop.engine.features import lag_windows, training_pairs
from edgeloop.models.forecasters import LinearForecaster, Persistence
from edgeloop.models.modelfile import LoadedModel
from edgeloop.scopes import parse_scope, scope_of
from edgeloop.service.edge import build_engine
from edgeloop.telemetry.schema import PERSISTENCE_VERSION, Telemetry


def engine(**model: object) -> Engine:
    s = Settings(model=model, drift=DriftSettings(warmup=10, window=20, min_gap=50))  # type: ignore[arg-type]
    return build_engine(s, auto_train=False)


def readings(device: str, values: np.ndarray, target: str = "voc_ppb", start: int = 0) -> list[Telemetry]:
    return [Telemetry(device, float(start + i), start + i, {target: float(v)}) for i, v in enumerate(values)]


def linear_on(values: np.ndarray, lags: int = 5, label: str = "voc_ppb:v1") -> LoadedModel:
    x, y = training_pairs(values, lags)
    return LoadedModel(label, LinearForecaster(lags).fit(x, y), {"scores": {"val_rmse": 1.0}})


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=6, max_size=60),
    batch=st.integers(1, 17),
    lags=st.integers(1, 6),
)
def test_online_forecasts_equal_offline_on_the_same_series(
    values: list[float], batch: int, lags: int
) -> None:
    series = np.array(values)
    eng = engine(lags=lags)
    rng = np.random.default_rng(0)
    model = LoadedModel(
        "voc_ppb:v1", LinearForecaster(lags).fit(rng.normal(size=(50, lags)), rng.normal(size=50)), {}
    )
    eng.install("voc_ppb", model, probation=False)
    msgs = readings("d", series)
    online = []
    for i in range(0, len(msgs), batch):
        online += [p.forecasts["voc_ppb"] for p in eng.process(msgs[i : i + batch]).predictions]
    offline = model.forecaster.predict(lag_windows(series, lags))
    # The first lags-1 readings have no full window yet: persistence, labelled as such.
    assert [f.model for f in online[: lags - 1]] == [PERSISTENCE_VERSION] * (lags - 1)
    np.testing.assert_allclose([f.value for f in online[lags - 1 :]], offline, rtol=1e-9, atol=1e-9)


def test_a_batch_with_repeated_devices_equals_one_by_one() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(100, 5, 40), rng.normal(50, 2, 40)
    msgs = [m for pair in zip(readings("a", a), readings("b", b), strict=True) for m in pair]
    model = linear_on(np.concatenate([a, b]))
    one, batched = engine(), engine()
    one.install("voc_ppb", model, probation=False)
    batched.install("voc_ppb", model, probation=False)
    single = [s for m in msgs for s in one.process([m]).samples]
    together = batched.process(msgs).samples
    assert len(single) == len(together) == 80
    for s, t in zip(single, together, strict=True):
        # The same numbers, up to the last bit of a vectorised dot product.
        assert s._replace(prediction=None, forecast=None) == t._replace(prediction=None, forecast=None)
        np.testing.assert_allclose([s.prediction or 0, s.forecast or 0], [t.prediction or 0, t.forecast or 0])
    assert together[-1].persistence == b[-2] and together[-2].persistence == a[-2]


def test_scores_against_persistence_and_mean() -> None:
    eng = engine()
    out = eng.process(readings("d", np.array([1.0, 2.0, 4.0])))
    rows = out.samples
    assert rows[0].forecast is None and rows[1].forecast == 1.0 and rows[2].forecast == 2.0
    assert rows[2].persistence == 2.0 and rows[2].prediction == 4.0
    track = eng.tracks[("d", "voc_ppb")]
    assert (
        track.persist_rmse.value is not None and abs(track.persist_rmse.value - np.sqrt((1 + 4) / 2)) < 1e-12
    )


def test_initial_training_is_requested_once_enough_data_arrived() -> None:
    s = Settings(model={"min_train_samples": 50})  # type: ignore[arg-type]
    eng = build_engine(s)
    first = eng.process(readings("d", np.arange(49.0)))
    assert first.retrains == []
    second = eng.process(readings("d", np.arange(49.0, 60.0), start=49))
    assert [r.scope for r in second.retrains] == ["voc_ppb"]
    assert eng.process(readings("d", np.arange(60.0, 70.0), start=60)).retrains == []  # pending
    eng.retrain_finished("voc_ppb", installed=False)
    assert eng.process(readings("d", np.arange(70.0, 80.0), start=70)).retrains == []  # waits for 2x the data


def test_drift_on_one_device_requests_a_retrain_for_that_scope_only() -> None:
    rng = np.random.default_rng(2)
    n = 3000
    calm = {d: 100 + np.cumsum(rng.normal(0, 1, n)) for d in ("a", "b")}
    eng = engine(retrain_min_samples=50)
    eng.install(
        "voc_ppb", LoadedModel("voc_ppb:v1", Persistence(5), {"scores": {"val_rmse": 1.0}}), probation=False
    )
    requests, kinds = [], []
    for i in range(0, n, 100):
        batch = []
        for d, series in calm.items():
            values = series[i : i + 100].copy()
            if d == "b" and i >= 1500:
                values += rng.normal(0, 8, len(values))  # the error of b's model grows 8x
            batch += readings(d, values, start=i)
        out = eng.process(batch)
        requests += [r.scope for r in out.retrains]
        kinds += [(e.kind, e.scope) for e in out.events]
    assert requests == ["voc_ppb@b"]
    assert ("drift_detected", "voc_ppb@b") in kinds and all(s != "voc_ppb@a" for _, s in kinds)
    assert eng.tracks[("b", "voc_ppb")].status == "retraining"


def test_probation_rolls_back_a_model_worse_than_the_one_it_replaced() -> None:
    rng = np.random.default_rng(3)
    series = 100 + np.cumsum(rng.normal(0, 1, 600))
    eng = engine(probation_samples=100)
    good = LoadedModel("voc_ppb:v1", Persistence(5), {"scores": {"val_rmse": 1.0}})
    bad_lin = LinearForecaster(5)
    bad_lin.coef, bad_lin.intercept = np.array([0.0, 0.0, 0.0, 0.0, 0.5]), 40.0  # shrinks towards 80
    eng.install("voc_ppb", good, probation=False)
    eng.process(readings("d", series[:100]))
    eng.install("voc_ppb", LoadedModel("voc_ppb:v2", bad_lin, {"scores": {"val_rmse": 1.0}}))
    assert eng.serving_label("d", "voc_ppb") == "voc_ppb:v2"
    out = eng.process(readings("d", series[100:300], start=100))
    assert [r.rejected for r in out.rollbacks] == ["voc_ppb:v2"]
    assert [e.kind for e in out.events if e.kind == "model_rolled_back"] == ["model_rolled_back"]
    assert eng.serving_label("d", "voc_ppb") == "voc_ppb:v1"


def test_probation_keeps_a_better_model() -> None:
    rng = np.random.default_rng(4)
    t = np.arange(800)
    series = 100 + 10 * np.sin(t / 3.0) + rng.normal(0, 0.1, len(t))
    eng = engine(probation_samples=100)
    eng.install(
        "voc_ppb", LoadedModel("voc_ppb:v1", Persistence(5), {"scores": {"val_rmse": 1.0}}), probation=False
    )
    eng.process(readings("d", series[:100]))
    eng.install("voc_ppb", linear_on(series[:400], label="voc_ppb:v2"))
    assert eng.tracks[("d", "voc_ppb")].status == "probation"
    out = eng.process(readings("d", series[100:400], start=100))
    assert out.rollbacks == [] and eng.serving_label("d", "voc_ppb") == "voc_ppb:v2"
    assert eng.tracks[("d", "voc_ppb")].status == "healthy"


def test_device_model_overrides_the_fleet_model() -> None:
    eng = engine()
    eng.install("voc_ppb", LoadedModel("voc_ppb:v1", Persistence(5), {}), probation=False)
    eng.install("voc_ppb@b", LoadedModel("voc_ppb@b:v1", Persistence(5), {}), probation=False)
    out = eng.process(readings("a", np.arange(6.0)) + readings("b", np.arange(6.0)))
    models = {p.device: p.forecasts["voc_ppb"].model for p in out.predictions}
    assert models == {"a": "voc_ppb:v1", "b": "voc_ppb@b:v1"}
    assert scope_of("voc_ppb", "b") == "voc_ppb@b" and parse_scope("voc_ppb@b") == ("voc_ppb", "b")


# -- bounded per-device state ----------------------------------------------------------------------


def bounded(max_devices: int, device_idle_s: float) -> Engine:
    s = Settings(limits={"max_devices": max_devices, "device_idle_s": device_idle_s})  # type: ignore[arg-type]
    return build_engine(s, auto_train=False)


def reading(device: str, ts: float, seq: int = 0) -> Telemetry:
    return Telemetry(device, ts, seq, {"voc_ppb": 100.0 + seq})


def test_a_full_engine_evicts_the_least_recently_heard_idle_device_or_drops_the_new_one() -> None:
    eng = bounded(3, device_idle_s=10)
    eng.process([reading(d, 0.0) for d in "abc"])
    eng.process([reading("b", 2.0), reading("c", 2.0)])
    early = eng.process([reading("d", 5.0)])  # a was heard at 0: silent 5 s < 10 s
    assert [(m.device, why) for m, why in early.dropped] == [("d", "device_full")] and early.predictions == []
    late = eng.process([reading("d", 11.0)])  # a silent 11 s: evicted, d takes its place
    assert late.evicted == 1 and late.dropped == [] and [p.device for p in late.predictions] == ["d"]
    assert ("a", "voc_ppb") not in eng.tracks and eng.devices == 3 and eng.evictions == 1
    back = eng.process([reading("a", 12.0)])  # b, heard at 2, is now the oldest and silent 10 s
    assert back.evicted == 1 and ("b", "voc_ppb") not in eng.tracks
    assert eng.tracks[("a", "voc_ppb")].count == 1  # a starts again from nothing


def test_a_device_of_the_same_batch_is_never_evicted() -> None:
    eng = bounded(2, device_idle_s=0)
    out = eng.process([reading("a", 0.0), reading("b", 1.0), reading("c", 2.0), reading("a", 3.0, 1)])
    assert [m.device for m, _ in out.dropped] == ["c"]
    assert [(p.device, p.seq) for p in out.predictions] == [("a", 0), ("b", 0), ("a", 1)]
    later = eng.process([reading("c", 4.0)])
    # b is now the least recently heard (a spoke again after it)
    assert later.evicted == 1 and ("a", "voc_ppb") in eng.tracks and ("b", "voc_ppb") not in eng.tracks


@settings(max_examples=60, deadline=None)
@given(
    stream=st.lists(st.tuples(st.integers(0, 12), st.floats(0, 5)), min_size=1, max_size=120),
    max_devices=st.integers(1, 6),
    idle=st.sampled_from([0.0, 3.0, 1e9]),
    batch=st.integers(1, 9),
)
def test_state_stays_bounded_and_every_reading_is_answered_or_dropped(
    stream: list[tuple[int, float]], max_devices: int, idle: float, batch: int
) -> None:
    eng = bounded(max_devices, idle)
    msgs, ts = [], 0.0
    for seq, (device, step) in enumerate(stream):
        ts += step
        msgs.append(reading(f"d{device}", ts, seq))
    answered, dropped = [], []
    for i in range(0, len(msgs), batch):
        out = eng.process(msgs[i : i + batch])
        answered += [p.seq for p in out.predictions]
        dropped += [m.seq for m, why in out.dropped if why == "device_full"]
        assert eng.devices <= max_devices and len(eng.tracks) <= max_devices
        assert {d for d, _ in eng.tracks} == set(eng._heard)
    assert sorted(answered + dropped) == list(range(len(msgs)))
    if idle == 1e9:  # nobody is ever idle: the first devices keep their places, no one else gets in
        first = list(dict.fromkeys(m.device for m in msgs))[:max_devices]
        assert all(m.device in first for m in msgs if m.seq in answered) and eng.evictions == 0


def test_status_rows_only_for_tracks_that_changed() -> None:
    eng = bounded(10, 1e9)
    eng.process([reading("a", 0.0), reading("b", 0.0)])
    assert {r.device for r in eng.status_rows(100.0)} == {"a", "b"}
    assert eng.status_rows(101.0) == []  # nothing changed
    eng.process([reading("a", 1.0, 1)])
    rows = eng.status_rows(102.0)
    assert [(r.device, r.readings, r.rate) for r in rows] == [("a", 2, 1.0)]
    stopped = eng.status_rows(103.0)  # a stopped talking: one more row shows its rate fall to 0
    assert [(r.device, r.rate) for r in stopped] == [("a", 0.0)] and eng.status_rows(104.0) == []
    eng.install("voc_ppb", LoadedModel("voc_ppb:v1", Persistence(5), {"scores": {"val_rmse": 1.0}}))
    # a's rolling RMSE restarts with the new model; b had scored nothing yet, so its row reads the same.
    assert [(r.device, r.rmse) for r in eng.status_rows(105.0)] == [("a", None)]
    eng.tracks[("b", "voc_ppb")].status = "drifting"
    assert [(r.device, r.status) for r in eng.status_rows(105.5)] == [("b", "drifting")]
    eng.evict("a")
    assert eng.status_rows(106.0) == [] and ("a", "voc_ppb") not in eng._rate_mark


def test_state_made_outside_process_counts_and_a_lowered_limit_is_caught_up() -> None:
    eng = bounded(4, device_idle_s=10)
    eng.process([reading(d, 0.0) for d in "abc"])
    eng._track("restored", "voc_ppb")  # as a state restore would: it must count towards the limit
    assert eng.devices == 4
    eng.max_devices = 2
    out = eng.process([reading("new", 20.0)])
    assert out.evicted == 3 and eng.devices == 2 and set(eng._heard) == {"restored", "new"}
