"""Silence is judged by each device's own reporting interval, in wall time."""

from __future__ import annotations

from edgeloop.service.alerts import SilenceWatch


def test_each_device_is_judged_by_its_own_cadence() -> None:
    watch = SilenceWatch(factor=3, floor_s=1)
    fast, slow = 0, 0
    silent: list[tuple[str, float]] = []
    for second in range(0, 120, 1):  # a check every second for two minutes
        fast += 50  # 50 readings/s
        if second % 10 == 0:
            slow += 1  # one reading every 10 s
        silent += watch.observe({"fast": fast, "slow": slow}, float(second))
    assert silent == []  # neither is silent, though slow's count stands still for 9 s at a time
    # slow stops: silent after 3 x 10 s, once; fast stops: silent after the 1 s floor.
    for second in range(120, 200):
        fast += 50 if second < 150 else 0
        silent += watch.observe({"fast": fast, "slow": slow}, float(second))
    assert [d for d, _ in silent] == ["slow", "fast"]
    assert 30 < dict(silent)["slow"] <= 32 and dict(silent)["fast"] <= 3


def test_a_silent_device_alerts_again_only_after_it_reported() -> None:
    watch = SilenceWatch(factor=2, floor_s=0)
    count, alerts = 0, []
    for t in range(100):
        if t < 10 or 50 <= t < 60:
            count += 1
        alerts += watch.observe({"d": count}, float(t))
    assert len(alerts) == 2
