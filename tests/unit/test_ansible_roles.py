"""The Ansible roles as Ansible renders them: broker URLs from their parts, per-host telemetry filters
that must not overlap, and hardened systemd units that systemd accepts."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeloop.config import Settings

ANSIBLE = Path(__file__).resolve().parents[2] / "deploy" / "ansible"
spec = importlib.util.spec_from_file_location(
    "edgeloop_topics", ANSIBLE / "filter_plugins/edgeloop_topics.py"
)
assert spec and spec.loader
topics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(topics)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("edgeloop/s/+/telemetry", "edgeloop/s/+/telemetry", True),
        ("edgeloop/s/+/telemetry", "edgeloop/s/dev-1/telemetry", True),
        ("edgeloop/+/dev-1/telemetry", "edgeloop/s/dev-1/telemetry", True),
        ("edgeloop/#", "edgeloop/s/dev-1/telemetry", True),
        ("edgeloop/s/#", "edgeloop/s", True),
        ("edgeloop/s/dev-1/telemetry", "edgeloop/s/dev-2/telemetry", False),
        ("edgeloop/a/+/telemetry", "edgeloop/b/+/telemetry", False),
        ("edgeloop/s/+", "edgeloop/s/+/telemetry", False),
    ],
)
def test_mqtt_filter_overlap(a: str, b: str, overlap: bool) -> None:
    assert topics.filters_overlap(a, b) is overlap
    assert topics.filters_overlap(b, a) is overlap


def ansible_tool(name: str) -> str:
    tool = Path(sys.executable).parent / name
    found = str(tool) if tool.exists() else shutil.which(name)
    assert found, f"{name} is missing: pip install ansible-core (the dev extra has it)"
    return found


def rendered_vars(tmp_path: Path, inventory: str, names: list[str]) -> dict[str, dict[str, object]]:
    """Variables of every [edge] host as Ansible templates them (group_vars + role defaults)."""
    (tmp_path / "inventory.ini").write_text(inventory)
    # A role with the edgeloop role's defaults (so variable precedence is the real one) whose tasks
    # write the templated variables out.
    role = tmp_path / "roles/show"
    (role / "defaults").mkdir(parents=True)
    (role / "tasks").mkdir()
    (role / "defaults/main.yml").symlink_to(ANSIBLE / "roles/edgeloop/defaults/main.yml")
    values = "{{ {" + ", ".join(f"'{n}': {n}" for n in names) + "} | to_json }}"
    conflicts = (
        "{{ groups['edge'] | edgeloop_topic_conflicts(hostvars, edgeloop_telemetry_topics) | to_json }}"
    )
    tasks = [
        {
            "name": "Write",
            "delegate_to": "localhost",
            "ansible.builtin.copy": {
                "content": values,
                "dest": f"{tmp_path}/{{{{ inventory_hostname }}}}.json",
            },
        },
        {
            "name": "Conflicts",
            "run_once": True,
            "delegate_to": "localhost",
            "ansible.builtin.copy": {"content": conflicts, "dest": str(tmp_path / "conflicts.json")},
        },
    ]
    (role / "tasks/main.yml").write_text(yaml.safe_dump(tasks))
    play = [{"name": "Show", "hosts": "edge", "gather_facts": False, "roles": ["show"]}]
    (tmp_path / "show.yml").write_text(yaml.safe_dump(play))
    # group_vars/ and filter_plugins/ are found next to the inventory and the playbook: link them.
    (tmp_path / "group_vars").symlink_to(ANSIBLE / "group_vars")
    (tmp_path / "filter_plugins").symlink_to(ANSIBLE / "filter_plugins")
    out = subprocess.run(
        [ansible_tool("ansible-playbook"), "-i", "inventory.ini", "-c", "local", "show.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    section = inventory.split("[edge]\n")[1].split("\n[")[0]
    hosts = [line.split()[0] for line in section.splitlines() if line.strip() and not line.startswith("#")]
    result = {h: json.loads((tmp_path / f"{h}.json").read_text()) for h in hosts}
    result["conflicts"] = {"list": json.loads((tmp_path / "conflicts.json").read_text())}
    return result


def test_broker_urls_from_scheme_address_and_port(tmp_path: Path) -> None:
    example = (ANSIBLE / "inventory.example.ini").read_text()
    extra = (
        "edge-03.example.net edgeloop_broker_scheme=mqtt edgeloop_broker_port=11883"
        " edgeloop_telemetry_topics='[\"edgeloop/{site}/dev-009/telemetry\"]'\n"
        "edge-04.example.net edgeloop_site=hall-2\n"
    )
    example = example.replace("[edge]\n", "[edge]\n" + extra)
    got = rendered_vars(tmp_path, example, ["edgeloop_broker_url", "edgeloop_telemetry_topics"])
    assert got["edge-01.example.net"]["edgeloop_broker_url"] == "mqtt://127.0.0.1:1883"  # the broker's host
    assert got["edge-02.example.net"]["edgeloop_broker_url"] == "mqtts://edge-01.example.net:8883"
    assert got["edge-03.example.net"]["edgeloop_broker_url"] == "mqtt://edge-01.example.net:11883"
    # The example inventory gives each edge its own devices; another site is apart by its topics.
    assert got["conflicts"]["list"] == []


def test_two_edges_with_the_default_filters_on_one_broker_are_refused(tmp_path: Path) -> None:
    inventory = "[broker]\nb1\n[edge]\ne1\ne2\n[prometheus]\n"
    got = rendered_vars(tmp_path, inventory, ["edgeloop_broker_url"])
    assert got["conflicts"]["list"] == [
        "e1 (edgeloop/site-1/+/telemetry) and e2 (edgeloop/site-1/+/telemetry) on broker b1"
    ]


def test_nats_edges_get_replicas_and_ordinals(tmp_path: Path) -> None:
    inventory = "[broker]\nb1\n[edge]\ne1\ne2\ne3\n[edge:vars]\nedgeloop_broker_scheme=nats\n[prometheus]\n"
    got = rendered_vars(
        tmp_path, inventory, ["edgeloop_broker_url", "edgeloop_edge_replicas", "edgeloop_edge_ordinal"]
    )
    assert got["conflicts"]["list"] == []
    assert [got[h]["edgeloop_edge_ordinal"] for h in ("e1", "e2", "e3")] == [0, 1, 2]
    assert got["e2"]["edgeloop_broker_url"] == "nats://b1:4222" and got["e2"]["edgeloop_edge_replicas"] == 3


def render(template: Path, **variables: object) -> str:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    env.filters["bool"] = lambda value: str(value).lower() in ("true", "yes", "1")
    return env.from_string(template.read_text()).render(ansible_managed="managed by Ansible", **variables)


def test_config_template_for_per_host_topics() -> None:
    text = render(
        ANSIBLE / "roles/edgeloop/templates/edgeloop.yaml.j2",
        edgeloop_site="site-1",
        edgeloop_data_dir="/var/lib/edgeloop",
        edgeloop_broker_url="mqtt://127.0.0.1:1883",
        edgeloop_broker_scheme="mqtt",
        edgeloop_broker_username="edgeloop",
        edgeloop_broker_ca_pem="",
        edgeloop_telemetry_topics=["edgeloop/{site}/dev-001/telemetry"],
        edgeloop_metrics_port=9108,
        edgeloop_retrain="local",
        edgeloop_targets=["voc_ppb"],
    )
    settings = Settings(**yaml.safe_load(text))
    assert settings.topics.telemetry_filters(settings.site) == ["edgeloop/site-1/dev-001/telemetry"]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="optional: systemd-analyze (Debian package systemd) verifies the rendered units",
)
@pytest.mark.parametrize("unit", ["edgeloop-edge.service", "edgeloop-trainer.service"])
def test_hardened_units_pass_systemd_analyze(tmp_path: Path, unit: str) -> None:
    text = render(
        ANSIBLE / f"roles/edgeloop/templates/{unit}.j2",
        edgeloop_venv=str(Path(sys.executable).parent.parent),  # an ExecStart that exists here
        edgeloop_data_dir=str(tmp_path),
        edgeloop_cpu_quota="150%",
        edgeloop_memory_max="1536M",
        inventory_hostname_short="edge-01",
    )
    for setting in (
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n",
        "UMask=0027\n",
        "NoNewPrivileges=true\n",
    ):
        assert setting in text, setting
    (tmp_path / unit).write_text(text)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    exposure = float(security.stdout.split("Overall exposure level for")[1].split(":")[1].split()[0])
    print(f"{unit} exposure {exposure}")
    assert exposure < 3.0, security.stdout[-2000:]  # "OK" band; the units before hardening scored 7.0
