"""Where training runs and how its models travel: ``retrain.*`` (attempts, timeout, backoff, the trainer
pool), ``distribution.*`` (shared folder or signed bus messages) and ``mlflow.*`` (tracking and registry).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edgeloop.config.section import _Section


class RetrainSettings(_Section):
    timeout: float = Field(
        900.0, gt=0, description="Seconds a retrain attempt may take (from its start) before it is retried"
    )
    max_attempts: int = Field(
        3, ge=1, description="Attempts per retrain request; then the scope is released until asked again"
    )
    backoff: float = Field(
        30.0, gt=0, description="Seconds before retrying a failed attempt; doubles per failure"
    )
    backoff_max: float = Field(600.0, gt=0, description="Cap of the retry backoff (s)")
    trainer_session_expiry: int = Field(
        0,
        ge=0,
        description="Seconds the broker keeps a trainer's session (queueing its share of requests) after "
        "it disconnects; 0: none, so a dead member of a trainer pool holds no requests",
    )
    reuse_slack: float = Field(
        60.0,
        ge=0,
        description="Trainer pool: seconds of reading time by which the newest reading of a finished "
        "training of a scope may precede a request's time and still answer it instead of a new training "
        "(requests naming a change point get none)",
    )


class DistributionSettings(_Section):
    mode: Literal["files", "bus"] = Field(
        "files",
        description="How champions reach edges: the shared models folder (files), or signed retained "
        "messages on edgeloop/<site>/models/<scope> (bus)",
    )
    signing_key_file: Path | None = Field(
        None, description="Trainer: Ed25519 private key (PEM) that signs published champions (bus mode)"
    )
    public_key_file: Path | None = Field(
        None, description="Edge: Ed25519 public key (PEM) a champion's signature must verify against"
    )


class MlflowSettings(_Section):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default sqlite in <data_dir>")
    experiment: str = Field("edgeloop", description="MLflow experiment name")
    model_prefix: str = Field("edgeloop", description="Registered model name prefix (one name per scope)")
    enabled: bool = Field(True, description="Log runs and versions to MLflow")
