"""What the bench's measuring subscriber costs: CPU per received message, per MQTT client.

``python -m edgeloop.bench.instrument`` starts a private mosquitto, publishes simulated telemetry at
a fixed rate with the bench's load generator and lets one subscriber at a time, each in its own
process, receive it; the subscriber's CPU time (user + system) over the run divided by the messages
it received is its cost per message. The subscribers only count, so the figure is the MQTT client's
own cost (the collector adds the same JSON decoding to any of them):

- ``paho-v5``: paho as the edge runs it (:class:`~edgeloop.adapters.mqtt.MqttSession`, MQTT v5,
  network thread); the bench's "paho ceiling" subscriber;
- ``paho-3.1.1``: the same client on MQTT 3.1.1 (no v5 ``Properties`` object per message);
- ``amqtt``: amqtt's asyncio client (MQTT 3.1.1), the other maintained client in the venv;
- ``lean``: :class:`~edgeloop.bench.lean.LeanSubscriber`.

The figures seen are in the docstring of :mod:`edgeloop.bench.lean` and in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import threading
import time
from typing import Any

import psutil

from edgeloop.adapters.broker import MosquittoBroker
from edgeloop.adapters.mqtt import MqttSession
from edgeloop.adapters.topics import topic_for
from edgeloop.bench.lean import LeanSubscriber
from edgeloop.bench.loadgen import LoadGenerator, unique_client_id
from edgeloop.config import BrokerSettings

KINDS = ("paho-v5", "paho-3.1.1", "amqtt", "lean")


def _subscribe(
    kind: str, broker: dict[str, Any], topic: str, qos: int, count: Any, ready: Any, stop: Any
) -> None:
    """A counting subscriber of ``kind`` (a spawned process): subscribes, sets ``ready``, counts into
    ``count`` until ``stop``."""
    settings = BrokerSettings(**broker)

    def on_message(*_args: Any) -> None:
        count.value += 1

    if kind == "lean":
        sub = LeanSubscriber(settings).start()
        sub.subscribe([topic], qos)
        thread = threading.Thread(target=sub.run, args=(on_message, stop.is_set), daemon=True)
        thread.start()
        ready.set()
        stop.wait()
        thread.join(5)
        sub.close()
    elif kind.startswith("paho"):
        session = MqttSession(
            settings,
            role="bench-instrument",
            client_id=unique_client_id("cost"),
            protocol="5" if kind == "paho-v5" else "3.1.1",
        )
        session.on_message = on_message
        session.start()
        session.subscribe([topic], qos=qos)
        ready.set()
        stop.wait()
        session.close()
    else:
        from amqtt.client import MQTTClient  # imported only here: heavy, and only measured

        async def receive() -> None:
            client = MQTTClient(client_id=unique_client_id("cost"))
            await client.connect(f"mqtt://{settings.host}:{settings.port}/")
            await client.subscribe([(topic, qos)])
            ready.set()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    if await client.deliver_message(timeout_duration=0.2) is not None:
                        count.value += 1
            await client.disconnect()

        asyncio.run(receive())


def measure(kind: str, qos: int, broker: MosquittoBroker, *, rate: float, seconds: float) -> dict[str, Any]:
    """One subscriber of ``kind`` receiving ``rate`` msg/s for ``seconds`` s at ``qos``."""
    ctx = multiprocessing.get_context("spawn")
    count, ready, stop = ctx.Value("q", 0, lock=False), ctx.Event(), ctx.Event()
    settings = broker.settings().model_dump(mode="json")
    site = f"cost-{kind}-{qos}"
    filt = topic_for("edgeloop/{site}/+/telemetry", site=site)
    proc = ctx.Process(target=_subscribe, args=(kind, settings, filt, qos, count, ready, stop), daemon=True)
    proc.start()
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError(f"the {kind} subscriber did not subscribe within 60 s")
    time.sleep(0.5)  # its start-up CPU settles before the measured window
    ps = psutil.Process(proc.pid)
    gen = LoadGenerator(broker.settings(), devices=1000).start()
    before = ps.cpu_times()
    sent = gen.run(site=site, qos=qos, duration=seconds, rate=rate)
    gen.flush(5.0)
    last, since = -1, time.monotonic()
    while count.value < sent.count and time.monotonic() - since < 3.0:  # all in, or none for 3 s
        time.sleep(0.1)
        if count.value != last:
            last, since = count.value, time.monotonic()
    after = ps.cpu_times()
    stop.set()
    proc.join(10)
    if proc.is_alive():
        proc.kill()
    gen.close()
    cpu = (after.user + after.system) - (before.user + before.system)
    got = int(count.value)
    return {
        "kind": kind,
        "qos": qos,
        "sent": sent.count,
        "received": got,
        "cpu_s": round(cpu, 3),
        "us_per_message": round(1e6 * cpu / got, 1) if got else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="messages/s published")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per subscriber and repeat")
    parser.add_argument("--repeat", type=int, default=3, help="runs per subscriber; the least is kept")
    parser.add_argument("--qos", type=int, action="append", help="QoS level(s); default 1 and 0")
    parser.add_argument("--kind", action="append", choices=KINDS, help="subscriber(s); default all")
    args = parser.parse_args()
    with MosquittoBroker() as broker:
        for qos in args.qos or [1, 0]:
            best: dict[str, float] = {}
            for _ in range(args.repeat):
                for kind in args.kind or KINDS:
                    r = measure(kind, qos, broker, rate=args.rate, seconds=args.seconds)
                    print(
                        f"QoS {qos} {kind:<11} received {r['received']:>7,} of {r['sent']:>7,}"
                        f"  CPU {r['cpu_s']:6.2f} s  {r['us_per_message']} us/message",
                        flush=True,
                    )
                    if r["us_per_message"] is not None:
                        best[kind] = min(best.get(kind, float("inf")), r["us_per_message"])
            # Other programs on the machine only ever add CPU time (cache and core contention): the
            # least of the repeats is the closest to the client's own cost.
            summary = ", ".join(f"{kind} {us:.1f}" for kind, us in best.items())
            print(f"QoS {qos} least CPU per message (us): {summary}", flush=True)


if __name__ == "__main__":
    main()
