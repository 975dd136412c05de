"""Validate every deployment artifact with the real tool for it; run by `make deploy-check`.

Installs the validators first (PyPI packages into their own venv, promtool and amtool extracted from
Debian's packages), then prints one line per validator with its verdict. A validator that cannot run is a
failure, never a skip. Files are found by globs, so new manifests, roles and rules are checked as added.
Only pip-audit may say "not checked": when no vulnerability database answers, it says so instead of
reporting "no known vulnerabilities".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
ANSIBLE = DEPLOY / "ansible"
OBSERVABILITY = DEPLOY / "observability"
REQUIREMENTS = DEPLOY / "check-requirements.txt"
DEFAULT_TOOLS = REPO / ".venv" / "deploy-tools"
# Debian package holding each Go binary we need. Only the binary is extracted (`apt-get download` and
# `dpkg-deb -x`): installing the packages would start a Prometheus and an Alertmanager daemon.
DEBIAN_BINARIES = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}
# Kubernetes versions the rendered manifests must satisfy (kubernetes-validate ships their schemas).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
TIMEOUT = 300.0
# A release with published advisories: if the audit service reports none for it, it did not answer.
AUDIT_PROBE = "jinja2==2.10"

OK, FAIL, NOT_CHECKED = "ok", "FAIL", "not checked"


class ToolError(Exception):
    """A validator could not be installed or started."""


@dataclass(frozen=True)
class Verdict:
    name: str
    status: str  # OK, FAIL or NOT_CHECKED
    detail: str
    output: str = ""  # the tool's own report, printed under the line when it failed


@dataclass(frozen=True)
class Tools:
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def path(self, name: str) -> str:
        tool = self.bin / name
        if not tool.exists():
            raise ToolError(f"{name} is not installed in {self.bin}")
        return str(tool)

    def env(self, **extra: str) -> dict[str, str]:
        # The tools' venv first on PATH: ansible-lint finds ansible, actionlint finds shellcheck.
        env = dict(os.environ, PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")
        env.update(extra)
        return env


def run(args: Sequence[str], tools: Tools, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(args),
            cwd=cwd,
            env=tools.env(**env),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"{Path(args[0]).name}: {exc}") from exc


def rel(paths: Iterable[Path]) -> str:
    return ", ".join(str(p.relative_to(REPO)) for p in paths)


# -- installing the validators --------------------------------------------------------------------------


def install(venv: Path) -> Tools:
    """Create or update the tools' venv and extract the Debian binaries; both are cached there."""
    tools = Tools(venv)
    if not (tools.bin / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT)
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = venv / ".requirements.sha256"
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        print(f"installing validators from {REQUIREMENTS.relative_to(REPO)} into {venv}", flush=True)
        pip = [str(tools.bin / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        out = subprocess.run(
            [*pip, "--only-binary=:all:", "-r", str(REQUIREMENTS)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if out.returncode != 0:
            raise ToolError(f"pip install -r {REQUIREMENTS.name} failed:\n{out.stdout}{out.stderr}")
        stamp.write_text(wanted + "\n")
    for binary, package in DEBIAN_BINARIES.items():
        if not (tools.bin / binary).exists():
            extract_debian_binary(package, binary, tools.bin)
    return tools


def extract_debian_binary(package: str, binary: str, dest: Path) -> None:
    print(f"extracting {binary} from Debian package {package}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 (apt downloads as the unprivileged _apt user where it can)
        download = ["apt-get", "download", "-qq", package]
        out = subprocess.run(download, cwd=tmp, capture_output=True, text=True, timeout=600, check=False)
        if out.returncode != 0 and os.geteuid() == 0:
            # A fresh machine has no package lists yet.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, check=False)
            out = subprocess.run(download, cwd=tmp, capture_output=True, text=True, timeout=600, check=False)
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if out.returncode != 0 or not debs:
            raise ToolError(f"apt-get download {package} failed (run apt-get update as root?): {out.stderr}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), f"{tmp}/root"], check=True, timeout=120)
        shutil.copy2(f"{tmp}/root/usr/bin/{binary}", dest / binary)


# -- the validators -------------------------------------------------------------------------------------


def kustomizations() -> list[Path]:
    """Every kustomization that renders on its own; a `kind: Component` renders through the overlays."""
    roots = set()
    for path in K8S.rglob("kustomization.y*ml"):
        doc = yaml.safe_load(path.read_text()) or {}
        if doc.get("kind") != "Component":
            roots.add(path.parent)
    return sorted(roots)


def jenkins_overlay(workdir: Path) -> Path:
    """The overlay the Jenkinsfile writes before `kubectl apply -k` (an image pinned on the base)."""
    overlay = workdir / "jenkins-overlay"
    overlay.mkdir()
    base = os.path.relpath(K8S / "base", overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{base}]\n"
        "images:\n  - {name: edgeloop, newName: registry.example.com/edgeloop, newTag: ci}\n"
    )
    return overlay


def check_kustomize(tools: Tools, workdir: Path) -> list[Verdict]:
    """Render every kustomization (and the Jenkins overlay), then validate the output against schemas."""
    roots = kustomizations()
    if not roots:
        return [Verdict("kustomize", FAIL, f"no kustomization under {K8S.relative_to(REPO)}")]
    rendered: list[Path] = []
    failures: list[str] = []
    kubectl = tools.path("kubectl")
    for root in [*roots, jenkins_overlay(workdir)]:
        out = run([kubectl, "kustomize", str(root)], tools)
        if out.returncode != 0:
            failures.append(f"{root}: {out.stderr.strip()}")
            continue
        target = workdir / f"rendered-{len(rendered)}.yaml"
        target.write_text(out.stdout)
        rendered.append(target)
    objects = sum(len([d for d in yaml.safe_load_all(p.read_text()) if d]) for p in rendered)
    verdicts = [
        Verdict(
            "kustomize",
            FAIL if failures else OK,
            f"kubectl kustomize rendered {len(rendered)} of {len(roots) + 1} ({rel(roots)} + the Jenkins "
            f"overlay), {objects} objects",
            "\n".join(failures),
        )
    ]
    errors: list[str] = []
    for version in KUBERNETES_VERSIONS:
        out = run(
            [tools.path("kubernetes-validate"), "--strict", "--quiet", "-k", version, *map(str, rendered)],
            tools,
        )
        if out.returncode != 0:
            errors.append(f"Kubernetes {version}:\n{out.stdout}{out.stderr}")
    verdicts.append(
        Verdict(
            "kubernetes-validate",
            FAIL if errors or not rendered else OK,
            f"rendered objects against the strict schemas of Kubernetes {' and '.join(KUBERNETES_VERSIONS)}",
            "\n".join(errors),
        )
    )
    return verdicts


def playbooks() -> list[Path]:
    found = []
    for path in sorted(ANSIBLE.glob("*.y*ml")):
        plays = yaml.safe_load(path.read_text())
        if isinstance(plays, list) and all(
            isinstance(p, dict) and ("hosts" in p or "import_playbook" in p) for p in plays
        ):
            found.append(path)
    return found


def check_ansible_syntax(tools: Tools, workdir: Path) -> list[Verdict]:
    books = playbooks()
    inventory = ANSIBLE / "inventory.example.ini"
    out = run(
        [tools.path("ansible-playbook"), "--syntax-check", "-i", str(inventory), *map(str, books)],
        tools,
        cwd=ANSIBLE,
        ANSIBLE_LOCAL_TEMP=str(workdir / "ansible-tmp"),
        ANSIBLE_HOME=str(workdir / "ansible-home"),
    )
    ok = out.returncode == 0 and bool(books)
    return [
        Verdict(
            "ansible-playbook",
            OK if ok else FAIL,
            f"--syntax-check of {rel(books) or 'no playbook'}",
            out.stdout + out.stderr,
        )
    ]


def check_ansible_lint(tools: Tools, workdir: Path) -> list[Verdict]:
    out = run(
        [tools.path("ansible-lint"), "--offline", "--nocolor", "--profile", "production"],
        tools,
        cwd=ANSIBLE,
        ANSIBLE_HOME=str(workdir / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(workdir / "ansible-tmp"),
        NO_COLOR="1",
    )
    summary = (out.stdout + out.stderr).strip().splitlines()
    last = summary[-1] if summary else ""
    return [
        Verdict(
            "ansible-lint",
            OK if out.returncode == 0 else FAIL,
            f"production profile: {last}",
            out.stdout + out.stderr,
        )
    ]


def check_hadolint(tools: Tools, workdir: Path) -> list[Verdict]:
    files = sorted({*REPO.glob("Dockerfile*"), *DEPLOY.rglob("Dockerfile*"), *DEPLOY.rglob("*.Dockerfile")})
    out = run(
        [tools.path("hadolint"), "--no-color", "--config", str(DEPLOY / "hadolint.yaml"), *map(str, files)],
        tools,
    )
    ok = out.returncode == 0 and bool(files)
    return [Verdict("hadolint", OK if ok else FAIL, rel(files) or "no Dockerfile", out.stdout + out.stderr)]


def compose_files() -> list[Path]:
    names = ("docker-compose*.y*ml", "compose*.y*ml")
    return sorted({p for name in names for p in DEPLOY.rglob(name)})


def check_compose(tools: Tools, workdir: Path) -> list[Verdict]:
    files = compose_files()
    failures = []
    for path in files:
        # No engine is needed for `config`: it resolves and validates the model against the spec.
        out = run(
            [tools.path("docker-compose"), "-f", str(path), "config", "--quiet"], tools, cwd=path.parent
        )
        if out.returncode != 0:
            failures.append(f"{path}: {out.stdout}{out.stderr}")
    ok = not failures and bool(files)
    return [
        Verdict(
            "docker compose config", OK if ok else FAIL, rel(files) or "no compose file", "\n".join(failures)
        )
    ]


def local_prometheus_config(path: Path, workdir: Path) -> tuple[Path, list[str]]:
    """A copy that promtool can check here: /etc/prometheus/X mapped to deploy/observability/X.

    Debian builds promtool without Kubernetes service discovery, so kubernetes_sd_configs blocks are
    checked against their documented keys here and replaced by a static target for promtool; the
    relabelling, rule files and alerting sections are still checked by promtool.
    """
    problems: list[str] = []
    text = re.sub(
        r"/etc/prometheus/([\w.-]+\.ya?ml)\b", lambda m: str(OBSERVABILITY / m.group(1)), path.read_text()
    )
    config = yaml.safe_load(text)
    for job in config.get("scrape_configs", []):
        for sd in job.pop("kubernetes_sd_configs", None) or []:
            problems += kubernetes_sd_problems(job.get("job_name", "?"), sd)
            job.setdefault("static_configs", []).append({"targets": ["pod.example:9108"]})
    copy = workdir / f"promtool-{path.name}"
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    return copy, problems


KUBERNETES_SD_KEYS = {
    "role", "api_server", "namespaces", "selectors", "attach_metadata", "kubeconfig_file",
    "basic_auth", "authorization", "oauth2", "follow_redirects", "enable_http2", "tls_config", "proxy_url",
}  # fmt: skip
KUBERNETES_SD_ROLES = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}


def kubernetes_sd_problems(job: str, sd: dict[str, Any]) -> list[str]:
    problems = [f"{job}: unknown kubernetes_sd_configs key {k!r}" for k in sd if k not in KUBERNETES_SD_KEYS]
    if sd.get("role") not in KUBERNETES_SD_ROLES:
        problems.append(
            f"{job}: kubernetes_sd_configs role {sd.get('role')!r} is not in {sorted(KUBERNETES_SD_ROLES)}"
        )
    names = (sd.get("namespaces") or {}).get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append(f"{job}: kubernetes_sd_configs namespaces.names must be a list of names")
    return problems


def rule_files() -> list[Path]:
    files = []
    for path in sorted(OBSERVABILITY.rglob("*.y*ml")):
        docs = list(yaml.safe_load_all(path.read_text()))  # a manifest file may hold several documents
        data = docs[0] if len(docs) == 1 else None
        if (
            isinstance(data, dict)
            and "groups" in data
            and "tests" not in path.relative_to(OBSERVABILITY).parts
        ):
            files.append(path)
    return files


def check_promtool(tools: Tools, workdir: Path) -> list[Verdict]:
    promtool = tools.path("promtool")
    configs = sorted(OBSERVABILITY.glob("prometheus*.y*ml"))
    failures, notes = [], []
    for path in configs:
        copy, problems = local_prometheus_config(path, workdir)
        failures += problems
        if "kubernetes_sd_configs" in path.read_text():
            notes.append(f"{path.name}: kubernetes_sd_configs by key check")
        out = run([promtool, "check", "config", str(copy)], tools)
        if out.returncode != 0:
            failures.append(f"{path}:\n{out.stdout}{out.stderr}")
    verdicts = [
        Verdict(
            "promtool check config",
            FAIL if failures or not configs else OK,
            rel(configs)
            + (f" ({'; '.join(notes)}: Debian's promtool has no Kubernetes discovery)" if notes else ""),
            "\n".join(failures),
        )
    ]
    rules = rule_files()
    out = run([promtool, "check", "rules", *map(str, rules)], tools)
    verdicts.append(
        Verdict(
            "promtool check rules",
            OK if out.returncode == 0 and rules else FAIL,
            rel(rules) or "no rule file",
            out.stdout + out.stderr,
        )
    )
    tests = sorted((OBSERVABILITY / "tests").glob("*.y*ml"))
    out = run([promtool, "test", "rules", *map(str, tests)], tools, cwd=OBSERVABILITY / "tests")
    gaps = untested_alerts(rules, tests)
    ok = out.returncode == 0 and bool(tests) and not gaps
    detail = f"{rel(tests) or 'no rule test'}: every alert fires in its scenario and stays quiet when healthy"
    report = out.stdout + out.stderr + "".join(f"\n{gap}" for gap in gaps)
    verdicts.append(Verdict("promtool test rules", OK if ok else FAIL, detail, report))
    return verdicts


def untested_alerts(rules: list[Path], tests: list[Path]) -> list[str]:
    """Alerts without a test case that expects them firing, and one that expects them quiet."""
    alerts = {
        rule["alert"]
        for path in rules
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in tests:
        for test in yaml.safe_load(path.read_text()).get("tests", []):
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    return [f"{a}: no rule test expects it firing" for a in sorted(alerts - firing)] + [
        f"{a}: no rule test expects it quiet" for a in sorted(alerts - quiet)
    ]


def check_amtool(tools: Tools, workdir: Path) -> list[Verdict]:
    files = sorted(OBSERVABILITY.glob("alertmanager*.y*ml"))
    out = run([tools.path("amtool"), "check-config", *map(str, files)], tools)
    ok = out.returncode == 0 and bool(files)
    return [
        Verdict(
            "amtool check-config",
            OK if ok else FAIL,
            rel(files) or "no Alertmanager config",
            out.stdout + out.stderr,
        )
    ]


def check_actionlint(tools: Tools, workdir: Path) -> list[Verdict]:
    files = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
    out = run([tools.path("actionlint"), "-no-color", *map(str, files)], tools)
    ok = out.returncode == 0 and bool(files)
    return [
        Verdict(
            "actionlint",
            OK if ok else FAIL,
            f"{rel(files)} (run: steps through shellcheck)",
            out.stdout + out.stderr,
        )
    ]


def shell_scripts() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    scripts = []
    for name in listed:
        path = REPO / name
        if not path.is_file() or path.is_symlink():
            continue
        if path.suffix in (".sh", ".bash"):
            scripts.append(path)
        elif not path.suffix:
            with path.open("rb") as f:
                if re.match(rb"#!\s*/\S*(env\s+)?(ba|da)?sh\b", f.readline()):
                    scripts.append(path)
    return sorted(scripts)


def check_shellcheck(tools: Tools, workdir: Path) -> list[Verdict]:
    files = shell_scripts()
    out = run([tools.path("shellcheck"), *map(str, files)], tools)
    ok = out.returncode == 0 and bool(files)
    return [
        Verdict("shellcheck", OK if ok else FAIL, rel(files) or "no shell script", out.stdout + out.stderr)
    ]


def audit_service(tools: Tools, workdir: Path) -> str | None:
    """The first vulnerability service that reports the advisories of a known-vulnerable release."""
    probe = workdir / "audit-probe.txt"
    probe.write_text(AUDIT_PROBE + "\n")
    for service in ("pypi", "osv"):
        out = run(
            [tools.path("pip-audit"), "-s", service, "--disable-pip", "--no-deps", "-r", str(probe),
             "--format", "json", "--progress-spinner", "off"],
            tools,
        )  # fmt: skip
        try:
            report = json.loads(out.stdout)
        except json.JSONDecodeError:
            continue  # unreachable: the tool failed before reporting
        if any(dep.get("vulns") for dep in report.get("dependencies", [])):
            return service
    return None


def check_pip_audit(tools: Tools, workdir: Path) -> list[Verdict]:
    service = audit_service(tools, workdir)
    if service is None:
        return [
            Verdict(
                "pip-audit",
                NOT_CHECKED,
                f"no vulnerability database answered (PyPI's and OSV's did not report the advisories of "
                f"{AUDIT_PROBE}); the project's dependencies were not audited",
            )
        ]
    # The project's environment (the interpreter running this script), not the tools' own venv.
    out = run(
        [tools.path("pip-audit"), "--strict", "-s", service, "--skip-editable", "--progress-spinner", "off"],
        tools,
        PIPAPI_PYTHON_LOCATION=sys.executable,
    )
    detail = f"--strict against {service}: " + (out.stdout.strip().splitlines() or ["no output"])[-1]
    return [Verdict("pip-audit", OK if out.returncode == 0 else FAIL, detail, out.stdout + out.stderr)]


Check = Callable[[Tools, Path], list[Verdict]]
CHECKS: dict[str, Check] = {
    "kustomize": check_kustomize,
    "ansible-syntax": check_ansible_syntax,
    "ansible-lint": check_ansible_lint,
    "hadolint": check_hadolint,
    "compose": check_compose,
    "promtool": check_promtool,
    "amtool": check_amtool,
    "actionlint": check_actionlint,
    "shellcheck": check_shellcheck,
    "pip-audit": check_pip_audit,
}


def run_check(check: Check, name: str, tools: Tools, workdir: Path) -> list[Verdict]:
    try:
        return check(tools, workdir)
    except ToolError as exc:
        return [Verdict(name, FAIL, f"could not run: {exc}")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/check.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  make deploy-check                         # what `make test` runs\n"
        "  .venv/bin/python deploy/check.py --only promtool --only kustomize\n"
        "  .venv/bin/python deploy/check.py --tools /tmp/deploy-tools -v",
    )
    parser.add_argument(
        "--tools",
        type=Path,
        default=DEFAULT_TOOLS,
        help=f"validators' venv (default {DEFAULT_TOOLS.relative_to(REPO)})",
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(CHECKS), help="run only these validators (repeatable)"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print every tool's report, not only failures'"
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    try:
        tools = install(args.tools.resolve())
    except (ToolError, subprocess.SubprocessError, OSError) as exc:
        print(f"deploy-check: FAIL: could not install the validators: {exc}", file=sys.stderr)
        return 1
    selected = {name: CHECKS[name] for name in (args.only or CHECKS)}
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
        workdirs = {name: Path(tmp) / name for name in selected}
        for workdir in workdirs.values():
            workdir.mkdir()
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {
                name: pool.submit(run_check, check, name, tools, workdirs[name])
                for name, check in selected.items()
            }
            verdicts = [v for name in selected for v in futures[name].result()]
    width = max(len(v.name) for v in verdicts)
    for v in verdicts:
        print(f"{v.name:<{width}}  {v.status:<11}  {v.detail}")
        if v.output.strip() and (v.status == FAIL or args.verbose):
            print("\n".join("    " + line for line in v.output.strip().splitlines()))
    failed = [v.name for v in verdicts if v.status == FAIL]
    unchecked = [v.name for v in verdicts if v.status == NOT_CHECKED]
    took = time.monotonic() - started
    print(
        f"deploy-check: {len(verdicts) - len(failed) - len(unchecked)} of {len(verdicts)} validators passed"
        + (f", not checked: {', '.join(unchecked)}" if unchecked else "")
        + (f", FAILED: {', '.join(failed)}" if failed else "")
        + f" ({took:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
