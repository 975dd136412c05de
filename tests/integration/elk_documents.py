"""The Logstash steps of deploy/observability/logstash/edgeloop-mqtt.conf, mirrored in Python, and a
check of documents against the Elasticsearch index templates in deploy/observability/elasticsearch/.

No Logstash or Elasticsearch runs in the tests: this mirror is what feeds real published messages
through the same field mapping. Keep it in step with the pipeline file; ``pipeline_fields`` reads the
pipeline's field whitelist so a field added on one side only fails the test.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
PIPELINE = OBSERVABILITY / "logstash" / "edgeloop-mqtt.conf"
EVENTS_TOPIC = re.compile(r"^edgeloop/[^/]+/events$")
PREDICTION_TOPIC = re.compile(r"^edgeloop/[^/]+/[^/]+/prediction$")
SCOPE = re.compile(r"^(?P<target>[^@]+)(@(?P<device>.+))?$")


def template(index: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        (OBSERVABILITY / "elasticsearch" / f"{index}.index-template.json").read_bytes()
    )
    return data


def mqtt_topics() -> list[str]:
    """The filters Filebeat's MQTT input subscribes to (filebeat-mqtt.yml)."""
    inputs = yaml.safe_load((OBSERVABILITY / "filebeat-mqtt.yml").read_text())
    return [topic for i in inputs if i["type"] == "mqtt" for topic in i["topics"]]


def pipeline_fields() -> set[str]:
    """Top-level fields the pipeline's prune filter keeps."""
    block = re.search(r"whitelist_names\s*=>\s*\[(.*?)\]", PIPELINE.read_text(), re.S)
    assert block, "no prune whitelist in the pipeline"
    return {name.strip("^$") for name in re.findall(r'"([^"]+)"', block.group(1))}


def pipeline_documents(topic: str, payload: bytes) -> tuple[str, list[dict[str, Any]]]:
    """(index, documents) for one MQTT message, as the pipeline builds them."""
    doc = orjson.loads(payload)
    assert isinstance(doc, dict), "the json filter needs an object"
    doc["topic"] = topic
    if EVENTS_TOPIC.match(topic):
        index = "edgeloop-events"
        scope = SCOPE.match(doc["scope"])
        assert scope, f"grok: bad scope {doc['scope']!r}"
        doc.update({k: v for k, v in scope.groupdict().items() if v is not None})
        docs = [doc]
    elif PREDICTION_TOPIC.match(topic):
        index = "edgeloop-predictions"
        doc["site"] = topic.split("/")[1]
        forecasts = doc.pop("predictions", None) or {}
        docs = [
            {**doc, "target": t, "value": f.get("value"), "model": f.get("model")}
            for t, f in forecasts.items()
        ]
    else:
        raise AssertionError(f"topic {topic} is neither events nor prediction")
    keep = pipeline_fields()
    out = []
    for d in docs:
        ts = d.pop("ts")  # date filter, pattern UNIX, into @timestamp (millisecond precision)
        stamp = datetime.fromtimestamp(math.floor(float(ts) * 1000) / 1000, UTC)
        d["@timestamp"] = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out.append({k: v for k, v in d.items() if v is not None and k in keep})
    return index, out


def _type_error(path: str, value: Any, es_type: str) -> str | None:
    if es_type in ("keyword", "text"):
        ok = isinstance(value, str)
    elif es_type == "date":
        ok = isinstance(value, str) and datetime.fromisoformat(value.replace("Z", "+00:00")) is not None
    elif es_type in ("float", "double"):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    elif es_type == "long":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        return f"{path}: type {es_type} not checked by this mirror"
    return None if ok else f"{path}: {value!r} is not a valid {es_type}"


def conformance_errors(doc: dict[str, Any], index: str) -> list[str]:
    """Why Elasticsearch (strict mapping of the index template) would reject or mistype ``doc``."""
    mappings = template(index)["template"]["mappings"]
    props = mappings["properties"]
    dynamic = [next(iter(d.values())) for d in mappings.get("dynamic_templates", [])]
    errors = []
    for key, value in doc.items():
        spec = props.get(key)
        if spec is None:
            errors.append(f"{key}: not in the mapping (dynamic: {mappings.get('dynamic')})")
        elif spec.get("type") == "object":
            if not isinstance(value, dict):
                errors.append(f"{key}: {value!r} is not an object")
                continue
            for sub, subvalue in value.items():
                path = f"{key}.{sub}"
                rule = next(
                    (d for d in dynamic if re.fullmatch(d["path_match"].replace("*", ".*"), path)), None
                )
                if rule is None:
                    errors.append(f"{path}: no dynamic template maps it")
                elif subvalue is not None and (err := _type_error(path, subvalue, rule["mapping"]["type"])):
                    errors.append(err)
        elif err := _type_error(key, value, spec["type"]):
            errors.append(err)
    return errors
