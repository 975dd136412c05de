"""to_state/from_state of every detector and of the guard: one contract, every subject."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from tests.unit.drift_support import FACTORIES, run, step_errors

from edgeloop.drift import DriftGuard, RelativeRmse, RmseThreshold


def json_roundtrip(state: dict[str, object]) -> dict[str, object]:
    return orjson.loads(orjson.dumps(state))


@pytest.mark.parametrize("policy", [p for p in FACTORIES if p != "adwin"])
@pytest.mark.parametrize("cut", [0, 50, 150, 2999])  # empty, filling, calibrating, armed
def test_a_restored_detector_continues_exactly(policy: str, cut: int) -> None:
    errors = step_errors(seed=3)
    whole = FACTORIES[policy](1.0)
    expected = run(whole, errors)
    first = FACTORIES[policy](1.0)
    run(first, errors[:cut])
    second = FACTORIES[policy](1.0)
    second.from_state(json_roundtrip(first.to_state()))
    assert [i + cut for i in run(second, errors[cut:])] == [i for i in expected if i >= cut]
    assert second.state() == whole.state()
    assert expected  # the step is detected, so the comparison means something


def test_adwin_restored_armed_still_detects_the_step() -> None:
    errors = step_errors(seed=3)
    first = FACTORIES["adwin"](1.0)
    run(first, errors[:2999])
    second = FACTORIES["adwin"](1.0)
    second.from_state(json_roundtrip(first.to_state()))
    assert second.calibrated and second.reference_rmse == first.reference_rmse
    alarms = run(second, errors[2999:])
    assert alarms and alarms[0] < 150


@pytest.mark.parametrize("policy", list(FACTORIES))
def test_a_state_of_another_policy_or_window_is_refused(policy: str) -> None:
    det = FACTORIES[policy](1.0)
    run(det, np.ones(10))
    other = RelativeRmse(window=50) if policy != "relative" else FACTORIES["rmse-threshold"](1.0)
    with pytest.raises(ValueError, match="does not fit"):
        other.from_state(json_roundtrip(det.to_state()))


def test_guard_state_keeps_warmup_hysteresis_and_budget() -> None:
    def guard() -> DriftGuard:
        return DriftGuard(
            RmseThreshold(threshold=1.0, window=10), warmup=5, min_gap=20, budget=2, budget_window=100
        )

    whole, first = guard(), guard()
    passed = [i for i in range(200) if whole.update(5.0)]
    head = [i for i in range(120) if first.update(5.0)]
    second = guard()
    second.from_state(json_roundtrip(first.to_state()))
    tail = [i for i in range(120, 200) if second.update(5.0)]
    assert head + tail == passed == [14, 34, 114, 134]
    assert second.to_state() == whole.to_state()
