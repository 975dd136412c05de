"""The edge's batch path: parse, drop duplicates, run the engine, publish, store, acknowledge.

:class:`AnswerPath` is the part of :class:`~edgeloop.service.edge.EdgeService` that answers a batch
of received readings (and rebuilds state from replayed ones); the service owns the state it uses.
A batch is acknowledged only after its predictions were handed to the transport and its rows to the
store writer; predictions the transport refused are kept in ``_unsent`` and retried, their batch
unacknowledged meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from edgeloop.engine.engine import EngineOutput
from edgeloop.errors import MessageError
from edgeloop.service import metrics
from edgeloop.service.delivery import AnsweredMemory, Received
from edgeloop.service.lifecycle_control import LifecycleControl
from edgeloop.telemetry.parser import TelemetryParser
from edgeloop.telemetry.schema import Telemetry

if TYPE_CHECKING:
    pass

log = logging.getLogger("edgeloop.service.edge")

DROP_LOG_INTERVAL = 10.0  # seconds between two log lines about dropped messages


class AnswerPath(LifecycleControl):
    """Answering batches of readings (a part of the edge service; see the module docstring)."""

    parser: TelemetryParser
    _answered: AnsweredMemory
    _unsent: list[tuple[str, bytes]]
    _unacked: list[Received]
    _prediction_template: str
    _prediction_topics: dict[str, str]
    _last_drop_log: float
    _last_publish_log: float
    _dropped_since_log: Counter[str]

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
