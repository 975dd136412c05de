"""deploy/check.py (`make deploy-check`) finds every file it must validate, and its own checks can fail.

The validators themselves run in `make deploy-check`; these tests keep its file discovery and its
pure-Python parts honest without installing anything.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_check", REPO / "deploy" / "check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_check"] = module
    spec.loader.exec_module(module)
    return module


check = load_check()


def test_finds_the_shipped_files() -> None:
    assert REPO / "deploy/docker/docker-compose.yml" in check.compose_files()
    assert REPO / "deploy/k8s/base" in check.kustomizations()
    assert check.playbooks() == [REPO / "deploy/ansible/site.yml"]
    assert REPO / "deploy/observability/alerts.yml" in check.rule_files()
    assert all("tests" not in p.parts[-2:] for p in check.rule_files())
    assert REPO / ".ci/run" in check.shell_scripts()


def test_new_files_are_found_by_glob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "compose.edge.yaml").write_text("services: {}\n")
    (tmp_path / "k8s" / "overlays" / "k3s").mkdir(parents=True)
    (tmp_path / "k8s" / "overlays" / "k3s" / "kustomization.yaml").write_text("resources: []\n")
    (tmp_path / "observability").mkdir()
    (tmp_path / "observability" / "recording.yml").write_text("groups: []\n")
    (tmp_path / "observability" / "filebeat.yml").write_text("filebeat.inputs: []\n")
    monkeypatch.setattr(check, "DEPLOY", tmp_path)
    monkeypatch.setattr(check, "K8S", tmp_path / "k8s")
    monkeypatch.setattr(check, "OBSERVABILITY", tmp_path / "observability")
    assert check.compose_files() == [tmp_path / "docker" / "compose.edge.yaml"]
    assert check.kustomizations() == [tmp_path / "k8s" / "overlays" / "k3s"]
    assert check.rule_files() == [tmp_path / "observability" / "recording.yml"]


def test_every_alert_has_a_firing_and_a_quiet_rule_test() -> None:
    tests = sorted((REPO / "deploy/observability/tests").glob("*.yml"))
    assert tests
    assert check.untested_alerts(check.rule_files(), tests) == []


def test_an_untested_alert_is_reported(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "1"}]}]}))
    only_quiet = tmp_path / "t.yml"
    only_quiet.write_text(
        yaml.safe_dump(
            {"tests": [{"alert_rule_test": [{"eval_time": "1m", "alertname": "A", "exp_alerts": []}]}]}
        )
    )
    assert check.untested_alerts([rules], [only_quiet]) == ["A: no rule test expects it firing"]
    assert check.untested_alerts([rules], []) == [
        "A: no rule test expects it firing",
        "A: no rule test expects it quiet",
    ]


def test_prometheus_configs_are_made_checkable_here(tmp_path: Path) -> None:
    path = REPO / "deploy/observability/prometheus-kubernetes.yml"
    copy, problems = check.local_prometheus_config(path, tmp_path)
    assert problems == []
    config = yaml.safe_load(copy.read_text())
    assert config["rule_files"] == [str(REPO / "deploy/observability/alerts.yml")]
    assert config["alerting"]["alertmanagers"]
    assert all("kubernetes_sd_configs" not in job for job in config["scrape_configs"])


def test_kubernetes_sd_key_check_can_fail() -> None:
    assert check.kubernetes_sd_problems("j", {"role": "pod", "namespaces": {"names": ["edgeloop"]}}) == []
    problems = check.kubernetes_sd_problems("j", {"role": "pods", "namespace": {"names": ["x"]}})
    assert len(problems) == 2
