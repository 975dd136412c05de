"""Events and predictions a real edge published, through the Logstash field mapping, against the
Elasticsearch index templates (deploy/observability/; no Elasticsearch runs here).

The edge runs as its CLI does in production (a process, ``log_json`` on, MLflow on, local retrain
worker), so the same run also shows that its stderr, training and MLflow included, is JSON only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from tests.integration.conftest import Collector, SimStream, wait_until
from tests.integration.elk_documents import (
    conformance_errors,
    mqtt_topics,
    pipeline_documents,
    pipeline_fields,
    template,
)

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.telemetry.simulator import Simulator

pytestmark = pytest.mark.integration

DEVICES = 2
STEPS = 1100  # 2,200 readings: past model.min_train_samples below, so the edge trains and promotes


def test_published_events_and_predictions_map_onto_the_index_templates(
    mosquitto: MosquittoBroker, tmp_path: Path, site: str
) -> None:
    topics = mqtt_topics()
    assert topics == ["edgeloop/+/events", "edgeloop/+/+/prediction"]
    # Every field the pipeline keeps is mapped, and every mapped field can come out of the pipeline.
    mapped = set(template("edgeloop-events")["template"]["mappings"]["properties"]) | set(
        template("edgeloop-predictions")["template"]["mappings"]["properties"]
    )
    assert pipeline_fields() == mapped

    collectors = [Collector(mosquitto, t) for t in topics]
    log = tmp_path / "edge.stderr"
    env = {
        **os.environ,
        "EDGELOOP_SITE": site,
        "EDGELOOP_DATA_DIR": str(tmp_path / "data"),
        "EDGELOOP_LOG_JSON": "true",
        "EDGELOOP_MLFLOW_ENABLED": "true",
        "EDGELOOP_MODEL_MIN_TRAIN_SAMPLES": "2000",
    }
    cmd = [sys.executable, "-m", "edgeloop", "edge", "--broker", mosquitto.url]
    with log.open("wb") as err:
        edge = subprocess.Popen(cmd, env=env, stderr=err, stdout=err, start_new_session=True)
    stream = None
    try:
        wait_until(lambda: "edge up" in log.read_text(), 60, "the edge to subscribe")
        stream = SimStream(mosquitto, site, Simulator(DEVICES, seed=11))
        stream.publish(STEPS)
        events, predictions = collectors

        def kinds() -> set[str]:
            return {p["kind"] for p in events.payloads()}

        wait_until(lambda: "model_promoted" in kinds(), 240, "a model trained and promoted")
        wait_until(lambda: len(predictions.payloads()) >= DEVICES * STEPS, 60, "every prediction")
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(60) == 0
    finally:
        if stream is not None:
            stream.close()
        for c in collectors:
            c.close()
        if edge.poll() is None:
            os.killpg(edge.pid, signal.SIGKILL)
            edge.wait()

    per_index: Counter[str] = Counter()
    for collector in collectors:
        for topic, payload in collector.messages:
            index, docs = pipeline_documents(topic, json.dumps(payload).encode())
            for doc in docs:
                assert conformance_errors(doc, index) == [], (topic, payload, doc)
                per_index[index] += 1
    print(f"ELK documents {dict(per_index)} event kinds {sorted(kinds())}")
    assert {"retrain_requested", "retrain_started", "model_promoted"} <= kinds()
    assert per_index["edgeloop-events"] == len(events.payloads())
    assert per_index["edgeloop-predictions"] >= DEVICES * STEPS  # one document per target forecast

    lines = log.read_text().splitlines()
    plain = [line for line in lines if not line.startswith("{") or not isinstance(json.loads(line), dict)]
    # Before MLflow's loggers were routed through the JSON handler, the retrain worker printed
    # "... INFO mlflow.store.db.utils: Creating initial MLflow database tables..." here.
    assert lines and plain == [], plain[:5]
