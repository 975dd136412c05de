"""Per-target Prometheus gauges: bounded by targets and statuses, whatever the number of devices."""

from __future__ import annotations

from prometheus_client import REGISTRY

from edgeloop.config import load_settings
from edgeloop.service import metrics
from edgeloop.service.edge import build_engine
from edgeloop.telemetry.schema import Telemetry


def test_gauges_summarise_the_fleet_per_target() -> None:
    engine = build_engine(load_settings(None, **{"model.targets": ["voc_ppb"]}), auto_train=False)
    for step in range(150):
        batch = [Telemetry(f"d{d}", 1e9 + 60 * step, step, {"voc_ppb": 100.0 + d}) for d in range(300)]
        engine.process(batch)
    metrics.update_scope_gauges(engine)
    devices = REGISTRY.get_sample_value("edgeloop_devices", {"target": "voc_ppb", "status": "healthy"})
    assert devices == 300
    assert REGISTRY.get_sample_value("edgeloop_serving_version", {"target": "voc_ppb"}) == 0
    assert REGISTRY.get_sample_value("edgeloop_device_models", {"target": "voc_ppb"}) == 0
    series = [
        s
        for m in REGISTRY.collect()
        if m.name in ("edgeloop_devices", "edgeloop_rolling_rmse", "edgeloop_serving_version")
        for s in m.samples
        if s.labels.get("target") == "voc_ppb"
    ]
    assert len(series) <= 2 + 6 + 1  # no per-device series
