"""The local dispatcher against worker processes that misbehave for real (die, raise, hang)."""

from __future__ import annotations

import sys
import time

import orjson
import pytest

from edgeloop.config import load_settings
from edgeloop.engine.engine import RetrainRequest
from edgeloop.lifecycle.retrains import Attempt
from edgeloop.retrain.dispatch import LocalDispatcher, Report

pytestmark = pytest.mark.integration


def attempt(request_id: str = "rid-1", number: int = 1) -> Attempt:
    return Attempt(RetrainRequest("voc_ppb@Küche", "drift", "alarm"), request_id, number)


# A stand-in worker speaking the worker protocol: reads the settings line, then dies on its first request.
DIES_ON_REQUEST = "import sys; sys.stdin.readline(); sys.stdin.readline(); sys.exit(3)"
# One that answers every request with an error, like a training that raised.
RAISES = (
    "import sys, json\n"
    "sys.stdin.readline()\n"
    "for line in sys.stdin:\n"
    "    print(json.dumps({'id': json.loads(line)['id'], 'error': 'OSError: disk full'}), flush=True)\n"
)


def poll_until(dispatcher: LocalDispatcher, kind: str, timeout: float = 20) -> list[Report]:
    seen: list[Report] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += dispatcher.poll()
        if any(r.kind == kind for r in seen):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"no {kind} report within {timeout:g} s: {seen}")


def test_a_dead_worker_is_reported_and_replaced() -> None:
    d = LocalDispatcher(load_settings(None), command=[sys.executable, "-c", DIES_ON_REQUEST])
    d.start()
    try:
        d.submit(attempt(number=1))
        reports = poll_until(d, "failed")
        failed = [r for r in reports if r.kind == "failed"]
        assert failed[0].request_id == "rid-1" and "worker died (exit code 3)" in failed[0].reason
        assert reports[0].kind == "started"
        d.submit(attempt(number=2))  # never raises: a new worker takes it
        reports = poll_until(d, "failed")
        assert d.workers_started == 2 and reports[-1].attempt == 2
    finally:
        d.close()


def test_a_training_that_raised_is_a_failed_attempt_and_the_worker_stays() -> None:
    d = LocalDispatcher(load_settings(None), command=[sys.executable, "-c", RAISES])
    d.start()
    try:
        d.submit(attempt())
        failed = [r for r in poll_until(d, "failed") if r.kind == "failed"]
        assert "training raised OSError: disk full" in failed[0].reason
        pid = d.worker_pid
        d.submit(attempt(number=2))
        poll_until(d, "failed")
        assert d.worker_pid == pid and d.workers_started == 1
    finally:
        d.close()


def test_cancel_stops_a_running_attempt_and_the_next_one_gets_a_new_worker() -> None:
    hangs = "import sys, time; sys.stdin.readline(); sys.stdin.readline(); time.sleep(60)"
    d = LocalDispatcher(load_settings(None), command=[sys.executable, "-c", hangs])
    d.start()
    try:
        d.submit(attempt())
        poll_until(d, "started")
        first = d.worker_pid
        d.cancel("rid-1")
        assert d.worker_pid is None and d.busy == 0
        d.submit(attempt("rid-2"))
        poll_until(d, "started")
        assert d.worker_pid not in (None, first)
        time.sleep(0.3)
        assert not [r for r in d.poll() if r.kind == "failed"]  # the cancelled attempt is not reported twice
    finally:
        d.close()


def test_an_answer_line_is_json() -> None:
    # What the worker writes must be readable by orjson on the edge side, numpy scalars included.
    import numpy as np

    from edgeloop.retrain.worker import _plain

    line = orjson.dumps({"id": "x", "outcome": {"metrics": {"val_rmse": np.float64(1.5)}}}, default=_plain)
    assert orjson.loads(line)["outcome"]["metrics"]["val_rmse"] == 1.5


# A parent that starts a child calling die_with_parent, prints the child's pid, then waits to be killed.
_CHILD = (
    "import sys, time\n"
    "{platform}"
    "from edgeloop.retrain.worker import die_with_parent\n"
    "die_with_parent(int(sys.argv[1]))\n"
    "time.sleep(60)\n"
)
_PARENT = (
    "import os, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.parametrize("mechanism", ["pdeathsig", "watchdog"])
def test_a_worker_dies_with_its_parent_even_on_kill_9(mechanism: str) -> None:
    import subprocess

    import psutil

    # "watchdog": pretend not to be Linux, so only the parent-pid watchdog thread can notice.
    platform = "sys.platform = 'elsewhere'\n" if mechanism == "watchdog" else ""
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _CHILD.format(platform=platform)], stdout=subprocess.PIPE
    )
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    time.sleep(1.0)  # the child is past its imports and waiting
    assert child.is_running()
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        child.kill()
        raise AssertionError(f"the child outlived its parent ({mechanism})")
