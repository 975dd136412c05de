"""Training can fail; the loop cannot: worker and trainer killed for real, hostile requests, edge kill -9.

Every test runs ``edgeloop edge`` (and ``edgeloop trainer``) as real processes against a private
Mosquitto, publishes simulator readings and counts the predictions that come back.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from tests.faults.conftest import EdgeProcess, report
from tests.faults.training_support import (
    Readings,
    TrainerProcess,
    base_env,
    events_of,
    seeded_data_dir,
    settle,
    trainer_env,
)
from tests.integration.conftest import Collector, wait_until

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession


@pytest.fixture
def site(request: pytest.FixtureRequest) -> str:
    return request.node.name[:24].replace("[", "_").replace("]", "_") + "-" + uuid.uuid4().hex[:6]


def workers(edge: EdgeProcess) -> list[psutil.Process]:
    found = []
    for child in edge.children():
        try:
            if "edgeloop.retrain.worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def wait_worker(edge: EdgeProcess, timeout: float, not_pid: int | None = None) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [w for w in workers(edge) if w.pid != not_pid]
        if live:
            return live[0]
        time.sleep(0.05)
    raise AssertionError(f"no retrain worker under the edge within {timeout:g} s:\n{edge.log()[-2000:]}")


def test_worker_killed_idle_and_mid_training_is_replaced_and_the_scope_gets_its_model(
    mosquitto: MosquittoBroker, edge_process: Callable[..., EdgeProcess], tmp_path: Path, site: str
) -> None:
    # MLflow on: its start-up makes each training take seconds, so the second kill lands mid-training.
    edge = edge_process(base_env(mosquitto, tmp_path / "data", site, EDGELOOP_MLFLOW_ENABLED="true"))
    events = Collector(mosquitto, f"edgeloop/{site}/events")
    predictions = Collector(mosquitto, f"edgeloop/{site}/+/prediction")
    first = wait_worker(edge, 10)
    first.send_signal(signal.SIGKILL)  # idle worker: the OOM killer's favourite target
    readings = Readings(mosquitto, site).start()
    edge.wait_log("retrain of voc_ppb dispatched (attempt 1", 30)
    second = wait_worker(edge, 10, not_pid=first.pid)
    second.send_signal(signal.SIGKILL)  # now mid-request
    killed_at = time.monotonic()
    wait_until(lambda: events_of(events, "model_promoted", "voc_ppb"), 50, "the fleet model")
    recovery = time.monotonic() - killed_at
    published, answered, lost, duplicated = settle(readings, predictions)
    assert edge.alive(), edge.log()[-3000:]
    (failed,) = events_of(events, "retrain_failed", "voc_ppb")
    assert "worker died (killed by SIGKILL)" in failed["reason"] and failed["metrics"]["attempt"] == 1
    (requested,) = events_of(events, "retrain_requested", "voc_ppb")
    (promoted,) = events_of(events, "model_promoted", "voc_ppb")
    assert promoted["request_id"] == requested["request_id"] == failed["request_id"]
    assert "attempt 2 of 3" in edge.log()
    third = wait_worker(edge, 5)
    assert third.pid not in (first.pid, second.pid)
    assert lost == 0 and duplicated == 0
    served = [p for p in predictions.payloads() if p["predictions"]["voc_ppb"]["model"] == "voc_ppb:v1"]
    assert served, "the promoted model never answered"
    report(
        "training worker kill -9 (idle, then mid-training)",
        published=published,
        answered=answered,
        lost=lost,
        duplicated=duplicated,
        recovery_s=recovery,
        note="retried with backoff; model promoted on attempt 2",
    )
    readings.close()
    events.close()
    predictions.close()


def test_trainer_killed_mid_training_the_edge_re_requests_and_a_restarted_trainer_finishes(
    mosquitto: MosquittoBroker, edge_process: Callable[..., EdgeProcess], tmp_path: Path, site: str
) -> None:
    data = tmp_path / "data"
    env = base_env(
        mosquitto,
        data,
        site,
        EDGELOOP_EDGE_RETRAIN="mqtt",
        EDGELOOP_RETRAIN_TIMEOUT="6",
        EDGELOOP_RETRAIN_MAX_ATTEMPTS="5",
    )
    trainer_env_ = trainer_env(env, f"trainer-{site}", mlflow=True)
    trainer = TrainerProcess(trainer_env_, tmp_path / "trainer.log").start()
    edge = edge_process(env)
    events = Collector(mosquitto, f"edgeloop/{site}/events")
    predictions = Collector(mosquitto, f"edgeloop/{site}/+/prediction")
    readings = Readings(mosquitto, site).start()
    try:
        trainer.wait_log("retraining voc_ppb", 40)
        trainer.kill9()
        killed_at = time.monotonic()
        edge.wait_log("timed out after 6 s", 20)
        trainer = TrainerProcess(trainer_env_, tmp_path / "trainer.log").start()
        wait_until(lambda: events_of(events, "model_promoted", "voc_ppb"), 50, "the fleet model")
        recovery = time.monotonic() - killed_at
        published, answered, lost, duplicated = settle(readings, predictions)
        assert edge.alive() and trainer.alive(), edge.log()[-3000:]
        (requested,) = events_of(events, "retrain_requested", "voc_ppb")
        rid = requested["request_id"]
        timeouts = [e for e in events_of(events, "retrain_failed", "voc_ppb") if "timed out" in e["reason"]]
        assert timeouts and timeouts[0]["request_id"] == rid
        assert "attempt 2 of 5" in edge.log(), "the edge did not re-request"
        promoted = events_of(events, "model_promoted", "voc_ppb")
        assert promoted[0]["request_id"] == rid
        assert len({e["version"] for e in promoted}) == 1, "the request was trained twice"
        # The killed trainer may have saved a version before it died: the number is the promoted one's.
        label = promoted[0]["version"]
        wait_until(lambda: f"now serving {label}" in edge.log(), 10, "the edge to serve the model")
        assert lost == 0 and duplicated == 0
        report(
            "trainer kill -9 mid-training (edge.retrain: mqtt)",
            published=published,
            answered=answered,
            lost=lost,
            duplicated=duplicated,
            recovery_s=recovery,
            note="edge re-requested after retrain.timeout; restarted trainer answered",
        )
    finally:
        trainer.stop()
        readings.close()
        events.close()
        predictions.close()


def test_trainer_survives_hostile_requests_and_unusual_scope_names(
    mosquitto: MosquittoBroker, tmp_path: Path, site: str
) -> None:
    long_device = "x" * 300  # longer than a file name may be
    data = seeded_data_dir(tmp_path / "data", ["Küche", "dev 1", long_device])
    env = trainer_env(base_env(mosquitto, data, site), f"trainer-{site}", mlflow=True)
    trainer = TrainerProcess(env, tmp_path / "trainer.log").start()
    events = Collector(mosquitto, f"edgeloop/{site}/events")
    sender = MqttSession(mosquitto.settings(), role="hostile")
    sender.start()
    topic = f"edgeloop/{site}/control/retrain"
    requests: list[bytes | dict[str, Any]] = [
        b"{not json",
        b"[1, 2]",
        {"scope": 42, "request_id": "r-int"},
        {"scope": "voc_ppb@bad\x01id", "request_id": "r-ctl"},
        {"scope": "voc_ppb@dev-9", "request_id": "r-since", "since_ts": {"a": 1}},
        {"scope": "voc_ppb@nodata", "request_id": "r-nodata"},
        {"scope": "voc_ppb@Küche", "request_id": "r-kueche"},
        {"scope": "voc_ppb@dev 1", "request_id": "r-space"},
        {"scope": f"voc_ppb@{long_device}", "request_id": "r-long"},
        {"scope": "voc_ppb@nodata", "request_id": "r-nodata"},  # re-sent: answered again, not retrained
        {"scope": "voc_ppb@Küche", "request_id": "r-last"},
    ]
    started = time.monotonic()
    try:
        for r in requests:
            sender.publish(topic, r if isinstance(r, bytes) else orjson.dumps(r), qos=1)
        final = ("retrain_finished", "retrain_failed", "model_promoted", "model_rejected")

        def answers(rid: str) -> list[dict[str, Any]]:
            return [
                e
                for e in events.payloads()
                if e.get("request_id") == rid
                and (e["kind"] in final)
                and (e["kind"] != "retrain_finished" or not e["metrics"])
            ]

        wait_until(lambda: answers("r-last"), 55, "the trainer to answer the last request")
        assert trainer.alive(), trainer.log()[-3000:]
        for rid in ("r-int", "r-ctl", "r-since"):
            (answer,) = answers(rid)
            assert answer["kind"] == "retrain_finished" and "refused" in answer["reason"], answer
        assert (
            "not enough" in answers("r-nodata")[0]["reason"]
            or "need more" in answers("r-nodata")[0]["reason"]
        )
        assert len(answers("r-nodata")) == 2 and trainer.log().count("was answered already") == 1
        # Every request that names itself got an answer, whatever the registry made of its scope:
        # a verdict, or retrain_failed when training raised (e.g. a file name too long).
        for rid in ("r-kueche", "r-space", "r-long", "r-last"):
            assert answers(rid), f"{rid} got no answer"
        verdicts = {rid: answers(rid)[0]["kind"] for rid in ("r-kueche", "r-space")}
        if set(verdicts.values()) <= {"model_promoted", "model_rejected"}:
            # The scopes reached MLflow: their registered-model names must have been accepted.
            assert "MLflow logging failed" not in trainer.log()
        with_id = [str(r["request_id"]) for r in requests if isinstance(r, dict)]
        answered = sum(bool(answers(rid)) for rid in with_id)
        report(
            "trainer: malformed and hostile retrain requests",
            published=len(with_id),
            answered=answered,
            lost=len(with_id) - answered,
            duplicated=0,
            recovery_s=time.monotonic() - started,
            note=f"2 without an id refused in the log; bad types, control chars refused by event; "
            f"Küche/dev 1: {sorted(set(verdicts.values()))}",
        )
    finally:
        trainer.stop()
        sender.close()
        events.close()


def test_edge_kill_9_leaves_no_orphan_processes(
    mosquitto: MosquittoBroker, edge_process: Callable[..., EdgeProcess], tmp_path: Path, site: str
) -> None:
    # MLflow on: the training just dispatched runs for seconds, so the edge dies while its worker works.
    edge = edge_process(base_env(mosquitto, tmp_path / "data", site, EDGELOOP_MLFLOW_ENABLED="true"))
    predictions = Collector(mosquitto, f"edgeloop/{site}/+/prediction")
    readings = Readings(mosquitto, site).start()
    try:
        edge.wait_log("retrain of voc_ppb dispatched (attempt 1", 30)
        published, answered, lost, duplicated = settle(readings, predictions)
        worker = wait_worker(edge, 10)
        family = [worker, *edge.children()]
        pids = {p.pid for p in family}
        assert "model_promoted" not in edge.log(), "the training ended before the kill"
        edge.kill9()
        killed_at = time.monotonic()

        def gone() -> bool:
            for p in family:
                try:
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        return False
                except psutil.NoSuchProcess:
                    continue
            return True

        wait_until(gone, 5, f"the edge's children {sorted(pids)} to exit")
        assert lost == 0 and duplicated == 0
        report(
            "edge kill -9 while its worker trains: orphans",
            published=published,
            answered=answered,
            lost=lost,
            duplicated=duplicated,
            recovery_s=time.monotonic() - killed_at,
            note=f"{len(pids)} child process(es) of the edge gone after kill -9 (recovery: until gone)",
        )
    finally:
        readings.close()
        predictions.close()
