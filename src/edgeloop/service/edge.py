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

The service is in three parts: this module (start-up, the loop, storage, health, shutdown),
:mod:`edgeloop.service.answering` (the batch path) and :mod:`edgeloop.service.lifecycle_control`
(events, retrains, control events, models from the bus); :func:`build_engine` is in
:mod:`edgeloop.service.engine_setup`.
"""

from __future__ import annotations

import contextlib
import faulthandler
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

from edgeloop.adapters.mqtt_client import default_client_id
from edgeloop.adapters.mqtt_transport import MqttTransport
from edgeloop.adapters.topics import topic_for
from edgeloop.adapters.transport import Inbox, make_transport
from edgeloop.adapters.writer import StoreWriter, check_data_dir
from edgeloop.config import Settings
from edgeloop.engine.rows import ServedModel
from edgeloop.errors import BrokerError, ModelFileError
from edgeloop.lifecycle.retrains import Retrains, RetryPolicy
from edgeloop.registry.bus import edge_verifier, models_topic
from edgeloop.registry.local import LocalRegistry
from edgeloop.retrain.dispatch import Dispatcher, LocalDispatcher, MqttDispatcher
from edgeloop.scopes import parse_label
from edgeloop.service import health, metrics
from edgeloop.service.answering import AnswerPath
from edgeloop.service.delivery import AnsweredMemory, Received
from edgeloop.service.engine_setup import build_engine
from edgeloop.service.model_sync import ModelSync
from edgeloop.service.statekeeper import StateKeeper
from edgeloop.telemetry.parser import TelemetryParser, parser_from_settings
from edgeloop.telemetry.schema import Event

__all__ = ["LOOP_STALL", "EdgeService", "EdgeStats", "build_engine"]

log = logging.getLogger(__name__)

PUBLISH_RETRY_PAUSE = 0.05  # seconds between retries of predictions paho refused
SHUTDOWN_RETRY_S = 5.0  # how long shutdown answers the inbox and retries refused predictions
OUTBOX_BUSY_PAUSE = 0.005  # seconds the loop sleeps while the outbox is busy (it keeps ticking)
LOOP_STALL = 60.0  # seconds without a pass of the message loop before /healthz fails
SHUTDOWN_STUCK_S = 25.0  # a shutdown still running after this prints every thread's stack to the log
WRITER_STALL = 120.0  # the same for the store writer (one commit may wait 30 s on a locked database)


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


class EdgeService(AnswerPath):
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

    def _close_storage(self, *, final_snapshot: bool, delivered: bool = False) -> None:
        if self.state is not None:
            self.state.close(final=final_snapshot, delivered=delivered)
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
        # Every step below is bounded; if the whole still hangs (a supervisor would kill us at its
        # grace period, with nothing to show why), leave the stacks of all threads in the log. Only
        # when the edge is the process (`edgeloop edge`): the timer is process-wide, and it stays
        # armed through the interpreter's exit, which can hang too.
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                faulthandler.dump_traceback_later(SHUTDOWN_STUCK_S, exit=False)
        deadline = time.monotonic() + SHUTDOWN_RETRY_S
        while self._unsent and not self._retry_unsent() and time.monotonic() < deadline:
            time.sleep(PUBLISH_RETRY_PAUSE)
        if not self._unsent and self.transport.connected:  # else predictions would die in its queue
            self._drain(deadline)
        self.subscribed = False
        # Predictions first, then the acks queued above, then disconnect.
        delivered = self.transport.close() and not self._unsent
        left = len(self._unacked) + self._inbox.qsize() + self.inbox.left
        if left:
            log.warning("%d readings left unacknowledged at shutdown; the broker delivers them again", left)
        self._close_storage(final_snapshot=True, delivered=delivered)
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
