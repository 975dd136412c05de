"""/metrics, /healthz and /readyz of a real edge against a real broker."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import orjson
import pytest

from edgeloop.config import Settings
from edgeloop.service.edge import EdgeService

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_probes_and_metrics_are_separate_paths(
    make_settings: Callable[..., Settings], run_edge: Callable[[Settings], EdgeService]
) -> None:
    port = free_port()
    edge = run_edge(make_settings(**{"edge.metrics_port": port}))
    code, body = get(port, "/metrics")
    assert code == 200 and b"edgeloop_messages_received_total" in body
    assert b"edgeloop_store_errors_total" in body or b"edgeloop_store_rows_dropped_total" in body
    code, body = get(port, "/healthz")
    assert code == 200 and orjson.loads(body)["store_writer"] is True
    code, body = get(port, "/readyz")
    ready = orjson.loads(body)
    assert code == 200 and ready["connected"] and ready["subscribed"] and ready["registry_read"]
    assert get(port, "/")[0] == 404 and get(port, "/metricsx")[0] == 404

    # A dead store writer fails liveness (and so readiness); the body says which check failed.
    assert edge.writer is not None
    edge.writer.close()
    code, body = get(port, "/healthz")
    assert code == 503 and orjson.loads(body)["store_writer"] is False
    assert get(port, "/readyz")[0] == 503

    # Disconnected from the broker: not ready, still alive as far as the loop goes.
    edge.session.close()
    ready = orjson.loads(get(port, "/readyz")[1])
    assert ready["connected"] is False and ready["ok"] is False


def test_a_busy_metrics_port_is_a_clear_error(make_settings: Callable[..., Settings]) -> None:
    from edgeloop.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        edge = EdgeService(make_settings(**{"edge.metrics_port": taken.getsockname()[1]}))
        with pytest.raises(ConfigError, match=r"edge\.metrics_port"):
            edge.run()
    assert edge.writer is not None and not edge.writer.alive  # what was opened was closed again


def test_a_stalled_loop_fails_liveness(make_settings: Callable[..., Settings]) -> None:
    from edgeloop.service.edge import LOOP_STALL

    edge = EdgeService(make_settings())
    assert edge.liveness()["loop"] is True  # not started yet: starting, not dead
    edge.loop_beat = time.monotonic()
    assert edge.liveness()["loop"] is True
    edge.loop_beat = time.monotonic() - LOOP_STALL - 1
    assert edge.liveness()["loop"] is False
    assert edge.readiness()["alive"] is False
    edge.dispatcher.close()


def loop_age(port: int) -> float:
    body = get(port, "/metrics")[1].decode()
    match = re.search(r"^edgeloop_loop_last_pass_age_seconds (\S+)$", body, re.M)
    assert match, "the loop-age gauge is not exported"
    return float(match.group(1))


def test_a_stuck_loop_shows_in_the_loop_age_gauge(
    make_settings: Callable[..., Settings], run_edge: Callable[[Settings], EdgeService]
) -> None:
    # The alert EdgeloopNoPredictions reads this gauge: counters the stuck loop increments stop moving
    # with it, but the gauge is computed by the HTTP thread at scrape time and keeps growing.
    port = free_port()
    edge = run_edge(make_settings(**{"edge.metrics_port": port}))
    assert wait_for(lambda: loop_age(port) < 2.0)
    release = threading.Event()
    original = edge._handle_control

    def stuck() -> None:  # the loop calls this on every pass: it hangs here as on a blocking call
        release.wait(60)
        original()

    edge._handle_control = stuck  # type: ignore[method-assign]
    try:
        assert wait_for(lambda: loop_age(port) > 3.0)
        assert get(port, "/metrics")[0] == 200  # still scraped: up stays 1, the gauge tells
    finally:
        release.set()
    assert wait_for(lambda: loop_age(port) < 2.0)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False
