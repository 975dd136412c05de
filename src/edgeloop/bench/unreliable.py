"""``python -m edgeloop.bench.unreliable edge ...``: the edge without issue 8's delivery guarantees.

For ``edgeloop bench --reliability off`` only, to measure what the guarantees cost: QoS 1 readings
are acknowledged by paho on receipt (not after their prediction and row were handed over), and the
bench's config for this edge turns off state snapshots and lifts the inbox bound and the broker's
receive maximum (see :func:`edgeloop.bench.edge.edge_config`). Not a supported way to run an edge:
a crash loses every reading received but not answered.
"""

from __future__ import annotations

from typing import Any

from edgeloop.adapters import mqtt_transport
from edgeloop.adapters.mqtt import MqttSession


class _AckOnReceipt(MqttSession):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["manual_ack"] = False  # paho acknowledges in its network thread; our ack() is a no-op
        super().__init__(*args, **kwargs)


def main() -> None:
    mqtt_transport.MqttSession = _AckOnReceipt  # type: ignore[misc]
    from edgeloop.cli import app

    app()


if __name__ == "__main__":
    main()
