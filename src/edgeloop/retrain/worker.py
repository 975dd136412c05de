"""The local retrain worker: a child process of the edge that trains one request at a time.

The edge starts it as ``python -m edgeloop.retrain.worker <edge pid>`` (see
:class:`~edgeloop.retrain.dispatch.LocalDispatcher`). The protocol is JSON lines, never pickle: the
edge writes the settings as the first line on the worker's stdin, then one
``{"id", "attempt", "request"}`` per retrain; the worker answers each on its stdout with
``{"id", "outcome"}`` or, when the training raised, ``{"id", "error"}``. Whatever a library prints
goes to stderr, so it cannot corrupt the answers.

The worker never outlives the edge: on Linux the kernel kills it when the edge dies
(``PR_SET_PDEATHSIG``), a watchdog thread checks the parent pid on every platform, and the end of
stdin (the edge closed it, or died) ends it between two trainings.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import orjson

log = logging.getLogger(__name__)

PARENT_CHECK_INTERVAL = 0.5  # seconds between two checks of the parent pid
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Exit when ``parent_pid`` dies, even by SIGKILL; call first thing in the child."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl took effect: the kernel would not signal us then.
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_INTERVAL)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="edgeloop-parent-watch", daemon=True).start()


def _plain(value: Any) -> Any:
    # numpy scalars in metrics: their Python value
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def serve(settings_line: bytes, lines: Any, out: Any) -> None:
    """Answer each request line on ``out`` until ``lines`` ends."""
    from edgeloop.config import Settings
    from edgeloop.logs import setup_logging

    settings = Settings.model_validate(orjson.loads(settings_line))
    setup_logging(settings.log_level, json=settings.log_json)
    tracker = None
    for line in lines:
        try:
            message = orjson.loads(line)
            request_id, request = str(message["id"]), message["request"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.error("ignored an unreadable request from the edge: %s", exc)
            continue
        try:
            # Imported on the first request: a worker that never trains costs the edge no import time.
            from edgeloop.registry.tracking import Tracker
            from edgeloop.retrain.job import run_retrain

            tracker = tracker or Tracker.from_settings(settings)
            outcome = run_retrain(
                settings,
                request["scope"],
                trigger=request["trigger"],
                reason=request["reason"],
                since_ts=request["since_ts"],
                stream_ts=request["requested_ts"] or None,
                tracker=tracker,
            )
            answer: dict[str, Any] = {"id": request_id, "outcome": outcome.to_dict()}
        except Exception as exc:  # one request's failure is reported; the worker takes the next
            log.exception("retrain of %s raised", request.get("scope") if isinstance(request, dict) else "?")
            answer = {"id": request_id, "error": f"{type(exc).__name__}: {exc}"[:500]}
        out.write(orjson.dumps(answer, default=_plain) + b"\n")
        out.flush()


def main(argv: list[str]) -> int:
    parent = int(argv[1]) if len(argv) > 1 else os.getppid()
    die_with_parent(parent)
    # Ctrl-C in a terminal reaches the whole process group; the edge decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints (LightGBM's C++ logger) go to stderr, not into the answers
    with contextlib.suppress(OSError):  # not permitted on some hosts
        os.nice(10)  # training must not starve the edge of CPU on a small node
    settings_line = sys.stdin.buffer.readline()
    if settings_line:
        serve(settings_line, sys.stdin.buffer, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
