"""With ``log_json`` on, every line a server command writes is one JSON object (for Filebeat/Logstash).

``edgeloop mlflow`` runs MLflow's web server (uvicorn or gunicorn) as child processes that log plain
text of their own; the edge's retrain worker runs MLflow in-process. The edge's case is covered with
real training in tests/integration/test_elk_documents.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.e2e.test_cli_servers import wait_http

from edgeloop.adapters.broker import find_free_port


def non_json_lines(text: str) -> list[str]:
    bad = []
    for line in text.splitlines():
        try:
            if not isinstance(json.loads(line), dict):
                bad.append(line)
        except ValueError:
            bad.append(line)
    return bad


def test_mlflow_launcher_writes_only_json_lines(tmp_path: Path) -> None:
    port = find_free_port()
    cmd = [sys.executable, "-m", "edgeloop", "mlflow", "--port", str(port), "--data-dir", str(tmp_path)]
    env = {**os.environ, "EDGELOOP_LOG_JSON": "true"}
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=120)
        with contextlib.suppress(urllib.error.HTTPError):  # a request the server logs on its own
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/no-such-endpoint", timeout=10)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stdout, stderr = out.decode(), err.decode()
    assert stderr.strip(), "the launcher and the server wrote nothing"
    assert non_json_lines(stderr) == [] and non_json_lines(stdout) == [], (stdout + stderr)[-3000:]
    loggers = {json.loads(line)["logger"] for line in stderr.splitlines()}
    # The server's own lines were relayed, and the launcher's note is a log record, not a print.
    assert "edgeloop.mlflow_server" in loggers and "edgeloop.cli" in loggers, loggers
