"""The three-host test's eyes: records every message of a site, one JSON line each, with its arrival time.

Run inside a network namespace (it reaches only the broker the test gives it)::

    python tests/integration/fleet_probe.py mqtt://10.77.0.1:1883 SITE OUT.jsonl

Each line is ``{"t": <unix time received>, "topic": ..., "retain": bool, "payload": <text>}``. It
subscribes to ``edgeloop/<site>/#`` before it prints ``probe up``, and stops on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt


def main(argv: list[str]) -> int:
    url, site, out_path = argv[1], argv[2], argv[3]
    parts = urlsplit(url)
    out = open(out_path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    lock = threading.Lock()
    subscribed = threading.Event()
    stop = threading.Event()

    def on_connect(client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(f"edgeloop/{site}/#", qos=1)

    def on_subscribe(*_a: Any) -> None:
        subscribed.set()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        line = json.dumps(
            {
                "t": time.time(),
                "topic": message.topic,
                "retain": bool(message.retain),
                "payload": message.payload.decode("utf-8", "replace"),
            }
        )
        with lock:
            out.write(line + "\n")

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{site}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=30)
    client.loop_start()
    if not subscribed.wait(30):
        print("probe: no SUBACK", flush=True)
        return 1
    print("probe up", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    client.disconnect()
    client.loop_stop()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
