"""How readings arrive: ``topics.*`` (where they come from and where answers go), ``mapping.*`` (which
payload field is what) and ``limits.*`` (what is accepted, and how many devices the edge keeps state for).
"""

from __future__ import annotations

from pydantic import Field

from edgeloop.config.section import _Section


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
