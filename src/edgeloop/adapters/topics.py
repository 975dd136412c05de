"""Topic names: filling a topic template and the MQTT v5 shared-subscription form of a filter.

Kept apart from the MQTT session (:mod:`edgeloop.adapters.mqtt`) because the NATS transport builds the
same topic names and holds no MQTT client.

>>> shared_filter("edgeloop/lab/+/telemetry", "edge")
'$share/edge/edgeloop/lab/+/telemetry'
>>> topic_for("edgeloop/{site}/{device}/prediction", site="lab", device="dev-1")
'edgeloop/lab/dev-1/prediction'
"""

from __future__ import annotations

import re

__all__ = ["shared_filter", "topic_for"]

_WILDCARDS = re.compile(r"[/+#]")


def shared_filter(topic_filter: str, group: str | None) -> str:
    """The MQTT v5 shared-subscription form of ``topic_filter`` for ``group`` (unchanged when None).

    >>> shared_filter("a/#", None)
    'a/#'
    >>> shared_filter("a/#", "g/1")
    Traceback (most recent call last):
    ...
    ValueError: shared group name must not contain '/', '+' or '#': 'g/1'
    """
    if not group:
        return topic_filter
    if _WILDCARDS.search(group):
        raise ValueError(f"shared group name must not contain '/', '+' or '#': {group!r}")
    if topic_filter.startswith("$share/"):
        raise ValueError(f"topic filter is already shared: {topic_filter!r}")
    return f"$share/{group}/{topic_filter}"


def topic_for(template: str, **fields: str) -> str:
    """Fill ``{site}``/``{device}`` (or any named field) of a topic template.

    A value holding '/', '+' or '#' would change the topic's structure, so it is refused.

    >>> topic_for("edgeloop/{site}/events", site="s1")
    'edgeloop/s1/events'
    >>> topic_for("edgeloop/{site}/{device}/prediction", site="s1")
    Traceback (most recent call last):
    ...
    ValueError: topic template 'edgeloop/{site}/{device}/prediction' needs field 'device'
    """
    for name, value in fields.items():
        if not value or _WILDCARDS.search(value):
            raise ValueError(f"topic field {name}={value!r} must be non-empty without '/', '+' or '#'")
    try:
        return template.format(**fields)
    except KeyError as exc:
        raise ValueError(f"topic template {template!r} needs field {exc.args[0]!r}") from None
