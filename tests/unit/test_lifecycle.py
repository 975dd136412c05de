"""The model lifecycle on the real engine: fast and consolidation retrains, validated refresh, gaps, the
promotion rule, and a sensor running away (the floor and probation: test_floor.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from tests.unit.lifecycle_support import engine, offset_model, readings

from edgeloop.adapters.store import Series
from edgeloop.config import ModelSettings, Settings, Span
from edgeloop.engine.cadence import Cadence
from edgeloop.engine.engine import Engine, EngineOutput
from edgeloop.evaluate.datasets import Track
from edgeloop.evaluate.replay import TargetReplay
from edgeloop.evaluate.runs import ReplayConfig, RunResult
from edgeloop.evaluate.strategies import parse_strategy
from edgeloop.lifecycle.promotion import champion_margin, judge
from edgeloop.models.forecasters import Persistence
from edgeloop.models.modelfile import LoadedModel
from edgeloop.retrain.job import train_and_judge
from edgeloop.telemetry.schema import PERSISTENCE_VERSION, Telemetry
from edgeloop.telemetry.simulator import DriftSpec, Simulator

# -- gaps --------------------------------------------------------------------------------------------


def test_a_gap_resets_the_lag_window_and_short_jitter_does_not() -> None:
    rng = np.random.default_rng(5)
    eng = engine()
    eng.install("voc_ppb", offset_model(0.0), probation=False)
    values = 100 + np.cumsum(rng.normal(0, 1, 60))
    out = eng.process(readings("d", values[:30]))
    track = eng.tracks[("d", "voc_ppb")]
    assert track.interval == 60.0
    # A late reading (2.5 intervals) is no gap: the model keeps forecasting from its window.
    late = eng.process([Telemetry("d", 29 * 60.0 + 150.0, 30, {"voc_ppb": float(values[30])})])
    assert (
        late.samples[0].forecast is not None
        and late.predictions[0].forecasts["voc_ppb"].model == "voc_ppb:v1"
    )
    # Six hours without readings: nothing is forecast across the hole, persistence serves until the
    # window refills with lags readings.
    after = readings("d", values[31:40], start=31, t0=6 * 3600.0)
    out = eng.process(after)
    assert out.samples[0].forecast is None and out.samples[0].persistence is None  # not scored
    models = [p.forecasts["voc_ppb"].model for p in out.predictions]
    assert models[:4] == [PERSISTENCE_VERSION] * 4 and models[4:] == ["voc_ppb:v1"] * 5
    assert track.cadence.gaps == 1 and track.interval == 60.0


def test_a_restored_cadence_knows_its_gaps() -> None:
    cadence = Cadence()
    for t in range(0, 600, 60):
        cadence.observe(float(t))
    restored = Cadence()
    restored.from_state(cadence.to_state())
    # Five intervals (300 s) is the gap limit learned from 60 s readings: 301 s is a gap, 299 s is not.
    assert restored.interval == 60.0 and not restored.observe(540.0 + 299.0)
    assert restored.observe(839.0 + 301.0) and restored.gaps == 1
    # Without an interval (or with gaps switched off) nothing is a gap.
    assert not Cadence().observe(0.0) and not Cadence(gap_intervals=None).observe(1e9)


# -- fast retrain, consolidation, refresh ------------------------------------------------------------


def drifting_b(
    eng: Engine, n: int, interval: float = 60.0, onset: int = 1500
) -> list[tuple[str, str, float]]:
    """Two devices; b's errors grow 8x from ``onset``. Returns (scope, trigger, since_ts) of each request."""
    rng = np.random.default_rng(6)
    calm = {d: 100 + np.cumsum(rng.normal(0, 1, n)) for d in ("a", "b")}
    eng.install(
        "voc_ppb", LoadedModel("voc_ppb:v1", Persistence(5), {"scores": {"val_rmse": 1.0}}), probation=False
    )
    requests: list[tuple[str, str, float | None, int]] = []
    for i in range(0, n, 50):
        batch = []
        for d, series in calm.items():
            values = series[i : i + 50].copy()
            if d == "b" and i >= onset:
                values += rng.normal(0, 8, len(values))
            batch += readings(d, values, start=i, interval=interval)
        out = eng.process(batch)
        for r in out.retrains:
            requests.append((r.scope, r.trigger, r.since_ts, i + 50))
            eng.retrain_finished(r.scope, installed=False)
    return requests


@pytest.mark.parametrize("interval", [10.0, 60.0, 600.0])
def test_a_fast_retrain_soon_after_the_alarm_then_a_consolidation_one_cycle_later(interval: float) -> None:
    # consolidate after 6 hours: 2160 / 360 / 36 readings; never fewer than 2 x retrain_min_samples.
    eng = engine(retrain_min_samples=60, consolidate_after="6h", train_window=1000, refresh_every="0")
    requests = drifting_b(eng, 4000, interval)
    assert [(s, t) for s, t, *_ in requests] == [("voc_ppb@b", "drift"), ("voc_ppb@b", "consolidate")]
    alarm_ts = requests[0][2]
    assert alarm_ts is not None and alarm_ts >= 1500 * interval and requests[1][2] == alarm_ts
    alarm = int(alarm_ts / interval)
    assert alarm + 60 <= requests[0][3] < alarm + 60 + 50  # retrain_min_samples after the alarm
    # 6 h in readings, between 2 x retrain_min_samples and the training window: 1000 / 360 / 120.
    expected = min(max(Span.parse("6h").readings(interval), 120), 1000)
    assert alarm + expected <= requests[1][3] < alarm + expected + 50
    assert eng.tracks[("b", "voc_ppb")].regime_ts is None  # consolidated once, not again


def test_after_a_retrain_that_kept_the_model_alarms_start_no_retrain_for_a_cycle() -> None:
    # Three bursts of noise on a random walk; every retrain keeps the serving model.
    n = 8000
    rng = np.random.default_rng(6)
    values = 100 + np.cumsum(rng.normal(0, 1, n))
    for start in (1500, 2400, 5000):
        values[start : start + 300] += rng.normal(0, 8, 300)

    def serving() -> Engine:
        eng = engine(retrain_min_samples=60, consolidate_after="1d", train_window=1000, refresh_every="0")
        model = LoadedModel("voc_ppb:v1", Persistence(5), {"scores": {"val_rmse": 1.0}})
        eng.install("voc_ppb", model, probation=False)
        return eng

    eng = serving()
    requests, alarms = [], []
    for i in range(0, n, 50):
        out = eng.process(readings("b", values[i : i + 50], start=i))
        alarms += [e for e in out.events if e.kind == "drift_detected"]
        for r in out.retrains:
            requests.append((r.trigger, i + 50))
            eng.retrain_finished(r.scope, installed=False)
    assert [int(e.ts / 60) // 100 for e in alarms] == [15, 24, 50]  # each burst is detected
    # The second burst comes within a day (1,440 readings) of the rejected fast retrain: reported,
    # not retrained on; the consolidation of the first still comes, and the third burst is retrained on.
    assert [t for t, _ in requests] == ["drift", "consolidate", "drift", "consolidate"]
    assert requests[2][1] > 5000
    assert "no retrain before" in alarms[1].reason and "no retrain" not in alarms[2].reason
    # The quiet time survives a restart.
    quiet_until = eng.tracks[("b", "voc_ppb")].quiet_until
    assert quiet_until is not None
    restored = serving()
    restored.import_state(eng.export_state())
    assert restored.tracks[("b", "voc_ppb")].quiet_until == quiet_until


def test_refresh_is_scheduled_in_time_never_sooner_than_half_a_training_window() -> None:
    rng = np.random.default_rng(7)
    values = 100 + np.cumsum(rng.normal(0, 1, 1000))

    def refreshes(interval: float) -> list[int]:
        eng = engine(refresh_every="2h", train_window=200, consolidate_after="0")
        eng.install("voc_ppb", offset_model(0.0), probation=False)
        at = []
        for i, msg in enumerate(readings("d", values, interval=interval)):
            out = eng.process([msg])
            for r in out.retrains:
                assert r.trigger == "refresh" and r.scope == "voc_ppb" and r.since_ts is None
                at.append(i)
                eng.retrain_finished(r.scope, installed=False)
        return at

    def spaced(at: list[int], first: int, every: int) -> bool:
        # Checked every 16th reading of a device: due times are met within 16 readings.
        steps = np.diff([0, *at]) - np.array([first, *[every] * (len(at) - 1)])
        return bool(len(at) and ((steps >= 0) & (steps < 16)).all())

    # Every 2 h: 120 readings at 1/min; 720 at 1/10 s. At 1/h, 2 h is 2 readings: 100 (half the
    # training window) instead. The clock starts once the interval is known (at the 16th reading).
    at = refreshes(60.0)
    assert len(at) == 7 and spaced(at, 15 + 120, 120)
    at = refreshes(10.0)
    assert len(at) == 1 and spaced(at, 15 + 720, 720)
    at = refreshes(3600.0)
    assert len(at) == 8 and spaced(at, 15 + 100, 100)


@pytest.mark.parametrize("devices", [("b",), ("a", "b")])
def test_a_devices_drift_retrain_postpones_the_refresh_of_a_scope_that_serves_only_it(
    devices: tuple[str, ...],
) -> None:
    rng = np.random.default_rng(8)
    n, onset, every = 4000, 2000, 600  # refresh every 10 h at 1 reading a minute
    series = {d: 100 + np.cumsum(rng.normal(0, 1, n)) for d in devices}
    series["b"][onset:] += rng.normal(0, 8, n - onset)
    eng = engine(retrain_min_samples=60, consolidate_after="0", train_window=1000, refresh_every="10h")
    eng.install("voc_ppb", offset_model(0.0), probation=False)
    asked: list[tuple[str, int]] = []
    for i in range(0, n, 10):
        out = eng.process([m for d in devices for m in readings(d, series[d][i : i + 10], start=i)])
        for r in out.retrains:
            asked.append((r.trigger, i + 10))
            eng.retrain_finished(r.scope, installed=False)
    drift = [at for trigger, at in asked if trigger == "drift"]
    refresh = [at for trigger, at in asked if trigger == "refresh"]
    assert drift and drift[0] > onset and refresh and refresh[0] < onset
    after = [at for at in refresh if at > drift[0]]
    if devices == ("b",):
        # Its only device was just trained on: the next refresh waits a full span from the drift retrain.
        assert not after or after[0] >= drift[0] + every
    else:
        # Device a's readings were not looked at: the fleet's refresh keeps its schedule.
        assert after and after[0] < drift[0] + every
        assert all(0 <= b - a - every < 32 for a, b in itertools.pairwise(refresh))


# -- the promotion rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(("readings", "promote"), [(2000, True), (100, False)])
def test_a_large_holdout_lets_a_steadily_better_challenger_in_under_the_margin(
    readings: int, promote: bool
) -> None:
    rng = np.random.default_rng(9)
    champion = rng.normal(0, 1, readings)
    challenger = 0.99 * champion + rng.normal(0, 0.05, readings)  # about 1 % better, reading by reading
    over = champion_margin(challenger, champion, 0.02)
    assert (over < 0.01) is promote and 0.0 <= over <= 0.02
    verdict = judge(
        float(np.sqrt(np.mean(challenger**2))),
        champion_rmse=float(np.sqrt(np.mean(champion**2))),
        persistence_rmse=2.0,
        margin=0.02,
        champion_margin=over,
    )
    assert verdict.promote is promote
    # The margin over persistence never shrinks.
    assert not judge(1.0, champion_rmse=1.1, persistence_rmse=1.01, margin=0.02, champion_margin=0.0).promote


def test_a_challenger_must_beat_the_champion_and_persistence() -> None:
    assert judge(9.0, champion_rmse=10.0, persistence_rmse=12.0, margin=0.02).promote
    assert not judge(9.0, champion_rmse=20.0, persistence_rmse=9.1, margin=0.02).promote
    assert not judge(9.0, champion_rmse=None, persistence_rmse=9.1, margin=0.02).promote
    assert not judge(
        5.0, champion_rmse=10.0, persistence_rmse=10.0, margin=0.0, candidate_is_persistence=True
    ).promote
    # The trainer's verdict uses it: a linear model that beats a bad champion but not persistence.
    rng = np.random.default_rng(8)
    walk = 100 + np.cumsum(rng.normal(0, 1, 2000))
    settings = Settings(model=ModelSettings(candidates=["linear"]))
    verdict = train_and_judge(settings, [Series("d", np.arange(2000.0), walk)], offset_model(5.0))
    assert verdict.champion_rmse > 3 and not verdict.promote and "persistence" in verdict.reason


# -- a sensor whose calibration runs away near the end of a recording --------------------------------


def runaway(interval: float, steps: int = 3000, onset: int = 2400) -> Track:
    """The simulator's calibration_drift, sampled every 10 minutes, ramping 300 ppb over the last fifth
    (about 20x the step-to-step noise); relabelled to ``interval`` so each rate replays the same readings."""
    spec = DriftSpec("dev-000", "calibration_drift", onset, magnitude=300.0, duration=steps - onset)
    frame = Simulator(["dev-000"], seed=0, interval=600.0, drifts=[spec]).frame(steps)
    ts = 1_700_000_000.0 + np.arange(steps) * interval
    return Track(
        "dev-000", ts, frame["voc_ppb"].to_numpy(float), steps // 5, [(onset, steps, "calibration_drift")]
    )


class _Recorder(TargetReplay):
    """A replay that also keeps the engine's lifecycle events (reading index, kind)."""

    events: list[tuple[int, str]]

    def _record_events(self, out: EngineOutput, result: RunResult, position: dict[str, int]) -> None:
        self.events += [(position["dev-000"], e.kind) for e in out.events]
        super()._record_events(out, result, position)


@pytest.mark.parametrize("interval", [10.0, 60.0, 600.0, 3600.0], ids=["10s", "1min", "10min", "1h"])
def test_a_runaway_calibration_is_acted_on_before_the_end_at_any_sampling_rate(interval: float) -> None:
    track = runaway(interval)
    settings = Settings(model=ModelSettings(candidates=["persistence", "linear"]))  # defaults otherwise
    replay = _Recorder("runaway", "voc_ppb", [track], settings, ReplayConfig())
    replay.events = []
    run = replay.run(parse_strategy("page-hinkley"))
    static = replay.run(parse_strategy("static"))
    y, onset, end = track.values, 2400, len(track.values)
    persistence = np.r_[np.nan, y[:-1]]

    def rmse(forecasts: np.ndarray, part: slice) -> float:
        err = (y - forecasts)[part]
        return float(np.sqrt(np.nanmean(err * err)))

    scored = slice(track.start, end)
    # The scenario is a real failure: the model it started with ends far worse than persistence.
    assert rmse(static.forecasts["dev-000"], slice(onset, end)) > 2 * rmse(persistence, slice(onset, end))
    acted = [i for i, kind in replay.events if kind == "model_demoted" and onset <= i < end] + [
        r.requested_at for r in run.retrains if r.trigger in ("drift", "consolidate") and r.requested_at < end
    ]
    assert acted and min(acted) < end - 100
    # The drift alarm leads to the device's own retrain at every rate (a rejected refresh of the fleet
    # model in between must not cancel it).
    assert any(r.trigger == "drift" and r.requested_at < end for r in run.retrains)
    forecasts = run.forecasts["dev-000"]
    assert rmse(forecasts, scored) <= rmse(persistence, scored)
    # ... and it ends no worse than persistence: the last 100 readings are served as well as by it.
    assert rmse(forecasts, slice(end - 100, end)) <= 1.001 * rmse(persistence, slice(end - 100, end))


def test_a_refreshed_fleet_model_keeps_detectors_and_a_devices_drift_retrain() -> None:
    # A long post-alarm wait, so b is still collecting data when the fleet model changes.
    eng = engine(retrain_min_samples=5000, consolidate_after="0", refresh_every="0")
    assert drifting_b(eng, 2000) == []
    track = eng.tracks[("b", "voc_ppb")]
    assert track.status == "drifting" and track.alarm_ts is not None
    alarm_ts, changes = track.alarm_ts, track.guard.model_changes
    eng.install("voc_ppb", LoadedModel("voc_ppb:v2", Persistence(5), {"trigger": "refresh"}))
    assert track.guard.model_changes == changes  # no recalibration after a refresh
    assert track.status == "drifting" and track.alarm_ts == alarm_ts  # b's own retrain still comes
    eng.install("voc_ppb", LoadedModel("voc_ppb:v3", Persistence(5), {"trigger": "drift"}))
    assert track.guard.model_changes == changes + 1 and track.status == "drifting"
    assert eng.tracks[("a", "voc_ppb")].status == "probation"
