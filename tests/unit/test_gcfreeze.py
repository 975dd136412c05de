"""Freezing again as devices appear (``service.gcfreeze``), and why evicting a frozen device frees it."""

from __future__ import annotations

import gc
import sys
from itertools import pairwise

import numpy as np
from tests.unit.lifecycle_support import engine, offset_model, readings

from edgeloop.service.gcfreeze import GROWTH, MIN_GROWTH, SWAP_SETTLE, Refreezer


def test_freezes_follow_the_fleet_growing_by_a_quarter() -> None:
    r = Refreezer(frozen=0)
    froze = [n for n in range(1, 3001) if r.grown(n)]
    assert froze[0] == MIN_GROWTH
    assert all(b >= a * GROWTH and b - a >= MIN_GROWTH for a, b in pairwise(froze))
    assert len(froze) == 18  # 1 to 3,000 tracks: a few freezes, not one per device
    assert not r.grown(3000)  # a fleet that stopped growing (evictions at the cap) is not frozen again


def test_maybe_freeze_moves_what_is_alive_out_of_the_collector() -> None:
    r = Refreezer(frozen=100)
    assert r.maybe_freeze(110, now=0.0) is None and r.freezes == 0
    before = gc.get_freeze_count()
    kept = [[i] for i in range(1000)]  # tracked objects made after the last freeze
    try:
        assert r.maybe_freeze(200, now=0.0) is not None
        assert r.freezes == 1 and r.frozen == 200
        assert gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()  # the rest of the test session collects as before


def test_a_swap_asks_for_one_freeze_once_the_devices_settled() -> None:
    r = Refreezer(frozen=200)
    r.swapped(100.0)
    r.swapped(105.0)  # a second swap before the freeze does not push it back
    try:
        assert r.maybe_freeze(200, now=100.0 + SWAP_SETTLE - 0.5) is None
        assert r.maybe_freeze(200, now=100.0 + SWAP_SETTLE) is not None
        assert r.maybe_freeze(200, now=200.0) is None and r.freezes == 1
    finally:
        gc.unfreeze()


def test_an_evicted_device_is_freed_by_reference_counting() -> None:
    # A frozen object is never visited by the cyclic collector: if a device's track were part of a
    # reference cycle, evicting a device frozen by a Refreezer would leak its state. Nothing but the
    # engine may refer to the track, so once evicted only this test's reference is left.
    eng = engine()
    eng.install("voc_ppb", offset_model(0.5), probation=False)
    rng = np.random.default_rng(0)
    values = 100 + np.cumsum(rng.normal(0, 1, 400))
    for start in range(0, 400, 20):
        eng.process(readings("dev-a", values[start : start + 20], start=start))
    track = eng.tracks[("dev-a", "voc_ppb")]
    assert track.guard is not None and track.floor is not None and track.count == 400
    eng.evict("dev-a")
    assert ("dev-a", "voc_ppb") not in eng.tracks
    assert sys.getrefcount(track) == 2  # `track` and getrefcount's own argument
