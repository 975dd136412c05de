"""Retrain dispatchers: where a retrain attempt goes so the message loop never waits for it.

- :class:`LocalDispatcher` (default): one long-lived worker process on this machine
  (:mod:`edgeloop.retrain.worker`) at a lower CPU priority; a dead worker is replaced by a new one.
- :class:`MqttDispatcher`: publishes the request on ``edgeloop/<site>/control/retrain`` for a trainer
  service (``edgeloop trainer``), possibly on another machine; its answers come back as events.

Neither raises into the message loop: what happened to an attempt comes back from :meth:`poll` as
:class:`Report` items (started, answered, failed), and the bookkeeping in
:mod:`edgeloop.lifecycle.retrains` decides about retries.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import IO, Any, Literal, Protocol

import orjson
from paho.mqtt.enums import MQTTErrorCode

from edgeloop.config import Settings
from edgeloop.engine.engine import RetrainRequest
from edgeloop.lifecycle.retrains import Attempt
from edgeloop.retrain.job import RetrainOutcome

log = logging.getLogger(__name__)

MAX_SCOPE_CHARS = 512
MAX_REQUEST_ID_CHARS = 128
WORKER_STOP_TIMEOUT = 2.0  # seconds a worker gets to exit on close before it is killed


@dataclass(frozen=True)
class Report:
    """What a dispatcher learned about an attempt since the last :meth:`Dispatcher.poll`."""

    kind: Literal["started", "answered", "failed"]
    request_id: str
    scope: str
    attempt: int
    outcome: RetrainOutcome | None = None  # with "answered"
    reason: str = ""  # with "failed"


class Dispatcher(Protocol):
    def start(self) -> None:
        """Called once by the thread that drives the dispatcher, before the first submit."""

    def submit(self, attempt: Attempt) -> None:
        """Hand an attempt on; never raises (a failure is reported by :meth:`poll`)."""

    def cancel(self, request_id: str) -> None:
        """Stop working on an attempt the bookkeeping gave up on (timed out)."""

    def poll(self) -> list[Report]: ...

    def close(self) -> None: ...


def request_to_json(attempt: Attempt) -> bytes:
    r = attempt.request
    return orjson.dumps(
        {
            "scope": r.scope,
            "trigger": r.trigger,
            "reason": r.reason,
            "since_ts": r.since_ts,
            "requested_ts": r.requested_ts,
            "request_id": attempt.request_id,
            "attempt": attempt.number,
        }
    )


def _invalid_scope(scope: Any) -> str | None:
    if not isinstance(scope, str) or not scope:
        return "'scope' must be a non-empty string"
    if len(scope) > MAX_SCOPE_CHARS:
        return f"scope longer than {MAX_SCOPE_CHARS} characters"
    if any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in scope):
        return f"scope {scope[:80]!r} holds control characters"
    return None


def _optional_ts(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"'{key}' must be a finite number or null")
    return float(value)


def request_from_json(payload: bytes) -> Attempt:
    """Read a request sent by :func:`request_to_json` (or an older edge: no id, attempt 1).

    Raises :class:`ValueError` saying what is wrong; the id is kept in ``request_id`` ("" if none).
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("a retrain request is a JSON object with a 'scope'")
    request_id = data.get("request_id") or ""
    if not isinstance(request_id, str) or len(request_id) > MAX_REQUEST_ID_CHARS:
        raise ValueError(f"'request_id' must be a string of at most {MAX_REQUEST_ID_CHARS} characters")
    problem = _invalid_scope(data.get("scope"))
    if problem:
        raise ValueError(problem)
    attempt = data.get("attempt", 1)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError("'attempt' must be a positive integer")
    request = RetrainRequest(
        scope=data["scope"],
        trigger=str(data.get("trigger", "manual"))[:64],
        reason=str(data.get("reason", ""))[:1000],
        since_ts=_optional_ts(data, "since_ts"),
        requested_ts=_optional_ts(data, "requested_ts") or 0.0,
    )
    return Attempt(request, request_id, attempt)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class LocalDispatcher:
    """Retrains in one worker process, one attempt at a time, in order.

    The worker is a child process speaking JSON lines (no pickle, no multiprocessing helper
    processes to leak); it is started with the service and replaced whenever it died (SIGKILL, OOM),
    at the next attempt. An attempt whose worker died is reported as failed.
    """

    def __init__(self, settings: Settings, *, command: list[str] | None = None) -> None:
        self._settings_line = orjson.dumps(settings.model_dump(mode="json")) + b"\n"
        self._command = command or [sys.executable, "-m", "edgeloop.retrain.worker"]
        self._waiting: list[Attempt] = []
        self._running: Attempt | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: queue.SimpleQueue[tuple[subprocess.Popen[bytes], bytes | None]] = queue.SimpleQueue()
        self._reports: list[Report] = []
        self.workers_started = 0

    @property
    def busy(self) -> int:
        return len(self._waiting) + (self._running is not None)

    @property
    def worker_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        # On Linux the worker dies with the thread that started it (PR_SET_PDEATHSIG), so the
        # thread that drives the dispatcher starts it, never a short-lived one.
        with contextlib.suppress(OSError):
            self._worker()

    def submit(self, attempt: Attempt) -> None:
        self._waiting.append(attempt)
        self._pump()

    def cancel(self, request_id: str) -> None:
        self._waiting = [a for a in self._waiting if a.request_id != request_id]
        if self._running is not None and self._running.request_id == request_id:
            log.warning("retrain of %s overran its timeout: stopping its worker", self._running.scope)
            self._running = None  # the bookkeeping already counted this attempt as failed
            self._stop_worker(kill=True)
        self._pump()

    def poll(self) -> list[Report]:
        while True:
            try:
                proc, line = self._lines.get_nowait()
            except queue.Empty:
                break
            if proc is not self._proc:
                continue  # from a worker already replaced
            if line is None:
                self._worker_exited(proc)
            else:
                self._answer(line)
        self._pump()
        reports, self._reports = self._reports, []
        return reports

    def close(self) -> None:
        self._waiting.clear()
        self._running = None
        self._stop_worker(kill=False)

    # -- internals -------------------------------------------------------------------------------
    def _worker(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        proc = subprocess.Popen(
            [*self._command, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        self.workers_started += 1
        self._proc = proc
        threading.Thread(
            target=_read_lines,
            args=(proc, proc.stdout, self._lines),
            name="edgeloop-retrain-reader",
            daemon=True,
        ).start()
        try:
            proc.stdin.write(self._settings_line)
            proc.stdin.flush()
        except OSError:
            pass  # it died at once: its end of output is reported by the reader
        log.info("retrain worker started (pid %d)", proc.pid)
        return proc

    def _pump(self) -> None:
        while self._running is None and self._waiting:
            attempt = self._waiting.pop(0)
            try:
                proc = self._worker()
                assert proc.stdin is not None
                proc.stdin.write(
                    orjson.dumps(
                        {
                            "id": attempt.request_id,
                            "attempt": attempt.number,
                            "request": _request_data(attempt),
                        }
                    )
                    + b"\n"
                )
                proc.stdin.flush()
            except (OSError, ValueError) as exc:  # cannot start a process, or it died before reading
                self._reports.append(
                    Report(
                        "failed", attempt.request_id, attempt.scope, attempt.number, reason=f"worker: {exc}"
                    )
                )
                self._stop_worker(kill=True)
                continue
            self._running = attempt
            self._reports.append(Report("started", attempt.request_id, attempt.scope, attempt.number))

    def _answer(self, line: bytes) -> None:
        running = self._running
        try:
            data = orjson.loads(line)
            request_id = data["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.error("unreadable answer from the retrain worker: %r", line[:200])
            return
        if running is None or request_id != running.request_id:
            return  # an attempt already given up
        self._running = None
        if "outcome" in data:
            try:
                outcome = RetrainOutcome.from_dict(data["outcome"])
            except TypeError as exc:
                self._reports.append(
                    Report(
                        "failed",
                        running.request_id,
                        running.scope,
                        running.number,
                        reason=f"bad answer: {exc}",
                    )
                )
                return
            self._reports.append(
                Report("answered", running.request_id, running.scope, running.number, outcome=outcome)
            )
        else:
            reason = f"training raised {data.get('error', 'an error')}"
            self._reports.append(
                Report("failed", running.request_id, running.scope, running.number, reason=reason)
            )

    def _worker_exited(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        self._proc = None
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        running, self._running = self._running, None
        how = _describe_exit(code)
        if running is None:
            log.warning(
                "retrain worker (pid %d) exited, %s; a new one starts with the next retrain", proc.pid, how
            )
            return
        log.error("retrain worker (pid %d) died training %s, %s", proc.pid, running.scope, how)
        self._reports.append(
            Report("failed", running.request_id, running.scope, running.number, reason=f"worker died ({how})")
        )

    def _stop_worker(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()  # end of input: an idle worker exits by itself
        if kill:
            proc.kill()
        try:
            proc.wait(WORKER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(WORKER_STOP_TIMEOUT)


def _request_data(attempt: Attempt) -> dict[str, Any]:
    r = attempt.request
    return {
        "scope": r.scope,
        "trigger": r.trigger,
        "reason": r.reason,
        "since_ts": r.since_ts,
        "requested_ts": r.requested_ts,
    }


def _read_lines(
    proc: subprocess.Popen[bytes],
    stream: IO[bytes],
    out: queue.SimpleQueue[tuple[subprocess.Popen[bytes], bytes | None]],
) -> None:
    try:
        for line in stream:
            out.put((proc, line))
    except (OSError, ValueError):
        pass
    finally:
        out.put((proc, None))  # end of output: the worker exited


class MqttDispatcher:
    """Sends attempts to a trainer service; its answers arrive as events on the events topic."""

    def __init__(self, session: Any, topic: str, qos: int = 1) -> None:
        self._session = session
        self._topic = topic
        self._qos = qos
        self._reports: list[Report] = []

    def start(self) -> None:
        pass

    def submit(self, attempt: Attempt) -> None:
        try:
            info = self._session.publish(self._topic, request_to_json(attempt), qos=self._qos)
            # paho queues QoS>0 messages while disconnected (MQTT_ERR_NO_CONN); anything else is lost.
            rc = getattr(info, "rc", MQTTErrorCode.MQTT_ERR_SUCCESS)
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                raise OSError(f"publish refused ({rc})")
        except (OSError, ValueError, RuntimeError) as exc:
            self._reports.append(
                Report("failed", attempt.request_id, attempt.scope, attempt.number, reason=f"not sent: {exc}")
            )

    def cancel(self, request_id: str) -> None:
        pass  # a late answer still completes the request; a re-sent one carries the same id

    def poll(self) -> list[Report]:
        reports, self._reports = self._reports, []
        return reports

    def close(self) -> None:
        pass
