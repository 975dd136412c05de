"""The edge process: ``store.*`` (where readings are kept), ``edge.*`` (batching, probes, snapshots, inbox,
replicas) and ``alerts.*`` (who is told about drift, rollbacks and silent devices).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from edgeloop.config.section import _Section


class StoreSettings(_Section):
    path: Path | None = Field(None, description="SQLite file; default <data_dir>/edgeloop.db")
    url: str | None = Field(
        None,
        description="PostgreSQL store shared by several edges (postgresql://user@host:5432/db); "
        "null: the SQLite file",
    )
    retention_rows: int = Field(2_000_000, ge=1000, description="Sample rows kept; older rows are pruned")
    flush_interval: float = Field(0.25, gt=0, description="Seconds between batched store commits")
    max_buffer_rows: int = Field(
        200_000, ge=1000, description="Rows held while the store cannot write; beyond, the oldest are dropped"
    )

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (or unset for the SQLite file)")
        return value


class EdgeSettings(_Section):
    batch_max: int = Field(512, ge=1, description="Most messages the engine takes in one batch")
    batch_wait: float = Field(0.005, ge=0, description="Seconds to wait for a batch to fill")
    status_interval: float = Field(1.0, gt=0, description="Seconds between status snapshots to the store")
    model_poll_interval: float = Field(5.0, gt=0, description="Seconds between champion checks (fallback)")
    metrics_port: int | None = Field(
        None, description="Port for Prometheus /metrics and the /healthz, /readyz probes; null: off"
    )
    snapshot_interval: float = Field(
        5.0, ge=0, description="Seconds between snapshots of per-device state in <data_dir>/state; 0: off"
    )
    inbox_max: int = Field(
        20_000, ge=1, description="Readings received but not yet processed; when full, reading pauses"
    )
    retrain: Literal["local", "mqtt"] = Field(
        "local", description="Retrain in a local worker process, or ask a trainer service over MQTT"
    )
    replicas: int = Field(
        1,
        ge=1,
        le=1024,
        description="Edge replicas R sharing the site (NATS only): replica r owns partitions p, p mod R == r",
    )
    ordinal: int | None = Field(
        None,
        ge=0,
        description="This replica's number r (0..R-1); null: the host name's trailing number (edge-2: 2)",
    )

    def resolved_ordinal(self, hostname: str | None = None) -> int:
        """``ordinal``, else the trailing number of the host name (a StatefulSet pod ``edge-2`` is 2).

        >>> EdgeSettings(replicas=3).resolved_ordinal("edge-2")
        2
        >>> EdgeSettings(replicas=3, ordinal=1).resolved_ordinal("edge-2")
        1
        >>> EdgeSettings().resolved_ordinal("edge-7")  # one replica
        0
        """
        if self.ordinal is not None:
            return self.ordinal
        if self.replicas == 1:
            return 0  # one replica owns every partition, whatever the host is called
        name = socket.gethostname() if hostname is None else hostname
        found = re.search(r"(\d+)$", name.split(".")[0])
        if found:
            return int(found.group(1))
        if self.replicas > 1:
            raise ValueError(
                f"edge.ordinal is not set and the host name {name!r} has no trailing number; "
                "set edge.ordinal (EDGELOOP_EDGE_ORDINAL) to this replica's number"
            )
        return 0


class AlertSettings(_Section):
    webhook_url: str | None = Field(
        None, description="HTTP(S) URL that receives each alert as a JSON POST; null: no webhook"
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="Seconds a webhook POST may take")
    mqtt: bool = Field(True, description="Publish alerts on topics.alerts")
    kinds: list[str] = Field(
        ["drift_detected", "model_rolled_back", "model_demoted", "retrain_failed", "device_silent"],
        description="What raises an alert: event kinds, and device_silent",
    )
    min_interval_s: float = Field(
        300.0,
        ge=0,
        description="At most one alert per (kind, scope) in this many seconds; the rest are counted",
    )
    silent_factor: float = Field(
        3.0, gt=1, description="A device is silent after this many of its own median reporting intervals"
    )
    silence_check_s: float = Field(
        15.0, ge=0, description="Seconds between checks for silent devices (wall time); 0: no silence alerts"
    )
    queue_size: int = Field(256, ge=1, description="Alerts waiting to be sent; beyond, new ones are dropped")

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value[:16]!r}")
        return value
