"""`edgeloop bench` end to end at a tiny scale (real mosquitto, the edge as a process, every phase), its
analysis, and its measuring subscriber against mosquitto.

No timing assertions: only the shape of the results and that nothing is lost at a low rate.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from tests.integration.conftest import tiny_bench_options

from edgeloop.adapters.broker import MosquittoBroker, mosquitto_binary
from edgeloop.bench.analysis import analyze, passed
from edgeloop.bench.cli import bench
from edgeloop.bench.edge import EdgeProcess, edge_config
from edgeloop.bench.lean import LeanSubscriber
from edgeloop.bench.loadgen import SendLog
from edgeloop.bench.options import BenchOptions
from edgeloop.bench.report import format_report
from edgeloop.bench.run import Bench
from edgeloop.config import BrokerSettings, load_settings

integration = pytest.mark.integration


def test_analyze_counts_lost_duplicated_and_latency() -> None:
    sent = SendLog(first=100, sent_at=np.array([0.0, 1.0, 2.0, 3.0]), started=0.0, ended=4.0)
    # 100 answered twice, 101 never, 102 and 103 once; 99 belongs to an earlier run.
    ks = np.array([100, 102, 100, 103, 99])
    ts = np.array([0.010, 2.020, 0.500, 3.030, 0.1])
    r = analyze(sent, ks, ts)
    assert (r["sent"], r["answered"], r["lost"], r["duplicated"]) == (4, 3, 1, 1)
    assert r["latency_ms"]["max"] == pytest.approx(30.0)
    assert r["latency_ms"]["p50"] == pytest.approx(20.0)
    assert not passed(r, offered=1.0)
    window = analyze(sent, ks, ts, between=(1.5, 3.5), origin=0.0)
    assert (window["sent"], window["lost"], window["duplicated"]) == (2, 0, 0)
    assert [row[1] for row in window["timeline"]] == [1, 1]


def test_the_model_serving_is_not_hidden_by_devices_the_floor_demoted() -> None:
    # The recorder keeps each change of label in the prediction stream; a demoted device's answers
    # (persistence) interleave with the model's.
    stream = [(0.0, 0, "persistence"), (1.0, 50, "voc_ppb:v1"), (1.1, 51, "persistence")]
    stream += [(1.2, 52, "voc_ppb:v1"), (1.3, 53, "persistence")]

    def serving(models: list[tuple[float, int, str]]) -> str:
        return EdgeProcess.current_label(SimpleNamespace(models=models))  # type: ignore[arg-type]

    assert serving(stream) == "voc_ppb:v1"  # not the last prediction's label
    assert serving(stream[:1]) == serving([]) == "persistence"  # no model yet


def test_cli_defaults_match_bench_options() -> None:
    fields = dataclasses.fields(BenchOptions)
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    checked = 0
    for name, param in inspect.signature(bench).parameters.items():
        if name in defaults:
            assert param.default == defaults[name], name
            checked += 1
    assert checked >= 15
    assert inspect.signature(bench).parameters["no_model"].default is (not BenchOptions().train_model)


def test_edge_config_is_accepted_by_the_edge_and_pins_what_the_bench_needs(tmp_path: Path) -> None:
    broker = BrokerSettings(url="mqtt://127.0.0.1:1884").model_dump(mode="json")
    options = BenchOptions(devices=10, mlflow=False)
    config = edge_config(site="s1", data_dir=tmp_path, broker=broker, qos=0, group="g1", options=options)
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    assert (settings.site, settings.data_dir) == ("s1", tmp_path)
    assert (settings.broker.port, settings.broker.qos, settings.broker.shared_group) == (1884, 0, "g1")
    assert settings.broker.session_expiry == 0
    assert settings.edge.model_poll_interval == 1.0
    assert settings.model.min_train_samples == 10 * 50  # the first model after 50 readings per device
    assert not settings.mlflow.enabled
    untrained = edge_config(
        site="s1",
        data_dir=tmp_path,
        broker=broker,
        qos=0,
        group="g1",
        options=BenchOptions(train_model=False),
    )
    assert untrained["model"]["min_train_samples"] >= 10**12


@integration
@pytest.mark.parametrize("qos", [0, 1])
def test_lean_subscriber_receives_every_message_once_and_intact(
    mosquitto: MosquittoBroker, unique_topic: str, qos: int
) -> None:
    # Sizes cross the 1-, 2- and 3-byte remaining-length encodings. At QoS 1 the broker sends at most
    # 1,000 unacknowledged messages: without the subscriber's PUBACKs the last ones would never arrive.
    sizes = [0, 1, 100, 126, 127, 128, 300, 16_383, 16_384, 70_000] * 20 + [10] * 1_100
    payloads = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    got: list[tuple[bytes, bytes]] = []
    sub = LeanSubscriber(mosquitto.settings()).start()
    sub.subscribe([f"{unique_topic}/+"], qos)
    stop = threading.Event()
    thread = threading.Thread(target=sub.run, args=(lambda t, p, _now: got.append((t, p)), stop.is_set))
    thread.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        for i, payload in enumerate(payloads):
            pub.publish(f"{unique_topic}/{i % 7}", payload, qos=qos).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while len(got) < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a duplicate would arrive meanwhile
    finally:
        pub.disconnect()
        pub.loop_stop()
        stop.set()
        thread.join(5)
        sub.close()
    assert [p for _t, p in got] == payloads
    assert [t for t, _p in got] == [f"{unique_topic}/{i % 7}".encode() for i in range(len(payloads))]
    assert sub.received == len(payloads)


@integration
@pytest.mark.timeout(180)
def test_tiny_bench_run_reports_every_phase_without_loss() -> None:
    if mosquitto_binary() is None:
        pytest.skip("no mosquitto binary on PATH or in /usr/sbin (apt-get install mosquitto)")
    result = Bench(tiny_bench_options()).run()

    assert {"machine", "options", "qos", "targets", "seconds", "broker"} <= result.keys()
    assert result["machine"]["cores_logical"] >= 1
    run = result["qos"]["1"]
    assert set(run["ceiling"]) == {"paho", "lean"}
    for ceiling in run["ceiling"].values():
        assert ceiling["received"] > 0 and ceiling["rate"] > 0
    assert run["max"]["answered"] > 0 and run["max"]["lost"] == 0
    assert len(run["steps"]) == 1 and "passed" in run["steps"][0]
    latency = run["latency"]
    assert latency["sent"] >= 300  # 2 s at 200/s
    assert latency["lost"] == 0 and latency["duplicated"] == 0
    assert latency["answered"] == latency["sent"]
    assert set(latency["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert latency["latency_ms"]["p50"] is not None and latency["timeline"]
    assert "edge" in latency["cpu_pct"] and latency["rss_mb"]["edge"] > 0
    assert run["model"] == "persistence"  # train_model=False: no first training
    assert run["edge"]["rss_peak_mb"]["edge"] > 0
    assert any(t["target"].startswith("QoS 1: p99") for t in result["targets"])
    report = format_report(result)
    assert "latency@200" in report and "targets:" in report
