"""`edgeloop bench --broker nats` end to end at a tiny scale: a private mosquitto and a private
nats-server from deploy/nats, every NATS window (ceilings, one edge's max, search, latency and
overload, the aggregate of two replicas), the targets and the report.

No timing assertions: only the shape of the results and that nothing is lost or duplicated.
"""

from __future__ import annotations

import pytest
from tests.integration.conftest import tiny_bench_options

from edgeloop.bench.report import format_report
from edgeloop.bench.run import Bench

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_tiny_nats_bench_run_measures_every_window_without_loss() -> None:
    options = tiny_bench_options(
        nats=True,
        nats_replicas=[1, 2],
        nats_partitions=4,
        overload_seconds=1.5,
    )
    result = Bench(options).run()

    nats = result["nats"]
    assert nats["nats_server"] and nats["partitions"] == 4
    assert set(nats["ceiling"]) == {"core-mqtt", "core", "jetstream", "jetstream-each"}
    for ceiling in nats["ceiling"].values():
        assert ceiling["received"] > 0 and ceiling["rate"] > 0 and not ceiling["stalled"]
        assert "broker" in ceiling["cpu_pct"] and "loadgen" in ceiling["cpu_pct"]

    one = nats["edges"]["1"]
    assert "error" not in one, one.get("error")
    assert one["max"]["answered"] > 0 and one["max"]["lost"] == 0 and one["max"]["duplicated"] == 0
    assert len(one["steps"]) == 1 and "passed" in one["steps"][0]
    latency = one["latency"]
    assert latency["sent"] >= 300  # 2 s at 200/s
    assert latency["answered"] == latency["sent"] and latency["duplicated"] == 0
    over = one["overload"]
    assert over["offered_rate"] > one["max"]["answer_rate"]
    assert over["sent"] > 0 and over["lost"] == 0 and over["duplicated"] == 0
    assert over["backlog_at_stop"] >= 0 and over["drain_s"] >= 0

    two = nats["edges"]["2"]
    assert "error" not in two, two.get("error")
    assert len(two["pids"]) == 2
    assert two["max"]["answered"] > 0 and two["max"]["lost"] == 0 and two["max"]["duplicated"] == 0
    assert {"edge", "edge1", "broker", "loadgen", "collector"} <= set(two["max"]["cpu_pct"])

    names = [t["target"] for t in result["targets"]]
    assert any("2.5x Mosquitto QoS 1" in n for n in names)
    assert any("do-nothing durable consumer" in n for n in names)
    overload_targets = [t for t in result["targets"] if t["target"].startswith("NATS overload")]
    assert overload_targets and all(t["met"] for t in overload_targets)
    report = format_report(result)
    assert "NATS JetStream" in report and "aggregate, closed loop" in report and "limit:" in report
