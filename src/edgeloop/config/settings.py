"""The whole settings tree (:class:`Settings`): every section, the rules across sections, derived paths and
the masked view of the effective config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edgeloop.config.broker import BrokerSettings
from edgeloop.config.edge import AlertSettings, EdgeSettings, StoreSettings
from edgeloop.config.learning import DriftSettings, ModelSettings
from edgeloop.config.readings import LimitSettings, MappingSettings, TopicSettings
from edgeloop.config.training import DistributionSettings, MlflowSettings, RetrainSettings

SECRET_MASK = "********"  # noqa: S105 - the mask shown in place of secrets


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
