"""Keeping the edge's long-lived objects out of Python's full garbage collections as the fleet grows.

The edge freezes everything alive once it is up (``gc.freeze``: the cyclic collector skips those
objects from then on). But a device's state (its tracks, error windows, detector, floor) is made when
the device is first heard, after that freeze, and each full collection then walks all of it: with
1,000 devices, ``edgeloop bench`` saw full collections every 1-5 s pausing the loop 10-38 ms each
(``benchmarks/gcprobe``), the largest part of its p99 latency. :class:`Refreezer` freezes again when
the number of device tracks has grown by a quarter since the last freeze (at least
:data:`MIN_GROWTH` more), about 15 times while 1,000 devices appear, and once :data:`SWAP_SETTLE`
seconds after a model swap (a new model gives every device new error windows as its readings
arrive). Each freeze is one full collection first, so no garbage is frozen.

The cost of a freeze: cyclic garbage made later among frozen objects is never collected. A device's
track refers to nothing that refers back to it (``tests/unit/test_gcfreeze.py`` checks), so evicting
a device frees its state by reference counting, frozen or not; and the number of devices is bounded
(``limits.max_devices``), so the tracks stop growing and so do the freezes.

>>> r = Refreezer(frozen=0)
>>> [n for n in (10, 31, 32, 50, 63, 64, 79, 80, 200) if r.grown(n)]
[32, 64, 200]
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

GROWTH = 1.25  # freeze again once the tracks are this many times those of the last freeze
MIN_GROWTH = 32  # and at least this many more (no freeze per device while the first few appear)
SWAP_SETTLE = 10.0  # seconds after a swap: by then the devices have rebuilt their windows


class Refreezer:
    """Decides when the tracks have grown enough since the last freeze, and freezes."""

    def __init__(self, frozen: int = 0) -> None:
        self.frozen = frozen  # tracks alive at the last freeze
        self.freezes = 0
        self.due: float | None = None  # monotonic time of the freeze a swap asked for

    def swapped(self, now: float) -> None:
        """A model was swapped in at ``now``: freeze once :data:`SWAP_SETTLE` seconds later."""
        if self.due is None:
            self.due = now + SWAP_SETTLE

    def grown(self, tracks: int) -> bool:
        """Whether ``tracks`` is enough growth since the last freeze to freeze again (and note it)."""
        if tracks < self.frozen * GROWTH or tracks - self.frozen < MIN_GROWTH:
            return False
        self.frozen = tracks
        return True

    def maybe_freeze(self, tracks: int, now: float) -> float | None:
        """Collect and freeze when :meth:`grown` or a swap's freeze is due; the seconds it took, or None."""
        due = self.due is not None and now >= self.due
        if not self.grown(tracks) and not due:
            return None
        if due:
            self.due = None
            self.frozen = max(self.frozen, tracks)
        started = time.perf_counter()
        gc.collect()
        gc.freeze()
        self.freezes += 1
        took = time.perf_counter() - started
        log.debug("froze %d objects at %d tracks in %.1f ms", gc.get_freeze_count(), tracks, 1e3 * took)
        return took
