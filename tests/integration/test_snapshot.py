"""State snapshots of a real edge: written atomically, restored at start, ignored (once) when unusable."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from tests.integration.conftest import Collector, wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.snapshot import SnapshotWriter, read_snapshot
from edgeloop.atomic import write_atomic
from edgeloop.config import Settings
from edgeloop.service.edge import EdgeService

pytestmark = pytest.mark.integration


def publish(broker: MosquittoBroker, site: str, n: int, start: int = 0) -> None:
    with MqttSession(broker.settings(), role="test-pub") as pub:
        for seq in range(start, start + n):
            payload = {"device": "d1", "ts": 1_700_000_000 + 60 * seq, "seq": seq, "voc_ppb": 100 + seq % 7}
            pub.publish(f"edgeloop/{site}/d1/telemetry", orjson.dumps(payload), qos=1)


def test_write_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "state" / "edge.json"
    write_atomic(path, b'{"a": 1}')
    write_atomic(path, b'{"a": 2}')
    assert read_snapshot(path) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["edge.json"]
    writer = SnapshotWriter(path)
    for i in range(50):
        writer.submit({"i": i})
    writer.close({"i": "final"})
    assert read_snapshot(path) == {"i": "final"} and writer.errors == 0


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{ not json", "not valid JSON"),
        (b'{"format": "edgeloop-engine-state/999"}', "unknown snapshot format"),
        (b"[1, 2, 3]", "unknown snapshot format"),
    ],
)
def test_an_unusable_snapshot_is_ignored_with_one_warning(
    content: bytes,
    why: str,
    mosquitto: MosquittoBroker,
    make_settings: Callable[..., Settings],
    run_edge: Callable[[Settings], EdgeService],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings()
    probe = EdgeService(settings)
    probe.snapshot_path.parent.mkdir(parents=True)
    probe.snapshot_path.write_bytes(content)
    probe.dispatcher.close()
    with caplog.at_level(logging.WARNING, logger="edgeloop"):
        edge = run_edge(settings)
    warnings = [r.getMessage() for r in caplog.records if "ignored state snapshot" in r.getMessage()]
    assert len(warnings) == 1 and why in warnings[0]
    predictions = Collector(mosquitto, f"edgeloop/{settings.site}/+/prediction")
    publish(mosquitto, settings.site, 20)
    wait_until(lambda: len(predictions.payloads()) == 20, 20, "20 predictions")
    edge.stop()
    # The next snapshot replaces the unusable one.
    assert read_snapshot(edge.snapshot_path)["tracks"][0]["count"] == 20
    predictions.close()


def test_state_survives_a_clean_restart(
    mosquitto: MosquittoBroker,
    make_settings: Callable[..., Settings],
    run_edge: Callable[[Settings], EdgeService],
) -> None:
    settings = make_settings()
    edge = run_edge(settings)
    publish(mosquitto, settings.site, 30)
    wait_until(lambda: edge.stats.processed == 30, 20, "30 readings processed")
    edge.stop()  # the final snapshot is written at shutdown
    again = run_edge(settings)
    track = again.engine.tracks[("d1", "voc_ppb")]
    assert track.count == 30 and track.hist == [100 + s % 7 for s in range(25, 30)]
