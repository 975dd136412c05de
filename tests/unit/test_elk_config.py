"""Static checks of the ELK files that no Elasticsearch, Kibana or Filebeat here can load: the Kibana
export refers to objects and fields that exist, and Filebeat collects container logs (symlinks)."""

from __future__ import annotations

import json

import yaml
from tests.integration.elk_documents import OBSERVABILITY, template


def test_kibana_export_refers_to_existing_objects_and_mapped_fields() -> None:
    objects = [
        json.loads(line)
        for line in (OBSERVABILITY / "kibana/edgeloop-dashboard.ndjson").read_text().splitlines()
    ]
    ids = {(o["type"], o["id"]) for o in objects}
    for o in objects:
        for ref in o["references"]:
            assert (ref["type"], ref["id"]) in ids, ref
    views = {o["id"]: o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"}
    for index in ("edgeloop-events", "edgeloop-predictions"):
        assert template(index)["index_patterns"] == [views[index]]
    for search in (o for o in objects if o["type"] == "search"):
        index = search["references"][0]["id"]
        fields = template(index)["template"]["mappings"]["properties"]
        assert set(search["attributes"]["columns"]) <= set(fields), search["attributes"]["columns"]
    assert any(o["type"] == "dashboard" for o in objects)


def test_filebeat_follows_container_log_symlinks_with_kubernetes_metadata() -> None:
    node = yaml.safe_load((OBSERVABILITY / "filebeat.yml").read_text())["filebeat.inputs"]
    daemonset = list(yaml.safe_load_all((OBSERVABILITY / "filebeat-kubernetes.yaml").read_text()))
    config = next(d for d in daemonset if d["kind"] == "ConfigMap")["data"]["filebeat.yml"]
    k8s_inputs = yaml.safe_load(config)["filebeat.inputs"]
    for inputs in (node, k8s_inputs):
        containers = [i for i in inputs if i["type"] == "filestream"]
        assert containers and all(i["prospector.scanner.symlinks"] is True for i in containers)
    assert any("add_kubernetes_metadata" in p for p in k8s_inputs[0]["processors"])
    kinds = {d["kind"] for d in daemonset}
    assert {"DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds
