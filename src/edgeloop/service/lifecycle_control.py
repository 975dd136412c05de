"""The edge's side of the model lifecycle: events out, retrain attempts, control events, bus models.

:class:`LifecycleControl` is the part of :class:`~edgeloop.service.edge.EdgeService` that publishes
and stores events (and offers them to the alerter), moves retrain attempts through the dispatcher as
the retrain bookkeeping (:mod:`edgeloop.lifecycle`) decides, applies what trainers and other
replicas announce on the events topic, and verifies and installs signed champions that arrive on the
models topics; the service owns the state it uses.
"""

from __future__ import annotations

import logging
import queue
from typing import TYPE_CHECKING

import orjson

from edgeloop.lifecycle.retrains import Failure, Retrains
from edgeloop.registry.bus import BundleRefused, install_bundle, open_bundle
from edgeloop.retrain.job import RetrainOutcome
from edgeloop.scopes import parse_label
from edgeloop.service import alerts, metrics
from edgeloop.telemetry.schema import Event

if TYPE_CHECKING:
    from edgeloop.adapters.transport import Transport
    from edgeloop.adapters.writer import StoreWriter
    from edgeloop.config import Settings
    from edgeloop.engine.engine import Engine, Rollback
    from edgeloop.registry.bus import Verifier
    from edgeloop.registry.local import LocalRegistry
    from edgeloop.retrain.dispatch import Dispatcher
    from edgeloop.service.edge import EdgeStats
    from edgeloop.service.model_sync import ModelSync

log = logging.getLogger("edgeloop.service.edge")


class LifecycleControl:
    """Retrains, control events and bus models (a part of the edge service; see the module docstring)."""

    settings: Settings
    site: str
    engine: Engine
    stats: EdgeStats
    transport: Transport
    writer: StoreWriter | None
    registry: LocalRegistry
    retrains: Retrains
    dispatcher: Dispatcher
    models: ModelSync
    model_verifier: Verifier | None
    _control: queue.SimpleQueue[bytes]
    _model_messages: queue.SimpleQueue[tuple[str, bytes]]
    _models_prefix: str
    _events_topic: str

    def _emit(self, events: list[Event]) -> None:
        alerts.offer(self, self.settings, events, self.transport.publish_alert)
        if not events:
            return
        assert self.writer is not None
        self.writer.put(events=events)
        for event in events:
            self.stats.events.append(event)
            metrics.EVENTS.labels(kind=event.kind).inc()
            log.info("event %s %s: %s", event.kind, event.scope, event.reason)
            self.transport.publish_event(self._events_topic, orjson.dumps(event.to_dict(self.site)))

    # -- retrains: the bookkeeping decides, the dispatcher moves the attempts ----------------------
    def _dispatch_due(self) -> None:
        for attempt in self.retrains.due():
            log.info(
                "retrain of %s dispatched (attempt %d of %d, request %s)",
                attempt.scope,
                attempt.number,
                self.retrains.policy.max_attempts,
                attempt.request_id,
            )
            self.dispatcher.submit(attempt)

    def _check_retrains(self) -> None:
        if not len(self.retrains):
            return
        for failure in self.retrains.expired():
            self.dispatcher.cancel(failure.request_id)
            self._retrain_failed(failure)
        self._dispatch_due()

    def _retrain_failed(self, failure: Failure) -> None:
        self.stats.retrains_failed += 1
        log.warning("retrain of %s failed (attempt %d): %s", failure.scope, failure.attempt, failure.reason)
        self._emit([failure.event(self.engine.stream_ts)])
        if failure.gave_up:
            self.engine.retrain_finished(failure.scope, installed=False)

    def _retrain_answered(self, request_id: str | None, scope: str, *, installed: bool) -> None:
        done = self.retrains.answered(request_id) if request_id else self.retrains.answered_scope(scope)
        if done is not None:
            self.engine.retrain_finished(done, installed=installed)

    def _handle_outcomes(self) -> None:
        for report in self.dispatcher.poll():
            if report.kind == "started":
                self.retrains.started(report.request_id)
            elif report.kind == "failed":
                failure = self.retrains.failed(report.request_id, report.reason, report.attempt)
                if failure is not None:
                    self._retrain_failed(failure)
            elif report.outcome is not None:
                self._apply_outcome(report.outcome, report.request_id)

    def _apply_outcome(self, outcome: RetrainOutcome, request_id: str | None = None) -> None:
        events = [Event.from_dict(e) for e in outcome.events]
        for event in events:
            event.request_id = event.request_id or request_id
        self._emit(events)
        installed = False
        if outcome.decision == "promoted" and outcome.version is not None:
            installed = self._install(outcome.scope, outcome.version)
        self._retrain_answered(request_id, outcome.scope, installed=installed)

    def _handle_control(self) -> None:
        """Events from other processes (trainer service, other replicas): swap models they promote.

        Answers carrying a request id settle that request; the edge's own events come back here
        too and change nothing (their request is already settled, or the attempt is not in flight).
        """
        self._receive_models()  # first: a trainer publishes the model before the event promoting it
        while True:
            try:
                payload = self._control.get_nowait()
            except queue.Empty:
                return
            try:
                event = Event.from_dict(orjson.loads(payload))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                log.warning("ignored an unreadable event on %s", self._events_topic)
                continue
            rid = event.request_id
            if event.kind == "retrain_started" and rid:
                self.retrains.started(rid)
            elif event.kind == "retrain_failed" and rid:
                attempt = event.metrics.get("attempt")
                failure = self.retrains.failed(
                    rid,
                    f"trainer: {event.reason}",
                    int(attempt) if isinstance(attempt, int | float) else None,
                )
                if failure is not None:
                    self._retrain_failed(failure)
            elif event.version and (
                event.kind == "model_promoted" or (event.kind == "retrain_finished" and not event.metrics)
            ):
                # (a retrain_finished naming a version: a trainer pool answered from a training it had)
                try:
                    scope, version = parse_label(event.version)
                except ValueError:
                    continue
                serving = self.engine.serving.get(scope)
                installed = serving is not None and serving.model.label == event.version
                if not installed and self.model_verifier is None:
                    # (bus mode: only a signed model message installs anything)
                    installed = self._install(scope, version)
                self._retrain_answered(rid, scope, installed=installed)
            elif event.kind == "model_rejected" or (event.kind == "retrain_finished" and not event.metrics):
                self._retrain_answered(rid, event.scope, installed=False)
            elif event.kind == "model_rolled_back":
                self._sync_models()

    # -- models -----------------------------------------------------------------------------------
    def _receive_models(self) -> None:
        """Verify, cache and serve signed champions from the bus; refuse and report anything else."""
        verifier = self.model_verifier
        while verifier is not None:
            try:
                topic, payload = self._model_messages.get_nowait()
            except queue.Empty:
                return
            if not payload:
                continue  # a retained message cleared
            name = topic[len(self._models_prefix) :]
            try:
                bundle = open_bundle(payload, verifier, topic_name=name)
                result = install_bundle(self.registry, bundle, lags=self.settings.model.lags)
            except BundleRefused as exc:
                self.models.refuse(exc.scope or name, exc.label, f"model message on {topic}", exc.reason)
                continue
            except OSError as exc:  # the cache cannot be written: nothing installed, the old one serves
                self.models.refuse(name, None, f"model message on {topic}", f"cannot cache it: {exc}")
                continue
            if result == "installed" and bundle.version is not None:
                log.info(
                    "verified %s (key %s, epoch %d) from the bus", bundle.label, bundle.key_id, bundle.epoch
                )
                self.models.install(bundle.scope, bundle.version)
            elif result == "cleared":
                log.info("verified %s (key %s): no champion of its own any more", bundle.label, bundle.key_id)
                self._sync_models()
            else:
                log.debug("%s from the bus: %s (epoch %d)", bundle.label, result, bundle.epoch)

    def _install(self, scope: str, version: int) -> bool:
        return self.models.install(scope, version)

    def _sync_models(self) -> None:
        self.models.sync()

    def _persist_rollback(self, rollback: Rollback) -> None:
        self.models.record_rollback(rollback)
