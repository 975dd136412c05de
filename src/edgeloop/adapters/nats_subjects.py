"""NATS names of a site: subjects derived from the MQTT topic templates, stream and consumer names.

Devices' MQTT topics ``edgeloop/<site>/<device>/telemetry`` arrive as subjects
``edgeloop.<site>.<device>.telemetry``; the server's mapping (``deploy/nats/nats-server.conf``) moves
them to ``edgeloop.<site>.p.<partition>.<device>.telemetry``, which one stream per site holds.
"""

from __future__ import annotations

import re

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from edgeloop.errors import ConfigError


def _name(site: str) -> str:
    """A site id as stream, consumer and bucket names allow it (no '.', '*', '>' or spaces)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", site)


def stream_config(name: str, subject: str, history: int) -> StreamConfig:
    """The telemetry stream: on disk, the last ``history`` readings of each device (one subject each)."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=history,
    )


class Subjects:
    """The NATS subjects of a site, derived from the MQTT topic templates.

    >>> s = Subjects("edgeloop/{site}/+/telemetry", "lab")
    >>> s.partition(3), s.stream
    ('edgeloop.lab.p.3.*.telemetry', 'edgeloop.lab.p.*.*.telemetry')
    >>> s.topic("edgeloop.lab.p.3.dev-1.telemetry")
    'edgeloop/lab/dev-1/telemetry'
    >>> Subjects.of_topic("edgeloop/lab/dev-1/prediction")
    'edgeloop.lab.dev-1.prediction'
    """

    def __init__(self, telemetry_filter: str, site: str) -> None:
        levels = telemetry_filter.format(site=site).split("/")
        if levels.count("+") != 1 or "#" in levels or any("." in level for level in levels):
            raise ConfigError(
                "topics.telemetry: with NATS it must be one filter with one '+' (the device level), "
                f"no '#' and no '.', got {telemetry_filter!r}"
            )
        self.at = levels.index("+")
        self.prefix = levels[: self.at]
        self.suffix = levels[self.at + 1 :]
        self.stream = self._join("*")

    def _join(self, partition: str) -> str:
        return ".".join([*self.prefix, "p", partition, "*", *self.suffix])

    def partition(self, p: int) -> str:
        return self._join(str(p))

    def topic(self, subject: str) -> str:
        tokens = subject.split(".")
        del tokens[self.at : self.at + 2]  # the "p.<n>" the server's mapping inserted
        return "/".join(tokens)

    @staticmethod
    def of_topic(topic: str) -> str:
        return topic.replace("/", ".")
