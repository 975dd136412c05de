"""Prometheus metrics of the edge (served on ``edge.metrics_port`` when set)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECEIVED = Counter("edgeloop_messages_received_total", "Telemetry messages received")
PREDICTIONS = Counter("edgeloop_predictions_total", "Predictions published")
DROPPED = Counter(
    "edgeloop_messages_dropped_total",
    "Telemetry dropped (malformed, or a duplicate answered before)",
    ["reason"],
)
PUBLISH_FAILURES = Counter(
    "edgeloop_publish_failures_total", "Prediction publishes the MQTT client refused (retried at QoS>0)"
)
EVENTS = Counter("edgeloop_events_total", "Drift and model events", ["kind"])
RETRAINS = Counter("edgeloop_retrains_requested_total", "Retrains requested", ["trigger"])
SWAPS = Counter("edgeloop_model_swaps_total", "Models hot-swapped into service")
MODEL_LOAD_FAILURES = Counter("edgeloop_model_load_failures_total", "Model versions refused at load")
BATCH_SECONDS = Histogram(
    "edgeloop_batch_seconds",
    "Engine time per batch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - a metrics endpoint is meant to be scraped
    start_http_server(port, addr=addr)
