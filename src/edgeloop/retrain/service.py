"""``edgeloop trainer``: a retrain service fed by requests over MQTT.

Edges configured with ``edge.retrain: mqtt`` publish requests on ``edgeloop/<site>/control/retrain``;
trainers subscribe through a shared subscription (several trainers split the requests), run the same
:func:`~edgeloop.retrain.job.run_retrain` as the local worker, and publish its events on
``edgeloop/<site>/events``, where every edge picks up a promoted model. Trainers and edges share the
data dir (store and models) or, at scale, a database and a models volume.

Every event about a request carries its ``request_id``: ``retrain_started`` when the training begins,
then the verdict (``model_promoted``/``model_rejected``, or ``retrain_finished`` without metrics when
there was not enough data), or ``retrain_failed`` when the training raised. No request, however
malformed, stops the trainer.

Several trainers form a pool that trains each request once (:mod:`edgeloop.retrain.pool`).
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

from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.mqtt_client import default_client_id
from edgeloop.adapters.store import open_store
from edgeloop.adapters.topics import topic_for
from edgeloop.config import Settings
from edgeloop.errors import BrokerError
from edgeloop.lifecycle.retrains import Attempt
from edgeloop.registry.bus import (
    BundleRefused,
    champion_message,
    install_bundle,
    models_topic,
    open_bundle,
    trainer_keys,
)
from edgeloop.registry.local import LocalRegistry
from edgeloop.registry.signing import Signer
from edgeloop.registry.tracking import Tracker
from edgeloop.retrain.dispatch import request_from_json
from edgeloop.retrain.job import RetrainOutcome, run_retrain
from edgeloop.retrain.pool import ANSWERS_KEPT, PUBLISH_WAIT, TrainerPool, _Parked, presence_topic
from edgeloop.retrain.reuse import Finished, FinishedTrainings, verdict
from edgeloop.telemetry.fields import format_ts
from edgeloop.telemetry.schema import Event

log = logging.getLogger(__name__)

TRAINER_GROUP = "edgeloop-trainers"


class TrainerService(TrainerPool):
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
        self._request_topic = topic_for(settings.topics.retrain, site=settings.site)
        self.client_id = settings.broker.client_id or default_client_id(
            f"trainer-{settings.site}", stable=True
        )
        self._presence_root = presence_topic(settings.site)
        self._presence_topic = presence_topic(settings.site, self.client_id)
        expiry = settings.retrain.trainer_session_expiry
        self.session = MqttSession(
            settings.broker,
            role="trainer",
            client_id=self.client_id,
            clean_start=expiry == 0,
            session_expiry=expiry or None,
            protocol=protocol,  # type: ignore[arg-type]
            on_message=self._requests.put,
        )
        # Acknowledge a request only once it is answered: unacknowledged, it is not lost with us.
        self.session.client.manual_ack_set(True)
        # The broker tells the pool when we are gone, kill -9 included (the socket closes).
        self.session.client.will_set(self._presence_topic, self._presence("offline"), qos=1, retain=True)
        # Other trainers online (presence topic) -> the request id and scope they work on.
        self._live: dict[str, tuple[str | None, str | None]] = {}
        self._claimed: str | None = None  # the request id our presence names
        self._echo: str | None = None  # nonce of our last presence, until the broker sends it back
        self._parked: list[_Parked] = []
        self._finished = FinishedTrainings()
        # scope -> (start, end, verdict) of our last training of it, in time.monotonic() (paho's clock)
        self._spans: dict[
            str, tuple[float, float, Finished]
        ] = {}  # scope -> its newest finished training, by any trainer
        self._announced = -1  # the connection our presence was last published on
        # distribution.mode bus: champions we promote go out signed; other trainers' come in verified,
        # so every trainer judges challengers against the fleet's champion and numbers versions after it.
        self.keys = trainer_keys(settings)
        self._models_prefix = models_topic(settings.site) + "/"
        self.registry = LocalRegistry(settings.models_dir)
        self.tracker = Tracker.from_settings(settings)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.session.start()
        # Other trainers and their answers first, so a request delivered at once is judged with them.
        self.session.subscribe([f"{self._presence_root}/+", self._events_topic], qos=1)
        if self.keys is not None:
            self.session.subscribe([self._models_prefix + "+"], qos=1)
        self._announce(None)
        self.session.subscribe(
            [self._request_topic], qos=1, shared_group=TRAINER_GROUP if self._protocol == "5" else None
        )
        log.info("trainer up (%s): waiting for requests on %s", self.client_id, self._request_topic)
        self.ready.set()
        try:
            while not self._stop.is_set():
                if self._announced != self.session.connection and self.session.connected:
                    self._announce(None)  # after a reconnect the broker may have published our will
                try:
                    message = self._requests.get(timeout=0.2)
                except queue.Empty:
                    self._unpark()
                    continue
                if message.topic == self._request_topic:
                    self._take(message)
                else:
                    self._observe(message)
                    self._ack(message)
                self._unpark()
        finally:
            with contextlib.suppress(Exception):
                # A clean stop: the will is not sent, so say it ourselves.
                self.session.publish(self._presence_topic, self._presence("offline"), qos=1, retain=True)
            self.session.close()

    def _share(self, attempt: Attempt, result: Finished) -> None:
        """Answer ``attempt`` from a finished training of its scope, without training."""
        self.handled["shared"] += 1
        upto = format_ts(result.window_end)
        if result.label is not None:
            reason = f"answered by {result.label}, trained on readings up to {upto}: as new as this request"
        else:
            reason = (
                f"a training on readings up to {upto}, as new as this request, was rejected: {result.reason}"
            )
        log.info("request %s (%s): %s; not training again", attempt.request_id, attempt.scope, reason)
        event = Event(
            "retrain_finished",
            attempt.scope,
            attempt.request.requested_ts or time.time(),
            reason=reason[:500],
            version=result.label,
            request_id=attempt.request_id or None,
        ).to_dict(self.settings.site)
        if attempt.request_id:
            self._answers[attempt.request_id] = [event]
            while len(self._answers) > ANSWERS_KEPT:
                self._answers.popitem(last=False)
        self._send([event])

    def _answer(self, message: Any, *, during: Finished | None = None) -> None:
        received = message.timestamp if isinstance(getattr(message, "timestamp", None), float) else None
        try:
            self.handle(bytes(message.payload), during=during, received=received)
        except Exception:  # the trainer survives any one request
            self.handled["failed"] += 1
            log.exception("retrain request failed unexpectedly; taking the next one")
        finally:
            self._ack(message)

    def handle(
        self, payload: bytes, *, during: Finished | None = None, received: float | None = None
    ) -> None:
        """Answer one request (its events published and stored); never raises for a bad request.

        ``during``: the verdict of a training of its scope that was under way when it came (another
        trainer's); ``received``: when it came (``time.monotonic()``), to find one of ours.
        """
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
        if attempt.request.trigger != "manual" and during is None and received is not None:
            span = self._spans.get(scope)
            if span is not None and span[0] <= received <= span[1]:
                during = span[2]
        covering = (during if attempt.request.trigger != "manual" else None) or self._finished.covering(
            attempt, self.registry, self.settings.retrain.reuse_slack
        )
        if covering is not None:
            self._share(attempt, covering)
            return
        if rid and self._claimed != rid:
            self._announce(rid, scope)
        try:
            self._train(attempt)
        finally:
            if rid:
                self._announce(None)

    def _train(self, attempt: Attempt) -> None:
        rid = attempt.request_id
        scope = attempt.scope
        ts = attempt.request.requested_ts or time.time()
        self._send([self._event("retrain_started", attempt, ts, f"{attempt.request.trigger}: trainer")])
        log.info(
            "retraining %s (%s, request %s, attempt %d)", scope, attempt.request.trigger, rid, attempt.number
        )
        started = time.monotonic()
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
        for event in outcome.events:
            self._finished.note(event)
            finished = verdict(event, scope)
            if finished is not None:  # requests that came meanwhile are answered from it
                self._spans[scope] = (started, time.monotonic(), finished)
        if outcome.decision == "promoted" and outcome.version is not None:
            self._publish_model(outcome.scope, outcome.version)
        events = [
            {**e, "request_id": rid} if rid else e for e in outcome.events if e["kind"] != "retrain_started"
        ]
        if rid:
            self._answers[rid] = events
            while len(self._answers) > ANSWERS_KEPT:
                self._answers.popitem(last=False)
        self._send(events)
        log.info("%s: %s (%s)", scope, outcome.decision, outcome.reason)

    def _publish_model(self, scope: str, version: int) -> None:
        """The new champion, signed, as the retained message of its scope (bus mode), before its event."""
        if self.keys is None:
            return
        try:
            published = publish_champion(self.session, self.keys[0], self.registry, self.settings.site, scope)
        except BrokerError as exc:  # queued by paho: it leaves when the connection is back
            log.error("%s; it is sent when the broker is back", exc)
            return
        if published is not None and published != f"{scope}:v{version}":
            log.warning(
                "published %s: the champion of %s changed since v%d was promoted", published, scope, version
            )

    def _receive_model(self, topic: str, payload: bytes) -> None:
        if self.keys is None or not payload:
            return
        try:
            bundle = open_bundle(payload, self.keys[1], topic_name=topic[len(self._models_prefix) :])
            result = install_bundle(self.registry, bundle, lags=self.settings.model.lags)
        except (BundleRefused, OSError) as exc:
            log.warning("refused the model message on %s: %s", topic, exc)
            return
        if result != "stale":
            log.info("%s %s from the bus (key %s)", result, bundle.label, bundle.key_id)

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


def publish_champion(
    session: MqttSession, signer: Signer, registry: LocalRegistry, site: str, scope: str
) -> str | None:
    """Publish the scope's current champion decision, signed, as its retained message; its label.

    Waits until the broker has it. :class:`~edgeloop.errors.BrokerError` if it does not within
    :data:`PUBLISH_WAIT` seconds (the decision stands locally and is published again by the next one).
    """
    built = champion_message(signer, registry, scope)
    if built is None:
        return None
    label, payload = built
    info = session.publish(models_topic(site, scope), payload, qos=1, retain=True)
    with contextlib.suppress(RuntimeError, ValueError):
        info.wait_for_publish(PUBLISH_WAIT)
    if not info.is_published():
        raise BrokerError(
            f"the broker did not acknowledge the champion message of {scope} within {PUBLISH_WAIT:g} s"
        )
    log.info("published %s (%d bytes, key %s)", label, len(payload), signer.key_id)
    return label
