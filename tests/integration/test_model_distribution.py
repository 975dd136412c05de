"""Signed champions over a real Mosquitto (``distribution.mode: bus``): no shared folder.

A trainer (its own data dir and store) trains, signs and publishes; an edge (its own data dir)
verifies, caches and serves within seconds. A model signed with another key, or with one byte
altered, is refused and reported while the old one keeps serving; an edge restarted while the
broker is down, and whose broker came back without the retained models, serves from its cache.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from tests.integration.conftest import BackgroundStream, Collector, bus_settings, events_of, wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.store import SampleRow, Store
from edgeloop.config import Settings
from edgeloop.engine.features import training_pairs
from edgeloop.models.forecasters import LinearForecaster
from edgeloop.models.modelfile import save_model
from edgeloop.registry.bus import make_bundle, models_topic
from edgeloop.registry.local import LocalRegistry
from edgeloop.registry.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, Signer
from edgeloop.retrain.service import TrainerService
from edgeloop.scopes import version_label
from edgeloop.service.edge import EdgeService

pytestmark = pytest.mark.integration
SCOPE = "voc_ppb"


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    b = MosquittoBroker().start()  # its own: this test stops and restarts it
    yield b
    b.stop()


class RawCollector:
    def __init__(self, broker: MosquittoBroker, topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.session = MqttSession(broker.settings(), role="raw", on_message=self._on)
        self.session.start()
        self.session.subscribe([topic_filter], qos=1)

    def _on(self, message: Any) -> None:
        self.messages.append((message.topic, bytes(message.payload)))

    def close(self) -> None:
        self.session.close()


def seed_store(path: Path, n: int = 600) -> None:
    store = Store(path, retention_rows=100_000)
    rng = np.random.default_rng(0)
    rows = [
        SampleRow(
            d,
            SCOPE,
            1_700_000_000 + 60 * i,
            i,
            200 + 40 * np.sin(i / 9) + rng.normal(0, 1),
            None,
            None,
            None,
            None,
        )
        for d in ("dev-000", "dev-001")
        for i in range(n)
    ]
    store.write(samples=rows)
    store.close()


def rogue_bundle(tmp_path: Path, version: int) -> bytes:
    """A perfectly good model, signed with a key the edge does not trust."""
    y = np.asarray([100 + ((i * 7) % 13) for i in range(300)], dtype=float)
    model = LinearForecaster(5).fit(*training_pairs(y, 5))
    meta = {"scope": SCOPE, "target": SCOPE, "version": version, "label": version_label(SCOPE, version)}
    d = save_model(LocalRegistry(tmp_path / "rogue").version_dir(SCOPE, version), model, meta)
    return make_bundle(Signer.generate(), d, epoch=2**62)[1]  # however new it claims to be


def serving(edge: EdgeService) -> str | None:
    s = edge.engine.serving.get(SCOPE)
    return s.model.label if s is not None else None


def test_trainer_publishes_edge_verifies_serves_refuses_tampered_and_restarts_from_cache(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    site = "dist-" + uuid.uuid4().hex[:8]
    keys = tmp_path / "keys"
    Signer.generate().write(keys)

    def settings(role: str, **extra: Any) -> Settings:
        more = {"broker.connect_wait": 30, "model.candidates": ["linear"], **extra}
        return bus_settings(broker, site, tmp_path / role, f"{role}-{site}", **more)

    (tmp_path / "trainer").mkdir()
    seed_store(tmp_path / "trainer" / "edgeloop.db")
    trainer = TrainerService(
        settings("trainer", **{"distribution.signing_key_file": keys / PRIVATE_KEY_FILE})
    )
    threading.Thread(target=trainer.run, daemon=True).start()
    edge_settings = settings("edge", **{"distribution.public_key_file": keys / PUBLIC_KEY_FILE})
    edge = EdgeService(edge_settings).start()
    events = Collector(broker, f"edgeloop/{site}/events")
    models = RawCollector(broker, models_topic(site) + "/+")
    predictions = Collector(broker, f"edgeloop/{site}/+/prediction")
    stream = BackgroundStream(broker, site)
    edge2: EdgeService | None = None
    try:
        assert trainer.ready.wait(20) and edge.ready.wait(20)
        request = {"scope": SCOPE, "trigger": "manual", "request_id": "dist-1"}
        requester = MqttSession(broker.settings(), role="request").start()
        requester.publish(f"edgeloop/{site}/control/retrain", orjson.dumps(request), qos=1)
        requester.close()
        wait_until(lambda: events_of(events, "model_promoted", SCOPE), 30, "the promotion")
        promoted_at = time.monotonic()
        label = events_of(events, "model_promoted", SCOPE)[0]["version"]
        wait_until(lambda: serving(edge) == label, 10, "the edge to serve the published model")
        serving_s = time.monotonic() - promoted_at
        wait_until(
            lambda: any(p["predictions"][SCOPE]["model"] == label for p in predictions.payloads()),
            10,
            "a prediction by the published model",
        )
        print(f"DISTRIBUTION promotion -> serving on the edge: {serving_s:.3f} s")
        assert serving_s < 5
        assert (tmp_path / "edge" / "models" / SCOPE / "v1" / "model.txt").exists()  # the cache
        ((_, genuine),) = models.messages
        assert not events_of(events, "model_load_failed")

        def refused_by_edge(payload: bytes, why: str) -> None:
            before = len(events_of(events, "model_load_failed", SCOPE))
            sender = MqttSession(broker.settings(), role="attacker").start()
            sender.publish(models_topic(site, SCOPE), payload, qos=1, retain=True)
            sender.close()
            wait_until(
                lambda: len(events_of(events, "model_load_failed", SCOPE)) > before, 10, f"refusal: {why}"
            )
            failed = events_of(events, "model_load_failed", SCOPE)[-1]
            assert why in failed["reason"] and f"serving {label} instead" in failed["reason"]
            mark = len(predictions.payloads())
            wait_until(lambda: len(predictions.payloads()) > mark + 20, 10, "more predictions")
            assert {p["predictions"][SCOPE]["model"] for p in predictions.payloads()[mark:]} == {label}
            assert serving(edge) == label

        refused_by_edge(rogue_bundle(tmp_path, 2), "signature does not verify")
        data = orjson.loads(genuine)
        i = data["model"].index(".") + 1  # a digit of the first coefficient
        data["model"] = data["model"][:i] + str((int(data["model"][i]) + 1) % 10) + data["model"][i + 1 :]
        refused_by_edge(orjson.dumps(data), "SHA-256 mismatch")
        assert not (tmp_path / "edge" / "models" / SCOPE / "v2").exists()
        assert LocalRegistry(tmp_path / "edge" / "models").champion(SCOPE) == 1

        # Restart while the broker is down; it comes back without any retained model (no persistence).
        edge.stop()
        stream.close()
        broker.kill()
        edge2 = EdgeService(edge_settings).start()
        time.sleep(1.0)
        broker.start()
        assert edge2.ready.wait(30), "the restarted edge did not connect"
        assert serving(edge2) == label
        mark = len(predictions.payloads())
        stream = BackgroundStream(broker, site)
        wait_until(lambda: len(predictions.payloads()) > mark + 20, 20, "predictions after the restart")
        assert {p["predictions"][SCOPE]["model"] for p in predictions.payloads()[mark + 5 :]} == {label}
    finally:
        stream.close()
        trainer.stop()
        edge.stop()
        if edge2 is not None:
            edge2.stop()
        for c in (events, predictions, models):
            c.close()
