"""The edge service: telemetry in, engine, predictions and events out, store and models around it.

Threads: the transport's thread (paho's network thread for MQTT, an asyncio loop for NATS, see
:mod:`edgeloop.adapters.transport`) only appends raw messages to a bounded inbox; one loop thread
takes them in batches, runs the engine, hands predictions to the transport, rows to the store writer
thread, and between batches swaps models, dispatches retrains and writes status. Training runs in
another process, so nothing here ever waits for it.

Start-up order: the data dir is checked and the store opened first (a bad data dir is refused with
one line before anything else starts), then the health endpoint, the broker (waited for up to
``broker.connect_wait``), the models, the state snapshot (so devices continue where they were), and
only then the subscriptions. Every ``edge.snapshot_interval`` seconds and at shutdown the engine's
state is snapshotted; /healthz and /readyz report on the loop, the store writer, the connection and
the subscriptions.

Delivery is at-least-once end to end: a QoS 1 reading is acknowledged (paho's manual acks, a
JetStream ack) only after its prediction was handed to the transport and its row to the store
writer; readings not answered at shutdown are left unacknowledged, so the broker delivers them to
the next run; redelivered readings answered before are dropped as ``duplicate``. Backpressure: the
broker should have at most ``broker.receive_maximum`` unacknowledged readings with us (its flow
control holds back the rest, and the producers with it); when the inbox fills anyway (QoS 0 has no
flow control, and Mosquitto 2.0.11 was seen to exceed the window) paho's input thread stops reading
the socket until there is room. The loop takes no readings while the outbox has many predictions
unacknowledged.

Readings the transport marks ``replay`` (NATS: a partition's history, when this replica takes it
over) go through the engine only, to rebuild the devices' state; they are not answered again. A
transport that rebuilds state that way replaces the local state snapshot.
"""

from __future__ import annotations

import gc
import logging
import queue
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from edgeloop.adapters.mqtt import default_client_id, topic_for
from edgeloop.adapters.mqtt_transport import MqttTransport
from edgeloop.adapters.transport import Inbox, make_transport
from edgeloop.adapters.writer import StoreWriter, check_data_dir
from edgeloop.config import Settings, Span
from edgeloop.drift import make_guarded
from edgeloop.engine.engine import Engine, EngineOutput, Rollback
from edgeloop.engine.rows import ServedModel
from edgeloop.errors import BrokerError, MessageError, ModelFileError
from edgeloop.lifecycle.retrains import Failure, Retrains, RetryPolicy
from edgeloop.registry.bus import BundleRefused, edge_verifier, install_bundle, models_topic, open_bundle
from edgeloop.registry.local import LocalRegistry
from edgeloop.retrain.dispatch import Dispatcher, LocalDispatcher, MqttDispatcher
from edgeloop.retrain.job import RetrainOutcome
from edgeloop.scopes import parse_label
from edgeloop.service import alerts, health, metrics
from edgeloop.service.delivery import AnsweredMemory, Received
from edgeloop.service.model_sync import ModelSync
from edgeloop.service.statekeeper import StateKeeper
from edgeloop.telemetry.schema import Event, Telemetry, TelemetryParser, parser_from_settings

log = logging.getLogger(__name__)

DROP_LOG_INTERVAL = 10.0  # seconds between two log lines about dropped messages
PUBLISH_RETRY_PAUSE = 0.05  # seconds between retries of predictions paho refused
SHUTDOWN_RETRY_S = 5.0  # how long shutdown answers the inbox and retries refused predictions
OUTBOX_BUSY_PAUSE = 0.005  # seconds the loop sleeps while the outbox is busy (it keeps ticking)
LOOP_STALL = 60.0  # seconds without a pass of the message loop before /healthz fails
WRITER_STALL = 120.0  # the same for the store writer (one commit may wait 30 s on a locked database)


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
        floor_margin=settings.model.floor_margin,
        floor_window=settings.model.floor_window,
        gap_intervals=settings.model.gap_intervals,
        consolidate_after=Span.parse(settings.model.consolidate_after),
        refresh_every=Span.parse(settings.model.refresh_every),
        train_window=settings.model.train_window,
        max_devices=settings.limits.max_devices,
        device_idle_s=settings.limits.device_idle_s,
    )


@dataclass
class EdgeStats:
    """Counters for the live status display and tests."""

    received: int = 0
    processed: int = 0
    predictions: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    publish_failures: int = 0
    rebuilt: int = 0  # readings replayed into the engine to rebuild state (not answered again)
    swaps: int = 0
    retrains_requested: int = 0
    retrains_failed: int = 0
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
        self.inbox = Inbox(settings.edge.inbox_max)
        self._inbox = self.inbox.queue
        # As many devices as the engine keeps state for: a reading of any other is refused anyway.
        self._answered = AnsweredMemory(settings.limits.max_devices)
        # Predictions paho refused, retried before the next batch; the batch they answer waits
        # unacknowledged meanwhile.
        self._unsent: list[tuple[str, bytes]] = []
        self._unacked: list[Received] = []
        self._control: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        # distribution.mode bus: signed champions arrive on the models topics (None: files mode).
        self.model_verifier = edge_verifier(settings)
        self._models_prefix = models_topic(settings.site) + "/"
        self._model_messages: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._events_topic = topic_for(settings.topics.events, site=self.site)
        self._prediction_template = settings.topics.prediction
        self._prediction_topics: dict[str, str] = {}  # device -> its prediction topic
        self._last_drop_log = 0.0
        self._last_publish_log = 0.0
        self._dropped_since_log: Counter[str] = Counter()
        self._protocol = protocol
        self.client_id = settings.broker.client_id or default_client_id(f"edge-{self.site}", stable=True)
        self.transport = make_transport(
            settings,
            self.inbox,
            self._control.put,
            client_id=self.client_id,
            protocol=protocol,
            # Retained: the current champion of every scope arrives at subscribe, then each new one.
            models=self._model_messages.put if self.model_verifier is not None else None,
        )
        if dispatcher is not None:
            self.dispatcher: Dispatcher = dispatcher
        elif settings.edge.retrain == "mqtt":
            assert isinstance(self.transport, MqttTransport)  # the config refuses it with NATS
            self.dispatcher = MqttDispatcher(
                self.transport.session, topic_for(settings.topics.retrain, site=self.site)
            )
        else:
            self.dispatcher = LocalDispatcher(settings)
        self.retrains = Retrains(RetryPolicy.from_settings(settings.retrain))
        self.writer: StoreWriter | None = None
        self.state: StateKeeper | None = None
        self.http: health.HealthServer | None = None
        self.ready = threading.Event()
        self.subscribed = False
        self.registry_read = False
        self.loop_beat: float | None = None  # monotonic time of the message loop's last pass
        metrics.LOOP_AGE.set_function(self.loop_age)
        self.models = ModelSync(self.registry, self.engine, settings.model.lags, self._emit, self._swapped)

    def _swapped(self) -> None:
        self.stats.swaps += 1

    @property
    def session(self) -> Any:
        """The MQTT input session (MQTT transport only; tests and the MQTT dispatcher use it)."""
        return getattr(self.transport, "session", None)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> EdgeService:
        self._thread = threading.Thread(target=self.run, name="edgeloop-edge", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.transport.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def snapshot_path(self) -> Path:
        # One file per edge identity (a stable client id), so edges sharing a data dir never collide.
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", self.client_id)
        return self.settings.data_dir / "state" / f"{name}.json"

    def run(self) -> None:
        s = self.settings
        try:
            # Storage first: a data dir the edge cannot write is refused before anything else starts.
            self._open_storage()
            if s.edge.metrics_port:
                self.http = health.serve(s.edge.metrics_port, self.liveness, self.readiness)
            if not self._connect():
                self._close_storage(final_snapshot=False)
                self.dispatcher.close()
                return
            self._sync_models()
            self.registry_read = True
            if self.state is not None:
                self.state.restore()  # after the models: the state says which model each device was on
            self.transport.subscribe()
            self.subscribed = True
        except BaseException:
            self._close_storage(final_snapshot=False)
            self.dispatcher.close()
            raise
        log.info("edge up: site %s, targets %s, %s", self.site, s.model.targets, self.transport.describe())
        # Everything alive now lives as long as the service: keep it out of the cyclic collector,
        # whose full passes over it paused the loop 50-105 ms every few seconds (bench, 1,000 devices).
        gc.collect()
        gc.freeze()
        self.dispatcher.start()  # from this thread, which lives as long as the service
        self.ready.set()
        assert self.writer is not None
        next_status = next_poll = time.monotonic()
        try:
            while not self._stop.is_set():
                self.loop_beat = time.monotonic()
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
                self._check_retrains()
                if now >= next_poll:
                    self._sync_models()
                    next_poll = now + s.edge.model_poll_interval
                if now >= next_status:
                    self.writer.put(status=self.engine.status_rows(time.time()))
                    metrics.update_scope_gauges(self.engine)
                    next_status = now + s.edge.status_interval
                if self.state is not None:
                    self.state.tick(now, self.stats.processed)
        finally:
            self._shutdown()

    # -- storage, state and health ----------------------------------------------------------------
    def _connect(self) -> bool:
        """Connect the transport; False if the edge was stopped while waiting for the broker."""
        try:
            self.transport.start()
        except BrokerError:
            if self._stop.is_set():
                log.info("edge stopped while waiting for the broker")
                return False
            raise
        return True

    def _open_storage(self) -> None:
        s = self.settings
        check_data_dir(s.data_dir)
        if s.store.url is None and s.store_path.parent.resolve() != s.data_dir.resolve():
            check_data_dir(s.store_path.parent)
        self.writer = StoreWriter(
            s.store_location,
            retention_rows=s.store.retention_rows,
            flush_interval=s.store.flush_interval,
            max_buffer_rows=s.store.max_buffer_rows,
            on_error=lambda op: metrics.STORE_ERRORS.labels(op=op).inc(),
            on_drop=metrics.STORE_ROWS_DROPPED.inc,
        )
        # A transport that rebuilds device state from its stream (NATS) replaces the local snapshot.
        if s.edge.snapshot_interval > 0 and not self.transport.rebuilds_state:
            self.state = StateKeeper(
                self.engine,
                self.snapshot_path,
                interval=s.edge.snapshot_interval,
                load_model=self._load_label,
                answered=self._answered,
            )

    def _close_storage(self, *, final_snapshot: bool) -> None:
        if self.state is not None:
            self.state.close(final=final_snapshot)
        if self.writer is not None:
            if final_snapshot:
                self.writer.put(status=self.engine.status_rows(time.time()))
            self.writer.close()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()

    def _load_label(self, label: str) -> ServedModel | None:
        try:
            scope, version = parse_label(label)
            return self.registry.load(scope, version, lags=self.settings.model.lags)
        except (ModelFileError, OSError, ValueError):
            return None

    def loop_age(self) -> float:
        """Seconds since the message loop's last pass; 0 before it starts (waiting for the broker)."""
        beat = self.loop_beat
        return 0.0 if beat is None else time.monotonic() - beat

    def liveness(self) -> dict[str, object]:
        """/healthz: the loop and the store writer are alive (and not stalled)."""
        now = time.monotonic()
        writer = self.writer
        beat = self.loop_beat
        return {
            # Before the loop starts (waiting for the broker) the process is starting, not dead.
            "loop": beat is None or (now - beat < LOOP_STALL and not self._stop.is_set()),
            "store_writer": writer is not None and writer.alive and now - writer.heartbeat < WRITER_STALL,
            "_store_last_success_age_s": None
            if writer is None
            else round(time.time() - writer.last_success, 1),
            "_store_errors": None if writer is None else writer.errors,
            "_store_rows_dropped": None if writer is None else writer.rows_dropped,
        }

    def readiness(self) -> dict[str, object]:
        """/readyz: connected to the broker, subscribed, registry read, and alive."""
        return {
            "connected": self.transport.connected,
            "subscribed": self.subscribed,
            "registry_read": self.registry_read,
            "alive": all(v for k, v in self.liveness().items() if not k.startswith("_")),
        }

    def _shutdown(self) -> None:
        # Stop taking deliveries, answer and acknowledge what is in the inbox, then disconnect: paho
        # sends the predictions and acks before its DISCONNECT. Deliveries after this point stay
        # unacknowledged and come again to the next run (with a persistent session).
        self.inbox.accepting = False
        deadline = time.monotonic() + SHUTDOWN_RETRY_S
        while self._unsent and not self._retry_unsent() and time.monotonic() < deadline:
            time.sleep(PUBLISH_RETRY_PAUSE)
        if not self._unsent and self.transport.connected:  # else predictions would die in its queue
            self._drain(deadline)
        self.subscribed = False
        self.transport.close()  # predictions first, then the acks queued above, then disconnect
        left = len(self._unacked) + self._inbox.qsize() + self.inbox.left
        if left:
            log.warning("%d readings left unacknowledged at shutdown; the broker delivers them again", left)
        self._close_storage(final_snapshot=True)
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
        if any(item.replay for item in batch):
            # A device's history always precedes its live readings in the inbox: rebuild in order.
            start = 0
            for end in range(1, len(batch) + 1):
                if end == len(batch) or batch[end].replay != batch[start].replay:
                    part = batch[start:end]
                    if part[0].replay:
                        self._rebuild(part)
                    else:  # replay comes from NATS, whose publish never refuses: no _unsent to keep
                        self._answer(part)
                    start = end
            return
        self._answer(batch)

    def _rebuild(self, history: list[Received]) -> None:
        """Feed readings answered before (by any replica) to the engine: state only, nothing sent."""
        readings: list[Telemetry] = []
        seen = self._answered.seen
        for item in history:
            try:
                reading = self.parser.parse(item.topic, item.payload)
            except MessageError:
                continue  # dropped when it was answered, too
            if not seen(reading.device, reading.seq, reading.ts):
                readings.append(reading)
        if not readings:
            return
        out = self.engine.process(readings)
        # Its predictions, rows and events went out when the readings were answered. Retrain requests
        # are kept: the engine now waits for their answer, and a repeated retrain is harmless.
        for request in out.retrains:
            self.stats.retrains_requested += 1
            self.retrains.add(request)
        if out.retrains:
            self._dispatch_due()
        self.stats.rebuilt += len(readings)

    def _answer(self, batch: list[Received]) -> None:
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
        for reading, reason in out.dropped:
            limits = self.settings.limits
            detail = (
                f"no room for device {reading.device[:40]!r}: {limits.max_devices} devices kept, none "
                f"silent for limits.device_idle_s={limits.device_idle_s:g} s"
            )
            self._dropped(MessageError(reason, detail), "the engine")
        if out.evicted:
            metrics.EVICTED.inc(out.evicted)
        topics = self._prediction_topics
        if len(topics) > 2 * self.settings.limits.max_devices:
            topics.clear()  # bounded like the engine's devices; rebuilt as devices speak
        template, site = self._prediction_template, self.site
        messages = []
        for p in out.predictions:
            topic = topics.get(p.device)
            if topic is None:
                topic = topics[p.device] = template.format(site=site, device=p.device)
            messages.append((topic, p.to_json()))
        unsent = self._publish(messages)
        self.stats.processed += len(readings) - len(out.dropped)
        assert self.writer is not None
        self.writer.put(samples=out.samples)
        if unsent:
            self._unsent, self._unacked = unsent, batch
        else:
            self._ack(batch)
        self._after_engine(out)

    def _outbox_busy(self) -> bool:
        # Backpressure for our own output: see Transport.busy.
        return self.transport.busy

    def _publish(self, messages: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """Hand predictions to the transport; returns those it refused (kept for a retry at QoS>0)."""
        refused, failed, why = self.transport.publish(messages)
        if failed:
            self._publish_failed(failed, why, retried=bool(refused))
        sent = len(messages) - failed
        self.stats.predictions += sent
        metrics.PREDICTIONS.inc(sent)
        return refused

    def _publish_failed(self, count: int, why: str, *, retried: bool) -> None:
        self.stats.publish_failures += count
        metrics.PUBLISH_FAILURES.inc(count)
        now = time.monotonic()
        if now - self._last_publish_log >= DROP_LOG_INTERVAL:
            self._last_publish_log = now
            log.warning(
                "the transport refused %d prediction(s) (%s); %s",
                count,
                why,
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
        self.transport.ack(batch)

    def _after_engine(self, out: EngineOutput) -> None:
        for request in out.retrains:
            self.stats.retrains_requested += 1
            metrics.RETRAINS.labels(trigger=request.trigger).inc()
            request_id = self.retrains.add(request)
            for event in out.events:
                if event.kind == "retrain_requested" and event.scope == request.scope:
                    event.request_id = request_id
        self._emit(out.events)
        if out.retrains:
            self._dispatch_due()
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
