"""Prometheus metrics of the edge (served by :mod:`edgeloop.service.health` on ``edge.metrics_port``)."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from edgeloop.scopes import parse_label, parse_scope
from edgeloop.telemetry.schema import EVENT_KINDS, REJECT_REASONS

if TYPE_CHECKING:
    from edgeloop.engine.engine import Engine

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
# A labelled series is born at its first increment, and increase() cannot see that first step: an alert
# on "3 rollbacks in 6 h" would fire at the fourth. Every known label value is exported at 0 from the start.
for _kind in EVENT_KINDS:
    EVENTS.labels(kind=_kind)
for _reason in (*REJECT_REASONS, "duplicate"):
    DROPPED.labels(reason=_reason)
RETRAINS = Counter("edgeloop_retrains_requested_total", "Retrains requested", ["trigger"])
SWAPS = Counter("edgeloop_model_swaps_total", "Models hot-swapped into service")
MODEL_LOAD_FAILURES = Counter("edgeloop_model_load_failures_total", "Model versions refused at load")
STORE_ERRORS = Counter("edgeloop_store_errors_total", "Store writes or prunes that failed (retried)", ["op"])
STORE_ROWS_DROPPED = Counter(
    "edgeloop_store_rows_dropped_total", "Rows dropped because the store could not keep up or write"
)
SNAPSHOT_ERRORS = Counter("edgeloop_snapshot_errors_total", "State snapshots that could not be written")
# Read at scrape time from the message loop's heartbeat, by the HTTP thread: a stuck loop cannot stop it
# growing, unlike the counters the loop itself increments (received, predictions).
LOOP_AGE = Gauge(
    "edgeloop_loop_last_pass_age_seconds",
    "Seconds since the message loop's last pass (0 until the loop starts); grows while the loop is stuck",
)
BATCH_SECONDS = Histogram(
    "edgeloop_batch_seconds",
    "Engine time per batch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

# Per target, not per device: a fleet of thousands of devices must not become thousands of series.
SCOPE_RMSE = Gauge(
    "edgeloop_rolling_rmse",
    "Mean over the target's devices of the rolling RMSE of what serves them, and of persistence",
    ["target", "forecaster"],
)
SCOPE_DEVICES = Gauge("edgeloop_devices", "Devices of a target by status", ["target", "status"])
SERVING_VERSION = Gauge(
    "edgeloop_serving_version", "Version number of the fleet model serving a target (0: none)", ["target"]
)
DEVICE_MODELS = Gauge(
    "edgeloop_device_models", "Devices of a target served by a model of their own", ["target"]
)


def update_scope_gauges(engine: Engine) -> None:
    """Refresh the per-target gauges from the engine (called with the status snapshot, ~1/s)."""
    model_sum: dict[str, float] = defaultdict(float)
    persist_sum: dict[str, float] = defaultdict(float)
    counted: dict[str, int] = defaultdict(int)
    statuses: dict[str, dict[str, int]] = {t: dict.fromkeys(GAUGE_STATUSES, 0) for t in engine.targets}
    for (_, target), track in engine.tracks.items():
        status = "demoted" if track.demoted else track.status
        statuses[target][status] = statuses[target].get(status, 0) + 1
        model, persistence = track.model_rmse.value, track.persist_rmse.value
        if model is not None and persistence is not None:
            model_sum[target] += model
            persist_sum[target] += persistence
            counted[target] += 1
    for target in engine.targets:
        n = counted[target]
        SCOPE_RMSE.labels(target=target, forecaster="model").set(model_sum[target] / n if n else float("nan"))
        SCOPE_RMSE.labels(target=target, forecaster="persistence").set(
            persist_sum[target] / n if n else float("nan")
        )
        for status, count in statuses[target].items():
            SCOPE_DEVICES.labels(target=target, status=status).set(count)
        fleet = engine.serving.get(target)
        SERVING_VERSION.labels(target=target).set(_version_number(fleet.model.label) if fleet else 0)
        DEVICE_MODELS.labels(target=target).set(
            sum(
                1
                for scope in engine.serving
                if parse_scope(scope)[0] == target and parse_scope(scope)[1] is not None
            )
        )


GAUGE_STATUSES = ("healthy", "drifting", "retraining", "probation", "rolled_back", "demoted")


def _version_number(label: str) -> int:
    try:
        return parse_label(label)[1]
    except ValueError:
        return 0
