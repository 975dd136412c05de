"""One typed settings tree: defaults < YAML file (``--config``) < environment (``EDGELOOP_...``).

Every key is declared once here, with its type, default and a one-line doc. Nested keys map to
environment variables with a single underscore after the section name, e.g.
``broker.url`` is ``EDGELOOP_BROKER_URL`` and ``drift.policy`` is ``EDGELOOP_DRIFT_POLICY``.

>>> s = Settings(site="lab")
>>> s.topics.telemetry_filters(s.site)
['edgeloop/lab/+/telemetry']
>>> s.broker.host, s.broker.port, s.broker.tls
('127.0.0.1', 1883, False)
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edgeloop.errors import ConfigError

SECRET_MASK = "********"  # noqa: S105 - the mask shown in place of secrets


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class BrokerSettings(_Section):
    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://[user:pass@]host:port or mqtts://...; nats://host:4222 or tls://... "
        "selects NATS JetStream",
    )
    username: str | None = Field(None, description="Username for broker auth (none: anonymous)")
    password: SecretStr | None = Field(None, description="Password for broker auth; prefer password_file")
    password_file: Path | None = Field(
        None, description="File holding the broker password (Kubernetes/Vault)"
    )
    tls_ca_file: Path | None = Field(None, description="CA bundle that signed the broker's certificate")
    tls_cert_file: Path | None = Field(None, description="Client certificate for mutual TLS")
    tls_key_file: Path | None = Field(None, description="Client private key for mutual TLS")
    tls_insecure: bool = Field(False, description="Skip hostname verification (testing only)")
    creds_file: Path | None = Field(None, description="NATS only: user credentials file (JWT and nkey seed)")
    nkey_file: Path | None = Field(None, description="NATS only: file holding the user's nkey seed")
    partitions: int = Field(
        8,
        ge=1,
        le=1024,
        description="NATS only: device partitions P of the server's telemetry mapping (same on every edge)",
    )
    history: int = Field(
        2000,
        ge=10,
        description="NATS only: readings per device the telemetry stream keeps; a new owner rebuilds a "
        "device's state from them",
    )
    client_id: str = Field("", description="MQTT client id; empty: derived from role, host and pid")
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds")
    qos: int = Field(1, ge=0, le=2, description="QoS for telemetry subscription and published predictions")
    session_expiry: int = Field(
        3600, ge=0, description="Seconds the broker keeps our session while we are away"
    )
    shared_group: str | None = Field(
        "edgeloop", description="MQTT v5 shared-subscription group; edge replicas split the stream"
    )
    reconnect_max_delay: float = Field(30.0, gt=0, description="Cap of the jittered reconnect backoff (s)")
    connect_wait: float = Field(
        120.0, ge=0, description="Seconds to wait for an unreachable broker at start (0: fail at once)"
    )
    receive_maximum: int = Field(
        1000, ge=1, le=65535, description="QoS 1/2 deliveries the broker may have unacknowledged to us"
    )

    @model_validator(mode="before")
    @classmethod
    def _credentials_from_url(cls, data: Any) -> Any:
        # mqtt://user:pass@host is a common way to configure clients; take the credentials out of the
        # URL (so it can be printed and logged safely) into username/password, or refuse a conflict.
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        parts = urlsplit(data["url"])
        if "@" not in parts.netloc:
            return data
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user, has_password, password = userinfo.partition(":")
        user, password = unquote(user), unquote(password)
        data = {**data, "url": urlunsplit(parts._replace(netloc=hostport))}
        if user:
            if data.get("username") not in (None, user):
                raise ValueError(
                    "broker.url names a user that differs from broker.username; set credentials in one place"
                )
            data["username"] = user
        if has_password:
            if data.get("password") is not None or data.get("password_file") is not None:
                raise ValueError(
                    "broker.url holds a password and broker.password(_file) is set too; keep one of them"
                )
            data["password"] = password
        return data

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl", "nats", "tls"):
            raise ValueError(f"scheme must be mqtt://, mqtts://, nats:// or tls://, got {value!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {value!r}")
        return value

    @model_validator(mode="after")
    def _check_transport_keys(self) -> BrokerSettings:
        if self.transport == "mqtt" and (self.creds_file is not None or self.nkey_file is not None):
            raise ValueError("broker.creds_file and broker.nkey_file need a nats:// or tls:// broker.url")
        if self.creds_file is not None and self.nkey_file is not None:
            raise ValueError("set one of broker.creds_file and broker.nkey_file, not both")
        return self

    @property
    def transport(self) -> Literal["mqtt", "nats"]:
        """Which transport the URL selects: NATS JetStream for nats:// and tls://, else MQTT."""
        return "nats" if urlsplit(self.url).scheme in ("nats", "tls") else "mqtt"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme in ("mqtts", "ssl", "tls") or self.tls_ca_file is not None

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        if parts.port:
            return parts.port
        if self.transport == "nats":
            return 4222
        return 8883 if parts.scheme in ("mqtts", "ssl") else 1883

    def resolved_password(self) -> str | None:
        """The password from ``password_file`` if set, else ``password``."""
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return self.password.get_secret_value() if self.password else None


class TopicSettings(_Section):
    telemetry: list[str] = Field(
        ["edgeloop/{site}/+/telemetry"],
        description="Subscription filters for telemetry ({site} is filled in)",
    )
    device_level: int | None = Field(
        2,
        description="Topic level (0-based) holding the device id; it wins over the payload's (a payload "
        "naming another device is dropped); null: the payload names the device",
    )
    prediction: str = Field("edgeloop/{site}/{device}/prediction", description="Where predictions go")
    events: str = Field("edgeloop/{site}/events", description="Where drift and model events go")
    retrain: str = Field("edgeloop/{site}/control/retrain", description="Retrain requests to a trainer")
    alerts: str = Field("edgeloop/{site}/alerts", description="Where alerts go (see alerts.mqtt)")

    def telemetry_filters(self, site: str) -> list[str]:
        return [t.format(site=site) for t in self.telemetry]


class MappingSettings(_Section):
    device_field: str = Field("device", description="Payload field holding the device id")
    ts_field: str = Field("ts", description="Payload field holding the timestamp (epoch s or ISO-8601)")
    seq_field: str = Field("seq", description="Payload field holding the sequence number")
    fields: dict[str, str] = Field(
        default_factory=dict, description="Rename payload fields to edgeloop's names, e.g. {timestamp: ts}"
    )
    default_device: str = Field("default", description="Device id when neither payload nor topic has one")


class LimitSettings(_Section):
    max_payload_bytes: int = Field(8192, ge=64, description="Larger telemetry payloads are dropped")
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "temp_c": (-80.0, 150.0),
            "humidity": (0.0, 100.0),
            "voc_ppb": (0.0, 1e6),
        },
        description="Plausible [min, max] per field; readings outside are dropped as out_of_range",
    )
    max_future_s: float | None = Field(
        300.0,
        ge=0,
        description="Readings stamped more than this ahead of the edge's clock are dropped; null: off",
    )
    max_past_s: float | None = Field(
        None,
        ge=0,
        description="Readings older than this by the edge's clock are dropped; null: any age (replays)",
    )
    max_devices: int = Field(
        10_000,
        ge=1,
        description="Devices the edge keeps state for; beyond, idle ones are evicted or new dropped",
    )
    device_idle_s: float = Field(
        86_400.0,
        ge=0,
        description="A device silent this long (in reading time) may be evicted to make room for a new one",
    )


class Span:
    """A stretch of a stream: a time (``90s``, ``30m``, ``12h``, ``3d``) or a count of readings (``2000``).

    Time spans turn into readings with a device's observed sampling interval, so one setting means
    the same thing at one reading every 10 s or every hour. ``0`` means off.

    >>> Span.parse("12h").readings(600.0), Span.parse("2000").readings(600.0), Span.parse("0").off
    (72, 2000, True)
    >>> Span.parse("soon")
    Traceback (most recent call last):
    ...
    ValueError: span 'soon': expected readings (2000) or a time such as 90s, 30m, 12h, 3d
    """

    __slots__ = ("amount", "seconds")
    _UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

    def __init__(self, amount: float, seconds: bool) -> None:
        self.amount = amount
        self.seconds = seconds

    @classmethod
    def parse(cls, text: str | int | float) -> Span:
        raw = str(text).strip().lower()
        unit = raw[-1:] if raw[-1:] in cls._UNITS else ""
        try:
            amount = float(raw[:-1] if unit else raw)
        except ValueError:
            raise ValueError(
                f"span {text!r}: expected readings (2000) or a time such as 90s, 30m, 12h, 3d"
            ) from None
        if not amount >= 0 or amount == float("inf"):
            raise ValueError(f"span {text!r} must be a finite number >= 0")
        return cls(amount * cls._UNITS[unit], True) if unit else cls(amount, False)

    @property
    def off(self) -> bool:
        return self.amount == 0

    def readings(self, interval: float | None) -> int:
        """This span in readings at ``interval`` seconds a reading (None: not yet known, taken as 60 s)."""
        if not self.seconds:
            return int(self.amount)
        return round(self.amount / (interval if interval and interval > 0 else 60.0))


class ModelSettings(_Section):
    targets: list[str] = Field(["voc_ppb"], min_length=1, description="Fields to forecast")
    lags: int = Field(5, ge=1, le=64, description="Number of past readings a forecast sees")
    candidates: list[Literal["persistence", "linear", "lgbm-level", "lgbm-delta", "rls", "lgbm-rls"]] = Field(
        ["persistence", "linear", "lgbm-delta", "rls"],
        description="Formulations tried at training (rls and lgbm-rls keep learning per device after every "
        "reading; lgbm-rls is opt-in: 0.5-3 % more accurate on the public series but it cuts the edge's "
        "throughput by about 40 %; lgbm-level loses badly once a sensor leaves the range it was trained on)",
    )
    min_train_samples: int = Field(
        1440, ge=50, description="Readings of a target (all devices) before its first fleet model is trained"
    )
    retrain_min_samples: int = Field(
        200,
        ge=20,
        description="Readings a drifted device collects after the alarm before its first (fast) retrain",
    )
    consolidate_after: str = Field(
        "1d",
        description="Span (e.g. 1d, 12h, or 2000 readings) after an alarm at which a consolidation "
        "retrain learns the whole new regime; 0: off",
    )
    refresh_every: str = Field(
        "36h",
        description="Span (e.g. 3d, or 5000 readings) between validated champion/challenger refreshes "
        "of a scope, never sooner than train_window/2 readings; 0: off",
    )
    train_window: int = Field(4000, ge=100, description="Most recent readings per device a training uses")
    validation_fraction: float = Field(0.25, gt=0.05, lt=0.6, description="Newest share held out to validate")
    min_validation_samples: int = Field(
        100,
        ge=10,
        description="Fewest newest readings per device held out to validate, whatever the fraction",
    )
    promotion_margin: float = Field(
        0.02,
        ge=0.0,
        lt=1.0,
        description="A challenger must beat both the champion's and persistence's holdout RMSE by this share "
        "(the champion's by less when a holdout of 500+ readings shows the difference)",
    )
    probation_samples: int = Field(200, ge=10, description="Scored forecasts a new model serves on probation")
    probation_tolerance: float = Field(
        1.1,
        ge=1.0,
        description="Roll back if probation RMSE exceeds the old model's (or persistence's) RMSE times this",
    )
    floor_margin: float = Field(
        0.02,
        ge=0.0,
        lt=1.0,
        description="Serve persistence for a device while its model's recent RMSE exceeds persistence's "
        "by this share",
    )
    floor_window: int = Field(
        300, ge=20, description="Scored forecasts (exponential window) over which the floor compares them"
    )
    gap_intervals: float = Field(
        5.0,
        gt=1.0,
        description="A pause longer than this many median sampling intervals resets a device's lag window",
    )
    lgbm_rounds: int = Field(200, ge=10, description="LightGBM boosting rounds")

    @field_validator("consolidate_after", "refresh_every", mode="before")
    @classmethod
    def _check_span(cls, value: Any) -> str:
        Span.parse(value)  # YAML gives 2000 as a number: kept as the text "2000" (readings)
        return str(value).strip()


class DriftSettings(_Section):
    policy: Literal["rmse-threshold", "relative", "page-hinkley", "adwin"] = Field(
        "page-hinkley", description="Drift policy on the forecast error stream"
    )
    window: int = Field(100, ge=10, description="Scored forecasts in the rolling RMSE")
    threshold: float | None = Field(None, gt=0, description="Absolute RMSE threshold (rmse-threshold policy)")
    relative_factor: float = Field(
        2.0, gt=1.0, description="relative: alarm when rolling RMSE > k x reference"
    )
    ph_threshold: float = Field(150.0, gt=0, description="page-hinkley: alarm threshold on normalised errors")
    ph_delta: float = Field(0.5, ge=0, description="page-hinkley: tolerated drift of normalised errors")
    adwin_delta: float = Field(0.002, gt=0, lt=1, description="adwin: confidence parameter")
    warmup: int = Field(100, ge=0, description="Scored forecasts ignored after a model change")
    calibration: int = Field(
        1440,
        ge=10,
        description="Live errors whose RMSE sets a new model's error scale; cover one cycle (a day at 1/min)",
    )
    min_gap: int = Field(500, ge=0, description="Samples between two alarms of one scope (hysteresis)")
    budget: int = Field(3, ge=1, description="At most this many retrains per scope per budget_window samples")
    budget_window: int = Field(10_000, ge=100, description="Samples over which the retrain budget applies")


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


class Settings(BaseSettings):
    """The whole configuration of edgeloop."""

    model_config = SettingsConfigDict(
        env_prefix="EDGELOOP_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        validate_default=True,
    )

    site: str = Field("site-1", pattern=r"^[A-Za-z0-9_.-]+$", description="Site id used in topics")
    data_dir: Path = Field(Path("edgeloop-data"), description="Store, models and MLflow files live here")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")
    log_json: bool = Field(False, description="Structured JSON logs (for ELK) instead of plain text")
    broker: BrokerSettings = BrokerSettings()
    topics: TopicSettings = TopicSettings()
    mapping: MappingSettings = MappingSettings()
    limits: LimitSettings = LimitSettings()
    model: ModelSettings = ModelSettings()
    drift: DriftSettings = DriftSettings()
    store: StoreSettings = StoreSettings()
    edge: EdgeSettings = EdgeSettings()
    retrain: RetrainSettings = RetrainSettings()
    distribution: DistributionSettings = DistributionSettings()
    mlflow: MlflowSettings = MlflowSettings()
    alerts: AlertSettings = AlertSettings()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Settings:
        return self.check_cross_fields()

    def check_cross_fields(self) -> Settings:
        """Rules across sections; raises ValueError naming the keys."""
        if self.drift.policy == "rmse-threshold" and self.drift.threshold is None:
            raise ValueError("drift.threshold is required when drift.policy is rmse-threshold")
        if self.edge.inbox_max < self.broker.receive_maximum:
            # The broker's flow control must fill first; a full inbox stalls paho's network thread,
            # which would also hold back the acknowledgements of our own predictions.
            raise ValueError("edge.inbox_max must be at least broker.receive_maximum")
        if self.broker.transport == "mqtt" and self.edge.replicas > 1:
            # MQTT shared subscriptions hand a device's readings to every replica in turn.
            raise ValueError(
                "edge.replicas > 1 needs a NATS broker.url (nats:// or tls://): MQTT shared subscriptions "
                "split each device's readings between the replicas"
            )
        if self.broker.transport == "nats":
            if self.edge.retrain == "mqtt":
                raise ValueError("edge.retrain: mqtt needs an MQTT broker.url; with NATS use local")
            if self.distribution.mode == "bus":
                raise ValueError("distribution.mode: bus needs an MQTT broker.url; with NATS use files")
            ordinal = self.edge.resolved_ordinal()
            if ordinal >= self.edge.replicas:
                raise ValueError(
                    f"edge.ordinal {ordinal} must be below edge.replicas {self.edge.replicas}"
                    + ("" if self.edge.ordinal is not None else " (taken from the host name)")
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init kwargs carry the YAML file; the environment overrides it.
        return (env_settings, init_settings, file_secret_settings)

    @property
    def store_path(self) -> Path:
        return self.store.path or self.data_dir / "edgeloop.db"

    @property
    def store_location(self) -> Path | str:
        """Where the store is: ``store.url`` when set, else the SQLite file :attr:`store_path`."""
        return self.store.url or self.store_path

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, with every secret masked."""
        data = self.model_dump(mode="json")
        if data["broker"].get("password"):
            data["broker"]["password"] = SECRET_MASK
        for section, key in (("store", "url"), ("mlflow", "tracking_uri")):
            url = data[section].get(key)
            if url and "://" in url and "@" in url:  # user and password, as the URL carries them
                scheme, rest = url.split("://", 1)
                data[section][key] = f"{scheme}://{SECRET_MASK}@{rest.split('@', 1)[1]}"
        if data["alerts"].get("webhook_url"):
            # A webhook URL often carries its token (Slack, Teams): show where it goes, not the path.
            scheme, _, rest = data["alerts"]["webhook_url"].partition("://")
            data["alerts"]["webhook_url"] = (
                f"{scheme}://{rest.split('/', 1)[0].rpartition('@')[2]}/{SECRET_MASK}"
            )
        return data


def _format_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        env = "EDGELOOP_" + "_".join(str(p) for p in err["loc"]).upper()
        lines.append(f"  {key}: {err['msg']} (YAML key {key!r} or env {env})")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from an optional YAML file, the environment and explicit overrides.

    Raises :class:`ConfigError` naming every bad key and why.
    """
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if path is not None:
        path = Path(path)
        source = f"{path} and environment"
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data.update(loaded)
    try:
        settings = Settings(**data)
        # Command-line overrides win over the environment, so they are applied last.
        for key, value in overrides.items():
            if value is not None:
                settings = _override(settings, key, value)
        if overrides:
            settings.check_cross_fields()  # the copies made by _override skip the model validator
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from exc
    except ValueError as exc:
        raise ConfigError(f"invalid configuration ({source}): {exc}") from exc
    if settings.broker.password_file is not None:
        check_readable("broker.password_file", settings.broker.password_file)
    return settings


def check_readable(key: str, path: Path) -> None:
    """Raise one-line :class:`ConfigError` naming ``key``, the file, its mode and owner if we cannot read it.

    A secret mounted into a container keeps the host file's owner and mode, so the usual failure is a
    file made with ``umask 077`` by another user: saying whose it is, its mode and who we run as points
    at the fix (``chown``/``chmod``, see deploy/docker/secrets/README.md).
    """
    try:
        with path.open("rb"):
            return
    except FileNotFoundError:
        raise ConfigError(f"{key}: cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: cannot read {path}: it is a directory, not a file") from None
    except OSError as exc:
        try:
            st = path.stat()
            found = f"mode {st.st_mode & 0o7777:04o}, owner uid {st.st_uid} gid {st.st_gid}"
        except OSError:
            found = "its folder cannot be searched"
        raise ConfigError(
            f"{key}: cannot read {path} ({found}; this process runs as uid {os.getuid()} gid "
            f"{os.getgid()}): {exc.strerror}"
        ) from None


def _override(settings: Settings, dotted: str, value: Any) -> Settings:
    """A copy of ``settings`` with one key replaced and validated (the environment is not read again)."""
    section, _, key = dotted.partition(".")
    if not key:
        checked = TypeAdapter(Settings.model_fields[section].annotation).validate_python(value)  # type: ignore[arg-type]
        return settings.model_copy(update={section: checked})
    current = getattr(settings, section)
    replaced = type(current).model_validate({**current.model_dump(exclude_unset=True), key: value})
    return settings.model_copy(update={section: replaced})
