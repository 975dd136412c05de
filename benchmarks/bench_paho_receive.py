"""CPU the edge's MQTT input connection spends per QoS 1 reading, with and without batched receive.

A publisher process sends ``--messages`` QoS 1 telemetry messages through a private Mosquitto to this
process, which receives them as the edge does: ``MqttTransport`` (the edge's paho client, manual
acks) puts them into an ``Inbox`` and a consumer thread takes them in batches and acknowledges them
with ``transport.ack``. Each round measures this process's CPU time (all its threads) from the
publisher's start until every message is acknowledged, divided by the messages, and the same for
paho's network thread of the input connection alone (the receive path). Rounds alternate paho's
per-message path and ``paho_internals.deliver_batches`` (which also reports the messages per read it
handed over). CPU time, not wall time, because the machine may be shared:

    PYTHONPATH=src python benchmarks/bench_paho_receive.py [--messages 50000] [--rounds 3] [--rate 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgeloop.adapters import mqtt_client
from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt_transport import MqttTransport
from edgeloop.adapters.paho_internals import deliver_batches
from edgeloop.adapters.publish_decode import Delivery
from edgeloop.adapters.transport import Inbox, Received
from edgeloop.config import Settings

SITE = "bench"
DEVICES = 1000
PAYLOAD = b'{"device": "dev-%04d", "seq": %d, "ts": 1700000000.0, "voc_ppb": 180.2, "temp_c": 21.5}'


def publish(host: str, port: int, messages: int, rate: float, protocol: str) -> None:
    """The publisher process: ``messages`` QoS 1 readings, as fast as possible or at ``rate`` per s."""
    acked = threading.Semaphore(0)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{os.getpid()}",
        protocol=mqtt_client.PROTOCOLS[protocol],  # type: ignore[index,unused-ignore]
    )
    client.max_inflight_messages_set(mqtt_client.MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *_: acked.release()
    client.connect(host, port)
    client.loop_start()
    start = time.perf_counter()
    for k in range(messages):
        if rate and k % 100 == 0:
            ahead = k / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
        device = k % DEVICES
        topic = f"edgeloop/{SITE}/dev-{device:04d}/telemetry"
        client.publish(topic, PAYLOAD % (device, k // DEVICES), qos=1)
    for _ in range(messages):
        acked.acquire()
    client.disconnect()
    client.loop_stop()


def receive_round(
    broker: MosquittoBroker, args: argparse.Namespace, batched: bool, k: int
) -> dict[str, float]:
    settings = Settings(site=SITE, broker=broker.settings(qos=1, session_expiry=0))
    inbox = Inbox(10_000)
    transport = MqttTransport(
        settings,
        inbox,
        lambda _b: None,
        client_id=f"bench-recv-{k}",
        protocol=args.protocol,
        batch_receive=batched,
    )
    reads = 0
    if batched:
        hook = transport._on_messages

        def counted(messages: list[Delivery]) -> None:
            nonlocal reads
            reads += 1
            hook(messages)

        assert deliver_batches(transport.session.client, counted), "paho version not verified"
    transport.start()
    transport.subscribe()
    done = threading.Event()
    got = 0

    def consume() -> None:
        nonlocal got
        queue = inbox.queue
        while got < args.messages:
            batch: list[Received] = [queue.get()]
            while len(batch) < 1000 and not queue.empty():
                batch.append(queue.get_nowait())
            transport.ack(batch)
            got += len(batch)
        done.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    # paho's network thread of the input connection: the receive path alone (Linux thread CPU clock)
    network = transport.session.client._thread
    assert network is not None and network.ident is not None
    clock = time.pthread_getcpuclockid(network.ident)
    cpu, wall, receiving = time.process_time(), time.perf_counter(), time.clock_gettime(clock)
    command = [sys.executable, __file__, "--publish", broker.host, str(broker.port), "--rate", str(args.rate)]
    command += ["--messages", str(args.messages), "--protocol", args.protocol]
    publisher = subprocess.Popen(command)
    finished = done.wait(600)
    receiving = time.clock_gettime(clock) - receiving
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    publisher.wait(60)
    transport.close()
    if not finished:
        raise SystemExit(f"only {got} of {args.messages} messages arrived")
    n = args.messages
    figures = {
        "us_cpu_per_msg": 1e6 * cpu / n,
        "us_network_thread": 1e6 * receiving / n,
        "msg_per_s": n / wall,
    }
    if reads:
        figures["msgs_per_batch"] = args.messages / reads
    return figures


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    load = f", load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"{platform.system()} {platform.machine()}, {model or 'cpu ?'}, "
        f"{os.cpu_count()} logical cores{load}, "
        f"Python {platform.python_version()}, paho-mqtt {paho.mqtt.__version__}"
    )


def compare(
    rounds: int,
    names: tuple[str, str],
    run_round: Callable[[bool, int], dict[str, float]],
    figures: Sequence[tuple[str, str]],
    *,
    verb: str,
    digits: int,
) -> None:
    """Run ``rounds`` rounds of paho's path (``names[0]``) and ours (``names[1]``), alternating which
    goes first so a busy machine slows both alike; print each round, then the medians per figure."""
    base, other = names
    results: dict[str, list[dict[str, float]]] = {base: [], other: []}
    width = max(map(len, names)) + 1
    for k in range(rounds):
        for name in names if k % 2 == 0 else names[::-1]:
            round_figures = run_round(name == other, k)
            results[name].append(round_figures)
            cells = "  ".join(f"{f} {v:,.{digits}f}" for f, v in round_figures.items())
            print(f"round {k + 1} {name:{width}}{cells}")
    for figure, what in figures:
        median: dict[str, Any] = {
            name: statistics.median(r[figure] for r in runs) for name, runs in results.items()
        }
        saved = 1 - median[other] / median[base]
        print(
            f"median CPU per QoS 1 message {verb}, {what}: {base} {median[base]:.{digits}f} us, "
            f"{other} {median[other]:.{digits}f} us ({100 * saved:.0f}% less)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each path, alternating")
    parser.add_argument("--rate", type=float, default=0, help="messages/s sent (0: as fast as possible)")
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    parser.add_argument("--publish", nargs=2, metavar=("HOST", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        publish(args.publish[0], int(args.publish[1]), args.messages, args.rate, args.protocol)
        return
    print(machine())
    with MosquittoBroker() as broker:
        compare(
            args.rounds,
            ("paho", "batched"),
            lambda batched, k: receive_round(broker, args, batched, k),
            (("us_cpu_per_msg", "process"), ("us_network_thread", "paho network thread")),
            verb="received",
            digits=1,
        )


if __name__ == "__main__":
    main()
