"""``edgeloop simulate`` against NATS's MQTT listener (MQTT 3.1.1 only) and one NATS edge.

A private nats-server from the shipped config (mapping, JetStream, MQTT listener, per-device users
plus a simulator user); the simulator runs as a user runs it, a subprocess; every reading it
publishes is answered once by the edge. Spoken as MQTT 5 (the default), the listener refuses it, and
the command says which option to use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.conftest import wait_until
from tests.integration.nats_support import (
    DEPLOY,
    DETERMINISTIC,
    EDGE_PASSWORD,
    OBSERVER_PASSWORD,
    PredictionSink,
)

from edgeloop.adapters.nats_server import NatsServer, render_users, simulator_user
from edgeloop.config import load_settings
from edgeloop.service.edge import EdgeService

pytestmark = pytest.mark.integration

DEVICES = 3
STEPS = 40


@pytest.fixture
def nats_site(site: str) -> str:
    return site.replace(".", "_")


@pytest.fixture
def server(nats_site: str) -> Iterator[NatsServer]:
    users = render_users(
        (DEPLOY / "users.conf").read_text(),
        site=nats_site,
        devices={},
        edge_password=EDGE_PASSWORD,
        observer_password=OBSERVER_PASSWORD,
    )
    users = users.replace("\n]\n", "\n" + simulator_user(nats_site, "simulator", "sim-secret") + "\n]\n")
    template = (DEPLOY / "nats-server.conf").read_text()
    srv = NatsServer.from_template(template, site=nats_site, partitions=2, users=users).start()
    yield srv
    srv.close()


def simulate(server: NatsServer, site: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGELOOP_SITE": site,
        "EDGELOOP_BROKER_USERNAME": "simulator",
        "EDGELOOP_BROKER_PASSWORD": "sim-secret",
        "EDGELOOP_BROKER_CONNECT_WAIT": "0",
    }
    args = ["simulate", "--broker", server.mqtt_url, "--devices", str(DEVICES), "--steps", str(STEPS)]
    return subprocess.run(
        [sys.executable, "-m", "edgeloop", *args, "--rate", "20", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_simulate_speaks_mqtt_311_to_the_nats_listener_and_a_nats_edge_answers(
    server: NatsServer, nats_site: str, tmp_path: Path
) -> None:
    settings = load_settings(
        None,
        site=nats_site,
        data_dir=tmp_path / "edge",
        **{
            **DETERMINISTIC,
            "broker.url": server.url,
            "broker.username": "edge",
            "broker.password": EDGE_PASSWORD,
            "broker.partitions": 2,
            "broker.client_id": f"edge-{nats_site}",
            "store.flush_interval": 0.05,
        },
    )
    edge = EdgeService(settings).start()
    sink = PredictionSink(server, nats_site)
    try:
        assert edge.ready.wait(60), "the NATS edge did not start"
        refused = simulate(server, nats_site)  # MQTT 5, the default
        assert refused.returncode != 0
        assert "--mqtt-version 3.1.1" in refused.stderr, refused.stderr
        assert sink.count() == 0

        done = simulate(server, nats_site, "--mqtt-version", "3.1.1")
        assert done.returncode == 0, done.stderr
        assert f"published {DEVICES * STEPS} readings" in done.stdout, done.stdout
        wait_until(lambda: sink.count() >= DEVICES * STEPS, 60, "a prediction for every reading")
        answers = sink.answers()
        keys = [(a["device"], a["seq"]) for a in answers]
        assert len(keys) == len(set(keys)) == DEVICES * STEPS
        assert {d for d, _ in keys} == {f"dev-{i:03d}" for i in range(DEVICES)}
    finally:
        sink.close()
        edge.stop()
