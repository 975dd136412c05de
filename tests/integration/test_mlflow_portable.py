"""A data dir with the embedded MLflow store can be moved: runs, artifacts and registered versions open
from the new place, and the old one is gone. Also: how `edgeloop mlflow` starts a fleet's server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeloop.config import load_settings
from edgeloop.registry.mlflow_server import rebase_artifacts, server_command
from edgeloop.registry.tracking import Tracker

pytestmark = pytest.mark.integration


def _tracker(data_dir: Path) -> Tracker:
    return Tracker.from_settings(load_settings(None, data_dir=str(data_dir)))


def test_a_moved_data_dir_still_opens_its_runs_and_registered_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("MLFLOW_ARTIFACT_ROOT", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)  # restored after the test: the tracker sets some
    old = tmp_path / "old" / "data"
    version_dir = old / "models" / "voc_ppb" / "v1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.json").write_text('{"coef": [1.0, 2.0]}')
    tracker = _tracker(old)
    run_id, registered = tracker.log_training(
        scope="voc_ppb", version_dir=version_dir, kind="linear", booster=None,
        params={"scope": "voc_ppb"}, metrics={"val_rmse": 1.0},
    )  # fmt: skip
    assert run_id and registered
    import os

    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"  # set before MLflow was imported

    new = tmp_path / "elsewhere" / "data"
    new.parent.mkdir()
    shutil.move(old, new)
    assert not old.exists()

    moved = _tracker(new)
    mlflow = moved._mlflow()  # opening the embedded store re-roots its locations
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith((new / "mlartifacts").resolve().as_uri())
    got = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="edgeloop-model", dst_path=str(tmp_path)
    )
    assert (Path(got) / "model.json").read_text() == '{"coef": [1.0, 2.0]}'
    mv = client.get_model_version("edgeloop.voc_ppb", registered)
    assert str(new.resolve()) in mv.source
    assert Path(
        mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "mv"))
    ).is_dir()
    # Opening it again changes nothing.
    assert rebase_artifacts(new / "mlflow.db", new / "mlartifacts") == 0


def test_the_fleet_server_command_serves_artifacts_from_a_postgres_backend(tmp_path: Path) -> None:
    cmd, env, what = server_command(
        backend="postgresql://mlflow:pw@db:5432/mlflow",
        artifacts=str(tmp_path / "art"),
        host="0.0.0.0",
        port=5000,
    )
    assert cmd[cmd.index("--backend-store-uri") + 1] == "postgresql+psycopg://mlflow:pw@db:5432/mlflow"
    assert cmd[cmd.index("--artifacts-destination") + 1] == (tmp_path / "art").resolve().as_uri()
    assert "--serve-artifacts" in cmd and "--default-artifact-root" not in cmd
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and "pw" not in what
