"""An operator's ``edgeloop models promote | rollback`` in bus mode reaches an edge on another host.

The CLI runs as a subprocess on the "trainer host" (its own data dir and the signing key); the edge
runs in its own data dir with only the public key, on a real Mosquitto. Each decision must come to
serve on the edge: a promotion, a rollback to an *older* version, and a rollback past the first
version (no champion of its own: persistence serves). A genuine, signed but older decision sent
again (a replay) changes nothing. Without the signing key the command stops with one line and
changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.e2e.test_cli_models import make_versions
from tests.integration.conftest import BackgroundStream, Collector, bus_settings, events_of, wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.registry.bus import models_topic
from edgeloop.registry.local import LocalRegistry
from edgeloop.registry.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, Signer
from edgeloop.service.edge import EdgeService

SCOPE = "voc_ppb"


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    b = MosquittoBroker().start()
    yield b
    b.stop()


class Retained:
    """The newest message on each models topic."""

    def __init__(self, broker: MosquittoBroker, site: str) -> None:
        self.last: dict[str, bytes] = {}
        self.session = MqttSession(broker.settings(), role="retained", on_message=self._on).start()
        self.session.subscribe([models_topic(site) + "/+"], qos=1)

    def _on(self, message: Any) -> None:
        self.last[message.topic] = bytes(message.payload)


def edgeloop(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeloop", *args], env=env, capture_output=True, text=True, timeout=90
    )


def test_cli_decisions_reach_an_edge_over_the_bus_and_a_replay_changes_nothing(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    site = "busdecide-" + uuid.uuid4().hex[:8]
    keys = tmp_path / "keys"
    Signer.generate().write(keys)
    trainer_data = tmp_path / "trainer"
    make_versions(trainer_data, SCOPE, 2)  # v1, v2; v2 is the champion on the trainer host
    trainer_models = LocalRegistry(trainer_data / "models")
    env = {
        **os.environ,
        "EDGELOOP_BROKER_URL": broker.url,
        "EDGELOOP_SITE": site,
        "EDGELOOP_MLFLOW_ENABLED": "false",
        "EDGELOOP_DISTRIBUTION_MODE": "bus",
    }
    signing = {**env, "EDGELOOP_DISTRIBUTION_SIGNING_KEY_FILE": str(keys / PRIVATE_KEY_FILE)}

    def cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return edgeloop("models", *args, "--yes", "--data-dir", str(trainer_data), env=kw.get("env", signing))

    # No signing key here: one line, nothing changed.
    done = cli("rollback", SCOPE, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "distribution.signing_key_file" in done.stderr
    assert "a trainer host" in done.stderr and trainer_models.champion(SCOPE) == 2

    edge_settings = bus_settings(
        broker,
        site,
        tmp_path / "edge",
        f"edge-{site}",
        **{"distribution.public_key_file": keys / PUBLIC_KEY_FILE},
    )
    edge = EdgeService(edge_settings).start()
    events = Collector(broker, f"edgeloop/{site}/events")
    predictions = Collector(broker, f"edgeloop/{site}/+/prediction")
    retained = Retained(broker, site)
    stream = BackgroundStream(broker, site)
    topic = models_topic(site, SCOPE)

    def serving() -> str | None:
        s = edge.engine.serving.get(SCOPE)
        return s.model.label if s is not None else None

    def served_by(label: str) -> None:
        """``label`` serves, and the predictions from now on are by it."""
        own = None if label == "persistence" else label
        wait_until(lambda: serving() == own, 15, f"the edge to serve {label}")
        mark = len(predictions.payloads())
        wait_until(lambda: len(predictions.payloads()) > mark + 20, 15, f"predictions by {label}")
        assert {p["predictions"][SCOPE]["model"] for p in predictions.payloads()[mark + 5 :]} == {label}

    try:
        assert edge.ready.wait(30)
        wait_until(lambda: len(predictions.payloads()) > 5, 20, "the first predictions")
        assert serving() is None  # nothing published yet: persistence

        started = time.monotonic()
        done = cli("promote", "voc_ppb:v1", "--force")
        assert done.returncode == 0, done.stderr
        assert "published voc_ppb:v1 to the edges, signed" in done.stdout, done.stdout
        wait_until(lambda: serving() == "voc_ppb:v1", 15, "the promotion of v1 to reach the edge")
        print(
            f"CLI promote (process start included) -> serving on the edge: {time.monotonic() - started:.2f} s"
        )
        served_by("voc_ppb:v1")

        done = cli("promote", "voc_ppb:v2", "--force")
        assert done.returncode == 0, done.stderr
        served_by("voc_ppb:v2")
        wait_until(
            lambda: orjson.loads(retained.last.get(topic, b"{}")).get("version") == 2, 10, "v2 retained"
        )
        promotion_of_v2 = retained.last[topic]

        # A rollback makes the older v1 champion again: it must install although 1 < 2.
        done = cli("rollback", SCOPE)
        assert done.returncode == 0, done.stderr
        assert "rolled back voc_ppb:v2; now serving voc_ppb:v1" in done.stdout, done.stdout
        served_by("voc_ppb:v1")
        assert LocalRegistry(tmp_path / "edge" / "models").champion(SCOPE) == 1

        # The genuine, signed promotion of v2 sent again: older epoch, ignored, v1 keeps serving.
        replayer = MqttSession(broker.settings(), role="replay").start()
        replayer.publish(topic, promotion_of_v2, qos=1, retain=True).wait_for_publish(5)
        replayer.close()
        wait_until(lambda: retained.last.get(topic) == promotion_of_v2, 10, "the replay to go out")
        time.sleep(1.0)  # several edge loops and model polls
        served_by("voc_ppb:v1")
        assert LocalRegistry(tmp_path / "edge" / "models").champion(SCOPE) == 1
        assert not events_of(events, "model_load_failed")

        # Rolled back past the first version: no champion of its own, persistence serves.
        done = cli("rollback", SCOPE)
        assert done.returncode == 0, done.stderr
        served_by("persistence")
    finally:
        stream.close()
        edge.stop()
        for c in (events, predictions):
            c.close()
        retained.session.close()
