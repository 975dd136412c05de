"""The fleet's registry as a user runs it: `edgeloop mlflow` serving a PostgreSQL backend store, and
`edgeloop train` / `models list|promote|rollback` against the PostgreSQL store and that server.

One MLflow server per module (it takes tens of seconds to migrate its database and start). Both
databases are throwaway ones on the shared PostgreSQL; the server's artifacts go to this test's folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.pgdb import throwaway_db

from edgeloop.adapters.store import open_store
from edgeloop.engine.rows import SampleRow, StatusRow

pytestmark = pytest.mark.e2e

SRC = str(Path(__file__).resolve().parents[2] / "src")
START_TIMEOUT = 180.0  # MLflow migrates an empty PostgreSQL database at first start: slow on a busy box


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``(url, artifacts dir)`` of `edgeloop mlflow` on a PostgreSQL backend store."""
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    log = tmp_path_factory.mktemp("mlflow-log") / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with throwaway_db("edgeloop_test_mlflow") as backend, open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop", "mlflow", "--port", str(port),
             "--backend-store-uri", backend, "--artifacts-destination", str(artifacts)],
            env={**os.environ, "PYTHONPATH": SRC}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _up(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"MLflow server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url, artifacts
        finally:
            proc.send_signal(signal.SIGTERM)  # the launcher stops the server's whole process group
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _readings(url: str) -> None:
    rng = np.random.default_rng(3)
    t0 = 1_700_000_000.0
    values = 400 + 50 * np.sin(np.arange(3000) / 40) + rng.normal(0, 3, 3000)
    rows = [
        SampleRow("dev-001", "voc_ppb", t0 + 10 * i, i, float(v), None, None, None, None)
        for i, v in enumerate(values)
    ]
    status = StatusRow("dev-001", "voc_ppb", t0 + 30_000, 3000, 0.1, None, None, None, None, "persistence",
                       "healthy", t0 + 30_000)  # fmt: skip
    store = open_store(url)
    try:
        store.write(rows, status=[status])
    finally:
        store.close()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeloop", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"edgeloop {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_train_and_models_commands_on_the_postgres_store_and_the_mlflow_server(
    mlflow_server: tuple[str, Path], tmp_path: Path
) -> None:
    tracking, artifacts = mlflow_server
    data = tmp_path / "data"
    data.mkdir()
    with throwaway_db() as store_url:
        _readings(store_url)
        env = {
            **os.environ,
            "PYTHONPATH": SRC,
            "EDGELOOP_DATA_DIR": str(data),
            "EDGELOOP_STORE_URL": store_url,
            "EDGELOOP_MLFLOW_TRACKING_URI": tracking,
            "EDGELOOP_BROKER_URL": f"mqtt://127.0.0.1:{free_port()}",  # nobody listens: events best effort
            "EDGELOOP_MODEL_CANDIDATES": '["linear", "lgbm-delta"]',
        }
        first = _cli(env, "train", "--scope", "voc_ppb")
        assert "voc_ppb: promoted" in first.stdout
        _cli(env, "train", "--scope", "voc_ppb")  # v2: promoted or rejected, both are versions

        rows = json.loads(_cli(env, "models", "list", "--json").stdout)
        assert [r["label"] for r in rows] == ["voc_ppb:v1", "voc_ppb:v2"]
        assert sum(r["champion"] for r in rows) == 1
        assert {r["decision"] for r in rows} <= {"champion", "retired", "rejected"}

        store = open_store(store_url, readonly=True)
        try:
            runs = {r["version"]: r["mlflow_run_id"] for r in store.model_versions("voc_ppb")}
        finally:
            store.close()
        assert runs.keys() == {1, 2} and all(runs.values())

        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking)

        def champion_run() -> str:
            mv = client.get_model_version_by_alias("edgeloop.voc_ppb", "champion")
            return str(mv.run_id)

        # Artifacts went through the server into its destination, and come back out of it.
        run = client.get_run(runs[1])
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        listed = {a.path for a in client.list_artifacts(runs[1], "edgeloop-model")}
        assert listed, "no model files logged"
        assert any(p.is_file() for p in artifacts.rglob("*")), "the server kept no artifact"
        local = mlflow.artifacts.download_artifacts(
            run_id=runs[1],
            artifact_path="edgeloop-model",
            tracking_uri=tracking,
            dst_path=str(tmp_path / "dl"),
        )
        assert any(Path(local).iterdir())

        _cli(env, "models", "promote", "voc_ppb:v2", "--force", "--yes")
        assert champion_run() == runs[2]
        _cli(env, "models", "rollback", "voc_ppb", "--yes")
        assert champion_run() == runs[1]

        store = open_store(store_url, readonly=True)
        try:
            kinds = [e.kind for e in store.events(scope="voc_ppb")]
        finally:
            store.close()
        assert "model_rolled_back" in kinds and kinds.count("model_promoted") >= 2
