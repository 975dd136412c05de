"""Retrain bookkeeping (lifecycle/retrains.py) on a fake clock."""

from __future__ import annotations

import itertools

import pytest

from edgeloop.engine.engine import RetrainRequest
from edgeloop.lifecycle.retrains import Retrains, RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def book(clock: Clock, **policy: float) -> Retrains:
    ids = (f"r{n}" for n in itertools.count(1))
    defaults = {"timeout": 60.0, "max_attempts": 3, "backoff": 10.0, "backoff_max": 25.0}
    return Retrains(RetryPolicy(**{**defaults, **policy}), clock=clock, new_id=lambda: next(ids))  # type: ignore[arg-type]


def request(scope: str = "voc_ppb@dev-1") -> RetrainRequest:
    return RetrainRequest(scope, "drift", "alarm")


def test_a_new_request_is_due_once_and_answered_once(clock: Clock) -> None:
    b = book(clock)
    rid = b.add(request())
    attempts = b.due()
    assert [(a.request_id, a.number, a.scope) for a in attempts] == [(rid, 1, "voc_ppb@dev-1")]
    assert b.due() == []  # in flight: not dispatched again
    assert b.answered(rid) == "voc_ppb@dev-1"
    assert not b.pending("voc_ppb@dev-1") and len(b) == 0
    assert b.answered(rid) is None  # a duplicate answer changes nothing


def test_a_scope_already_pending_keeps_its_request(clock: Clock) -> None:
    b = book(clock)
    first = b.add(request())
    assert b.add(request()) == first
    assert len(b.due()) == 1


def test_timeout_retries_with_capped_doubling_backoff_then_gives_up(clock: Clock) -> None:
    b = book(clock, max_attempts=4)
    rid = b.add(request())
    waits = []
    for number in (1, 2, 3, 4):
        (attempt,) = b.due()
        assert attempt.number == number and attempt.request_id == rid  # one id over all attempts
        clock.now += 59.9
        assert b.expired() == []
        clock.now += 0.2
        (failure,) = b.expired()
        assert failure.attempt == number and "timed out after 60 s" in failure.reason
        waits.append(failure.retry_in)
        if failure.retry_in is not None:
            clock.now += failure.retry_in - 0.01
            assert b.due() == []  # still backing off
            clock.now += 0.01
    assert waits == [10.0, 20.0, 25.0, None]
    assert not b.pending("voc_ppb@dev-1")


def test_gave_up_failure_tells_the_engine_and_carries_an_event(clock: Clock) -> None:
    b = book(clock, max_attempts=1)
    rid = b.add(request())
    b.due()
    failure = b.failed(rid, "worker died (SIGKILL)")
    assert failure is not None and failure.gave_up
    event = failure.event(ts=5.0)
    assert event.kind == "retrain_failed" and event.request_id == rid and event.scope == "voc_ppb@dev-1"
    assert "worker died" in event.reason and "giving up" in event.reason
    assert event.metrics["attempt"] == 1


def test_a_failure_counts_once_per_attempt(clock: Clock) -> None:
    b = book(clock)
    rid = b.add(request())
    b.due()
    assert b.failed(rid, "crash", attempt=2) is None  # not the attempt in flight
    first = b.failed(rid, "crash", attempt=1)
    assert first is not None and first.retry_in == 10.0
    # The edge's own retrain_failed event comes back over MQTT: the attempt is no longer in flight.
    assert b.failed(rid, "crash", attempt=1) is None
    assert b.failed(rid, "crash") is None
    clock.now += 10
    (second,) = b.due()
    assert second.number == 2
    assert b.failed(rid, "late report of attempt 1", attempt=1) is None


def test_started_restarts_the_deadline(clock: Clock) -> None:
    b = book(clock)
    rid = b.add(request())
    b.due()
    clock.now += 50
    assert b.started(rid)  # it waited in the trainer's queue; now it runs
    clock.now += 50
    assert b.expired() == []
    clock.now += 11
    assert len(b.expired()) == 1
    assert not b.started(rid)  # backing off: nothing runs


def test_a_late_answer_to_an_earlier_attempt_completes_the_request(clock: Clock) -> None:
    b = book(clock)
    rid = b.add(request())
    b.due()
    clock.now += 61
    b.expired()
    assert b.answered(rid) == "voc_ppb@dev-1"
    clock.now += 100
    assert b.due() == []


def test_unknown_ids_and_legacy_answers_by_scope(clock: Clock) -> None:
    b = book(clock)
    b.add(request("voc_ppb"))
    b.due()
    assert b.answered("someone-elses") is None
    assert b.failed("someone-elses", "x") is None
    assert not b.started("someone-elses")
    assert b.answered_scope("voc_ppb@other") is None
    assert b.answered_scope("voc_ppb") == "voc_ppb"


def test_scopes_are_independent(clock: Clock) -> None:
    b = book(clock)
    a = b.add(request("voc_ppb@a"))
    c = b.add(request("voc_ppb@b c"))
    assert a != c and b.scope_of(c) == "voc_ppb@b c"
    assert {x.scope for x in b.due()} == {"voc_ppb@a", "voc_ppb@b c"}
    b.failed(a, "boom")
    assert b.pending("voc_ppb@a") and b.answered(c) == "voc_ppb@b c"
    assert b.request_id("voc_ppb@a") == a and b.request_id("voc_ppb@b c") is None


def test_policy_from_settings() -> None:
    from edgeloop.config import load_settings

    s = load_settings(None, **{"retrain.timeout": 5, "retrain.max_attempts": 2, "retrain.backoff": 1})
    assert RetryPolicy.from_settings(s.retrain) == RetryPolicy(5.0, 2, 1.0, 600.0)
