"""``edgeloop simulate --steps N`` publishes N readings per device, also once a live simulator has
caught up with the clock and some of its ticks have nothing to send."""

from __future__ import annotations

import itertools
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
