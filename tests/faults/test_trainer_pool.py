"""A pool of two trainers shares retrain requests: each trained once, a killed trainer's job finished.

Real ``edgeloop trainer`` and ``edgeloop edge`` processes against a private Mosquitto; the trainer
holding the job is killed with SIGKILL; re-sent requests are answered, not trained again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
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
from edgeloop.registry.local import LocalRegistry
from edgeloop.registry.signing import PRIVATE_KEY_FILE, Signer


@pytest.fixture
def site(request: pytest.FixtureRequest) -> str:
    return request.node.name[:24] + "-" + uuid.uuid4().hex[:6]


class Pools:
    """Starts trainer pools of two, the requests' sender and the events' collector of a test's site;
    :meth:`close` (the fixture's teardown) stops and closes all of them."""

    def __init__(self, mosquitto: MosquittoBroker, tmp_path: Path, site: str) -> None:
        self.mosquitto, self.tmp_path, self.site = mosquitto, tmp_path, site
        self.started: list[TrainerProcess] = []
        self.events = Collector(mosquitto, f"edgeloop/{site}/events")
        self.sender = MqttSession(mosquitto.settings(), role="requests").start()

    def shared(self, env: dict[str, str]) -> list[TrainerProcess]:
        """Two trainers sharing ``env``'s data dir, MLflow on (a kill lands mid-training)."""
        return self._start(
            {name: trainer_env(env, f"trainer-{name}-{self.site}", mlflow=True) for name in "ab"}
        )

    def bus(self) -> list[TrainerProcess]:
        """Two trainers with data dirs of their own (``tmp_path/a``, ``tmp_path/b``, both seeded) that share
        champions signed over the bus."""
        keys = self.tmp_path / "keys"
        Signer.generate().write(keys)
        envs = {}
        for name in "ab":
            data = seeded_data_dir(self.tmp_path / name, ["dev-000", "dev-001"])
            envs[name] = trainer_env(
                base_env(self.mosquitto, data, self.site),
                f"trainer-{name}-{self.site}",
                EDGELOOP_DISTRIBUTION_MODE="bus",
                EDGELOOP_DISTRIBUTION_SIGNING_KEY_FILE=str(keys / PRIVATE_KEY_FILE),
            )
        return self._start(envs)

    def _start(self, envs: dict[str, dict[str, str]]) -> list[TrainerProcess]:
        pool = []
        for name, env in envs.items():
            pool.append(TrainerProcess(env, self.tmp_path / f"trainer-{name}.log").start())
            self.started.append(pool[-1])
        return pool

    def send(self, request: dict[str, object]) -> None:
        """Publish a retrain request, as an edge does."""
        self.sender.publish(f"edgeloop/{self.site}/control/retrain", orjson.dumps(request), qos=1)

    def close(self) -> None:
        for t in self.started:
            t.stop()
        self.sender.close()
        self.events.close()


@pytest.fixture
def pools(mosquitto: MosquittoBroker, tmp_path: Path, site: str) -> Iterator[Pools]:
    made = Pools(mosquitto, tmp_path, site)
    yield made
    made.close()


def trainings(pool: list[TrainerProcess], scope: str) -> int:
    return sum(t.log().count(f"retraining {scope} (") for t in pool)


def test_trainer_holding_the_job_killed_the_other_finishes_it_once(
    mosquitto: MosquittoBroker,
    edge_process: Callable[..., EdgeProcess],
    pools: Pools,
    tmp_path: Path,
    site: str,
) -> None:
    env = base_env(
        mosquitto,
        tmp_path / "data",
        site,
        EDGELOOP_EDGE_RETRAIN="mqtt",
        EDGELOOP_RETRAIN_TIMEOUT="6",
        EDGELOOP_RETRAIN_MAX_ATTEMPTS="5",
    )
    pool = pools.shared(env)
    edge = edge_process(env)
    events = pools.events
    requests = Collector(mosquitto, f"edgeloop/{site}/control/retrain")
    predictions = Collector(mosquitto, f"edgeloop/{site}/+/prediction")
    readings = Readings(mosquitto, site).start()
    try:
        wait_until(lambda: trainings(pool, "voc_ppb") == 1, 40, "a trainer to take the request")
        holder = next(t for t in pool if "retraining voc_ppb (" in t.log())
        other = next(t for t in pool if t is not holder)
        holder.kill9()
        killed_at = time.monotonic()
        wait_until(lambda: events_of(events, "model_promoted", "voc_ppb"), 50, "the fleet model")
        recovery = time.monotonic() - killed_at
        assert "retraining voc_ppb (" in other.log(), "the surviving trainer did not train the request"
        (requested,) = events_of(events, "retrain_requested", "voc_ppb")
        rid = requested["request_id"]
        (promoted,) = events_of(events, "model_promoted", "voc_ppb")
        assert promoted["request_id"] == rid
        assert trainings(pool, "voc_ppb") == 2  # the killed attempt and the one that finished

        # The edge's timeout fires late, or the broker hands the request out again: answered, not retrained.
        sent = [r for r in requests.payloads() if r["request_id"] == rid]
        resend = MqttSession(mosquitto.settings(), role="resend").start()
        resend.publish(f"edgeloop/{site}/control/retrain", orjson.dumps({**sent[-1], "attempt": 9}), qos=1)
        other.wait_log("was answered already", 20)
        resend.close()
        time.sleep(1.0)
        assert trainings(pool, "voc_ppb") == 2, "a finished request was trained again"
        assert {e["version"] for e in events_of(events, "model_promoted", "voc_ppb")} == {promoted["version"]}

        published, answered, lost, duplicated = settle(readings, predictions)
        assert edge.alive() and other.alive(), edge.log()[-3000:]
        assert lost == 0 and duplicated == 0
        label = promoted["version"]
        wait_until(lambda: f"now serving {label}" in edge.log(), 10, "the edge to serve the model")
        report(
            "trainer pool: kill -9 of the trainer holding the job",
            published=published,
            answered=answered,
            lost=lost,
            duplicated=duplicated,
            recovery_s=recovery,
            note="edge re-requested after retrain.timeout; the other pool member trained it once",
        )
    finally:
        readings.close()
        requests.close()
        predictions.close()


def test_a_request_sent_again_while_one_trainer_works_on_it_waits_for_that_answer(
    mosquitto: MosquittoBroker, pools: Pools, tmp_path: Path, site: str
) -> None:
    data = seeded_data_dir(tmp_path / "data", ["dev-000", "dev-001"])
    pool = pools.shared(base_env(mosquitto, data, site))
    events = pools.events
    request = {"scope": "voc_ppb", "trigger": "manual", "request_id": "r-pool-1", "attempt": 1}
    pools.send(request)
    wait_until(lambda: trainings(pool, "voc_ppb") == 1, 30, "a trainer to take the request")
    # Sent again twice while the first trainer works: the shared subscription hands one to the other.
    for attempt in (2, 3):
        pools.send({**request, "attempt": attempt})
    wait_until(
        lambda: len(events_of(events, "model_promoted", "voc_ppb")) >= 3,
        60,
        "three answers (one trained)",
    )
    time.sleep(1.0)
    assert trainings(pool, "voc_ppb") == 1, "the request was trained more than once"
    waited = sum(t.log().count("is being trained by") for t in pool)
    repeated = sum(t.log().count("was answered already") for t in pool)
    assert waited >= 1, "no trainer waited for the one holding the request"
    assert repeated == 2
    promoted = events_of(events, "model_promoted", "voc_ppb")
    assert {e["request_id"] for e in promoted} == {"r-pool-1"}
    assert len({e["version"] for e in promoted}) == 1
    assert all(t.alive() for t in pool)


def test_two_requests_for_one_scope_are_trained_one_after_the_other_with_distinct_versions(
    pools: Pools, tmp_path: Path
) -> None:
    """Trainers with data dirs of their own (bus mode): one scope's versions never collide."""
    pool = pools.bus()
    events = pools.events
    for rid in ("r-edge-1", "r-edge-2"):  # manual: always trained, never answered from another
        pools.send({"scope": "voc_ppb", "trigger": "manual", "request_id": rid})
    verdicts = ("model_promoted", "model_rejected")

    def answered() -> set[str]:
        return {e["request_id"] for e in events.payloads() if e["kind"] in verdicts}

    wait_until(lambda: answered() == {"r-edge-1", "r-edge-2"}, 60, "both requests answered")
    assert trainings(pool, "voc_ppb") == 2
    assert sum(t.log().count("its scope is being trained by") for t in pool) == 1
    versions = [e["version"] for e in events.payloads() if e["kind"] in verdicts]
    assert sorted(versions) == ["voc_ppb:v1", "voc_ppb:v2"]
    for t in pool:
        assert "refused the model message" not in t.log(), t.log()[-2000:]
    # Both trainers hold the champion, whichever of them trained it.
    champion = events_of(events, "model_promoted", "voc_ppb")[-1]["version"]
    v = int(champion.rsplit("v", 1)[1])
    for name in ("a", "b"):
        assert LocalRegistry(tmp_path / name / "models").champion("voc_ppb") == v


def test_the_fleet_model_asked_for_by_two_edges_is_trained_once(pools: Pools) -> None:
    """Two edges ask for the fleet model at once; a pool answers both from one training.

    Each trainer has a data dir of its own (bus mode): whichever does not train learns of the
    training from the other's verdict (or the signed champion it installs). A later request for
    readings newer than that training is trained; one no newer is answered from it again.
    """
    pool = pools.bus()
    events = pools.events
    newest = 1_700_000_000 + 60 * 299  # the newest seeded reading
    finals = ("model_promoted", "model_rejected", "retrain_finished")

    def ask(rid: str, requested_ts: float) -> None:
        pools.send(
            {"scope": "voc_ppb", "trigger": "initial", "request_id": rid, "requested_ts": requested_ts}
        )

    def answer(rid: str) -> dict[str, object] | None:
        got = [
            e
            for e in events.payloads()
            if e.get("request_id") == rid
            and e["kind"] in finals
            and not (e["kind"] == "retrain_finished" and e["metrics"])
        ]
        return got[-1] if got else None

    # The two edges' stream times differ by a few readings (each asks when it has seen enough).
    ask("r-edge-1", newest - 120)
    ask("r-edge-2", newest - 30)
    wait_until(lambda: answer("r-edge-1") and answer("r-edge-2"), 60, "both requests answered")
    time.sleep(1.0)
    assert trainings(pool, "voc_ppb") == 1, "the fleet model was trained twice"
    trained, shared = sorted(
        (answer("r-edge-1"), answer("r-edge-2")), key=lambda e: e["kind"] == "retrain_finished"
    )
    assert trained is not None and shared is not None
    assert trained["kind"] in ("model_promoted", "model_rejected")
    assert shared["kind"] == "retrain_finished" and not shared["metrics"]
    if trained["kind"] == "model_promoted":
        assert shared["version"] == trained["version"] and "answered by" in shared["reason"]
    else:
        assert shared["version"] is None and "was rejected" in shared["reason"]
    assert sum(t.log().count("not training again") for t in pool) == 1

    # Newer readings than that training saw: trained.
    ask("r-later", newest + 3600)
    wait_until(lambda: answer("r-later") is not None, 60, "the later request answered")
    assert answer("r-later")["kind"] in ("model_promoted", "model_rejected")  # type: ignore[index]
    assert trainings(pool, "voc_ppb") == 2
    # No newer than the newest training: answered from it, by whichever trainer takes it.
    ask("r-again", newest)
    wait_until(lambda: answer("r-again") is not None, 30, "the repeated request answered")
    assert answer("r-again")["kind"] == "retrain_finished"  # type: ignore[index]
    assert trainings(pool, "voc_ppb") == 2
    assert all(t.alive() for t in pool)
