"""``edgeloop simulate --steps N`` publishes N readings per device, also once a live simulator has
caught up with the clock and some of its ticks have nothing to send."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest

from edgeloop.config import Settings
from edgeloop.service.publisher import SimulatorPublisher
from edgeloop.telemetry.simulator import Simulator

pytestmark = pytest.mark.integration


def test_steps_count_readings_not_ticks(make_settings: Callable[..., Settings]) -> None:
    start, interval = 1_700_000_000.0, 60.0
    calls = itertools.count()
    # The clock moves half an interval per look: every other tick finds the next step still ahead.
    sim = Simulator(2, seed=1, interval=interval, start_ts=start, clock=lambda: start + next(calls) * 30.0)
    publisher = SimulatorPublisher(make_settings(), sim, rate=None, steps=4)
    publisher.run()
    assert publisher.published == 4 * 2


def test_a_hold_stops_the_simulated_world_and_the_pace_resumes_without_a_burst(
    make_settings: Callable[..., Settings],
) -> None:
    # 200 steps a second; the hold is on from the 20th step for 0.5 s (100 steps' worth of time).
    sim = Simulator(1, seed=1)
    held_from: list[float] = []

    def hold() -> bool:
        if publisher.published < 20:
            return False
        if not held_from:
            held_from.append(time.monotonic())
        return time.monotonic() - held_from[0] < 0.5

    publisher = SimulatorPublisher(make_settings(), sim, rate=200.0, steps=60, hold=hold)
    began = time.monotonic()
    publisher.run()
    took = time.monotonic() - began
    assert publisher.published == 60
    assert 0.45 <= publisher.held <= 1.0
    # 60 steps at 200/s take 0.3 s; with the hold 0.8 s. A pace that caught up after the hold would
    # send the last 40 steps at once and end at 0.5 s.
    assert took >= 0.3 + publisher.held - 0.05
