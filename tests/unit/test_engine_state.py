"""Engine state across a restart: a restored engine carries on exactly as one that never stopped."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.config import DriftSettings, Settings
from edgeloop.engine.engine import Engine
from edgeloop.engine.features import training_pairs
from edgeloop.engine.state import StateError
from edgeloop.models.forecasters import LinearForecaster, Persistence
from edgeloop.models.modelfile import LoadedModel
from edgeloop.service.edge import build_engine
from edgeloop.telemetry.schema import PERSISTENCE_VERSION, Telemetry

TARGET = "voc_ppb"
DEVICES = ("a", "b", "c")


def make(policy: str = "page-hinkley", lags: int = 5) -> Engine:
    drift = DriftSettings(
        policy=policy,  # type: ignore[arg-type]
        warmup=10,
        window=20,
        calibration=40,
        min_gap=50,
        threshold=3.0 if policy == "rmse-threshold" else None,
    )
    s = Settings(model={"lags": lags, "retrain_min_samples": 60}, drift=drift)  # type: ignore[arg-type]
    return build_engine(s, auto_train=False)


def series(n: int, seed: int, drift_at: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, dev in enumerate(DEVICES):
        x = 100 + 10 * np.sin(np.arange(n) / 15 + k) + rng.normal(0, 1, n)
        if drift_at is not None:
            x[drift_at:] += rng.normal(0, 8, n - drift_at)  # noisier: the model's error grows
        out[dev] = x
    return out


def stream(values: dict[str, np.ndarray], start: int) -> list[Telemetry]:
    n = len(next(iter(values.values())))
    return [
        Telemetry(dev, float(start + i), start + i, {TARGET: float(values[dev][i])})
        for i in range(n)
        for dev in DEVICES
    ]


def model(label: str = f"{TARGET}:v1") -> LoadedModel:
    x = 100 + 10 * np.sin(np.arange(2000) / 15)
    xs, ys = training_pairs(x, 5)
    return LoadedModel(label, LinearForecaster(5).fit(xs, ys), {"scores": {"val_rmse": 1.0}})


def run(eng: Engine, msgs: list[Telemetry], batch: int = 7) -> tuple[list[Any], list[Any], list[Any]]:
    preds, events, retrains = [], [], []
    for i in range(0, len(msgs), batch):
        out = eng.process(msgs[i : i + batch])
        preds += [
            (p.device, p.seq, p.forecasts[TARGET].value, p.forecasts[TARGET].model) for p in out.predictions
        ]
        events += [(e.kind, e.scope, e.ts) for e in out.events]
        retrains += [(r.scope, r.trigger) for r in out.retrains]
    return preds, events, retrains


def roundtrip(eng: Engine) -> Any:
    return orjson.loads(orjson.dumps(eng.export_state()))


@pytest.mark.parametrize("policy", ["page-hinkley", "relative", "rmse-threshold"])
def test_restored_engine_continues_exactly(policy: str) -> None:
    before, after = stream(series(300, 1), 0), stream(series(400, 2, drift_at=100), 300)
    m = model()
    reference = make(policy)
    reference.install(TARGET, m, probation=False)
    run(reference, before)
    expected = run(reference, after)

    first = make(policy)
    first.install(TARGET, m, probation=False)
    run(first, before)
    snapshot = roundtrip(first)
    second = make(policy)  # a new process: same config, same champion, nothing else
    second.install(TARGET, m, probation=False)
    report = second.import_state(snapshot)
    assert (report.restored, report.skipped, report.rebased) == (3, 0, 0)
    got = run(second, after)
    assert got == expected
    # The comparison can fail: the drift must actually have been seen.
    assert any(kind == "drift_detected" for kind, _, _ in expected[1])


def test_after_restore_first_forecasts_come_from_the_model_and_detection_is_armed() -> None:
    m = model()
    eng = make("page-hinkley")
    eng.install(TARGET, m, probation=False)
    run(eng, stream(series(300, 1), 0))
    assert eng.tracks[("a", TARGET)].guard.detector.calibrated
    fresh = make("page-hinkley")
    fresh.install(TARGET, m, probation=False)
    fresh.import_state(roundtrip(eng))
    out = fresh.process(stream(series(1, 3), 300))
    assert [p.forecasts[TARGET].model for p in out.predictions] == [m.label] * 3
    guard = fresh.tracks[("a", TARGET)].guard
    assert guard.detector.calibrated and not guard.in_warmup


def test_adwin_is_re_primed_and_stays_armed() -> None:
    m = model()
    eng = make("adwin")
    eng.install(TARGET, m, probation=False)
    run(eng, stream(series(300, 1), 0))
    fresh = make("adwin")
    fresh.install(TARGET, m, probation=False)
    fresh.import_state(roundtrip(eng))
    det = fresh.tracks[("a", TARGET)].guard.detector
    assert det.calibrated and det._armed  # type: ignore[attr-defined]
    _, events, _ = run(fresh, stream(series(400, 2, drift_at=50), 300))
    assert any(kind == "drift_detected" for kind, _, _ in events)


def test_a_new_champion_while_down_restarts_error_state_but_keeps_the_lag_window() -> None:
    eng = make()
    eng.install(TARGET, model(), probation=False)
    run(eng, stream(series(300, 1), 0))
    fresh = make()
    fresh.install(TARGET, model(f"{TARGET}:v2"), probation=False)
    report = fresh.import_state(roundtrip(eng))
    assert report.rebased == 3
    track = fresh.tracks[("a", TARGET)]
    assert len(track.hist) == 5 and track.model_rmse.count == 0 and track.guard.in_warmup


def test_a_device_model_is_not_put_back_on_probation_by_a_restart() -> None:
    eng = make()
    fleet, own = model(), LoadedModel(f"{TARGET}@a:v1", Persistence(5), {"scores": {"val_rmse": 1.0}})
    eng.install(TARGET, fleet, probation=False)
    eng.install(f"{TARGET}@a", own)
    assert eng.serving[f"{TARGET}@a"].probation_left > 0
    run(eng, stream(series(300, 1), 0))  # probation (200 readings) ends
    assert eng.serving[f"{TARGET}@a"].probation_left == 0
    fresh = make()
    fresh.install(TARGET, fleet, probation=False)
    fresh.install(f"{TARGET}@a", own)  # how the edge loads champions at start: with probation
    fresh.import_state(roundtrip(eng))
    assert fresh.serving[f"{TARGET}@a"].probation_left == 0
    assert fresh.tracks[("a", TARGET)].status != "probation"


def test_a_probation_in_progress_continues_with_its_reference_model() -> None:
    eng = make()
    old, new = model(), model(f"{TARGET}:v2")
    eng.install(TARGET, old, probation=False)
    run(eng, stream(series(60, 1), 0))
    eng.install(TARGET, new)
    run(eng, stream(series(20, 2), 60))
    left = eng.serving[TARGET].probation_left
    assert 0 < left < 200
    fresh = make()
    fresh.install(TARGET, new, probation=False)
    report = fresh.import_state(roundtrip(eng), load_model={old.label: old}.get)
    assert report.probations == 1
    assert fresh.serving[TARGET].probation_left == left and fresh.serving[TARGET].previous is old


def test_a_retrain_in_flight_is_asked_again_after_restart() -> None:
    eng = make("rmse-threshold")
    eng.install(TARGET, model(), probation=False)
    _, _, retrains = run(eng, stream(series(400, 2, drift_at=50), 0))
    assert retrains and TARGET + "@a" in eng.pending
    fresh = make("rmse-threshold")
    fresh.install(TARGET, model(), probation=False)
    fresh.import_state(roundtrip(eng))
    assert fresh.pending == set()
    _, _, again = run(fresh, stream(series(5, 3), 400))
    assert (TARGET + "@a", "drift") in again


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.update(format="edgeloop-engine-state/0"),
        lambda s: s.update(lags=3),
        lambda s: s.update(window=50),
        lambda s: s.update(tracks=7),
        lambda s: s.pop("serving"),
    ],
)
def test_an_incompatible_snapshot_is_refused_whole(mutate: Any) -> None:
    eng = make()
    run(eng, stream(series(30, 1), 0))
    state = roundtrip(eng)
    mutate(state)
    fresh = make()
    with pytest.raises(StateError):
        fresh.import_state(state)
    assert fresh.tracks == {}


def test_a_malformed_device_entry_is_skipped_and_counted() -> None:
    eng = make()
    eng.install(TARGET, model(), probation=False)
    run(eng, stream(series(100, 1), 0))
    state = roundtrip(eng)
    state["tracks"][0]["hist"] = ["x"]
    state["tracks"][1]["guard"]["detector"]["squares"] = "not base64!"
    state["tracks"][2]["target"] = "unknown"
    fresh = make()
    fresh.install(TARGET, model(), probation=False)
    report = fresh.import_state(state)
    assert report.skipped == 2 and report.restored == 1
    assert ("a", TARGET) not in fresh.tracks and ("c", TARGET) not in fresh.tracks
    # the device with the unreadable detector keeps its lag window; detection starts afresh
    assert fresh.tracks[("b", TARGET)].guard.in_warmup and len(fresh.tracks[("b", TARGET)].hist) == 5
    # and readings of all three devices are answered
    assert len(fresh.process(stream(series(1, 2), 100)).predictions) == 3


def test_export_cost_per_thousand_devices() -> None:
    eng = make(lags=5)
    eng.install(TARGET, model(), probation=False)
    rng = np.random.default_rng(0)
    msgs = [
        Telemetry(f"dev-{d:04d}", float(i), i, {TARGET: float(100 + rng.normal())})
        for i in range(150)
        for d in range(1000)
    ]
    for i in range(0, len(msgs), 512):
        eng.process(msgs[i : i + 512])
    t0 = time.perf_counter()
    state = eng.export_state()
    export_s = time.perf_counter() - t0
    blob = orjson.dumps(state)
    t1 = time.perf_counter()
    fresh = make(lags=5)
    fresh.install(TARGET, model(), probation=False)
    assert fresh.import_state(orjson.loads(blob)).restored == 1000
    import_s = time.perf_counter() - t1
    mb = len(blob) / 1e6
    print(f"1000 devices: export {export_s * 1e3:.1f} ms, {mb:.2f} MB, import {import_s * 1e3:.1f} ms")
    assert export_s < 0.5 and len(blob) < 6e6
    assert fresh.tracks[("dev-0999", TARGET)].hist == eng.tracks[("dev-0999", TARGET)].hist
    assert eng.tracks[("dev-0000", TARGET)].last_model != PERSISTENCE_VERSION


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_damaged_snapshot_never_raises_anything_but_state_error(data: st.DataObject) -> None:
    state = _VALID_STATE()
    # Replace one value somewhere in the snapshot with arbitrary JSON.
    node: Any = state
    while True:
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if not isinstance(child, dict | list) or not child or data.draw(st.booleans()):
            node[key] = data.draw(_JSON)
            break
        node = child
    fresh = make()
    fresh.install(TARGET, model(), probation=False)
    try:
        report = fresh.import_state(state)
    except StateError:
        return
    assert report.restored + report.skipped <= 3
    assert len(fresh.process(stream(series(2, 9), 500)).predictions) == 6  # and it still works


def _valid_state() -> Any:
    eng = make()
    eng.install(TARGET, model(), probation=False)
    run(eng, stream(series(120, 1), 0))
    blob = orjson.dumps(eng.export_state())
    return lambda: orjson.loads(blob)


_VALID_STATE = _valid_state()


def test_export_in_slices_equals_export_at_once() -> None:
    from edgeloop.engine.state import Exporter

    eng = make()
    eng.install(TARGET, model(), probation=False)
    msgs = [
        Telemetry(f"d{d}", float(i), i, {TARGET: float(100 + i % 5)}) for i in range(30) for d in range(45)
    ]
    eng.process(msgs)
    exporter = Exporter(eng, chunk=10)
    steps = 1
    while (sliced := exporter.step()) is None:
        steps += 1
    assert steps == 5 and b"".join(sliced) == orjson.dumps(eng.export_state())
