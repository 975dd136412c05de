"""Stand-ins for the parts of paho's client the unit tests replace."""

from __future__ import annotations


class CountingPair:
    """Stands in for paho's wake-up socket: counts the writes to it (one per wake-up)."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, data: bytes) -> int:
        self.sent += 1
        return len(data)

    def close(self) -> None:
        pass
