"""The memory of answered readings: redeliveries are recognised, late readings are not mistaken for them."""

from __future__ import annotations

import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.service.delivery import AnsweredMemory


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 400), st.integers(0, 60))
def test_every_seq_is_accepted_exactly_once_through_reordering_and_redelivery(
    seed: int, n: int, shuffle_span: int
) -> None:
    rng = random.Random(seed)
    arrivals = list(range(n))
    # Reordering within a window, as a broker with a full in-flight window does it ...
    for i in range(n):
        j = min(n - 1, i + rng.randint(0, shuffle_span))
        arrivals[i], arrivals[j] = arrivals[j], arrivals[i]
    # ... and redeliveries of readings already answered (a reconnect resends the unacknowledged).
    for _ in range(n // 5):
        k = rng.randrange(len(arrivals))
        arrivals.insert(k + rng.randint(1, 30), arrivals[k])
    memory = AnsweredMemory(max_devices=4)
    accepted = [seq for seq in arrivals if not memory.seen("dev", seq, float(seq))]
    assert sorted(accepted) == list(range(n))


def test_a_device_that_restarts_its_counter_is_not_dropped() -> None:
    memory = AnsweredMemory(max_devices=4)
    assert [memory.seen("d", s, 1000.0 + s) for s in range(5)] == [False] * 5
    assert memory.seen("d", 0, 5000.0) is False  # counter restarted: later timestamp
    assert memory.seen("d", 0, 5000.0) is True  # and its redelivery is recognised


def test_the_memory_survives_a_restart_through_its_state() -> None:
    before = AnsweredMemory(max_devices=3)
    for seq in (1, 2, 5, 3):  # 4 is a hole: a late reading, not a redelivery
        assert before.seen("a", seq, 100.0 + seq) is False
    before.seen("b", 7, 50.0)
    after = AnsweredMemory(max_devices=3)
    assert after.load_state(orjson.loads(orjson.dumps(before.to_state()))) == 2
    assert [after.seen("a", s, 100.0 + s) for s in (1, 2, 3, 5, 4, 6)] == [True] * 4 + [False] * 2
    assert after.seen("b", 7, 50.0) is True


def test_a_damaged_state_loads_what_is_well_formed_and_stays_bounded() -> None:
    memory = AnsweredMemory(max_devices=2)
    state = {
        "x": [3, 1.0, [[0, 3]]],
        "bad": "no",
        "neg": [-1, 1.0, []],
        "nan": [1, "nan", []],
        "y": [1, 2.0, []],
    }
    assert memory.load_state(state) == 2
    assert memory.load_state([1, 2]) == 0
    assert len(memory) == 2
    assert memory.seen("y", 1, 2.0) is True
