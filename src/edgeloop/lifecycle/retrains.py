"""Retrain bookkeeping: each scope's pending retrain, its attempts, deadline and retries.

Training can fail (a worker killed by the OOM killer, a trainer restarted mid-job, an exception, a
lost message); the loop must not. One pending retrain per scope goes through::

    due ──dispatch──▶ in flight ──answer──▶ done (tell the engine: retrain_finished)
     ▲                   │
     └──backoff◀──fail / timeout──┘        after max_attempts: released (retrain_finished, not installed)

A request keeps one id over all its attempts, so a trainer can recognise a re-sent request and a
late answer to an earlier attempt still completes it. An attempt's deadline runs from its dispatch
and restarts when the worker or trainer reports that it started (a request may wait in a queue).
Pure: the clock is injected and nothing here does I/O; the edge applies what it returns.

>>> now = [0.0]
>>> book = Retrains(RetryPolicy(timeout=60, max_attempts=2, backoff=10), clock=lambda: now[0])
>>> rid = book.add(RetrainRequest("voc_ppb", "initial", "400 readings"))
>>> [a.number for a in book.due()]
[1]
>>> now[0] = 61.0
>>> failure = book.expired()[0]
>>> failure.reason, failure.retry_in
('attempt 1 of 2 timed out after 60 s', 10.0)
>>> book.due(), book.pending("voc_ppb")
([], True)
>>> now[0] = 71.0
>>> [a.number for a in book.due()]
[2]
>>> book.answered(rid)
'voc_ppb'
>>> book.pending("voc_ppb")
False
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeloop.engine.engine import RetrainRequest
from edgeloop.telemetry.schema import Event


@dataclass(frozen=True)
class RetryPolicy:
    """How long an attempt may take, how often a request is tried, how long to wait in between.

    >>> p = RetryPolicy(backoff=30, backoff_max=100)
    >>> [p.delay(n) for n in (1, 2, 3, 4)]
    [30.0, 60.0, 100.0, 100.0]
    """

    timeout: float = 900.0
    max_attempts: int = 3
    backoff: float = 30.0
    backoff_max: float = 600.0

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        """From the ``retrain`` config section."""
        return cls(settings.timeout, settings.max_attempts, settings.backoff, settings.backoff_max)

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt after ``failures`` failed ones (capped doubling)."""
        return float(min(self.backoff_max, self.backoff * 2 ** min(failures - 1, 30)))


@dataclass(frozen=True)
class Attempt:
    """One dispatch of a request: what a dispatcher sends (``number`` counts from 1)."""

    request: RetrainRequest
    request_id: str
    number: int

    @property
    def scope(self) -> str:
        return self.request.scope


@dataclass(frozen=True)
class Failure:
    """A failed or timed-out attempt; ``retry_in`` is None when the request was given up."""

    scope: str
    request_id: str
    attempt: int
    max_attempts: int
    reason: str
    retry_in: float | None

    @property
    def gave_up(self) -> bool:
        """True: tell the engine ``retrain_finished(scope, installed=False)``; it may ask again later."""
        return self.retry_in is None

    def event(self, ts: float) -> Event:
        then = "giving up" if self.retry_in is None else f"retrying in {self.retry_in:g} s"
        metrics: dict[str, float | int | None] = {
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "retry_in_s": self.retry_in,
        }
        return Event(
            "retrain_failed",
            self.scope,
            ts,
            reason=f"{self.reason}; {then}",
            metrics=metrics,
            request_id=self.request_id,
        )


@dataclass
class _Pending:
    request: RetrainRequest
    request_id: str
    attempts: int = 0
    in_flight: bool = False
    deadline: float = math.inf
    next_try: float = 0.0


class Retrains:
    """The pending retrain of every scope; see the module docstring. One thread drives it."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._new_id = new_id
        self._by_scope: dict[str, _Pending] = {}
        self._by_id: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._by_scope)

    def pending(self, scope: str) -> bool:
        return scope in self._by_scope

    def request_id(self, scope: str) -> str | None:
        entry = self._by_scope.get(scope)
        return entry.request_id if entry is not None else None

    def scope_of(self, request_id: str) -> str | None:
        entry = self._by_id.get(request_id)
        return entry.request.scope if entry is not None else None

    def add(self, request: RetrainRequest) -> str:
        """Track a new request (due now) and return its id; a scope already pending keeps its request."""
        entry = self._by_scope.get(request.scope)
        if entry is None:
            entry = _Pending(request, self._new_id(), next_try=self._clock())
            self._by_scope[request.scope] = entry
            self._by_id[entry.request_id] = entry
        return entry.request_id

    def due(self) -> list[Attempt]:
        """Attempts to dispatch now; each is in flight from here on, with its deadline running."""
        now = self._clock()
        out = []
        for entry in self._by_scope.values():
            if not entry.in_flight and entry.next_try <= now:
                entry.attempts += 1
                entry.in_flight = True
                entry.deadline = now + self.policy.timeout
                out.append(Attempt(entry.request, entry.request_id, entry.attempts))
        return out

    def started(self, request_id: str) -> bool:
        """The worker or trainer began the request: its deadline restarts now."""
        entry = self._by_id.get(request_id)
        if entry is None or not entry.in_flight:
            return False
        entry.deadline = self._clock() + self.policy.timeout
        return True

    def answered(self, request_id: str) -> str | None:
        """A verdict arrived (promoted, rejected, not enough data): the request is done.

        Returns the scope to report to the engine, or None for an unknown or already finished id
        (a duplicate answer, another edge's request). A late answer to an earlier attempt counts.
        """
        entry = self._by_id.get(request_id)
        if entry is None:
            return None
        self._drop(entry)
        return entry.request.scope

    def answered_scope(self, scope: str) -> str | None:
        """An answer that names no request id (a trainer from before request ids): match by scope."""
        entry = self._by_scope.get(scope)
        return self.answered(entry.request_id) if entry is not None else None

    def failed(self, request_id: str, reason: str, attempt: int | None = None) -> Failure | None:
        """An attempt failed. Counted once: only while in flight and (if given) for the current attempt."""
        entry = self._by_id.get(request_id)
        if entry is None or not entry.in_flight or (attempt is not None and attempt != entry.attempts):
            return None
        return self._fail(entry, reason)

    def expired(self) -> list[Failure]:
        """Attempts whose deadline passed without an answer, now counted as failed."""
        now = self._clock()
        late = [e for e in self._by_scope.values() if e.in_flight and e.deadline <= now]
        p = self.policy
        return [
            self._fail(e, f"attempt {e.attempts} of {p.max_attempts} timed out after {p.timeout:g} s")
            for e in late
        ]

    def _fail(self, entry: _Pending, reason: str) -> Failure:
        entry.in_flight = False
        entry.deadline = math.inf
        retry_in: float | None = None
        if entry.attempts >= self.policy.max_attempts:
            self._drop(entry)
        else:
            retry_in = self.policy.delay(entry.attempts)
            entry.next_try = self._clock() + retry_in
        return Failure(
            entry.request.scope, entry.request_id, entry.attempts, self.policy.max_attempts, reason, retry_in
        )

    def _drop(self, entry: _Pending) -> None:
        self._by_scope.pop(entry.request.scope, None)
        self._by_id.pop(entry.request_id, None)
