"""Checks of the deployment files under deploy/, the CI workflow and the Jenkinsfile.

Nothing here starts docker, a cluster or Ansible; these are fast consistency checks that fail when a
manifest drifts from the application: an env var that is no settings key, an HPA aimed at the wrong
Deployment, an alert on a metric the edge does not export, a broker that admits anonymous clients, or
something that looks like a committed secret. The real tools (kubectl kustomize, kubernetes-validate,
ansible-playbook --syntax-check, ansible-lint, hadolint, docker compose config, promtool, amtool,
actionlint, shellcheck) run in `make deploy-check` (deploy/check.py), which installs them and never skips;
tests/unit/test_deploy_check.py checks that it finds every file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from edgeloop.config import Settings
from edgeloop.service import metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
ANSIBLE = DEPLOY / "ansible"
OBSERVABILITY = DEPLOY / "observability"
COMPOSE = DOCKER / "docker-compose.yml"
CONFIG_FILES = [DOCKER / "edgeloop.yaml", K8S / "base" / "edgeloop.yaml"]
MOSQUITTO_CONFS = [DOCKER / "mosquitto" / "mosquitto.conf", K8S / "base" / "mosquitto.conf"]
# Environment variables read by the dashboard script itself (documented in its docstring), not Settings.
DASHBOARD_ENV = set(
    re.findall(r"EDGELOOP_DASHBOARD_\w+", (REPO / "src/edgeloop/dashboard/app.py").read_text())
)


def yaml_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml") or p.name.endswith(".yml.example")]
    return sorted([*files, REPO / ".github/workflows/ci.yml"])


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs += load_all(K8S / "base" / name)
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in k8s_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for doc in k8s_objects():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield doc["metadata"]["name"], pod, container


def settings_path(name: str) -> tuple[str, ...]:
    """EDGELOOP_<SECTION>_<KEY> -> (section, key), or (field,) for a top-level field; else AssertionError."""
    assert name.startswith("EDGELOOP_"), name
    rest = name.removeprefix("EDGELOOP_").lower()
    if rest in Settings.model_fields:
        return (rest,)
    section, _, key = rest.partition("_")
    assert section in Settings.model_fields, f"{name}: no settings section {section!r}"
    keys = getattr(Settings.model_fields[section].annotation, "model_fields", {})
    assert key in keys, f"{name}: section {section!r} has no key {key!r}"
    return (section, key)


def check_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]) -> None:
    """Every EDGELOOP_* variable names a settings key, and its value validates and takes effect."""
    for name in list(os.environ):
        if name.startswith("EDGELOOP_"):
            monkeypatch.delenv(name)
    ours = {k: v for k, v in env.items() if k.startswith("EDGELOOP_") and k not in DASHBOARD_ENV}
    for name, value in ours.items():
        monkeypatch.setenv(name, value)
    settings = Settings(**config)
    for name, value in ours.items():
        got: Any = settings
        for part in settings_path(name):
            got = getattr(got, part)
        assert str(got).lower() == value.lower(), f"{name}={value!r} became {got!r}"


# -- YAML and Kubernetes -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert load_all(path), f"{path} holds no document"


def test_kubernetes_objects_are_well_formed() -> None:
    docs = k8s_objects() + load_all(K8S / "secrets.example.yaml")
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        assert doc["metadata"].get("name"), doc


def test_kustomization_references_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    named = kustomization["resources"] + [f for g in kustomization["configMapGenerator"] for f in g["files"]]
    for name in named:
        assert (K8S / "base" / name).is_file(), name
    assert "secrets.example.yaml" not in str(kustomization), "the Secret template must never be applied"


def test_edge_is_a_statefulset_with_stable_client_ids_and_no_autoscaler() -> None:
    # Stable pod names = stable client ids (persistent sessions resume) and, on NATS, stable partition
    # ownership; an HPA behind Mosquitto would split every device's stream between replicas.
    assert not [d for d in k8s_objects() if d["kind"] == "HorizontalPodAutoscaler"]
    edge = find("StatefulSet", "edgeloop-edge")
    assert edge["spec"]["replicas"] == 1
    service = find("Service", edge["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    container = edge["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "edge"
    env = {e["name"]: e for e in container["env"]}
    assert "EDGELOOP_BROKER_SESSION_EXPIRY" not in env  # 0 lost every reading sent during a restart
    assert env["EDGELOOP_BROKER_CLIENT_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    pdb = find("PodDisruptionBudget", "edgeloop-edge")
    assert pdb["spec"]["selector"]["matchLabels"] == edge["spec"]["selector"]["matchLabels"]


def test_edge_probes_and_annotations_use_the_metrics_port() -> None:
    edge = find("StatefulSet", "edgeloop-edge")
    container = edge["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    port = int(env["EDGELOOP_EDGE_METRICS_PORT"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    assert int(edge["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]) == port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_edge_probe_paths_are_served_by_the_edge() -> None:
    # The paths the manifests and the image's check use are the ones the health server routes.
    from edgeloop.service import health

    source = Path(health.__file__).read_text()
    assert '"/healthz"' in source and '"/readyz"' in source
    assert "/healthz" in (REPO / "deploy/docker/healthcheck.py").read_text()


class _Probe(BaseHTTPRequestHandler):
    code = 200

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    paths: list[str] = []


@pytest.mark.parametrize(("code", "exit_code"), [(200, 0), (503, 1)])
def test_docker_healthcheck_fetches_healthz_and_fails_on_503(code: int, exit_code: int) -> None:
    _Probe.code, _Probe.paths = code, []
    server = HTTPServer(("127.0.0.1", 0), _Probe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "EDGELOOP_EDGE_METRICS_PORT": str(server.server_address[1])}
        env.pop("HEALTHCHECK_URL", None)
        result = subprocess.run(
            [sys.executable, str(REPO / "deploy/docker/healthcheck.py")],
            env=env,
            capture_output=True,
            timeout=20,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == exit_code and _Probe.paths == ["/healthz"]


def test_compose_edge_has_a_healthcheck() -> None:
    compose = yaml.safe_load((REPO / "deploy/docker/docker-compose.yml").read_text())
    test = compose["services"]["edge"]["healthcheck"]["test"]
    assert test == ["CMD", "python", "/usr/local/bin/edgeloop-healthcheck"]
    dockerfile = (REPO / "deploy/docker/Dockerfile").read_text()
    assert "deploy/docker/healthcheck.py /usr/local/bin/edgeloop-healthcheck" in dockerfile


@pytest.mark.parametrize(
    "name", ["edgeloop-edge", "edgeloop-trainer", "edgeloop-dashboard", "edgeloop-mlflow"]
)
def test_deployment_env_names_are_settings_keys(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kind = "StatefulSet" if name == "edgeloop-edge" else "Deployment"
    container = find(kind, name)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    for entry in container.get("env", []):
        if "valueFrom" in entry:
            settings_path(entry["name"])  # from the downward API or a Secret: still a settings key
    assert env["EDGELOOP_DATA_DIR"] == "/data"
    check_env(env, monkeypatch, yaml.safe_load((K8S / "base" / "edgeloop.yaml").read_text()))


def test_settings_path_rejects_unknown_keys() -> None:
    # The check above must be able to fail: pydantic-settings silently ignores unknown sections.
    assert settings_path("EDGELOOP_BROKER_PASSWORD_FILE") == ("broker", "password_file")
    assert settings_path("EDGELOOP_DATA_DIR") == ("data_dir",)
    for bad in ("EDGELOOP_BROKER_PASWORD_FILE", "EDGELOOP_METRICS_PORT", "EDGELOOP_EDGE_METRICSPORT"):
        with pytest.raises(AssertionError):
            settings_path(bad)


def test_password_comes_from_a_mounted_secret_file() -> None:
    for name, pod, container in containers():
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert "EDGELOOP_BROKER_PASSWORD" not in env, name
        if "EDGELOOP_BROKER_PASSWORD_FILE" in env:
            folder = str(Path(env["EDGELOOP_BROKER_PASSWORD_FILE"]).parent)
            mount = next(m for m in container["volumeMounts"] if m["mountPath"] == folder)
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            assert volume["secret"]["secretName"] == "edgeloop-broker", name


def test_containers_are_locked_down_and_sized() -> None:
    seen = 0
    for name, pod, container in containers():
        seen += 1
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), name
        if container["image"] != "edgeloop":
            continue  # the broker's own image
        assert pod["securityContext"]["runAsUser"] == 10001, name  # the image's user (Dockerfile)
    assert seen == 5
    for doc in k8s_objects():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            assert doc["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
        if doc["kind"] == "PersistentVolumeClaim":
            assert doc["spec"]["accessModes"] == ["ReadWriteOnce"], doc["metadata"]["name"]


def kubectl_binary() -> str:
    """kubectl from the validators' venv that `make deploy-check` installs (run before the tests), or PATH."""
    tools = REPO / ".venv" / "deploy-tools" / "bin" / "kubectl"
    found = str(tools) if tools.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: run `make deploy-check` first (it installs it in .venv/deploy-tools)"
    return found


def test_kustomize_renders_the_base() -> None:
    kubectl = kubectl_binary()
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "base")], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout)]
    assert kinds.count("Deployment") == 4 and kinds.count("StatefulSet") == 1
    assert "HorizontalPodAutoscaler" not in kinds


@pytest.mark.parametrize("overlay", ["nats", "fleet", "fleet-nats"])
def test_kustomize_renders_the_overlays_without_shared_volumes(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubectl = kubectl_binary()
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert "ReadWriteMany" not in out.stdout
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
    edge = workloads["edgeloop-edge"]
    env = {e["name"]: e.get("value") for e in edge["spec"]["template"]["spec"]["containers"][0]["env"]}
    # The edge's settings (the ConfigMap's edgeloop.yaml and its environment) are valid as rendered:
    # what Settings refuses (edge.retrain: mqtt on NATS, replicas on Mosquitto) would stop every pod.
    # Keys from valueFrom (the client id) aside.
    settings_env = {k: v for k, v in env.items() if k.startswith("EDGELOOP_") and v is not None}
    settings_env = {k: v for k, v in settings_env.items() if k not in PENDING_KEYS}
    config = yaml.safe_load((K8S / "base" / "edgeloop.yaml").read_text())
    check_env(settings_env, monkeypatch, {**config, "edge": {"ordinal": 0}})
    if "nats" in overlay:
        assert "edgeloop-mosquitto" not in workloads and "edgeloop-nats" in workloads
        assert env["EDGELOOP_BROKER_URL"].startswith("nats://")
        assert int(env["EDGELOOP_EDGE_REPLICAS"]) == edge["spec"]["replicas"] == 3
        assert "edgeloop-trainer" not in workloads, "trainers take requests over MQTT only"
        # The server runs deploy/nats as shipped, and the edges match it: user, partition count.
        maps = [
            d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("edgeloop-nats")
        ]
        files = maps[0]["data"]
        for name in ("nats-server.conf", "users.conf", "start.sh"):
            assert files[name] == (DEPLOY / "nats" / name).read_text(), f"k8s/nats/{name} differs from nats/"
        assert re.search(
            r"\{\{partition\(" + env["EDGELOOP_BROKER_PARTITIONS"] + ",", files["nats-server.conf"]
        )
        assert re.search(r"user: " + env["EDGELOOP_BROKER_USERNAME"] + r"\n", files["users.conf"])
        nats = workloads["edgeloop-nats"]["spec"]["template"]["spec"]
        assert nats["containers"][0]["command"] == ["/bin/sh", "/etc/nats/start.sh"]
        sources = next(v for v in nats["volumes"] if v["name"] == "passwords")["projected"]["sources"]
        broker = next(s["secret"] for s in sources if s["secret"]["name"] == "edgeloop-broker")
        assert broker["items"] == [{"key": "password", "path": "EDGELOOP_NATS_EDGE_PASSWORD"}]
    if "fleet" in overlay:
        # Nothing shared: no data PVC, no one-node affinity, each edge its own RWO volume.
        assert not [
            d
            for d in docs
            if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "edgeloop-data"
        ]
        assert all("affinity" not in w["spec"]["template"]["spec"] for w in workloads.values())
        assert edge["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert env["EDGELOOP_STORE_URL"].startswith("postgresql://")


# -- configuration files and the broker ----------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_config_files_are_valid_and_share_the_stream(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    settings = Settings(**data)
    assert settings.broker.shared_group, "edge replicas must subscribe through a shared group"
    assert settings.broker.qos == 1
    assert settings.broker.password is None and "password" not in data["broker"]
    assert settings.log_json is True


def mosquitto_options(text: str) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            options.setdefault(key, []).append(value.strip())
    return options


def check_mosquitto(text: str) -> None:
    options = mosquitto_options(text)
    assert options["allow_anonymous"] == ["false"]
    assert options["password_file"] and options["acl_file"]
    assert int(options["max_queued_messages"][0]) > 1000  # the default dropped QoS 1 backlogs
    assert options["persistence"] == ["true"]


@pytest.mark.parametrize("path", MOSQUITTO_CONFS, ids=lambda p: str(p.relative_to(REPO)))
def test_mosquitto_refuses_anonymous_and_queues_more(path: Path) -> None:
    check_mosquitto(path.read_text())


def test_mosquitto_files_for_compose_and_kubernetes_are_identical() -> None:
    for name in ("mosquitto.conf", "aclfile"):
        assert (DOCKER / "mosquitto" / name).read_text() == (K8S / "base" / name).read_text(), name


def test_mosquitto_check_can_fail() -> None:
    with pytest.raises((AssertionError, KeyError)):
        check_mosquitto("listener 1883\nallow_anonymous true\npersistence true\n")


# -- Docker ----------------------------------------------------------------------------------------------


def test_dockerfile_is_multistage_non_root_and_secret_free() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3.11-slim@sha256:[0-9a-f]{64}$", text, re.M)
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert {"edge", "full"} <= set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.M))
    for lock in ("requirements/edge.lock", "requirements/full.lock"):
        assert f"--require-hashes --no-deps -r {lock}" in text, lock
    assert 'ENTRYPOINT ["tini",' in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    assert not re.search(r"^(ARG|ENV)\s+\S*(PASSWORD|SECRET|TOKEN)", text, re.M | re.I)


def test_docker_build_context_admits_what_the_dockerfile_copies() -> None:
    allowed = [
        line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line[:1] == "!"
    ]
    for line in re.findall(r"^COPY (?!--from)(.+)$", (DOCKER / "Dockerfile").read_text(), re.M):
        for source in line.split()[:-1]:
            assert (REPO / source).exists(), source
            assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), source


def test_compose_services_images_and_mounts() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    wanted = {"mosquitto", "edge", "trainer", "simulator", "dashboard", "mlflow", "prometheus"}
    assert wanted <= services.keys()
    ignored = (DOCKER / "secrets" / ".gitignore").read_text()
    for name, service in services.items():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = (DOCKER / source).resolve()
                if path.parent == DOCKER / "secrets":
                    assert "*" in ignored.splitlines(), "secrets/ must be git-ignored"
                else:
                    assert path.exists(), f"{name}: {source}"
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    assert services["mosquitto"]["ports"] == ["127.0.0.1:1883:1883"]


# Keys a manifest may set that Settings does not know yet (none today): they would be skipped below.
PENDING_KEYS: set[str] = set()


def test_compose_profiles_and_hardening() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert compose["name"] == "edgeloop"
    assert all(s.get("init") is True for s in services.values()), "every service needs an init (SIGTERM)"
    assert services["simulator"]["profiles"] == ["demo", "sim"]
    scale = [n for n, s in services.items() if "scale" in s.get("profiles", [])]
    edges = sorted(n for n in scale if services[n].get("command", [""])[0] == "edge")
    assert len(edges) == 3 and "nats" in scale
    assert sorted(services[n]["environment"]["EDGELOOP_EDGE_ORDINAL"] for n in edges) == ["0", "1", "2"]
    assert {services[n]["environment"]["EDGELOOP_EDGE_REPLICAS"] for n in edges} == {"3"}
    assert compose["configs"]["nats_conf"]["file"] == "../nats/nats-server.conf"
    fleet = {n: s for n, s in services.items() if "fleet" in s.get("profiles", [])}
    assert {"postgres", "mlflow-server"} <= fleet.keys()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            # A short-syntax bind of a missing file creates a directory in its place.
            assert not source.startswith((".", "/")), f"{name}: bind mount {source}: use configs/secrets"
        env = service.get("environment", {})
        for key in env:
            if key.startswith("EDGELOOP_") and key not in PENDING_KEYS and key not in DASHBOARD_ENV:
                settings_path(key)
        if "EDGELOOP_DISTRIBUTION_SIGNING_KEY_FILE" in env:
            assert service["command"][0] == "trainer", "only trainers hold the signing key"


@pytest.mark.parametrize(
    "service",
    ["edge", "trainer", "simulator", "dashboard", "mlflow", "edge-0", "edge-1", "edge-2", "edge-fleet"],
)
def test_compose_env_names_are_settings_keys(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each service's settings (edgeloop.yaml and its environment) are valid together, as it starts."""
    env = yaml.safe_load(COMPOSE.read_text())["services"][service]["environment"]
    assert "EDGELOOP_BROKER_PASSWORD" not in env
    check_env(
        {k: str(v) for k, v in env.items() if k not in PENDING_KEYS},
        monkeypatch,
        yaml.safe_load((DOCKER / "edgeloop.yaml").read_text()),
    )


def test_compose_scale_profile_matches_the_nats_server_config() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    conf = (DEPLOY / "nats" / "nats-server.conf").read_text()
    users = (DEPLOY / "nats" / "users.conf").read_text()
    nats = services["nats"]
    assert {c["target"]: compose["configs"][c["source"]]["file"] for c in nats["configs"]} == {
        "/etc/nats/nats-server.conf": "../nats/nats-server.conf",
        "/etc/nats/users.conf": "../nats/users.conf",  # beside it: nats-server.conf includes it
        "/etc/nats/start.sh": "../nats/start.sh",
    }
    # Every variable users.conf refers to is a secret file start.sh exports.
    wanted = set(re.findall(r"password: \$(\w+)", users))
    given = {s["target"].removeprefix("/run/secrets/nats/") for s in nats["secrets"]}
    assert wanted == given
    edge_secret = next(s["source"] for s in nats["secrets"] if s["target"].endswith("EDGE_PASSWORD"))
    for name in ("edge-0", "edge-1", "edge-2"):
        edge = services[name]
        env = edge["environment"]
        assert env["EDGELOOP_BROKER_URL"] == "nats://nats:4222"
        assert re.search(r"\{\{partition\(" + env["EDGELOOP_BROKER_PARTITIONS"] + ",", conf)
        assert re.search(r"user: " + env["EDGELOOP_BROKER_USERNAME"] + "\n", users)
        assert edge_secret in edge["secrets"]
        assert env["EDGELOOP_EDGE_RETRAIN"] == "local"
    volumes = [services[n]["volumes"][0].split(":")[0] for n in ("edge-0", "edge-1", "edge-2")]
    assert len(set(volumes)) == 3, "each edge trains for its own devices: one volume each"
    assert not [
        n
        for n, s in services.items()
        if "scale" in s.get("profiles", []) and s.get("command", [""])[0] == "trainer"
    ]


# -- Ansible ---------------------------------------------------------------------------------------------


def render(template: Path, **variables: Any) -> str:
    import jinja2  # a dependency of mlflow and streamlit, so always installed

    # Ansible renders templates with trim_blocks and adds the `bool` filter.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    env.filters["bool"] = lambda value: str(value).lower() in ("true", "yes", "1")
    return env.from_string(template.read_text()).render(ansible_managed="managed by Ansible", **variables)


@pytest.mark.parametrize("tls", [True, False])
def test_ansible_mosquitto_template(tls: bool) -> None:
    defaults = yaml.safe_load((ANSIBLE / "roles/mosquitto/defaults/main.yml").read_text())
    defaults["mosquitto_tls_enabled"] = tls
    # The ports come from group_vars/all (broker_*_port), shared with the edgeloop role.
    shared = yaml.safe_load((ANSIBLE / "group_vars/all/main.yml").read_text())
    defaults["mosquitto_plain_port"] = shared["broker_plain_port"]
    defaults["mosquitto_tls_port"] = shared["broker_tls_port"]
    text = render(ANSIBLE / "roles/mosquitto/templates/mosquitto.conf.j2", **defaults)
    check_mosquitto(text)
    assert ("listener 8883" in text) is tls
    assert "listener 1883 127.0.0.1" in text  # plain MQTT only for clients on the broker's host


def test_ansible_edgeloop_config_template_is_valid() -> None:
    text = render(
        ANSIBLE / "roles/edgeloop/templates/edgeloop.yaml.j2",
        edgeloop_site="site-1",
        edgeloop_data_dir="/var/lib/edgeloop",
        edgeloop_broker_url="mqtts://broker.example.net:8883\n",
        edgeloop_broker_scheme="mqtts",
        edgeloop_telemetry_topics=["edgeloop/{site}/dev-001/telemetry"],
        edgeloop_broker_username="edgeloop",
        edgeloop_broker_ca_pem="-----BEGIN CERTIFICATE-----",
        edgeloop_metrics_port=9108,
        edgeloop_retrain="local",
        edgeloop_targets=["voc_ppb", "temp_c"],
    )
    settings = Settings(**yaml.safe_load(text))
    assert settings.broker.tls and settings.broker.shared_group
    assert settings.model.targets == ["voc_ppb", "temp_c"]


@pytest.mark.parametrize("unit", ["edgeloop-edge.service.j2", "edgeloop-trainer.service.j2"])
def test_systemd_units_use_settings_keys_and_a_credential(unit: str) -> None:
    text = (ANSIBLE / "roles/edgeloop/templates" / unit).read_text()
    names = re.findall(r"^Environment=(EDGELOOP_\w+)=", text, re.M)
    assert "EDGELOOP_BROKER_PASSWORD_FILE" in names and "EDGELOOP_BROKER_PASSWORD" not in names
    for name in names:
        settings_path(name)
    assert "LoadCredential=broker_password:" in text and re.search(r"^User=edgeloop$", text, re.M)


def test_vault_examples_declare_every_vault_variable() -> None:
    used = set(re.findall(r"\bvault_\w+", " ".join(p.read_text() for p in ANSIBLE.rglob("main.yml"))))
    declared = set()
    for example in ANSIBLE.rglob("vault.yml.example"):
        declared |= set(yaml.safe_load(example.read_text()))
    assert used and used <= declared, used - declared
    for vault in DEPLOY.rglob("vault.yml"):
        assert vault.read_text().startswith("$ANSIBLE_VAULT;"), f"{vault} must be encrypted"


# -- observability -----------------------------------------------------------------------------------------


def exported_metric_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
                names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def test_alert_rules_use_only_exported_metrics() -> None:
    rules = [
        r for g in yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())["groups"] for r in g["rules"]
    ]
    exported = exported_metric_names()
    assert "edgeloop_model_load_failures_total" in exported
    used = set()
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
        used |= set(re.findall(r"\bedgeloop_\w+", rule["expr"]))
    assert used and used <= exported, used - exported
    alerts = {r["alert"] for r in rules}
    assert {"EdgeloopNoPredictions", "EdgeloopModelLoadFailures", "EdgeloopRepeatedRollbacks"} <= alerts


def test_prometheus_configs_load_the_rules() -> None:
    for name in ("prometheus.yml", "prometheus-kubernetes.yml"):
        assert yaml.safe_load((OBSERVABILITY / name).read_text())["rule_files"] == [
            "/etc/prometheus/alerts.yml"
        ]
    compose = yaml.safe_load(COMPOSE.read_text())
    mounted = {
        c["target"]: compose["configs"][c["source"]]["file"]
        for c in compose["services"]["prometheus"]["configs"]
    }
    assert mounted["/etc/prometheus/alerts.yml"] == "../observability/alerts.yml"


def test_filebeat_and_logstash_agree_on_the_service_field() -> None:
    inputs = yaml.safe_load((OBSERVABILITY / "filebeat.yml").read_text())["filebeat.inputs"]
    assert all(i["fields"] == {"service": {"name": "edgeloop"}} for i in inputs)
    pipeline = (OBSERVABILITY / "logstash/edgeloop.conf").read_text()
    assert '[service][name] == "edgeloop"' in pipeline
    for field in ("level", "logger", "process", "thread", "exception", "@timestamp"):
        assert f"[edgeloop][{field}]" in pipeline, field  # every field edgeloop.logs.JsonFormatter writes


# -- CI and secrets ----------------------------------------------------------------------------------------


def test_ci_runs_the_test_command_and_jenkins_uses_credentials_by_id() -> None:
    ci = yaml.safe_load((REPO / ".github/workflows/ci.yml").read_text())
    assert any(step.get("run") == "bash .ci/run" for step in ci["jobs"]["test"]["steps"])
    jenkins = (REPO / "Jenkinsfile").read_text()
    for needle in (
        "sh 'bash .ci/run'",  # a fresh venv, chromium, then make test (with deploy-check)
        "CI = 'true'",
        "pip-audit --strict",
        "credentialsId: 'edgeloop-registry'",
        "credentialsId: 'edgeloop-kubeconfig'",
    ):
        assert needle in jenkins, needle
    assert "kubectl apply -k" in jenkins
    assert "when { branch" not in jenkins  # only works in multibranch jobs
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^test: .*\bdeploy-check\b", make, re.M)


# `key: value` / `KEY=value` / `key => value` where the key ends in a credential word: broker_password
# is one, password_file is not. ("secret" alone is left out: Kubernetes uses it as a volume type.)
SECRET_ASSIGNMENT = re.compile(
    r"""(?ix) (?<![\w.-]) [\w.-]*?
        (password|passwd|token|api[_-]?key|client[_-]?secret|secret[_-]?key|private[_-]?key)
        ["']? \s* (?:=>|:|=) [ \t]* (\S.*)?$"""
)
# Values that are not a secret: <placeholders>, ${VAR}, $VAR (nats-server's environment references),
# {{ jinja }}, $(command), file paths, YAML blocks.
PLACEHOLDER = re.compile(
    r"""^["']?(<|\$\{|(?-i:\$[A-Z_][A-Z0-9_]*$)|\{\{|\$\(|%d/|\.{0,2}/|\||>|\*+|CHANGE_?ME|null|false|true|["']?$)""",
    re.I,
)
SECRET_SHAPES = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"^\s*[\w.-]+:\$[67]\$\d+\$[A-Za-z0-9+/=]{8,}", re.M),  # a mosquitto_passwd hash line
]


def secret_findings(text: str) -> list[str]:
    findings = [p.pattern for p in SECRET_SHAPES if p.search(text)]
    for line in text.splitlines():
        match = SECRET_ASSIGNMENT.search(line)
        if match and match.group(2) and not PLACEHOLDER.match(match.group(2).strip()):
            findings.append(line.strip())
    return findings


def test_secret_scan_can_fail() -> None:
    assert secret_findings("broker:\n  password: hunter2\n")
    assert secret_findings("broker_password: hunter2")
    assert secret_findings('ENV API_KEY="abc123"')
    assert secret_findings("edgeloop:$7$101$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNo")
    assert secret_findings("password: $hunter2")
    assert not secret_findings("password: $EDGELOOP_NATS_EDGE_PASSWORD")
    assert not secret_findings('  password: "<set with kubectl create secret>"\npassword_file: /run/x')
    assert not secret_findings("password_file: secrets/pw\nEDGELOOP_BROKER_PASSWORD_FILE=/run/pw")


def scanned_files() -> list[Path]:
    # Files an operator creates in the git-ignored deploy/docker/secrets/ are theirs, not the repo's.
    local = DOCKER / "secrets"
    files = [
        p
        for p in DEPLOY.rglob("*")
        if p.is_file() and (p.parent != local or p.name in ("README.md", ".gitignore"))
    ]
    return sorted([*files, REPO / "Jenkinsfile", REPO / ".github/workflows/ci.yml", REPO / ".dockerignore"])


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_real_secrets_in_deploy_files(path: Path) -> None:
    assert secret_findings(path.read_text()) == []


def test_vault_password_files_are_git_ignored() -> None:
    ignored = (ANSIBLE / ".gitignore").read_text().splitlines()
    assert ".vault_pass*" in ignored and "*.vault-password" in ignored


# -- lock files ----------------------------------------------------------------------------------------


def _names(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
            out[re.sub(r"[-_.]+", "-", name).lower()] = line
    return out


def test_lock_files_follow_pyproject() -> None:
    import tomllib

    deps = _names(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    edge_in = _names((REPO / "requirements/edge.in").read_text().splitlines())
    for name, spec in edge_in.items():
        assert deps.get(name) == spec, (
            f"requirements/edge.in {spec!r} differs from pyproject ({deps.get(name)!r})"
        )
    for lock, wanted in (("full.lock", deps), ("edge.lock", edge_in)):
        text = (REPO / "requirements" / lock).read_text()
        pinned = {re.sub(r"[-_.]+", "-", m).lower() for m in re.findall(r"^([A-Za-z0-9_.-]+)==", text, re.M)}
        missing = set(wanted) - pinned
        assert not missing, f"requirements/{lock} lacks {sorted(missing)}: run `make lock`"
        assert "--hash=sha256:" in text
