"""MLflow tracking and registry: one run per training, one registered version per saved model.

Imported only by the trainer (a separate process), never by the edge's hot path: MLflow takes
seconds to import and its database is not needed to serve.

Registered model names are ``<prefix>.<encoded scope>`` with ``@`` spelled ``.device.``
(``edgeloop.voc_ppb``, ``edgeloop.voc_ppb.device.dev-003``); the alias ``champion`` marks the version
in service.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.registry.mlflow_server import ARTIFACTS_DIR, embedded_db, quiet_telemetry, rebase_artifacts
from edgeloop.scopes import encode_scope

if TYPE_CHECKING:
    from edgeloop.config import Settings

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"


def registered_name(prefix: str, scope: str) -> str:
    """The scope in its folder encoding, since MLflow refuses ``/`` and ``:`` (a MAC address) in names.

    >>> registered_name("edgeloop", "voc_ppb@dev-003")
    'edgeloop.voc_ppb.device.dev-003'
    >>> registered_name("edgeloop", "voc_ppb@ab:cd")
    'edgeloop.voc_ppb.device.ab%3Acd'
    """
    return f"{prefix}." + encode_scope(scope).replace("@", ".device.")


class Tracker:
    """Logs trainings to MLflow; every method is a no-op when tracking is disabled."""

    def __init__(self, tracking_uri: str, experiment: str, prefix: str, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.prefix = prefix
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings, *, enabled: bool = True) -> Tracker:
        """The tracker the settings describe; ``enabled=False`` turns it off whatever they say."""
        m = settings.mlflow
        return cls(settings.tracking_uri, m.experiment, m.model_prefix, enabled=m.enabled and enabled)

    def _mlflow(self) -> Any:
        quiet_telemetry(os.environ)  # before MLflow is imported: it starts its telemetry client then
        import mlflow

        if self._client is None:
            db = embedded_db(self.tracking_uri)
            if db is not None:
                # A data dir that was copied or moved still finds its runs' artifacts.
                try:
                    rebase_artifacts(db, db.parent / ARTIFACTS_DIR)
                except sqlite3.Error as exc:
                    log.warning("could not re-root MLflow artifact locations in %s: %s", db, exc)
            # The artifact store sits beside a sqlite tracking DB unless the server decides.
            if db is not None:
                os.environ.setdefault("MLFLOW_ARTIFACT_ROOT", str(db.parent / ARTIFACTS_DIR))
            mlflow.set_tracking_uri(self.tracking_uri)
            if mlflow.get_experiment_by_name(self.experiment) is None:
                # A server (http://) decides where artifacts go: the root it serves.
                artifacts = (db.parent / ARTIFACTS_DIR).as_uri() if db is not None else None
                mlflow.create_experiment(self.experiment, artifact_location=artifacts)
            mlflow.set_experiment(self.experiment)
            self._client = mlflow.MlflowClient()
        return mlflow

    def log_training(
        self,
        *,
        scope: str,
        version_dir: Path,
        kind: str,
        booster: Any,
        params: dict[str, Any],
        metrics: dict[str, float],
    ) -> tuple[str | None, str | None]:
        """Log one training run and register its model; returns (run id, registered version)."""
        if not self.enabled:
            return None, None
        mlflow = self._mlflow()
        name = registered_name(self.prefix, scope)
        with mlflow.start_run(run_name=f"{scope}:{version_dir.name}") as run:
            mlflow.log_params({k: v for k, v in params.items() if v is not None})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and v == v})
            mlflow.set_tags(
                {"edgeloop.scope": scope, "edgeloop.kind": kind, "edgeloop.version": version_dir.name}
            )
            # The edgeloop model files (native text + metadata with checksum) travel with every run.
            mlflow.log_artifacts(str(version_dir), artifact_path="edgeloop-model")
            if booster is not None:
                # LightGBM's flavour stores the booster in its native text format, not a pickle.
                info = mlflow.lightgbm.log_model(booster, name="model", registered_model_name=name)
                registered = str(info.registered_model_version)
            else:
                # Linear and persistence models are JSON coefficients: register the logged folder itself.
                client = self._client
                if not client.search_registered_models(filter_string=f"name='{name}'"):
                    client.create_registered_model(name)
                source = f"{run.info.artifact_uri}/edgeloop-model"
                mv = client.create_model_version(name, source, run_id=run.info.run_id)
                registered = str(mv.version)
            return run.info.run_id, registered

    def set_champion(self, scope: str, registered_version: str | None) -> None:
        if not self.enabled or registered_version is None:
            return
        self._mlflow()
        self._client.set_registered_model_alias(
            registered_name(self.prefix, scope), CHAMPION_ALIAS, registered_version
        )

    def set_champion_by_run(self, scope: str, run_id: str) -> None:
        """Point the alias at the registered version that ``run_id`` produced."""
        if not self.enabled:
            return
        self._mlflow()
        name = registered_name(self.prefix, scope)
        for mv in self._client.search_model_versions(f"name='{name}'"):
            if mv.run_id == run_id:
                self._client.set_registered_model_alias(name, CHAMPION_ALIAS, mv.version)
                return
        log.warning("no registered version of %s for run %s; alias unchanged", name, run_id)

    def clear_champion(self, scope: str) -> None:
        if not self.enabled:
            return
        self._mlflow()
        try:
            self._client.delete_registered_model_alias(registered_name(self.prefix, scope), CHAMPION_ALIAS)
        except Exception:  # MLflow raises its own types for a missing alias; nothing to clear is fine
            log.debug("no champion alias to clear for %s", scope)
