"""deploy/docker/docker-compose.yml brought up as local processes, and predictions arrive.

No Docker engine runs here, so this does what ``docker compose --profile demo up`` does, with
processes: it reads the compose file (PyYAML, anchors and merge keys resolved as compose does), makes
the secrets by running the shell block of ``deploy/docker/secrets/README.md`` verbatim (``sudo`` is
the identity, the test runs as root), and starts every service of the default set plus the ``demo``
profile with the service's own command, its ``environment``, as the user the image or the service
names (uid 10001, the broker 1883), its configs and secrets at the files compose would mount there and
its named volumes as folders. Only what a container gives for free is adapted: container paths become
those files (configs, secrets, volumes), service host names and fixed ports become 127.0.0.1 and free
ports, and the image's entry point ``edgeloop`` runs this checkout's code. The edge runs with every
module the slim edge image lacks (not in requirements/edge.lock) made unimportable.

It asserts: every service stays up and passes the image's health check, predictions reach an MQTT
subscriber for every simulated device, and every service stops on SIGTERM. A second test makes the
password file the way the old README did (umask 077, no chown) and asserts the edge stops at once with
one line naming the file, its mode and owner.

A third test brings up the ``scale`` profile the same way: the NATS server from ``deploy/nats`` run by
its ``start.sh`` entry point with the secrets the README makes (Debian's nats-server for the image's),
three slim edges on NATS, and MQTT 3.1.1 devices publishing to the server's MQTT listener as their own
users (the simulator cannot: it speaks MQTT 5, which the listener refuses). It asserts every reading of
every device is answered exactly once and that the three edges split the devices between them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
import yaml
from tests.integration.nats_support import reading

from edgeloop.adapters.broker import mosquitto_binary
from edgeloop.adapters.nats_server import device_user, nats_server_binary, render_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
SECRETS_README = DOCKER / "secrets" / "README.md"
PROFILES = {"demo"}
# Default services this test cannot run, and why; any other default service must run.
NOT_RUN = {
    "prometheus": "no prom/prometheus here; its config and rules are checked by promtool",
    "alertmanager": "no prom/alertmanager here; its config is checked by amtool",
}
# What the images would run (their ENTRYPOINT/CMD), for services without a `command`.
MOSQUITTO_CMD = ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
EDGELOOP_IMAGES = {"edgeloop:local", "edgeloop-edge:local"}
NATS_ENTRYPOINT = ["/bin/sh", "/etc/nats/start.sh"]
# Devices the scale test adds to users.conf beside its two examples, as the README says to generate
# them from a device registry; with the examples, enough to land in partitions of every edge.
EXTRA_DEVICES = [f"dev-{i:03d}" for i in range(100, 110)]


pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def service_python(uid: int, gid: int) -> tuple[str, list[str]]:
    """An interpreter uid:gid can run, and the site folders it needs on PYTHONPATH.

    This interpreter if that user can execute it; else (a venv made from a Python under /root, which
    other users cannot enter) the system's Python of the same minor version with this venv's
    site-packages, the way the image's venv sits on its base Python.
    """
    try:
        subprocess.run(
            [sys.executable, "-c", "pass"],
            user=uid,
            group=gid,
            extra_groups=[],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return sys.executable, []
    except PermissionError:
        pass
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/bin:/usr/local/bin")
    assert system, f"uid {uid} cannot run {sys.executable} and there is no /usr/bin/{version}"
    return system, [p for p in sys.path if p.endswith("site-packages")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compose_services(profiles: set[str]) -> dict[str, dict[str, Any]]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {n: s for n, s in services.items() if not s.get("profiles") or profiles & set(s["profiles"])}


def image_user() -> str:
    """The last USER of the Dockerfile: who every edgeloop container runs as."""
    return re.findall(r"^USER (\S+)", (DOCKER / "Dockerfile").read_text(), re.M)[-1]


def readme_secret_commands(heading: str) -> str:
    text = SECRETS_README.read_text()
    section = text.split(heading, 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"no ```sh block under {heading!r} in {SECRETS_README}"
    return match.group(1)


def run_readme_commands(root: Path, commands: str) -> None:
    """Run the README's block in ``root`` (it starts with cd deploy/docker/secrets)."""
    assert os.getuid() == 0, "the README's commands chown files to the containers' users: run as root"
    (root / "deploy/docker/secrets").mkdir(parents=True)
    script = 'set -euo pipefail\nsudo() { "$@"; }\n' + commands
    out = subprocess.run(["bash", "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"the README's secret commands failed:\n{out.stderr}"


def edge_blocked_modules() -> list[str]:
    """Top-level modules installed here whose distributions requirements/edge.lock does not hold."""

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    locked = {
        norm(m)
        for m in re.findall(r"^([A-Za-z0-9_.-]+)==", (REPO / "requirements/edge.lock").read_text(), re.M)
    }
    blocked = []
    for module, dists in packages_distributions().items():
        if module.startswith("_") or module == "edgeloop" or not module.isidentifier():
            continue
        if not any(norm(d) in locked for d in dists):
            blocked.append(module)
    assert {"mlflow", "streamlit", "matplotlib"} <= set(blocked)
    return sorted(blocked)


SITECUSTOMIZE = """
import importlib.abc, sys
BLOCKED = frozenset({blocked!r})
class _SlimImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is not in the slim edge image (requirements/edge.lock)")
        return None
sys.meta_path.insert(0, _SlimImage())
"""


@dataclass
class Stack:
    root: Path
    broker_port: int
    password: str
    nats_port: int = 0
    nats_mqtt_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")[-3000:]


def uid_gid(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


class Mapper:
    """Container paths of one service -> host paths (configs, secrets, named volumes)."""

    def __init__(self, compose: dict[str, Any], service: dict[str, Any], root: Path, owner: tuple[int, int]):
        self.paths: dict[str, Path] = {}
        for item in service.get("configs", []):
            source = compose["configs"][item["source"]]["file"]
            self.paths[item["target"]] = (DOCKER / source).resolve()
        for item in service.get("secrets", []):
            name, target = (item, item) if isinstance(item, str) else (item["source"], item.get("target"))
            target = target or name
            if not target.startswith("/"):
                target = f"/run/secrets/{target}"
            self.paths[target] = root / "deploy/docker" / compose["secrets"][name]["file"]
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert not source.startswith((".", "/")), f"bind mount {volume}: use a compose config or secret"
            folder = root / "volumes" / source
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, *owner)
            self.paths[target] = folder
        for tmpfs in service.get("tmpfs", []):
            folder = Path(tempfile.mkdtemp(dir=root / "tmpfs"))
            os.chown(folder, *owner)
            self.paths[tmpfs] = folder

    def __call__(self, value: str) -> str:
        for target, host in sorted(self.paths.items(), key=lambda kv: -len(kv[0])):
            if value == target:
                return str(host)
            if value.startswith(target.rstrip("/") + "/"):
                return str(host) + "/" + value[len(target.rstrip("/")) + 1 :]
        return value


def mosquitto_conf(text: str, mapper: Mapper, port: int) -> str:
    lines = []
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "listener":
            line = f"listener {port} 127.0.0.1"
        elif key in ("password_file", "acl_file", "persistence_location"):
            line = f"{key} {mapper(value.strip())}"
            if key == "persistence_location":
                line += "/"
        lines.append(line)
    return "\n".join(lines) + "\n"


def nats_conf(text: str, mapper: Mapper, stack: Stack) -> str:
    """The shipped server config on the test's ports and volume; users.conf stays an include."""
    partitions = int(re.search(r"partition\((\d+),", text).group(1))  # type: ignore[union-attr]
    store = re.search(r'store_dir: "([^"]+)"', text).group(1)  # type: ignore[union-attr]
    return render_config(
        text,
        site="site-1",
        partitions=partitions,
        port=stack.nats_port,
        mqtt_port=stack.nats_mqtt_port,
        http_port=free_port(),
        store_dir=mapper(store),
        users='include "users.conf"',
        server_name="edgeloop-nats-0",
    )


def nats_argv(stack: Stack, service: dict[str, Any], mapper: Mapper, env: dict[str, str]) -> list[str]:
    """The service's entry point (start.sh) with its config, users file and secrets where it looks."""
    assert service["entrypoint"] == NATS_ENTRYPOINT and "command" not in service
    folder = stack.root / "nats-etc"
    folder.mkdir()
    conf = Path(mapper("/etc/nats/nats-server.conf")).read_text()
    (folder / "nats-server.conf").write_text(nats_conf(conf, mapper, stack))
    users = Path(mapper("/etc/nats/users.conf")).read_text()
    head, _, _ = users.rpartition("]")
    extra = "\n".join(device_user("site-1", d, f"pw-{d}") for d in EXTRA_DEVICES)
    (folder / "users.conf").write_text(f"{head}{extra}\n]\n")
    secrets = stack.root / "nats-secrets"
    secrets.mkdir()
    for item in service["secrets"]:
        shutil.copy(mapper(item["target"]), secrets / Path(item["target"]).name)
    env.update(NATS_SECRETS_DIR=str(secrets), NATS_CONFIG=str(folder / "nats-server.conf"))
    env["PATH"] = f"{Path(nats_server_binary() or 'nats-server').parent}:{os.environ['PATH']}"
    return [NATS_ENTRYPOINT[0], mapper(NATS_ENTRYPOINT[1])]


def start_stack(root: Path, services: dict[str, dict[str, Any]], sections: tuple[str, ...] = ()) -> Stack:
    compose = yaml.safe_load(COMPOSE.read_text())
    (root / "tmpfs").mkdir()
    # Each block starts in the repository root (cd deploy/docker/secrets): one subshell each.
    blocks = [readme_secret_commands(h) for h in ("## The default stack", *sections)]
    run_readme_commands(root, "\n".join(f"(\n{b})" for b in blocks))
    password = (root / "deploy/docker/secrets/broker_password").read_text()
    stack = Stack(
        root=root,
        broker_port=free_port(),
        password=password,
        nats_port=free_port(),
        nats_mqtt_port=free_port(),
    )
    try:
        start_services(stack, compose, services, root)
    except BaseException:
        stop(stack)  # what did start must not outlive the test
        raise
    return stack


def start_services(
    stack: Stack, compose: dict[str, Any], services: dict[str, dict[str, Any]], root: Path
) -> None:
    blocked = edge_blocked_modules()
    for name, service in services.items():
        if name in NOT_RUN:
            continue
        default_user = "0:0" if service["image"].startswith("nats:") else image_user()  # nats: root
        owner = uid_gid(service.get("user", default_user))
        mapper = Mapper(compose, service, root, owner)
        env = {k: mapper(str(v)) for k, v in service.get("environment", {}).items()}
        if service["image"].startswith("eclipse-mosquitto"):
            conf = root / "mosquitto.conf"
            conf.write_text(
                mosquitto_conf(
                    Path(mapper("/mosquitto/config/mosquitto.conf")).read_text(), mapper, stack.broker_port
                )
            )
            argv = [mosquitto_binary() or "mosquitto", "-c", str(conf)]
            assert service.get("command") is None and MOSQUITTO_CMD[1:] == [
                "-c",
                "/mosquitto/config/mosquitto.conf",
            ]
        elif service["image"].startswith("nats:"):
            argv = nats_argv(stack, service, mapper, env)
        else:
            assert service["image"] in EDGELOOP_IMAGES, f"{name}: unknown image {service['image']}"
            args = [mapper(str(a)) for a in service["command"]]
            ports = {}
            for flag in ("--port",):
                if flag in args:
                    i = args.index(flag) + 1
                    ports[args[i]] = str(free_port())
                    args[i] = ports[args[i]]
            if "--host" in args:
                args[args.index("--host") + 1] = "127.0.0.1"
            if "EDGELOOP_EDGE_METRICS_PORT" in env:
                env["EDGELOOP_EDGE_METRICS_PORT"] = str(free_port())
            if "HEALTHCHECK_URL" in env:
                url = env["HEALTHCHECK_URL"]
                for old, new in ports.items():
                    url = url.replace(f":{old}/", f":{new}/")
                env["HEALTHCHECK_URL"] = url
            if env.get("EDGELOOP_BROKER_URL") == "nats://nats:4222":  # host `nats`
                env["EDGELOOP_BROKER_URL"] = f"nats://127.0.0.1:{stack.nats_port}"
            else:
                env["EDGELOOP_BROKER_URL"] = f"mqtt://127.0.0.1:{stack.broker_port}"  # host `mosquitto`
            home = Path(mapper("/tmp"))
            python, site_folders = service_python(*owner)
            pythonpath = [str(REPO / "src"), *site_folders]
            if service["image"] == "edgeloop-edge:local":
                site = root / f"slim-{name}"
                site.mkdir()
                (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=blocked))
                pythonpath.insert(0, str(site))
            env.update(
                HOME=str(home), TMPDIR=str(home), PYTHONPATH=os.pathsep.join(pythonpath), PYTHONUNBUFFERED="1"
            )
            argv = [python, "-m", "edgeloop", *args]
        env.setdefault("PATH", os.environ["PATH"])
        stack.env[name] = env
        stack.logs[name] = root / f"{name}.log"
        stack.procs[name] = subprocess.Popen(
            argv,
            env=env,
            cwd=root,
            user=owner[0],
            group=owner[1],
            extra_groups=[],
            stdout=stack.logs[name].open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if name == "mosquitto":
            wait_for_port(stack.broker_port, stack, name)
        if name == "nats":
            wait_for_port(stack.nats_port, stack, name)
            wait_for_port(stack.nats_mqtt_port, stack, name)


def wait_for_port(port: int, stack: Stack, name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert stack.procs[name].poll() is None, f"{name} exited:\n{stack.log(name)}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"{name} does not listen on {port}:\n{stack.log(name)}")


def stop(stack: Stack, timeout: float = 15) -> dict[str, float]:
    """SIGTERM each process, dependents first as compose does; seconds each took (inf: killed)."""
    took: dict[str, float] = {}
    for name, proc in reversed(stack.procs.items()):
        started = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
            took[name] = time.monotonic() - started
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            took[name] = float("inf")
    return took


@pytest.fixture
def root() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are mode 0700 root, closed to the services' users.
    folder = Path(tempfile.mkdtemp(prefix="compose-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def healthy(stack: Stack, name: str) -> bool:
    """The image's HEALTHCHECK (deploy/docker/healthcheck.py) with the service's environment."""
    out = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py")], env=stack.env[name], capture_output=True, timeout=10
    )
    return out.returncode == 0


def test_compose_default_services_run_as_processes_and_answer(root: Path) -> None:
    assert mosquitto_binary(), "mosquitto is needed (apt-get install mosquitto)"
    services = compose_services(PROFILES)
    defaults = set(compose_services(set()))
    assert defaults & NOT_RUN.keys() == NOT_RUN.keys()
    assert "simulator" not in defaults, "the simulator must not start without a profile"
    started = time.monotonic()
    stack = start_stack(root, services)
    received: dict[str, int] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="compose-test", protocol=mqtt.MQTTv5)
    client.username_pw_set("edgeloop", stack.password)

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        device = orjson.loads(msg.payload).get("device") or msg.topic.split("/")[2]
        received[device] = received.get(device, 0) + 1

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe("edgeloop/+/+/prediction", qos=1)
    try:
        client.connect("127.0.0.1", stack.broker_port)
        client.loop_start()
        devices = int(
            services["simulator"]["command"][services["simulator"]["command"].index("--devices") + 1]
        )
        deadline = time.monotonic() + 90
        pending = set(stack.procs) - {"mosquitto"}
        while time.monotonic() < deadline and (
            pending or len(received) < devices or min(received.values()) < 3
        ):
            for name, proc in stack.procs.items():
                assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{stack.log(name)}"
            pending = {n for n in pending if not healthy(stack, n)}
            time.sleep(0.5)
        assert not pending, f"not healthy: {sorted(pending)}\n" + "\n".join(stack.log(n) for n in pending)
        assert len(received) == devices and min(received.values()) >= 3, (
            f"predictions per device: {received}\nedge log:\n{stack.log('edge')}"
        )
        up = time.monotonic() - started
    finally:
        client.loop_stop()
        client.disconnect()
        took = stop(stack)
    slow = {n: t for n, t in took.items() if t > 10}
    assert not slow, f"did not stop within 10 s of SIGTERM: {slow}"
    print(
        f"compose services up and answering in {up:.1f} s; stop times: "
        + ", ".join(f"{n} {t:.1f} s" for n, t in took.items())
    )


def test_unreadable_secret_stops_the_edge_with_one_line(root: Path) -> None:
    """The password file made as the old README said (umask 077 as root, no chown): one clear line."""
    compose = yaml.safe_load(COMPOSE.read_text())
    service = compose["services"]["edge"]
    secret = root / "deploy/docker" / compose["secrets"]["broker_password"]["file"]
    secret.parent.mkdir(parents=True)
    subprocess.run(
        ["bash", "-c", "umask 077; openssl rand -base64 24 | tr -d '\\n' > broker_password"],
        cwd=secret.parent,
        check=True,
    )
    (root / "tmpfs").mkdir()
    owner = uid_gid(image_user())
    mapper = Mapper(compose, service, root, owner)
    env = {k: mapper(str(v)) for k, v in service["environment"].items()}
    python, site_folders = service_python(*owner)
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), *site_folders]),
        HOME=mapper("/tmp"),
        PATH=os.environ["PATH"],
    )
    out = subprocess.run(
        [python, "-m", "edgeloop", *[mapper(a) for a in service["command"]]],
        env=env,
        cwd=root,
        user=owner[0],
        group=owner[1],
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert re.fullmatch(
        rf"error: broker\.password_file: cannot read {re.escape(str(secret))} "
        rf"\(mode 0600, owner uid 0 gid 0; "
        rf"this process runs as uid {owner[0]} gid {owner[1]}\): Permission denied",
        lines[0],
    ), lines[0]


def metric(stack: Stack, name: str, metric_name: str) -> float:
    port = stack.env[name]["EDGELOOP_EDGE_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{metric_name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_compose_scale_profile_partitions_devices_over_three_edges(root: Path) -> None:
    """nats + edge-0..2 of the scale profile: every reading answered exactly once, devices split."""
    assert mosquitto_binary(), "mosquitto is needed (apt-get install mosquitto)"
    assert nats_server_binary(), "nats-server is needed (apt-get install nats-server)"
    services = compose_services({"scale"})
    scale = {n: s for n, s in services.items() if "scale" in s.get("profiles", [])}
    assert sorted(scale) == ["edge-0", "edge-1", "edge-2", "nats"]
    started = time.monotonic()
    stack = start_stack(root, scale, ("## Profile `scale`",))
    secrets = root / "deploy/docker/secrets"
    examples = ("dev-001", "dev-002")  # the device users of deploy/nats/users.conf
    passwords = {d: (secrets / f"nats_{d.replace('-', '_')}_password").read_text().strip() for d in examples}
    passwords.update({d: f"pw-{d}" for d in EXTRA_DEVICES})
    readings = 20
    answers: list[tuple[str, int]] = []
    lock = threading.Lock()

    def on_prediction(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = orjson.loads(msg.payload)
        with lock:
            answers.append((payload["device"], payload["seq"]))

    observer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer", protocol=mqtt.MQTTv311)
    observer.username_pw_set("observer", (secrets / "nats_observer_password").read_text().strip())
    observer.on_message = on_prediction
    subscribed = threading.Event()
    observer.on_subscribe = lambda *_: subscribed.set()
    devices: dict[str, mqtt.Client] = {}
    try:
        edges = ["edge-0", "edge-1", "edge-2"]
        deadline = time.monotonic() + 60
        pending = set(edges)
        while pending and time.monotonic() < deadline:
            for name, proc in stack.procs.items():
                assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{stack.log(name)}"
            pending = {n for n in pending if not healthy(stack, n)}
            time.sleep(0.5)
        assert not pending, f"not healthy: {sorted(pending)}\n" + "\n".join(stack.log(n) for n in pending)
        observer.connect("127.0.0.1", stack.nats_mqtt_port)
        observer.loop_start()
        observer.subscribe("edgeloop/site-1/+/prediction", qos=1)
        assert subscribed.wait(30), f"no SUBACK from the NATS MQTT listener:\n{stack.log('nats')}"
        for device, password in passwords.items():
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
            client.username_pw_set(device, password)
            client.connect("127.0.0.1", stack.nats_mqtt_port)
            client.loop_start()
            devices[device] = client
        sent = []
        for seq in range(readings):
            for device, client in devices.items():
                sent.append(
                    client.publish(f"edgeloop/site-1/{device}/telemetry", reading(device, seq), qos=1)
                )
        for info in sent:
            info.wait_for_publish(30)
            assert info.is_published(), "the NATS MQTT listener did not acknowledge a reading"
        expected = {(d, s) for d in devices for s in range(readings)}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if set(answers) >= expected:
                    break
            time.sleep(0.2)
        time.sleep(2)  # a duplicate would come within the ack round trip
        with lock:
            got = list(answers)
        missing = expected - set(got)
        assert not missing, f"{len(missing)} readings unanswered, e.g. {sorted(missing)[:5]}\n" + "\n".join(
            stack.log(n) for n in edges
        )
        duplicated = {a for a in got if got.count(a) > 1}
        assert not duplicated, f"answered twice: {sorted(duplicated)[:5]}"
        answered = {n: metric(stack, n, "edgeloop_predictions_total") for n in edges}
        up = time.monotonic() - started
    finally:
        for client in [observer, *devices.values()]:
            client.disconnect()
            client.loop_stop()
        took = stop(stack)
    # Each edge stored the readings of its own devices only: the devices are split, none shared.
    owners: dict[str, set[str]] = {}
    for name in edges:
        volume = Path(scale[name]["volumes"][0].split(":")[0])
        with sqlite3.connect(root / "volumes" / volume / "edgeloop.db") as db:
            owners[name] = {row[0] for row in db.execute("SELECT DISTINCT device FROM samples")}
    assert set().union(*owners.values()) == set(devices)
    assert sum(len(o) for o in owners.values()) == len(devices), f"a device on two edges: {owners}"
    assert all(owners.values()), f"an edge owns no device: {owners}"
    assert sum(answered.values()) == len(expected), answered
    slow = {n: t for n, t in took.items() if t > 10}
    assert not slow, f"did not stop within 10 s of SIGTERM: {slow}"
    print(
        f"scale profile: {len(devices)} devices x {readings} readings answered once each in {up:.1f} s;"
        f" devices per edge {[len(owners[n]) for n in edges]}, predictions per edge {answered}"
    )
