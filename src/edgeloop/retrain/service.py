"""``edgeloop trainer``: a retrain service fed by requests over MQTT.

Edges configured with ``edge.retrain: mqtt`` publish requests on ``edgeloop/<site>/control/retrain``;
trainers subscribe through a shared subscription (several trainers split the requests), run the same
:func:`~edgeloop.retrain.job.run_retrain` as the local worker, and publish its events on
``edgeloop/<site>/events``, where every edge picks up a promoted model. Trainers and edges share the
data dir (store and models) or, at scale, a database and a models volume.

Every event about a request carries its ``request_id``: ``retrain_started`` when the training begins,
then the verdict (``model_promoted``/``model_rejected``, or ``retrain_finished`` without metrics when
there was not enough data), or ``retrain_failed`` when the training raised. A request is acknowledged
to the broker only once answered, so one that a killed trainer never finished is delivered again when
it comes back (persistent session); the edge's ``retrain.timeout`` re-request covers the rest. A
request id already answered is answered again from memory instead of training twice. No request,
however malformed, stops the trainer.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from typing import Any

import orjson

from edgeloop.adapters.mqtt import MqttSession, default_client_id, topic_for
from edgeloop.adapters.store import open_store
from edgeloop.config import Settings
from edgeloop.lifecycle.retrains import Attempt
from edgeloop.registry.tracking import Tracker
from edgeloop.retrain.dispatch import request_from_json
from edgeloop.retrain.job import RetrainOutcome, run_retrain
from edgeloop.telemetry.schema import Event

log = logging.getLogger(__name__)

TRAINER_GROUP = "edgeloop-trainers"
ANSWERS_KEPT = 256  # request ids whose answer is repeated, not retrained, when they come again
PUBLISH_WAIT = 5.0  # seconds to wait for the answer to leave before the request is acknowledged


class TrainerService:
    def __init__(self, settings: Settings, *, protocol: str = "5") -> None:
        self.settings = settings
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.outcomes: deque[RetrainOutcome] = deque(maxlen=100)
        self.handled: Counter[str] = Counter()  # trained, repeated, failed, refused
        self._answers: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.ready = threading.Event()
        self._protocol = protocol
        self._events_topic = topic_for(settings.topics.events, site=settings.site)
        self.session = MqttSession(
            settings.broker,
            role="trainer",
            # A persistent session: requests sent while no trainer runs wait for it at the broker.
            client_id=settings.broker.client_id or default_client_id(f"trainer-{settings.site}", stable=True),
            clean_start=False,
            session_expiry=settings.broker.session_expiry,
            protocol=protocol,  # type: ignore[arg-type]
            on_message=self._requests.put,
        )
        # Acknowledge a request only once it is answered: a trainer killed mid-training gets it again.
        self.session.client.manual_ack_set(True)
        self.tracker = Tracker.from_settings(settings)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        s = self.settings
        request_topic = topic_for(s.topics.retrain, site=s.site)
        self.session.start()
        self.session.subscribe(
            [request_topic], qos=1, shared_group=TRAINER_GROUP if self._protocol == "5" else None
        )
        log.info("trainer up: waiting for requests on %s", request_topic)
        self.ready.set()
        try:
            while not self._stop.is_set():
                try:
                    message = self._requests.get(timeout=0.2)
                except queue.Empty:
                    continue
                try:
                    self.handle(bytes(message.payload))
                except Exception:  # the trainer survives any one request
                    self.handled["failed"] += 1
                    log.exception("retrain request failed unexpectedly; taking the next one")
                finally:
                    if message.qos > 0:
                        with contextlib.suppress(Exception):
                            self.session.client.ack(message.mid, message.qos)
        finally:
            self.session.close()

    def handle(self, payload: bytes) -> None:
        """Answer one request (its events published and stored); never raises for a bad request."""
        try:
            attempt = request_from_json(payload)
        except ValueError as exc:
            self.handled["refused"] += 1
            log.warning("refused a retrain request: %s (payload %r)", exc, payload[:160])
            self._refuse(payload, str(exc))
            return
        rid = attempt.request_id
        scope = attempt.scope
        if rid and rid in self._answers:
            self.handled["repeated"] += 1
            log.info("request %s (%s) was answered already: sending the answer again", rid, scope)
            self._send(self._answers[rid], store=False)
            return
        ts = attempt.request.requested_ts or time.time()
        self._send([self._event("retrain_started", attempt, ts, f"{attempt.request.trigger}: trainer")])
        log.info(
            "retraining %s (%s, request %s, attempt %d)", scope, attempt.request.trigger, rid, attempt.number
        )
        try:
            outcome = self._retrain(attempt)
        except Exception as exc:
            self.handled["failed"] += 1
            log.exception("retraining %s raised", scope)
            reason = f"training raised {type(exc).__name__}: {exc}"[:500]
            failed = self._event("retrain_failed", attempt, ts, reason, metrics={"attempt": attempt.number})
            self._send([failed])  # not remembered: a retry may succeed
            return
        self.handled["trained"] += 1
        self.outcomes.append(outcome)
        events = [
            {**e, "request_id": rid} if rid else e for e in outcome.events if e["kind"] != "retrain_started"
        ]
        if rid:
            self._answers[rid] = events
            while len(self._answers) > ANSWERS_KEPT:
                self._answers.popitem(last=False)
        self._send(events)
        log.info("%s: %s (%s)", scope, outcome.decision, outcome.reason)

    def _retrain(self, attempt: Attempt) -> RetrainOutcome:
        r = attempt.request
        return run_retrain(
            self.settings,
            r.scope,
            trigger=r.trigger,
            reason=r.reason,
            since_ts=r.since_ts,
            stream_ts=r.requested_ts or None,
            tracker=self.tracker,
        )

    def _event(
        self, kind: str, attempt: Attempt, ts: float, reason: str, metrics: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        event = Event(
            kind,
            attempt.scope,
            ts,
            reason=reason,
            metrics=metrics or {},
            request_id=attempt.request_id or None,
        )
        return event.to_dict(self.settings.site)

    def _refuse(self, payload: bytes, why: str) -> None:
        # A request that names its id and scope gets a final answer, so its edge stops waiting for it.
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(payload)
            if isinstance(data, dict) and isinstance(data.get("request_id"), str) and data["request_id"]:
                scope = data.get("scope")
                event = Event(
                    "retrain_finished",
                    scope[:512] if isinstance(scope, str) else "",
                    time.time(),
                    reason=f"request refused: {why}",
                    request_id=data["request_id"][:128],
                )
                self._send([event.to_dict(self.settings.site)], store=False)

    def _send(self, events: list[dict[str, Any]], *, store: bool = True) -> None:
        info = None
        for event in events:
            info = self.session.publish(self._events_topic, orjson.dumps(event), qos=1)
        if info is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(PUBLISH_WAIT)
        if store and events:
            try:
                db = open_store(
                    self.settings.store_location, retention_rows=self.settings.store.retention_rows
                )
                try:
                    db.write(events=[Event.from_dict(e) for e in events])
                finally:
                    db.close()
            except Exception:  # the store is a record; the answer already went out
                log.exception("could not store %d events", len(events))
