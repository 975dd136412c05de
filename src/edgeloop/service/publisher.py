"""Publishers: the device simulator and recorded data sets, sent as telemetry over MQTT at a pace."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pandas as pd

from edgeloop.adapters.mqtt import MqttSession
from edgeloop.config import Settings
from edgeloop.telemetry.simulator import Simulator

log = logging.getLogger(__name__)

HOLD_POLL = 0.05  # seconds between two looks at a hold condition


def telemetry_topic(settings: Settings, device: str) -> str:
    """Where a device publishes: the first telemetry filter with its wildcard filled by the device."""
    template = settings.topics.telemetry[0].format(site=settings.site)
    return template.replace("+", device, 1) if "+" in template else template


class Pacer:
    """Sleeps so that ``rate`` ticks happen per second on average (no drift from rounding)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.ticks = 0

    def wait(self, stop: threading.Event) -> None:
        self.ticks += 1
        if not self.rate:
            return
        due = self.start + self.ticks / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            stop.wait(delay)

    def shift(self, seconds: float) -> None:
        """Move the schedule ``seconds`` later (after a hold: no burst to catch up)."""
        self.start += seconds


class SimulatorPublisher:
    """Publishes one reading per device per step, ``rate`` steps per second, until stopped."""

    def __init__(
        self,
        settings: Settings,
        simulator: Simulator,
        *,
        rate: float | None,
        qos: int | None = None,
        steps: int | None = None,
        protocol: str = "5",
        hold: Callable[[], bool] | None = None,
    ) -> None:
        """``hold``: while it returns True the simulated world stands still (checked every step)."""
        self.settings = settings
        self.simulator = simulator
        self.rate = rate
        self.qos = settings.broker.qos if qos is None else qos
        self.steps = steps
        self.hold = hold
        self.held = 0.0  # seconds spent holding
        self.published = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.session = MqttSession(settings.broker, role="simulator", protocol=protocol)  # type: ignore[arg-type]
        self._topics = {d: telemetry_topic(settings, d) for d in simulator.devices}

    def run(self) -> None:
        self.session.start()
        pacer = Pacer(self.rate)
        done = 0  # steps that produced readings: a live simulator caught up with the clock skips some
        try:
            while not self._stop.is_set() and (self.steps is None or done < self.steps):
                payloads = self.simulator.step()
                done += bool(payloads)
                for payload in payloads:
                    self.session.publish(self._topics[payload["device"]], orjson.dumps(payload), qos=self.qos)
                    self.published += 1
                pacer.wait(self._stop)
                if self.hold is not None and self.hold():
                    pacer.shift(self._held())
        finally:
            self.session.close()

    def _held(self) -> float:
        assert self.hold is not None
        began = time.monotonic()
        while self.hold() and not self._stop.wait(HOLD_POLL):
            pass
        waited = time.monotonic() - began
        self.held += waited
        return waited

    def start(self) -> SimulatorPublisher:
        self._thread = threading.Thread(target=self.run, name="edgeloop-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def frame_payloads(frame: pd.DataFrame, columns: dict[str, str], device: str) -> Iterator[dict[str, Any]]:
    """Rows of a recording as telemetry payloads; missing values are left out of the payload."""
    for seq, row in enumerate(frame.itertuples(index=False)):
        record = row._asdict()
        payload: dict[str, Any] = {"device": device, "ts": float(record["ts"]), "seq": seq}
        for source, name in columns.items():
            value = record.get(source)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                payload[name] = float(value)
        if len(payload) > 3:
            yield payload


def replay(
    settings: Settings,
    frame: pd.DataFrame,
    *,
    columns: dict[str, str],
    device: str,
    rate: float | None,
    stop: threading.Event | None = None,
) -> int:
    """Publish a recording row by row at ``rate`` rows/s (None: as fast as possible); returns the count."""
    stop = stop or threading.Event()
    session = MqttSession(settings.broker, role="replay").start()
    topic = telemetry_topic(settings, device)
    pacer = Pacer(rate)
    sent = 0
    try:
        for payload in frame_payloads(frame, columns, device):
            if stop.is_set():
                break
            session.publish(topic, orjson.dumps(payload))
            sent += 1
            pacer.wait(stop)
    finally:
        session.close()
    return sent
