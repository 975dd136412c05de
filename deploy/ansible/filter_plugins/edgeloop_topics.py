"""Ansible filters of the edgeloop roles: which edges would take each other's readings over MQTT.

Two edges in one shared-subscription group whose telemetry filters overlap split those readings round
robin per message (Mosquitto does not dispatch by device), so both would forecast every device from
gappy histories. The edgeloop role refuses such an inventory before it changes anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_TOPICS = ["edgeloop/{site}/+/telemetry"]


def filters_overlap(first: str, second: str) -> bool:
    """True when some topic matches both MQTT filters.

    >>> filters_overlap("edgeloop/s/+/telemetry", "edgeloop/s/dev-1/telemetry")
    True
    >>> filters_overlap("edgeloop/s/dev-1/telemetry", "edgeloop/s/dev-2/telemetry")
    False
    >>> filters_overlap("edgeloop/#", "edgeloop")
    True
    """
    a, b = first.split("/"), second.split("/")
    for x, y in zip(a, b, strict=False):
        if "#" in (x, y):
            return True
        if x != y and "+" not in (x, y):
            return False
    if len(a) == len(b):
        return True
    longer = a if len(a) > len(b) else b
    return longer[min(len(a), len(b))] == "#"


def topic_conflicts(
    hosts: Iterable[str], hostvars: Mapping[str, Any], default_topics: Any = None
) -> list[str]:
    """Pairs of MQTT edges on one broker whose telemetry filters overlap, as readable lines."""
    edges = []
    for host in hosts:
        hv = hostvars[host]
        if hv.get("edgeloop_broker_scheme", "mqtt") == "nats":
            continue  # NATS splits devices by edge.ordinal, not by topic filter
        site = hv.get("edgeloop_site", "site-1")
        topics = hv.get("edgeloop_telemetry_topics", default_topics or DEFAULT_TOPICS)
        broker = hv.get("edgeloop_broker_host", "")
        edges.append((host, broker, [t.format(site=site) for t in topics]))
    conflicts = []
    for i, (host, broker, topics) in enumerate(edges):
        for other, other_broker, other_topics in edges[i + 1 :]:
            if broker != other_broker:
                continue
            for t in topics:
                for u in other_topics:
                    if filters_overlap(t, u):
                        conflicts.append(f"{host} ({t}) and {other} ({u}) on broker {broker}")
    return conflicts


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"edgeloop_topic_conflicts": topic_conflicts}
