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
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
import yaml

from edgeloop.adapters.broker import mosquitto_binary

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
SECRETS_README = DOCKER / "secrets" / "README.md"
PROFILES = {"demo"}
# Default services this test cannot run, and why; any other default service must run.
NOT_RUN = {"prometheus": "no prom/prometheus here; its config and rules are checked by promtool"}
# What the images would run (their ENTRYPOINT/CMD), for services without a `command`.
MOSQUITTO_CMD = ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
EDGELOOP_IMAGES = {"edgeloop:local", "edgeloop-edge:local"}


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


def start_stack(root: Path, services: dict[str, dict[str, Any]]) -> Stack:
    compose = yaml.safe_load(COMPOSE.read_text())
    (root / "tmpfs").mkdir()
    run_readme_commands(root, readme_secret_commands("## The default stack"))
    password = (root / "deploy/docker/secrets/broker_password").read_text()
    stack = Stack(root=root, broker_port=free_port(), password=password)
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
        owner = uid_gid(service.get("user", image_user()))
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
