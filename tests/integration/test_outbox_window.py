"""The edge's outbox never queues predictions behind paho's in-flight window, even when the broker
stops acknowledging: paho would rescan every unacknowledged message on each PUBACK."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from tests.integration.conftest import wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt_transport import MqttTransport
from edgeloop.adapters.transport import Inbox
from edgeloop.config import load_settings

pytestmark = pytest.mark.integration


def test_a_broker_that_stops_acknowledging_holds_the_edge_back_within_the_window(tmp_path: Path) -> None:
    with MosquittoBroker() as broker:
        settings = load_settings(
            None,
            site="window",
            data_dir=tmp_path,
            **{"broker.url": broker.url, "mlflow.enabled": False, "edge.batch_max": 512},
        )
        transport = MqttTransport(settings, Inbox(100), lambda _payload: None, client_id="edge-window")
        transport.start()
        window = transport.outbox.client.max_inflight_messages
        batch = [(f"edgeloop/window/dev-{i:03d}/prediction", b"{}") for i in range(512)]
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)  # the broker takes no more packets, so acknowledges none
        try:
            sent, most, deadline = 0, 0, time.monotonic() + 2.0
            while time.monotonic() < deadline:
                if transport.busy:  # what the edge's loop asks before it takes the next batch
                    time.sleep(0.005)
                    continue
                refused, failed, _ = transport.publish(batch)
                assert (refused, failed) == ([], 0)
                sent += len(batch)
                most = max(most, transport.outbox.outgoing)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert sent >= len(batch)  # it published until the window was nearly full, then waited
        assert most <= window, f"{most} predictions unacknowledged with an in-flight window of {window}"
        wait_until(lambda: transport.outbox.outgoing == 0, 15, "every prediction acknowledged after the thaw")
        assert transport.close()
