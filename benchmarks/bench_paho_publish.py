"""CPU the edge's prediction connection spends per QoS 1 message published, paho's loop vs the lean path.

This process publishes ``--messages`` QoS 1 predictions through a private Mosquitto as the edge's
outbox does: an ``MqttSession`` (the edge's paho client) takes them in batches of ``--batch`` with
``publish_many``, and the next batch waits while a whole batch would not fit in the in-flight window
(the edge's ``MqttTransport.busy``). A round ends when the broker has acknowledged every message.
Each round measures the CPU time of the publishing thread (the edge's loop thread) and of the whole
process (with paho's network thread writing and reading PUBACKs), divided by the messages. Rounds
alternate paho's ``publish`` per message and ``paho_internals``' lean path
(:mod:`edgeloop.adapters.publish_encode`). CPU time, not wall time, because the machine may be shared:

    PYTHONPATH=src python benchmarks/bench_paho_publish.py [--messages 100000] [--rounds 3] [--protocol 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_paho_receive import compare, machine

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.paho_internals import _BatchingClient

DEVICES = 1000
PAYLOAD = (
    b'{"device": "dev-%04d", "seq": %d, "ts": 1700000000.0, "score": 0.4187, "alarm": false, "model": "m-3"}'
)


def publish_round(broker: MosquittoBroker, args: argparse.Namespace, lean: bool, k: int) -> dict[str, float]:
    session = MqttSession(
        broker.settings(qos=1, session_expiry=0),
        role="edge-out",
        client_id=f"bench-out-{k}-{lean}",
        protocol=args.protocol,
    )
    client = session.client
    assert isinstance(client, _BatchingClient), "paho version not verified"
    client.lean_publish = lean
    session.start()
    n, size = args.messages, args.batch
    messages = [
        (f"edgeloop/bench/dev-{i % DEVICES:04d}/prediction", PAYLOAD % (i % DEVICES, i // DEVICES))
        for i in range(n)
    ]
    window = client.max_inflight_messages
    cpu, wall, thread = time.process_time(), time.perf_counter(), time.thread_time()
    for start in range(0, n, size):
        while session.outgoing > max(window - size, 1):
            time.sleep(0.0005)
        session.publish_many(messages[start : start + size], 1)
    publishing = time.thread_time() - thread  # the waits above sleep: CPU of publishing and bookkeeping
    deadline = time.monotonic() + 120
    while session.outgoing and time.monotonic() < deadline:
        time.sleep(0.001)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    left = session.outgoing
    session.close()
    if left:
        raise SystemExit(f"{left} of {n} messages were not acknowledged")
    return {"us_publishing_thread": 1e6 * publishing / n, "us_process": 1e6 * cpu / n, "msg_per_s": n / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each path, alternating")
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    args = parser.parse_args()
    print(machine())
    with MosquittoBroker() as broker:
        compare(
            args.rounds,
            ("paho", "lean"),
            lambda lean, k: publish_round(broker, args, lean, k),
            (("us_publishing_thread", "publishing thread"), ("us_process", "process")),
            verb="published",
            digits=2,
        )


if __name__ == "__main__":
    main()
