"""``edgeloop trainer``: a retrain service fed by requests over MQTT.

Edges configured with ``edge.retrain: mqtt`` publish requests on ``edgeloop/<site>/control/retrain``;
trainers subscribe through a shared subscription (several trainers split the requests), run the same
:func:`~edgeloop.retrain.job.run_retrain` as the local worker, and publish its events on
``edgeloop/<site>/events``, where every edge picks up a promoted model. Trainers and edges share the
data dir (store and models) or, at scale, a database and a models volume.
"""

from __future__ import annotations

import logging
import queue
import threading

import orjson

from edgeloop.adapters.mqtt import MqttSession, default_client_id, topic_for
from edgeloop.adapters.store import Store
from edgeloop.config import Settings
from edgeloop.registry.tracking import Tracker
from edgeloop.retrain.dispatch import request_from_json
from edgeloop.retrain.job import RetrainOutcome, run_retrain
from edgeloop.telemetry.schema import Event

log = logging.getLogger(__name__)

TRAINER_GROUP = "edgeloop-trainers"


class TrainerService:
    def __init__(self, settings: Settings, *, protocol: str = "5") -> None:
        self.settings = settings
        self._requests: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.outcomes: list[RetrainOutcome] = []
        self.ready = threading.Event()
        self._protocol = protocol
        self.session = MqttSession(
            settings.broker,
            role="trainer",
            # A persistent session: requests sent while no trainer runs wait for it at the broker.
            client_id=settings.broker.client_id or default_client_id(f"trainer-{settings.site}", stable=True),
            clean_start=False,
            session_expiry=settings.broker.session_expiry,
            protocol=protocol,  # type: ignore[arg-type]
            on_message=lambda m: self._requests.put(bytes(m.payload)),
        )
        self.tracker = Tracker.from_settings(settings)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        s = self.settings
        request_topic = topic_for(s.topics.retrain, site=s.site)
        events_topic = topic_for(s.topics.events, site=s.site)
        self.session.start()
        self.session.subscribe(
            [request_topic], qos=1, shared_group=TRAINER_GROUP if self._protocol == "5" else None
        )
        log.info("trainer up: waiting for requests on %s", request_topic)
        self.ready.set()
        try:
            while not self._stop.is_set():
                try:
                    payload = self._requests.get(timeout=0.2)
                except queue.Empty:
                    continue
                try:
                    request = request_from_json(payload)
                except (ValueError, orjson.JSONDecodeError) as exc:
                    log.warning("ignored a bad retrain request: %s", exc)
                    continue
                log.info("retraining %s (%s)", request.scope, request.trigger)
                outcome = run_retrain(
                    s,
                    request.scope,
                    trigger=request.trigger,
                    reason=request.reason,
                    since_ts=request.since_ts,
                    stream_ts=request.requested_ts or None,
                    tracker=self.tracker,
                )
                self.outcomes.append(outcome)
                events = [Event.from_dict(e) for e in outcome.events]
                store = Store(s.store_path, retention_rows=s.store.retention_rows)
                try:
                    store.write(events=events)
                finally:
                    store.close()
                for event in outcome.events:
                    self.session.publish(events_topic, orjson.dumps(event), qos=1)
                log.info("%s: %s (%s)", request.scope, outcome.decision, outcome.reason)
        finally:
            self.session.close()
