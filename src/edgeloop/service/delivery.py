"""At-least-once delivery helpers of the edge: what a received reading carries until it is answered,
and the memory that recognises a reading answered before.

A QoS 1 reading is acknowledged to the broker only after its prediction was handed to paho and its
row to the store writer, so a crash or shutdown in between makes the broker deliver it again. The
price of at-least-once is duplicates: a redelivered reading whose first copy was answered (its
PUBACK lost with a broker crash, or sent on a connection that then dropped). :class:`AnsweredMemory`
recognises them, also across a restart: it travels in the state snapshot written at shutdown once
the broker confirmed every prediction (:meth:`AnsweredMemory.to_state`), so a reading answered by the
previous run and delivered again to this one is dropped as a duplicate instead of answered twice.
"""

from __future__ import annotations

import math
from typing import Any

from edgeloop.adapters.transport import Received

__all__ = ["AnsweredMemory", "Received"]


class _Answered:
    """One device's answered seqs: everything up to ``high`` except the ``holes`` (half-open ranges)."""

    __slots__ = ("high", "holes", "ts")

    def __init__(self, seq: int, ts: float) -> None:
        self.high, self.ts = seq, ts
        # Nothing is known below the first seq seen: a late reading there is new.
        self.holes: list[tuple[int, int]] = [(0, seq)] if seq > 0 else []


class AnsweredMemory:
    """Which (seq) of each device were answered, for at most ``max_devices`` devices (least recent go).

    A redelivered reading repeats a seq that was answered; a reading that merely arrives late does
    not, and brokers do reorder (Mosquitto 2.0 with a shared subscription and a full in-flight window
    delivered seq 9,399 before 8,908). So per device the memory keeps the highest answered seq and the
    seqs below it that were skipped (a few ranges): a seq at or below the highest is a duplicate
    unless it fills one of those holes. A device that restarts its counter starts again at a low seq
    with a later timestamp than any answered, so it starts afresh. Readings without a seq are never
    called duplicates.

    >>> m = AnsweredMemory(max_devices=2)
    >>> [m.seen("a", s, 100.0 + s) for s in (1, 2, 2, 1, 5, 3, 3, 4, 6)]
    [False, False, True, True, False, False, True, False, False]
    >>> m.seen("a", 0, 500.0)  # the device restarted its counter
    False
    >>> m.seen("b", 1, 1.0), m.seen("c", 1, 1.0), m.seen("a", 0, 500.0)  # "a" was the least recent
    (False, False, False)
    """

    MAX_HOLES = 64  # ranges kept per device; a reading older than the oldest kept range counts as seen

    def __init__(self, max_devices: int) -> None:
        if max_devices < 1:
            raise ValueError("max_devices must be at least 1")
        self.max_devices = max_devices
        self._last: dict[str, _Answered] = {}

    def __len__(self) -> int:
        return len(self._last)

    def seen(self, device: str, seq: int | None, ts: float) -> bool:
        """True if ``seq`` of ``device`` was answered already; else remember it as answered."""
        if seq is None:
            return False
        state = self._last.pop(device, None)  # re-inserted below: dict order is recency order
        if state is None or (seq <= state.high and ts > state.ts):
            state = _Answered(seq, ts)  # a new device, or one that restarted its counter
        elif seq > state.high:
            if seq > state.high + 1:
                state.holes.append((state.high + 1, seq))
                if len(state.holes) > self.MAX_HOLES:
                    del state.holes[0]
            state.high, state.ts = seq, max(state.ts, ts)
        elif not self._fill(state, seq):
            self._last[device] = state
            return True
        self._last[device] = state
        if len(self._last) > self.max_devices:
            del self._last[next(iter(self._last))]
        return False

    @staticmethod
    def _fill(state: _Answered, seq: int) -> bool:
        """Take ``seq`` out of the holes; False if it was not in one (answered before)."""
        for i, (start, end) in enumerate(state.holes):
            if start <= seq < end:
                state.holes[i : i + 1] = [r for r in ((start, seq), (seq + 1, end)) if r[0] < r[1]]
                return True
        return False

    def to_state(self) -> dict[str, list[Any]]:
        """JSON-able copy, least recent device first: ``{device: [high, ts, [[start, end], ...]]}``."""
        return {d: [a.high, a.ts, [list(h) for h in a.holes]] for d, a in self._last.items()}

    def load_state(self, state: Any) -> int:
        """Add :meth:`to_state` output of an earlier run (kept: the ``max_devices`` most recent).

        Entries that are not well formed are skipped; returns how many devices are remembered from it.
        """
        if not isinstance(state, dict):
            return 0
        loaded = 0
        for device, entry in state.items():
            try:
                high, ts, holes = entry
                answered = _Answered(int(high), float(ts))
                answered.holes = [(int(a), int(b)) for a, b in holes][-self.MAX_HOLES :]
            except (TypeError, ValueError, OverflowError):
                continue
            if not isinstance(device, str) or answered.high < 0 or not math.isfinite(answered.ts):
                continue
            self._last.pop(device, None)
            self._last[device] = answered
            loaded += 1
        while len(self._last) > self.max_devices:
            del self._last[next(iter(self._last))]
        return min(loaded, len(self._last))
