"""Prometheus metrics of the edge (served by :mod:`edgeloop.service.health` on ``edge.metrics_port``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECEIVED = Counter("edgeloop_messages_received_total", "Telemetry messages received")
PREDICTIONS = Counter("edgeloop_predictions_total", "Predictions published")
DROPPED = Counter(
    "edgeloop_messages_dropped_total",
    "Telemetry dropped (malformed, no room, or a duplicate answered before)",
    ["reason"],
)
EVICTED = Counter("edgeloop_devices_evicted_total", "Idle devices whose state was freed for new ones")
PUBLISH_FAILURES = Counter(
    "edgeloop_publish_failures_total", "Prediction publishes the MQTT client refused (retried at QoS>0)"
)
EVENTS = Counter("edgeloop_events_total", "Drift and model events", ["kind"])
RETRAINS = Counter("edgeloop_retrains_requested_total", "Retrains requested", ["trigger"])
SWAPS = Counter("edgeloop_model_swaps_total", "Models hot-swapped into service")
MODEL_LOAD_FAILURES = Counter("edgeloop_model_load_failures_total", "Model versions refused at load")
STORE_ERRORS = Counter("edgeloop_store_errors_total", "Store writes or prunes that failed (retried)", ["op"])
STORE_ROWS_DROPPED = Counter(
    "edgeloop_store_rows_dropped_total", "Rows dropped because the store could not keep up or write"
)
SNAPSHOT_ERRORS = Counter("edgeloop_snapshot_errors_total", "State snapshots that could not be written")
BATCH_SECONDS = Histogram(
    "edgeloop_batch_seconds",
    "Engine time per batch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
