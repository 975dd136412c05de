"""Retrain dispatchers: where a retrain request goes so the message loop never waits for it.

- :class:`LocalDispatcher` (default): one long-lived worker process on this machine, started with
  ``spawn`` and a lower CPU priority; outcomes come back through :meth:`poll`.
- :class:`MqttDispatcher`: publishes the request on ``edgeloop/<site>/control/retrain`` for a trainer
  service (``edgeloop trainer``), possibly on another machine; outcomes come back as events.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol

import orjson

from edgeloop.config import Settings
from edgeloop.engine.engine import RetrainRequest
from edgeloop.retrain.job import RetrainOutcome

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def submit(self, request: RetrainRequest) -> None: ...

    def poll(self) -> list[RetrainOutcome]: ...

    def close(self) -> None: ...


def request_to_json(request: RetrainRequest) -> bytes:
    return orjson.dumps(
        {
            "scope": request.scope,
            "trigger": request.trigger,
            "reason": request.reason,
            "since_ts": request.since_ts,
            "requested_ts": request.requested_ts,
        }
    )


def request_from_json(payload: bytes) -> RetrainRequest:
    data = orjson.loads(payload)
    if not isinstance(data, dict) or not isinstance(data.get("scope"), str):
        raise ValueError("a retrain request is a JSON object with a 'scope'")
    return RetrainRequest(
        scope=data["scope"],
        trigger=str(data.get("trigger", "manual")),
        reason=str(data.get("reason", "")),
        since_ts=data.get("since_ts"),
        requested_ts=float(data.get("requested_ts") or 0.0),
    )


def _worker_init() -> None:
    # Training must not starve the edge of CPU on a small node.
    with contextlib.suppress(OSError):  # not permitted on some hosts
        os.nice(10)


def _worker_retrain(settings_data: dict[str, Any], request_data: dict[str, Any]) -> dict[str, Any]:
    """Runs in the worker process: rebuilds settings, trains, logs to MLflow, returns plain data."""
    from edgeloop.registry.tracking import Tracker
    from edgeloop.retrain.job import run_retrain

    settings = Settings.model_validate(settings_data)
    tracker = Tracker.from_settings(settings)
    outcome = run_retrain(
        settings,
        request_data["scope"],
        trigger=request_data["trigger"],
        reason=request_data["reason"],
        since_ts=request_data["since_ts"],
        stream_ts=request_data["requested_ts"] or None,
        tracker=tracker,
    )
    return outcome.to_dict()


class LocalDispatcher:
    """Retrains in one worker process; requests queue in order, one training at a time."""

    def __init__(self, settings: Settings) -> None:
        self._settings_data = settings.model_dump(mode="json")
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
        )
        self._futures: list[tuple[RetrainRequest, Future[dict[str, Any]]]] = []

    def submit(self, request: RetrainRequest) -> None:
        data = orjson.loads(request_to_json(request))
        self._futures.append((request, self._pool.submit(_worker_retrain, self._settings_data, data)))

    def poll(self) -> list[RetrainOutcome]:
        done: list[tuple[RetrainRequest, Future[dict[str, Any]]]] = []
        waiting: list[tuple[RetrainRequest, Future[dict[str, Any]]]] = []
        for request, future in self._futures:
            (done if future.done() else waiting).append((request, future))
        self._futures = waiting
        outcomes = []
        for request, future in done:
            try:
                outcomes.append(RetrainOutcome.from_dict(future.result()))
            except Exception as exc:
                log.exception("retrain of %s crashed", request.scope)
                outcomes.append(RetrainOutcome(request.scope, "failed", f"worker crashed: {exc}"))
        return outcomes

    @property
    def busy(self) -> int:
        return len(self._futures)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class MqttDispatcher:
    """Sends requests to a trainer service; its events report back on the events topic."""

    def __init__(self, session: Any, topic: str, qos: int = 1) -> None:
        self._session = session
        self._topic = topic
        self._qos = qos

    def submit(self, request: RetrainRequest) -> None:
        self._session.publish(self._topic, request_to_json(request), qos=self._qos)

    def poll(self) -> list[RetrainOutcome]:
        return []

    def close(self) -> None:
        pass
