"""Reconnect backoff: exponential, capped, and jittered, for every broker client.

paho 2.2 waits ``min_delay`` after a lost connection and doubles the wait on each failed attempt up
to ``max_delay`` with **no jitter**, so a fleet of edges that lost the same broker reconnects in
lock-step. The MQTT session (:class:`edgeloop.adapters.mqtt.MqttSession`) and the NATS transport draw
each wait from [d/2, d] of the doubled delay d instead; both use this one rule, so it lives apart from
either client.
"""

from __future__ import annotations

import random

__all__ = ["RECONNECT_MIN_DELAY", "jittered_backoff"]

RECONNECT_MIN_DELAY = 0.5


def jittered_backoff(attempt: int, cap: float, base: float = RECONNECT_MIN_DELAY) -> float:
    """Seconds before reconnect ``attempt`` n (1, 2, ...): uniform in [d/2, d], d = min(cap, base * 2^(n-1)).

    >>> all(0.25 <= jittered_backoff(1, 30) <= 0.5 for _ in range(100))
    True
    >>> all(15 <= jittered_backoff(12, 30) <= 30 for _ in range(100))
    True
    """
    delay = min(cap, base * 2 ** min(attempt - 1, 30))
    return random.uniform(delay / 2, delay)
