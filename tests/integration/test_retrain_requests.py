"""Retrain requests over MQTT with nobody answering: retried with backoff, then released."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.integration.conftest import Collector, SimStream, events_of, wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.config import Settings
from edgeloop.retrain.dispatch import request_from_json
from edgeloop.service.edge import EdgeService
from edgeloop.telemetry.simulator import Simulator

pytestmark = pytest.mark.integration


def test_unanswered_requests_are_resent_with_one_id_then_released(
    mosquitto: MosquittoBroker,
    make_settings: Callable[..., Settings],
    run_edge: Callable[[Settings], EdgeService],
) -> None:
    settings = make_settings(
        **{
            "edge.retrain": "mqtt",
            "model.min_train_samples": 200,
            "retrain.timeout": 1.0,
            "retrain.max_attempts": 3,
            "retrain.backoff": 0.5,
        }
    )
    events = Collector(mosquitto, f"edgeloop/{settings.site}/events")
    requests = Collector(mosquitto, f"edgeloop/{settings.site}/control/retrain")
    edge = run_edge(settings)
    stream = SimStream(mosquitto, settings.site, Simulator(2, seed=1))
    stream.publish_in_step(100, edge)
    wait_until(lambda: len(events_of(events, "retrain_failed", "voc_ppb")) >= 3, 20, "three failed attempts")
    failed = events_of(events, "retrain_failed", "voc_ppb")
    assert [f["metrics"]["attempt"] for f in failed] == [1, 2, 3]
    assert [f["metrics"]["retry_in_s"] for f in failed] == [0.5, 1.0, None]
    assert "giving up" in failed[-1]["reason"]
    sent = [request_from_json(_raw(p)) for p in requests.payloads()]
    assert [a.number for a in sent] == [1, 2, 3]
    assert {a.request_id for a in sent} == {failed[0]["request_id"]}
    wait_until(lambda: "voc_ppb" not in edge.engine.pending, 5, "the scope to be released")
    assert not edge.retrains.pending("voc_ppb")
    # Released, not forgotten: with twice the data the engine asks again, under a new id.
    stream.publish_in_step(150, edge)
    wait_until(lambda: len(events_of(events, "retrain_requested", "voc_ppb")) == 2, 10, "a second request")
    second = events_of(events, "retrain_requested", "voc_ppb")[1]["request_id"]
    assert second and second != failed[0]["request_id"]
    stream.close()
    events.close()
    requests.close()


def _raw(payload: object) -> bytes:
    import orjson

    return orjson.dumps(payload)
