"""The NATS JetStream transport on a private nats-server run from the shipped deploy/nats config.

Devices speak MQTT to the server's MQTT listener with their own users; the edge (in a thread) reads
the partitioned JetStream stream; an MQTT client receives the predictions on the documented topics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.faults.conftest import count_answers
from tests.integration.conftest import wait_until
from tests.integration.nats_support import (
    DETERMINISTIC,
    EDGE_PASSWORD,
    MqttDevices,
    PredictionSink,
    device_names,
    reference_forecasts,
    reference_settings,
    start_nats,
    train_champion,
)

from edgeloop.adapters.nats_server import NatsServer
from edgeloop.config import Settings, load_settings
from edgeloop.service.edge import EdgeService

pytestmark = pytest.mark.integration

PARTITIONS = 4
DEVICES = device_names(6)


@pytest.fixture
def nats_site(site: str) -> str:
    return site.replace(".", "_")


@pytest.fixture
def server(nats_site: str) -> Iterator[NatsServer]:
    srv = start_nats(nats_site, PARTITIONS, DEVICES)
    yield srv
    srv.close()


def edge_settings(server: NatsServer, site: str, data_dir: Path) -> Settings:
    return load_settings(
        None,
        site=site,
        data_dir=data_dir,
        **{
            **DETERMINISTIC,
            "broker.url": server.url,
            "broker.username": "edge",
            "broker.password": EDGE_PASSWORD,
            "broker.partitions": PARTITIONS,
            "broker.client_id": f"edge-{site}",
            "store.flush_interval": 0.05,
            "edge.model_poll_interval": 0.5,
        },
    )


def value(answer: dict[str, Any]) -> float:
    return float(answer["predictions"]["voc_ppb"]["value"])


def test_nats_edge_answers_each_reading_once_and_hands_state_to_its_successor(
    server: NatsServer, nats_site: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    train_champion(data_dir / "models")
    settings = edge_settings(server, nats_site, data_dir)
    sink = PredictionSink(server, nats_site)
    devices = MqttDevices(server, nats_site, DEVICES)
    edge = EdgeService(settings).start()
    try:
        assert edge.ready.wait(30), "edge did not come up"
        assert edge.transport.kind == "nats"
        for seq in range(1, 31):
            devices.publish_round(seq)
        devices.wait_acked()
        # Authorisation: a device may publish only its own telemetry. dev-001 claiming dev-000's
        # topic is refused by the server (the MQTT listener still acknowledges it), so never answered.
        forged = devices.publish_as(
            "dev-001", f"edgeloop/{nats_site}/dev-000/telemetry", orjson.dumps({"ts": 1, "seq": 999})
        )
        forged.wait_for_publish(10)
        wait_until(lambda: sink.count() >= 6 * 30, 60, "every reading answered")
        time.sleep(0.5)
        answered, lost, duplicated = count_answers(
            {d: set(s) for d, s in devices.sent.items()}, sink.answers()
        )
        assert (answered, lost, duplicated) == (180, 0, 0)
        assert not [a for a in sink.answers() if a["seq"] == 999]
        assert set(sink.topics) == {f"edgeloop/{nats_site}/{d}/prediction" for d in DEVICES}

        # A clean stop; readings sent while no edge runs wait in the stream.
        edge.stop()
        for seq in range(31, 41):
            devices.publish_round(seq)
        devices.wait_acked()
        successor = EdgeService(edge_settings(server, nats_site, tmp_path / "data2")).start()
        try:
            assert successor.ready.wait(30)
            wait_until(lambda: sink.count() >= 6 * 40, 60, "the successor to answer the backlog")
            time.sleep(0.5)
            # The successor rebuilt the state from the stream: it replayed the 180 answered readings.
            assert successor.stats.rebuilt == 180
            assert sum(successor.transport.replayed.values()) == 180  # type: ignore[attr-defined]
        finally:
            successor.stop()
    finally:
        edge.stop()
        devices.close()
        sink.close()
    answers = sink.answers()
    answered, lost, duplicated = count_answers({d: set(s) for d, s in devices.sent.items()}, answers)
    assert (answered, lost, duplicated) == (240, 0, 0)
    # The successor had no champion (another data dir): it served persistence, so compare the first
    # edge's answers with the reference engine on the same readings.
    expected = reference_forecasts(reference_settings(data_dir, nats_site), devices.order)
    first = [a for a in answers if a["seq"] <= 30]
    mismatches = [a for a in first if abs(value(a) - expected[(a["device"], a["seq"])]) > 1e-9]
    assert mismatches == []
