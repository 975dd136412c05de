"""``broker.*``: where the MQTT broker or NATS server is and how to reach it (credentials, TLS, sessions).

>>> b = BrokerSettings(url="mqtt://alice:s3cret@broker.lan:1884")
>>> b.url, b.username, b.port, b.transport
('mqtt://broker.lan:1884', 'alice', 1884, 'mqtt')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from edgeloop.config.section import _Section


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
