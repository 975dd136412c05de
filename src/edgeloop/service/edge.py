"""The edge service: MQTT in, engine, predictions and events out, store and models around it.

Threads: paho's network thread only appends raw messages to a bounded inbox; one loop thread takes
them in batches, runs the engine, publishes predictions on a second connection (the outbox), hands
rows to the store writer thread, and between batches swaps models, dispatches retrains and writes
status. Training runs in another process, so nothing here ever waits for it.

Delivery is at-least-once end to end: a QoS 1 reading is acknowledged (paho's manual acks) only
after its prediction was handed to paho and its row to the store writer; readings not answered at
shutdown are left unacknowledged, so the broker delivers them to the next run; redelivered readings
answered before are dropped as ``duplicate``. Backpressure: the broker should have at most
``broker.receive_maximum`` unacknowledged readings with us (its flow control holds back the rest,
and the producers with it); when the inbox fills anyway (QoS 0 has no flow control, and Mosquitto
2.0.11 was seen to exceed the window) paho's input thread stops reading the socket until there is
room. The loop takes no readings while the outbox has many predictions unacknowledged.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from paho.mqtt.client import error_string as mqtt_error_string
from paho.mqtt.enums import MQTTErrorCode

from edgeloop.adapters.mqtt import MqttSession, default_client_id, topic_for
from edgeloop.adapters.store import StoreWriter
from edgeloop.config import Settings
from edgeloop.drift import make_guarded
from edgeloop.engine.engine import Engine, EngineOutput, Rollback
from edgeloop.errors import BrokerError, MessageError, ModelFileError
from edgeloop.registry.local import LocalRegistry
from edgeloop.retrain.dispatch import Dispatcher, LocalDispatcher, MqttDispatcher
from edgeloop.retrain.job import RetrainOutcome
from edgeloop.scopes import parse_label, version_label
from edgeloop.service import metrics
from edgeloop.service.delivery import AnsweredMemory, Received
from edgeloop.telemetry.schema import Event, Telemetry, TelemetryParser, parser_from_settings

log = logging.getLogger(__name__)

DROP_LOG_INTERVAL = 10.0  # seconds between two log lines about dropped messages
INBOX_FULL_PAUSE = 0.002  # seconds paho's thread sleeps before looking for room in a full inbox
PUBLISH_RETRY_PAUSE = 0.05  # seconds between retries of predictions paho refused
SHUTDOWN_RETRY_S = 5.0  # how long shutdown answers the inbox and retries refused predictions
OUTGOING_HIGH_WATER = 5000  # predictions paho holds unacknowledged before the loop waits for the broker
OUTBOX_BUSY_PAUSE = 0.005  # seconds the loop sleeps while the outbox is busy (it keeps ticking)


def build_engine(settings: Settings, *, auto_train: bool = True) -> Engine:
    """The engine as the live edge configures it; the evaluator and benchmarks use this too."""
    drift = settings.drift
    return Engine(
        targets=settings.model.targets,
        lags=settings.model.lags,
        guard_factory=lambda reference: make_guarded(drift, reference),
        window=drift.window,
        min_train_samples=settings.model.min_train_samples,
        retrain_min_samples=settings.model.retrain_min_samples,
        probation_samples=settings.model.probation_samples,
        probation_tolerance=settings.model.probation_tolerance,
        auto_train=auto_train,
    )


@dataclass
class EdgeStats:
    """Counters for the live status display and tests."""

    received: int = 0
    processed: int = 0
    predictions: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    publish_failures: int = 0
    swaps: int = 0
    retrains_requested: int = 0
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=50))


class EdgeService:
    """Runs until :meth:`stop`; construct, then :meth:`run` (blocking) or :meth:`start` (a thread)."""

    def __init__(
        self, settings: Settings, *, dispatcher: Dispatcher | None = None, protocol: str = "5"
    ) -> None:
        self.settings = settings
        self.site = settings.site
        self.parser: TelemetryParser = parser_from_settings(settings)
        self.engine = build_engine(settings)
        self.registry = LocalRegistry(settings.models_dir)
        self.stats = EdgeStats()
        # A SimpleQueue bounded by a size check in _on_message: queue.Queue(maxsize) costs a lock
        # round trip per reading on both threads.
        self._inbox: queue.SimpleQueue[Received] = queue.SimpleQueue()
        self._inbox_max = settings.edge.inbox_max
        self._accepting = True  # False from shutdown on: new deliveries stay unacknowledged
        self._left_at_shutdown = 0
        self._answered = AnsweredMemory(settings.edge.dedup_devices)
        # Predictions paho refused, retried before the next batch; the batch they answer waits
        # unacknowledged meanwhile.
        self._unsent: list[tuple[str, bytes]] = []
        self._unacked: list[Received] = []
        self._control: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._events_topic = topic_for(settings.topics.events, site=self.site)
        self._prediction_template = settings.topics.prediction
        self._last_drop_log = 0.0
        self._last_publish_log = 0.0
        self._dropped_since_log: Counter[str] = Counter()
        self._protocol = protocol
        client_id = settings.broker.client_id or default_client_id(f"edge-{self.site}", stable=True)
        self.session = MqttSession(
            settings.broker,
            role="edge",
            client_id=client_id,
            # Resume the broker's session (and the telemetry it queued while we were away) unless
            # sessions are configured not to outlive a connection.
            clean_start=settings.broker.session_expiry == 0,
            session_expiry=settings.broker.session_expiry,
            protocol=protocol,  # type: ignore[arg-type]
            on_message=self._on_message,
            manual_ack=True,
        )
        # Predictions leave on a connection of their own. When the inbox is full, paho's thread of the
        # input connection stops (that is the backpressure); the acknowledgements of our predictions
        # must keep arriving meanwhile, or paho's outgoing queue grows without bound.
        self.outbox = MqttSession(
            settings.broker,
            role="edge-out",
            client_id=f"{client_id}-out",
            clean_start=settings.broker.session_expiry == 0,
            session_expiry=settings.broker.session_expiry,
            protocol=protocol,  # type: ignore[arg-type]
        )
        if dispatcher is not None:
            self.dispatcher: Dispatcher = dispatcher
        elif settings.edge.retrain == "mqtt":
            self.dispatcher = MqttDispatcher(self.session, topic_for(settings.topics.retrain, site=self.site))
        else:
            self.dispatcher = LocalDispatcher(settings)
        self.writer: StoreWriter | None = None
        self.ready = threading.Event()
        self._failed_versions: set[tuple[str, int]] = set()

    # -- paho's thread: enqueue only --------------------------------------------------------------
    def _on_message(self, message: Any) -> None:
        connection = self.session.connection
        if message.topic == self._events_topic:
            self._control.put(message.payload)
            self.session.ack(message.mid, message.qos, connection)
            return
        while self._inbox.qsize() >= self._inbox_max and self._accepting:
            time.sleep(INBOX_FULL_PAUSE)  # not reading the socket: TCP and the broker hold back
        if self._accepting:
            self._inbox.put(Received(message.topic, message.payload, message.mid, message.qos, connection))
        else:
            self._left_at_shutdown += 1  # unacknowledged: the broker delivers it to the next run

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> EdgeService:
        self._thread = threading.Thread(target=self.run, name="edgeloop-edge", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.session.cancel()
        self.outbox.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        s = self.settings
        # First: a broker that refuses us fails the start before anything else runs; one not up yet is
        # waited for (broker.connect_wait).
        try:
            self.session.start()
            self.outbox.start()
        except BrokerError:
            if self._stop.is_set():
                log.info("edge stopped while waiting for the broker")
                return
            raise
        self.writer = StoreWriter(
            s.store_path, retention_rows=s.store.retention_rows, flush_interval=s.store.flush_interval
        )
        self._sync_models()
        group = s.broker.shared_group if self._protocol == "5" else None
        self.session.subscribe(s.topics.telemetry_filters(self.site), qos=s.broker.qos, shared_group=group)
        self.session.subscribe([self._events_topic], qos=1)
        log.info(
            "edge up: site %s, targets %s, subscribed %s",
            self.site,
            s.model.targets,
            s.topics.telemetry_filters(self.site),
        )
        # Everything alive now lives as long as the service: keep it out of the cyclic collector,
        # whose full passes over it paused the loop 50-105 ms every few seconds (bench, 1,000 devices).
        gc.collect()
        gc.freeze()
        self.ready.set()
        next_status = next_poll = time.monotonic()
        try:
            while not self._stop.is_set():
                if self._unsent and not self._retry_unsent():
                    time.sleep(PUBLISH_RETRY_PAUSE)
                elif self._outbox_busy():
                    time.sleep(OUTBOX_BUSY_PAUSE)
                else:
                    batch = self._take_batch(s.edge.batch_max, s.edge.batch_wait)
                    if batch:
                        self._handle(batch)
                now = time.monotonic()
                self._handle_control()
                self._handle_outcomes()
                if now >= next_poll:
                    self._sync_models()
                    next_poll = now + s.edge.model_poll_interval
                if now >= next_status:
                    self.writer.put(status=self.engine.status_rows(time.time()))
                    next_status = now + s.edge.status_interval
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        # Stop taking deliveries, answer and acknowledge what is in the inbox, then disconnect: paho
        # sends the predictions and acks before its DISCONNECT. Deliveries after this point stay
        # unacknowledged and come again to the next run (with a persistent session).
        self._accepting = False
        deadline = time.monotonic() + SHUTDOWN_RETRY_S
        while self._unsent and not self._retry_unsent() and time.monotonic() < deadline:
            time.sleep(PUBLISH_RETRY_PAUSE)
        if not self._unsent and self.outbox.connected:  # else predictions would die with paho's queue
            self._drain(deadline)
        self.outbox.close()  # waits until the last prediction is out
        self.session.close()  # the acks queued above go out before its DISCONNECT
        left = len(self._unacked) + self._inbox.qsize() + self._left_at_shutdown
        if left:
            log.warning("%d readings left unacknowledged at shutdown; the broker delivers them again", left)
        if self.writer is not None:
            self.writer.put(status=self.engine.status_rows(time.time()))
            self.writer.close()
        self.dispatcher.close()
        log.info(
            "edge stopped: %d processed, %d dropped", self.stats.processed, sum(self.stats.dropped.values())
        )

    def _drain(self, deadline: float) -> int:
        count = 0
        while (
            not self._unsent
            and time.monotonic() < deadline
            and (batch := self._take_batch(self.settings.edge.batch_max, 0.0))
        ):
            self._handle(batch)
            count += len(batch)
        return count

    def _take_batch(self, limit: int, wait: float) -> list[Received]:
        try:
            first = self._inbox.get(timeout=0.05) if wait > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + wait
        while len(batch) < limit:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                if time.monotonic() >= deadline:
                    break
                time.sleep(wait / 5 if wait > 0 else 0)
                if wait <= 0:
                    break
        return batch

    # -- the batch path ---------------------------------------------------------------------------
    def _handle(self, batch: list[Received]) -> None:
        readings: list[Telemetry] = []
        seen = self._answered.seen
        for item in batch:
            try:
                reading = self.parser.parse(item.topic, item.payload)
            except MessageError as exc:
                self._dropped(exc, item.topic)
                continue
            if seen(reading.device, reading.seq, reading.ts):
                self._dropped(MessageError("duplicate", f"seq {reading.seq} answered before"), item.topic)
                continue
            readings.append(reading)
        self.stats.received += len(batch)
        metrics.RECEIVED.inc(len(batch))
        if not readings:
            self._ack(batch)
            return
        with metrics.BATCH_SECONDS.time():
            out = self.engine.process(readings)
        unsent = self._publish(
            [
                (self._prediction_template.format(site=self.site, device=p.device), p.to_json())
                for p in out.predictions
            ]
        )
        self.stats.processed += len(readings)
        assert self.writer is not None
        self.writer.put(samples=out.samples)
        if unsent:
            self._unsent, self._unacked = unsent, batch
        else:
            self._ack(batch)
        self._after_engine(out)

    def _outbox_busy(self) -> bool:
        # Backpressure for our own output: while the broker has not acknowledged many predictions (or
        # the outbox is disconnected), take no new readings, so their acks wait and the broker and
        # the inbox bound hold the producers back instead of paho's queue growing. The outbox's
        # thread never waits for this loop, so waiting cannot deadlock.
        return not self.outbox.connected or self.outbox.outgoing > OUTGOING_HIGH_WATER

    def _publish(self, messages: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """Hand predictions to paho; returns those it refused (kept for a retry at QoS>0)."""
        qos = self.settings.broker.qos
        publish = self.outbox.publish
        refused: list[tuple[str, bytes]] = []
        failed = 0
        for topic, payload in messages:
            rc = publish(topic, payload, qos=qos).rc
            # At QoS>0 paho keeps a message published while disconnected and sends it on reconnect.
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (qos and rc == MQTTErrorCode.MQTT_ERR_NO_CONN):
                continue
            failed += 1
            if qos:
                refused.append((topic, payload))
            last_rc = rc
        if failed:
            self._publish_failed(failed, last_rc, retried=bool(qos))
        sent = len(messages) - failed
        self.stats.predictions += sent
        metrics.PREDICTIONS.inc(sent)
        return refused

    def _publish_failed(self, count: int, rc: MQTTErrorCode, *, retried: bool) -> None:
        self.stats.publish_failures += count
        metrics.PUBLISH_FAILURES.inc(count)
        now = time.monotonic()
        if now - self._last_publish_log >= DROP_LOG_INTERVAL:
            self._last_publish_log = now
            log.warning(
                "paho refused %d prediction(s) (%s); %s",
                count,
                mqtt_error_string(rc),
                "retrying; their readings stay unacknowledged meanwhile" if retried else "lost (QoS 0)",
            )

    def _retry_unsent(self) -> bool:
        """Publish refused predictions again; True once all are out and their batch is acknowledged."""
        self._unsent = self._publish(self._unsent)
        if self._unsent:
            return False
        batch, self._unacked = self._unacked, []
        self._ack(batch)
        return True

    def _ack(self, batch: list[Received]) -> None:
        ack = self.session.ack
        for item in batch:
            if item.qos:
                ack(item.mid, item.qos, item.connection)

    def _after_engine(self, out: EngineOutput) -> None:
        self._emit(out.events)
        for request in out.retrains:
            self.stats.retrains_requested += 1
            metrics.RETRAINS.labels(trigger=request.trigger).inc()
            self.dispatcher.submit(request)
        for rollback in out.rollbacks:
            self._persist_rollback(rollback)

    def _dropped(self, exc: MessageError, topic: str) -> None:
        self.stats.dropped[exc.reason] += 1
        self._dropped_since_log[exc.reason] += 1
        metrics.DROPPED.labels(reason=exc.reason).inc()
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            log.warning(
                "dropped telemetry: %s (last: %s on %s)",
                dict(self._dropped_since_log),
                str(exc)[:120],
                topic[:80],
            )
            self._dropped_since_log.clear()
            self._last_drop_log = now

    def _emit(self, events: list[Event]) -> None:
        if not events:
            return
        assert self.writer is not None
        self.writer.put(events=events)
        for event in events:
            self.stats.events.append(event)
            metrics.EVENTS.labels(kind=event.kind).inc()
            log.info("event %s %s: %s", event.kind, event.scope, event.reason)
            self.session.publish(self._events_topic, orjson.dumps(event.to_dict(self.site)), qos=1)

    # -- models -----------------------------------------------------------------------------------
    def _handle_outcomes(self) -> None:
        for outcome in self.dispatcher.poll():
            self._apply_outcome(outcome)

    def _apply_outcome(self, outcome: RetrainOutcome) -> None:
        events = [Event.from_dict(e) for e in outcome.events]
        self._emit(events)
        installed = False
        if outcome.decision == "promoted" and outcome.version is not None:
            installed = self._install(outcome.scope, outcome.version)
        self.engine.retrain_finished(outcome.scope, installed=installed)

    def _handle_control(self) -> None:
        """Events from other processes (trainer service, other replicas): swap models they promote."""
        while True:
            try:
                payload = self._control.get_nowait()
            except queue.Empty:
                return
            try:
                event = Event.from_dict(orjson.loads(payload))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("ignored an unreadable event on %s", self._events_topic)
                continue
            if event.kind == "model_promoted" and event.version:
                try:
                    scope, version = parse_label(event.version)
                except ValueError:
                    continue
                if (
                    self.engine.serving.get(scope) is None
                    or self.engine.serving[scope].model.label != event.version
                ):
                    self.engine.retrain_finished(scope, installed=self._install(scope, version))
            elif event.kind in ("model_rejected", "model_rolled_back") or (
                event.kind == "retrain_finished" and not event.metrics
            ):
                if event.kind == "model_rolled_back":
                    self._sync_models()
                elif event.scope in self.engine.pending:
                    self.engine.retrain_finished(event.scope, installed=False)

    def _install(self, scope: str, version: int) -> bool:
        label = version_label(scope, version)
        try:
            model = self.registry.load(scope, version, lags=self.settings.model.lags)
        except (ModelFileError, OSError, ValueError) as exc:
            metrics.MODEL_LOAD_FAILURES.inc()
            self._emit(
                [
                    Event(
                        "model_load_failed",
                        scope,
                        self.engine.stream_ts,
                        reason=f"refused {label}: {exc}; the current model keeps serving",
                        version=label,
                        previous_version=self.engine.serving[scope].model.label
                        if scope in self.engine.serving
                        else None,
                    )
                ]
            )
            return False
        self.engine.install(scope, model, probation=True)
        self.stats.swaps += 1
        metrics.SWAPS.inc()
        log.info("now serving %s (%s)", label, model.meta.get("kind"))
        return True

    def _sync_models(self) -> None:
        """Registry polling: serve every scope's champion (also the start-up load)."""
        for scope in self.registry.scopes():
            try:
                version = self.registry.champion(scope)
            except ModelFileError as exc:
                log.warning("cannot read champion of %s: %s", scope, exc)
                continue
            serving = self.engine.serving.get(scope)
            if version is None:
                if serving is not None:
                    self.engine.uninstall(scope)
                continue
            if serving is None or serving.model.label != version_label(scope, version):
                if self._failed_recently(scope, version):
                    continue
                if not self._install(scope, version):
                    self._failed_versions.add((scope, version))

    def _failed_recently(self, scope: str, version: int) -> bool:
        # A version that failed verification is not retried every poll; a new version is.
        return (scope, version) in self._failed_versions

    def _persist_rollback(self, rollback: Rollback) -> None:
        try:
            restored = self.registry.rollback(
                rollback.scope, reason=f"probation failed for {rollback.rejected}"
            )
        except (ModelFileError, OSError) as exc:
            log.error("could not record rollback of %s: %s", rollback.scope, exc)
            return
        log.warning("rolled back %s -> %s", rollback.rejected, restored)
