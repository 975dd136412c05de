"""Drift detectors and guard: detection, no false alarms, unit-freeness, the known traps, storm bounds."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.drift_support import FACTORIES, UNIT_FREE, run, step_errors

from edgeloop.config import DriftSettings
from edgeloop.drift import (
    Adwin,
    Detector,
    DriftGuard,
    PageHinkley,
    RelativeRmse,
    RmseThreshold,
    make_detector,
    make_guarded,
)
from edgeloop.engine.monitor import RollingRmse as EngineRollingRmse
from edgeloop.errors import ConfigError

# --- detection and false alarms ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(FACTORIES))
@pytest.mark.parametrize("reference", [None, 1.0])
def test_each_policy_detects_a_threefold_error_increase(policy: str, reference: float | None) -> None:
    delays = []
    for seed in range(5):
        alarms = run(FACTORIES[policy](reference), step_errors(seed))
        assert alarms, f"{policy}: no alarm after the change (seed {seed})"
        assert alarms[0] >= 3000, f"{policy}: false alarm at {alarms[0]} before the change (seed {seed})"
        delays.append(alarms[0] - 3000)
    print(f"\n{policy} (validation ref {reference}): 3x increase detected after {delays} samples")
    assert max(delays) < 200


# ref_error: the validation RMSE as a multiple of the true error RMSE (None: no validation RMSE).
# 0.1 is the "storm" trap (a scale 10x too small), 10.0 the "deaf" trap; neither may cause an alarm.
# Not for relative at 0.1: live errors 10x the validation RMSE are a bad start it must flag (see
# test_relative_caps_the_reference_so_a_bad_start_still_alarms); 0.6 is inside its cap.
STATIONARY_CASES = [
    (policy, ref_error)
    for policy in UNIT_FREE
    for ref_error in (None, 0.1, 0.6, 10.0)
    if not (policy == "relative" and ref_error == 0.1)
]


@pytest.mark.parametrize(("policy", "ref_error"), STATIONARY_CASES)
@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_no_alarm_on_20000_stationary_errors(policy: str, scale: float, ref_error: float | None) -> None:
    errors = scale * np.random.default_rng(7).normal(0, 1, 20_000)
    reference = None if ref_error is None else ref_error * scale
    det = FACTORIES[policy](reference)
    alarms = run(det, errors)
    assert alarms == [], f"{policy} x{scale} ref {reference}: {len(alarms)} false alarms, first {alarms[:5]}"
    assert det.calibrated
    assert det.reference_rmse == pytest.approx(scale, rel=0.3)


@pytest.mark.parametrize("policy", UNIT_FREE)
def test_scaling_the_errors_changes_nothing(policy: str) -> None:
    # Scaling by a power of two is exact in floating point, so alarm indices must be identical.
    errors = step_errors(11, n_before=2000, n_after=2000, factor=2.0)
    base = run(FACTORIES[policy](1.0), errors)
    scaled = run(FACTORIES[policy](1024.0), 1024.0 * errors)
    assert base and base == scaled


def test_rmse_threshold_fires_repeatedly_on_the_original_systems_data() -> None:
    # Original system: VOC uniform in 50..300 ppb predicted by its mean; error std = 250/sqrt(12) ~ 72,
    # so a rolling RMSE over 100 samples hovers around its absolute threshold of 75.
    rng = np.random.default_rng(2024)
    errors = rng.uniform(50, 300, 20_000) - 175.0
    raw = run(RmseThreshold(threshold=75.0, window=100), errors)
    guarded = make_guarded(DriftSettings(policy="rmse-threshold", threshold=75.0))
    passed = run(guarded, errors)
    calm = {p: len(run(make_detector(DriftSettings(policy=p)), errors)) for p in UNIT_FREE}
    print(
        f"\noriginal rule (W=100, 75 ppb) on 20000 stationary VOC errors (std {errors.std():.1f}): "
        f"{len(raw)} alarming samples, {guarded.alarms} passed by the default guard "
        f"({guarded.suppressed} suppressed); unit-free policies: {calm}"
    )
    assert len(raw) > 500
    assert len(passed) <= 3 * 2  # default budget: 3 per 10,000 samples
    assert calm == dict.fromkeys(UNIT_FREE, 0)


# --- the known traps --------------------------------------------------------------------------------


def test_relative_calibrates_live_so_a_harsh_validation_slice_does_not_make_it_deaf() -> None:
    # Validation RMSE 10x the live error: with that reference, k=2 would need a 20x increase.
    det = RelativeRmse(factor=2.0, window=100, reference_rmse=10.0)
    alarms = run(det, step_errors(3))
    assert det.calibrated and det.reference_rmse == pytest.approx(1.0, rel=0.3)
    assert alarms and 3000 <= alarms[0] < 3100


def test_relative_caps_the_reference_so_a_bad_start_still_alarms() -> None:
    # Live errors 5x the validation RMSE from the first sample: calibration must not accept that level.
    det = RelativeRmse(factor=2.0, window=100, reference_rmse=1.0)
    alarms = run(det, 5.0 * np.random.default_rng(4).normal(0, 1, 300))
    assert det.reference_rmse == pytest.approx(2.0)
    assert alarms and alarms[0] == 99  # the calibration sample itself


def test_relative_without_reference_calibrates_live_and_waits_out_a_zero_window() -> None:
    det = RelativeRmse(factor=2.0, window=10)
    assert det.threshold is None and det.reference_rmse is None
    assert run(det, np.zeros(50)) == [] and not det.calibrated
    # The first full window with a non-zero RMSE calibrates (here: nine zeros and a one).
    assert run(det, np.ones(1)) == [] and det.calibrated
    assert det.reference_rmse == pytest.approx(math.sqrt(0.1))
    assert det.threshold == pytest.approx(2 * math.sqrt(0.1))


def test_calibration_floor_protects_against_a_degenerate_window() -> None:
    det = RelativeRmse(factor=2.0, window=10, reference_rmse=4.0)
    run(det, np.zeros(10))
    assert det.calibrated and det.reference_rmse == pytest.approx(0.05 * 4.0)


@pytest.mark.parametrize("policy", ["page-hinkley", "adwin"])
def test_sequential_policies_survive_a_single_huge_outlier(policy: str) -> None:
    errors = np.random.default_rng(5).normal(0, 1, 5000)
    errors[2500] = 1e6  # a sensor glitch
    assert run(FACTORIES[policy](None), errors) == []


def test_adwin_does_not_alarm_when_the_error_drops() -> None:
    det = Adwin(delta=0.002, window=100)
    rng = np.random.default_rng(6)
    errors = np.concatenate([rng.normal(0, 3, 3000), rng.normal(0, 1, 3000)])
    assert run(det, errors) == []
    assert det.state()["changes_down"] >= 1  # ADWIN did see the change, and it was ignored


def test_page_hinkley_threshold_is_unit_free_unlike_raw_river() -> None:
    # The storm trap: River's Page-Hinkley on raw VOC-sized errors (threshold in ppb) fires constantly.
    from river import drift

    errors = 100.0 * np.random.default_rng(8).normal(0, 1, 5000)
    raw = drift.PageHinkley(threshold=50.0, delta=0.5, mode="up")
    raw_alarms = 0
    for e in errors.tolist():
        raw.update(abs(e))
        raw_alarms += raw.drift_detected
    ours = run(PageHinkley(threshold=50.0, delta=0.5), errors)
    print(
        f"\npage-hinkley on 5000 stationary errors of std 100: raw river {raw_alarms}, normalised {len(ours)}"
    )
    assert raw_alarms > 10 and ours == []


# --- contract shared by every detector ----------------------------------------------------------------


@pytest.mark.parametrize("policy", list(FACTORIES))
def test_contract_rolling_rmse_matches_numpy(policy: str) -> None:
    det = FACTORIES[policy](None)
    assert isinstance(det, Detector)
    assert det.rolling_rmse is None
    rng = np.random.default_rng(9)
    # Mixed magnitudes stress the running sum of squares (big values leave the window).
    errors = np.concatenate([rng.normal(0, 1e4, 250), rng.normal(0, 1e-2, 730)])
    for i, e in enumerate(errors.tolist()):
        det.update(e)
        if i in (0, 5, 98, 99, 100, 249, 300, 349, 350, 979):
            expected = math.sqrt(np.mean(errors[max(0, i - 99) : i + 1] ** 2))
            assert det.rolling_rmse == pytest.approx(expected, rel=1e-9), i


@pytest.mark.parametrize("policy", list(FACTORIES))
def test_contract_window_is_the_engines_rolling_rmse(policy: str) -> None:
    # One rolling RMSE: a detector's window and the engine's error bookkeeping agree to the bit,
    # glitches leaving the window included (the engine's used to keep their rounding noise).
    det = FACTORIES[policy](None)
    engine_side = EngineRollingRmse(100)
    rng = np.random.default_rng(4)
    errors = rng.normal(0, 1, 1000)
    errors[rng.integers(0, 1000, 8)] = 1e12
    for e in errors.tolist():
        det.update(e)
        engine_side.add(e)
        assert det.rolling_rmse == engine_side.value
    assert engine_side.value == pytest.approx(math.sqrt(np.mean(errors[-100:] ** 2)), rel=1e-9)


@pytest.mark.parametrize("policy", list(FACTORIES))
def test_contract_reset_returns_to_initial_behaviour(policy: str) -> None:
    det = FACTORIES[policy](1.0)
    errors = step_errors(10, n_before=1500, n_after=500)

    def trace() -> tuple[list[int], float | None, float | None, bool]:
        return run(det, errors), det.rolling_rmse, det.reference_rmse, det.calibrated

    initial = (det.rolling_rmse, det.reference_rmse, det.threshold, det.calibrated)
    first = trace()
    det.reset()
    assert (det.rolling_rmse, det.reference_rmse, det.threshold, det.calibrated) == initial
    assert trace() == first
    assert first[0], "the trace should contain alarms, or this test proves little"


@pytest.mark.parametrize("policy", list(FACTORIES))
def test_contract_nonfinite_errors_are_ignored_and_state_is_plain_data(policy: str) -> None:
    det = FACTORIES[policy](None)
    errors = np.random.default_rng(12).normal(0, 1, 300)
    clean = run(det, errors)
    rmse = det.rolling_rmse
    det.reset()
    dirty = []
    for e in errors.tolist():
        dirty.append(det.update(e))
        assert det.update(math.nan) is False and det.update(math.inf) is False
    assert [i for i, a in enumerate(dirty) if a] == clean
    assert det.rolling_rmse == rmse
    state = det.state()
    assert state["policy"] == policy and state["ignored_nonfinite"] == 600 and state["samples"] == 300
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in state.values())


@pytest.mark.parametrize("policy", UNIT_FREE)
def test_contract_rebase_takes_the_new_validation_rmse_and_recalibrates(policy: str) -> None:
    det = FACTORIES[policy](1.0)
    run(det, np.random.default_rng(13).normal(0, 1, 500))
    assert det.calibrated
    det.rebase(50.0)
    assert not det.calibrated and det.reference_rmse == 50.0 and det.rolling_rmse is None
    run(det, np.random.default_rng(14).normal(0, 40, 500))
    assert det.calibrated and det.reference_rmse == pytest.approx(40.0, rel=0.3)


def test_update_cost_is_printed() -> None:
    errors = np.random.default_rng(15).normal(0, 1, 20_000).tolist()
    figures = {}
    for policy, factory in FACTORIES.items():
        det = factory(None)
        start = time.perf_counter()
        for e in errors:
            det.update(e)
        figures[policy] = f"{(time.perf_counter() - start) / len(errors) * 1e6:.2f} us"
    print(f"\nupdate() cost per sample: {figures}")


# --- factory ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "cls"),
    [
        ("rmse-threshold", RmseThreshold),
        ("relative", RelativeRmse),
        ("page-hinkley", PageHinkley),
        ("adwin", Adwin),
    ],
)
def test_make_detector_maps_policies_and_honours_settings(policy: str, cls: type) -> None:
    s = DriftSettings(
        policy=policy, window=50, threshold=9.0, relative_factor=3.0, ph_threshold=20.0, ph_delta=0.1
    )
    det = make_detector(s, reference_rmse=4.0)
    assert type(det) is cls and det.state()["window"] == 50
    if policy == "rmse-threshold":
        assert det.threshold == 9.0
    elif policy == "relative":
        assert det.threshold == 12.0
    elif policy == "page-hinkley":
        assert det.state()["ph_threshold"] == 20.0 and det.state()["ph_delta"] == 0.1
    assert det.reference_rmse == 4.0


def test_make_detector_without_threshold_for_the_absolute_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"drift\.threshold"):
        make_detector(DriftSettings(policy="rmse-threshold"), None)


def test_make_guarded_uses_the_guard_settings() -> None:
    g = make_guarded(DriftSettings(warmup=7, min_gap=11, budget=2, budget_window=300), reference_rmse=None)
    assert (g.warmup, g.min_gap, g.budget, g.budget_window) == (7, 11, 2, 300)
    assert isinstance(g.detector, PageHinkley)


# --- guard --------------------------------------------------------------------------------------------


class Scripted:
    """A stub detector alarming on the samples a script says; records what it was fed."""

    name = "scripted"

    def __init__(self, script: Callable[[int], bool] = lambda i: True) -> None:
        self.script = script
        self.seen: list[float] = []
        self.rebased: list[float | None] = []

    def update(self, error: float) -> bool:
        self.seen.append(error)
        return self.script(len(self.seen) - 1)

    def reset(self) -> None:
        self.seen = []

    def rebase(self, reference_rmse: float | None) -> None:
        self.rebased.append(reference_rmse)
        self.reset()

    rolling_rmse = None
    threshold = None
    reference_rmse = None
    calibrated = False

    def state(self) -> dict[str, Any]:
        return {"policy": self.name}


def test_guard_warmup_hides_the_first_errors_from_the_detector() -> None:
    det = Scripted()
    guard = DriftGuard(det, warmup=5, min_gap=0, budget=100, budget_window=100)
    out = [guard.update(float(i)) for i in range(8)]
    assert out == [False] * 5 + [True] * 3
    assert det.seen == [5.0, 6.0, 7.0]
    guard.model_changed(reference_rmse=3.0)
    assert det.rebased == [3.0] and det.seen == [] and guard.in_warmup
    assert [guard.update(float(i)) for i in range(8, 16)] == [False] * 5 + [True] * 3
    assert det.seen == [13.0, 14.0, 15.0]
    assert guard.samples == 16 and guard.alarms == 6 and guard.last_alarm_at == 15


def test_guard_bounds_an_always_alarming_detector() -> None:
    guard = DriftGuard(Scripted(), warmup=100, min_gap=500, budget=3, budget_window=10_000)
    passed = [i for i in range(100_000) if guard.update(1.0)]
    print(f"\nalways-alarming detector, 100000 samples: {len(passed)} passed, {guard.suppressed} suppressed")
    assert passed[:4] == [100, 600, 1100, 10_100]
    assert len(passed) == 30
    assert guard.suppressed == 100_000 - 100 - 30
    assert guard.state()["alarms"] == 30


def test_guard_budget_survives_model_changes_so_a_retrain_loop_cannot_storm() -> None:
    # Worst case: every passed alarm triggers a retrain whose new model alarms again at once.
    guard = DriftGuard(Scripted(), warmup=10, min_gap=0, budget=3, budget_window=1000)
    passed = 0
    for _ in range(5000):
        if guard.update(1.0):
            passed += 1
            guard.model_changed(reference_rmse=1.0)
    assert passed == 15 and guard.model_changes == 15


@settings(max_examples=60, deadline=None)
@given(
    alarms=st.lists(st.booleans(), min_size=1, max_size=600),
    warmup=st.integers(0, 50),
    min_gap=st.integers(0, 80),
    budget=st.integers(1, 4),
    budget_window=st.integers(1, 300),
)
def test_guard_invariants(
    alarms: list[bool], warmup: int, min_gap: int, budget: int, budget_window: int
) -> None:
    det = Scripted(lambda i: alarms[i + warmup])
    guard = DriftGuard(det, warmup=warmup, min_gap=min_gap, budget=budget, budget_window=budget_window)
    passed = [i for i in range(len(alarms)) if guard.update(0.0)]
    assert all(i >= warmup and alarms[i] for i in passed)
    assert all(b - a >= min_gap for a, b in itertools.pairwise(passed))
    for k, start in enumerate(passed):
        assert sum(1 for j in passed[k:] if j - start < budget_window) <= budget
    assert guard.alarms == len(passed)
    assert guard.alarms + guard.suppressed == sum(alarms[warmup:])
    # The first detector alarm after warm-up always passes: the guard delays, it does not go deaf.
    first = next((i for i in range(warmup, len(alarms)) if alarms[i]), None)
    assert (passed[0] if passed else None) == first


def test_a_long_calibration_takes_the_scale_of_a_whole_cycle() -> None:
    """Errors that swing with a cycle (calm nights, busy days) must not alarm at every sunrise."""
    rng = np.random.default_rng(11)
    day = np.where((np.arange(1440) // 720) == 0, 0.5, 1.5)  # half a cycle calm, half busy
    errors = np.concatenate([rng.normal(0, 1, 1440) * day for _ in range(10)])
    short = PageHinkley(threshold=150, delta=0.5, window=100)
    long = PageHinkley(threshold=150, delta=0.5, window=100, calibration=1440)
    short_alarms = sum(short.update(e) for e in errors)
    long_alarms = sum(long.update(e) for e in errors)
    print(f"\ncyclic errors: {short_alarms} alarms calibrated on one window, {long_alarms} on a whole cycle")
    assert long_alarms <= 1 and short_alarms >= 5
