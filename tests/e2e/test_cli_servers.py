"""``edgeloop mlflow`` as an operator runs it: lean, and gone entirely after one SIGTERM or Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from edgeloop.adapters.broker import find_free_port


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:g} s")


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_mlflow_is_one_worker_and_a_signal_stops_every_process(tmp_path: Path, signum: int) -> None:
    port = find_free_port()
    cmd = [sys.executable, "-m", "edgeloop", "mlflow", "--port", str(port), "--data-dir", str(tmp_path)]
    # Its own session, so a failure here cannot leave the server running: the finally kills the group.
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=120)
        tree = psutil.Process(proc.pid).children(recursive=True)
        rss_mb = sum(p.memory_info().rss for p in [psutil.Process(proc.pid), *tree]) / 2**20
        print(f"MLFLOW processes={1 + len(tree)} rss_mb={rss_mb:.0f}")
        # edgeloop, `mlflow server`, the server master and its one worker: the default was 16 processes.
        assert len(tree) <= 4, [p.cmdline() for p in tree]
        proc.send_signal(signum)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(tree), [p.cmdline() for p in alive(tree)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_dashboard_stops_on_sigterm_with_its_streamlit(tmp_path: Path) -> None:
    port = find_free_port()
    cmd = [sys.executable, "-m", "edgeloop", "dashboard", "--port", str(port), "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc, timeout=90)
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert tree, "the dashboard runs Streamlit in a child process"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(tree), [p.cmdline() for p in alive(tree)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
