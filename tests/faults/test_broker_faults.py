"""Broker faults against the real edge process and a real private Mosquitto with persistence.

The edge runs with the default broker config: shared subscription on, persistent session, stable
client id. Readings and predictions travel at QoS 1; the test's publisher and prediction sink keep
persistent sessions too, so what is counted as lost was lost by the edge or the broker, not by them.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.faults.broker_traffic import EdgeFactory, Publisher, Sink, edge_env, traffic
from tests.faults.conftest import EdgeProcess, count_answers, report

from edgeloop.adapters.broker import MosquittoBroker, find_free_port, mosquitto_binary

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="needs the mosquitto binary")


@pytest.fixture
def site() -> str:
    return f"bf-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(persistence=True, autosave_interval=1).start()
    yield b
    b.stop()


def processed(edge: EdgeProcess) -> int:
    """Readings the edge's engine answered, from its shutdown line (the edge must have stopped)."""
    return sum(int(n) for n in re.findall(r"edge stopped: (\d+) processed", edge.log()))


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def settle(sink: Sink, publisher: Publisher, timeout: float) -> tuple[int, int, int]:
    """Wait until every reading is answered (or ``timeout``), then a little for late duplicates."""
    wait_for(lambda: len(sink) >= publisher.count, timeout)
    time.sleep(1.0)
    return count_answers(publisher.sent, sink.answers())


def restart_scenario(
    broker: MosquittoBroker, site: str, tmp_path: Path, edge_process: EdgeFactory, sig: signal.Signals
) -> dict[str, Any]:
    """Readings before, during (buffered by the devices, as a device does while its broker is away)
    and after a broker restart; the devices reconnect once the edge has subscribed again."""
    with traffic(broker, site, tmp_path, edge_process, devices=20) as t:
        edge, sink, pub = t.edge, t.sink, t.pub
        pub.start(rate=400)
        time.sleep(2.0)  # before
        pub.stop()
        pub.session.close(drain_timeout=10)  # every reading so far is with the broker
        broker.kill(sig)
        pub.buffer(400)  # during: one second's worth
        broker.start()
        restarted = time.monotonic()
        wait_for(lambda: "subscribed again" in edge.log(), 30)  # counted below if it never comes
        resubscribed = time.monotonic() - restarted
        pub.reconnect()
        pub.start(rate=400)
        time.sleep(2.0)  # after
        pub.stop()
        answered, lost, duplicated = settle(sink, pub, 30)
        assert edge.alive()
        assert edge.stop() == 0
        return {
            "published": pub.count,
            "answered": answered,
            "lost": lost,
            "duplicated": duplicated,
            "recovery_s": resubscribed,
            "log": edge.log(),
            "processed": processed(edge),
            "resent": sink.resent(),
        }


def check_restart(got: dict[str, Any], scenario: str) -> None:
    report(
        scenario,
        **{k: got[k] for k in ("published", "answered", "lost", "duplicated", "recovery_s")},
        note=f"edge answered {got['processed']} readings once each; duplicates are identical QoS 1 resends",
    )
    assert "session present: True" in got["log"]  # the broker restored the session ...
    assert got["lost"] == 0  # ... but not its $share subscription: the edge subscribed again
    # Each reading was answered once by the edge; what the consumer saw twice was the same
    # prediction resent by paho after the restart (its PUBACK lost), which QoS 1 allows.
    assert got["processed"] == got["published"]
    assert got["duplicated"] == got["resent"]


def test_broker_sigterm_restart_with_persistence(
    broker: MosquittoBroker, site: str, tmp_path: Path, edge_process: EdgeFactory
) -> None:
    got = restart_scenario(broker, site, tmp_path, edge_process, signal.SIGTERM)
    check_restart(got, "broker SIGTERM restart (persistence, shared subscription)")


def test_broker_sigkill_restart(
    broker: MosquittoBroker, site: str, tmp_path: Path, edge_process: EdgeFactory
) -> None:
    got = restart_scenario(broker, site, tmp_path, edge_process, signal.SIGKILL)
    check_restart(got, "broker SIGKILL restart (persistence, autosave 1 s)")


def test_burst_is_answered_with_bounded_memory(
    broker: MosquittoBroker, site: str, tmp_path: Path, edge_process: EdgeFactory
) -> None:
    total = 100_000
    rss: list[float] = []
    sampling = threading.Event()

    def sample(edge: EdgeProcess) -> None:
        while not sampling.is_set():
            rss.append(edge.rss_mb())
            time.sleep(0.2)

    with traffic(broker, site, tmp_path, edge_process, devices=1000) as t:
        edge, sink, pub = t.edge, t.sink, t.pub
        pub.publish(2000)  # warm up: every device seen once, lag windows full
        assert wait_for(lambda: len(sink) >= 2000, 30)
        baseline = edge.rss_mb()
        sampler = threading.Thread(target=sample, args=(edge,), daemon=True)
        sampler.start()
        started = time.monotonic()
        pub.publish(total)
        published_s = time.monotonic() - started
        answered, lost, duplicated = settle(sink, pub, 180)
        drained_s = time.monotonic() - started
        sampling.set()
        sampler.join()
        peak = max(rss)
        report(
            "burst of 100,000 QoS 1 readings, 1,000 devices",
            published=pub.count,
            answered=answered,
            lost=lost,
            duplicated=duplicated,
            note=(
                f"published in {published_s:.1f} s ({total / published_s:,.0f}/s), answered in "
                f"{drained_s:.1f} s ({total / drained_s:,.0f}/s); "
                f"edge RSS {baseline:.0f} -> peak {peak:.0f} MB"
            ),
        )
        assert edge.alive()
        assert lost == 0 and duplicated == 0
        assert peak < baseline + 150, f"edge RSS grew from {baseline:.0f} MB to {peak:.0f} MB"


def test_two_edges_with_one_client_id_say_why(
    broker: MosquittoBroker, site: str, tmp_path: Path, edge_process: EdgeFactory
) -> None:
    first = edge_process(edge_env(broker, site, tmp_path / "a"))
    second = edge_process(edge_env(broker, site, tmp_path / "b"), start=False)
    second.start(wait_ready=None)
    started = time.monotonic()
    hint = "another client connected with client id"  # both the 142 and the inferred message
    assert wait_for(lambda: hint in first.log() or hint in second.log(), 20), first.log()[-2000:]
    noticed = time.monotonic() - started
    line = next(ln for ln in (first.log() + second.log()).splitlines() if hint in ln)
    assert f"edgeloop-edge-{site}" in line and "broker.client_id" in line
    time.sleep(3)  # the pair backs off instead of evicting each other several times a second
    kicks = (first.log() + second.log()).count(hint)
    report(
        "two edges with one client id",
        published=0,
        answered=0,
        lost=0,
        duplicated=0,
        recovery_s=noticed,
        note=f"the log names the cause; {kicks} takeovers in the first ~{noticed + 3:.0f} s",
    )
    assert kicks <= 12
    assert first.alive() and second.alive()


def test_sigusr1_prints_every_threads_stack_and_the_edge_goes_on(
    broker: MosquittoBroker, site: str, tmp_path: Path, edge_process: EdgeFactory
) -> None:
    """A seemingly stuck edge can be looked into without stopping it (``kill -USR1 <pid>``)."""
    edge = edge_process(edge_env(broker, site, tmp_path / "data"))
    edge.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
    assert wait_for(lambda: "Current thread" in edge.log(), 10), edge.log()[-2000:]
    log = edge.log()
    assert "edgeloop-edge" in log or "in run" in log  # the message loop's frame is among them
    assert log.count("Thread 0x") >= 2  # paho's network threads and the store writer too
    assert edge.alive()
    assert edge.stop() == 0


def test_edge_waits_for_a_broker_that_starts_later(
    site: str, tmp_path: Path, edge_process: EdgeFactory
) -> None:
    late = MosquittoBroker(port=find_free_port(), persistence=True)
    env = edge_env(late, site, tmp_path / "data")
    edge = edge_process(env, start=False)
    edge.start(wait_ready=None)
    try:
        edge.wait_log("Retrying in", 15)
        time.sleep(2.0)
        assert edge.alive()
        late.start()
        up = time.monotonic()
        edge.wait_log("edge up", 30)
        recovery = time.monotonic() - up
        sink = Sink(late, site)
        pub = Publisher(late, site, devices=10)
        pub.publish(500)
        answered, lost, duplicated = settle(sink, pub, 30)
        pub.close()
        sink.close()
        report(
            "broker not up when the edge starts",
            published=pub.count,
            answered=answered,
            lost=lost,
            duplicated=duplicated,
            recovery_s=recovery,
        )
        assert lost == 0 and duplicated == 0
    finally:
        edge.stop()
        late.stop()


def test_readings_answered_before_a_restart_are_not_answered_again(
    broker: MosquittoBroker, site: str, tmp_path: Path, edge_process: EdgeFactory
) -> None:
    # What the broker does when an acknowledgement was lost with the connection or the process, and
    # what a device does when it resends unacknowledged readings: the next run gets them again.
    with traffic(broker, site, tmp_path, edge_process, devices=20) as t:
        env, edge, sink, pub = t.env, t.edge, t.sink, t.pub
        pub.publish(400)
        assert wait_for(lambda: len(sink) >= 400, 30)
        assert edge.stop() == 0
        second = edge_process(env)
        made = pub.count
        pub.count = 0
        pub.publish(400)  # the same 400 readings (device, seq) again ...
        pub.count = made
        pub.publish(200)  # ... and 200 new ones
        answered, lost, duplicated = settle(sink, pub, 30)
        assert second.stop() == 0
        stopped = re.findall(r"edge stopped: (\d+) processed, (\d+) dropped", second.log())
        report(
            "readings answered before a restart delivered again",
            published=pub.count,
            answered=answered,
            lost=lost,
            duplicated=duplicated,
            note=f"400 sent twice; second run (processed, dropped): {stopped}",
        )
        assert (answered, lost, duplicated) == (600, 0, 0)
        assert stopped == [("200", "400")]


def test_edge_sigterm_mid_stream_then_restart(
    broker: MosquittoBroker, site: str, tmp_path: Path, edge_process: EdgeFactory
) -> None:
    with traffic(broker, site, tmp_path, edge_process, devices=50) as t:
        env, edge, sink, pub = t.env, t.edge, t.sink, t.pub
        pub.start(rate=2500)
        time.sleep(2.0)
        assert edge.stop() == 0
        stopped = time.monotonic()
        time.sleep(1.0)
        second = edge_process(env)
        recovery = time.monotonic() - stopped
        time.sleep(2.0)
        pub.stop()
        answered, lost, duplicated = settle(sink, pub, 30)
        left = sum(int(n) for n in re.findall(r"(\d+) readings left unacknowledged", edge.log()))
        report(
            "edge SIGTERM mid-stream, then restart",
            published=pub.count,
            answered=answered,
            lost=lost,
            duplicated=duplicated,
            recovery_s=recovery,
            note=f"{left} readings left unacknowledged at shutdown, answered by the next run",
        )
        assert second.alive()
        assert lost == 0 and duplicated == 0
