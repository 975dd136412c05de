"""At-least-once delivery helpers of the edge: what a received reading carries until it is answered,
and the memory that recognises a reading answered before.

A QoS 1 reading is acknowledged to the broker only after its prediction was handed to paho and its
row to the store writer, so a crash or shutdown in between makes the broker deliver it again. The
price of at-least-once is duplicates: a redelivered reading whose first copy was answered (its
PUBACK lost with a broker crash, or sent on a connection that then dropped). :class:`AnsweredMemory`
recognises them.
"""

from __future__ import annotations

from typing import NamedTuple


class Received(NamedTuple):
    """One message from paho's thread: what the loop needs to answer it and then acknowledge it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int  # MqttSession.connection when it arrived; packet ids are per connection


class AnsweredMemory:
    """The last answered (seq, ts) per device, for at most ``max_devices`` devices (least recent go).

    A reading is a duplicate when both its seq and its timestamp are at or below the last answered
    reading's of that device: a redelivery repeats both. A device that restarts its counter starts
    again at a low seq but with a later timestamp, so it is not mistaken for one. Readings without a
    seq are never called duplicates.

    >>> m = AnsweredMemory(max_devices=2)
    >>> [m.seen("a", s, 100.0 + s) for s in (1, 2, 2, 1, 3)]
    [False, False, True, True, False]
    >>> m.seen("a", 0, 500.0)  # the device restarted its counter
    False
    >>> m.seen("b", 1, 1.0), m.seen("c", 1, 1.0), m.seen("a", 0, 500.0)  # "a" was the least recent
    (False, False, False)
    """

    def __init__(self, max_devices: int) -> None:
        if max_devices < 1:
            raise ValueError("max_devices must be at least 1")
        self.max_devices = max_devices
        self._last: dict[str, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._last)

    def seen(self, device: str, seq: int | None, ts: float) -> bool:
        """True if (device, seq, ts) was answered already; else remember it as the device's last."""
        if seq is None:
            return False
        last = self._last.pop(device, None)  # re-inserted below: dict order is recency order
        if last is not None and seq <= last[0] and ts <= last[1]:
            self._last[device] = last
            return True
        self._last[device] = (seq, ts)
        if len(self._last) > self.max_devices:
            del self._last[next(iter(self._last))]
        return False
