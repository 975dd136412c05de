"""What a bench run is parameterised by: the CLI's options as one value."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BenchOptions:
    """Everything a bench run is parameterised by (the CLI's options)."""

    devices: int = 1000
    qos: list[int] = field(default_factory=lambda: [1, 0])
    broker: str | None = None
    rate: float | None = None  # fixed mode: measure only at this rate (no ceiling/max/search)
    ceiling_seconds: float = 4.0
    max_seconds: float = 5.0
    step_seconds: float = 5.0
    steps: int = 4
    latency_rate: float = 5000.0
    latency_seconds: float = 8.0
    during_retrain: bool = False
    retrain_rate: float = 5000.0
    warmup_rate: float = 5000.0
    train_model: bool = True
    candidates: list[str] | None = None  # model.candidates of the edge (None: the default list)
    window: int = 2000
    seed: int = 0
    interval: float = 5.0
    mlflow: bool = False
    # False: the edge without issue 8's delivery guarantees (bench/unreliable.py), to measure their cost
    reliability: bool = True
    keep: bool = False
    # --broker nats: the NATS JetStream windows after the Mosquitto ones (see bench/nats_run.py)
    nats: bool = False
    nats_replicas: list[int] = field(default_factory=lambda: [1, 2, 3])
    nats_partitions: int = 6
    nats_load: str = "nats"  # "nats": nats-py core publishes; "mqtt": paho to the NATS MQTT listener
    overload_factor: float = 1.5  # the overload window's rate: this times the highest rate answered
    overload_seconds: float = 6.0
