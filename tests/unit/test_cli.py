"""The command line as a user meets it: one-line errors naming the flag, confirmations, help, imports."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeloop.cli import app
from edgeloop.engine.features import training_pairs
from edgeloop.models.forecasters import LinearForecaster
from edgeloop.models.modelfile import save_model
from edgeloop.registry.local import LocalRegistry
from edgeloop.scopes import version_label

runner = CliRunner()
HEAVY = ("pandas", "scipy", "sklearn", "matplotlib", "mlflow", "river", "streamlit", "lightgbm")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    # Events are published when a broker answers; never reach a shared broker on the standard port.
    monkeypatch.setenv("EDGELOOP_BROKER_URL", f"mqtt://127.0.0.1:{closed_port()}")


def data_with_models(tmp_path: Path, versions: int = 2, scope: str = "voc_ppb") -> Path:
    data = tmp_path / "data"
    reg = LocalRegistry(data / "models")
    y = np.asarray([100 + ((i * 7) % 13) for i in range(300)], dtype=float)
    model = LinearForecaster(5).fit(*training_pairs(y, 5))
    for _ in range(versions):
        v = reg.next_version(scope)
        meta = {"scope": scope, "target": scope, "version": v, "label": version_label(scope, v)}
        save_model(reg.version_dir(scope, v), model, meta)
        reg.promote(scope, v)
    return data


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_a_bad_broker_flag_is_named_as_the_flag() -> None:
    code, out = run("edge", "--broker", "http://x")
    assert code == 2
    assert "--broker 'http://x'" in out and "mqtt://" in out
    assert "YAML key" not in out and "EDGELOOP_URL" not in out and "defaults and environment" not in out


def test_a_bad_drift_is_one_line_not_a_traceback() -> None:
    code, out = run("demo", "--drift", "x", "--no-dashboard")
    assert code == 2
    assert out.strip().splitlines() == [out.strip()] and out.startswith("error: --drift 'x'")


def test_a_data_dir_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    code, out = run("models", "list", "--data-dir", str(tmp_path / "typo"))
    assert code == 2 and "does not exist" in out and "--data-dir" in out


def test_promoting_a_missing_version_lists_those_that_exist(tmp_path: Path) -> None:
    data = data_with_models(tmp_path)
    code, out = run("models", "promote", "voc_ppb:v9", "--data-dir", str(data))
    assert code == 1
    assert "voc_ppb:v9 does not exist" in out and "voc_ppb:v1, voc_ppb:v2 (champion)" in out
    code, out = run("models", "promote", "co2:v1", "--data-dir", str(data))
    assert code == 1 and "scopes: voc_ppb" in out


def test_rollback_needs_confirmation_and_then_acts(tmp_path: Path) -> None:
    data = data_with_models(tmp_path)
    code, out = run("models", "rollback", "voc_ppb", "--data-dir", str(data))
    assert code == 2 and "--yes" in out
    assert LocalRegistry(data / "models").champion("voc_ppb") == 2  # nothing happened
    code, out = run("models", "rollback", "voc_ppb", "--data-dir", str(data), "--yes")
    assert code == 0, out
    assert LocalRegistry(data / "models").champion("voc_ppb") == 1


def test_models_list_is_a_table_and_json_with_decisions(tmp_path: Path) -> None:
    data = data_with_models(tmp_path, versions=3)
    assert run("models", "rollback", "voc_ppb", "--data-dir", str(data), "--yes")[0] == 0
    code, out = run("models", "list", "--data-dir", str(data))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "KIND", "CREATED"]
    by_label = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in lines[1:]}
    assert by_label["voc_ppb:v2"].startswith("*") and by_label["voc_ppb:v2"].endswith("champion")
    assert by_label["voc_ppb:v3"].endswith("rolled back")
    assert by_label["voc_ppb:v1"].endswith("retired")
    code, out = run("models", "list", "--data-dir", str(data), "--json")
    rows = {r["label"]: r for r in json.loads(out)}
    assert rows["voc_ppb:v2"]["champion"] and rows["voc_ppb:v3"]["decision"] == "rolled back"


def test_version_help_examples_and_flags_without_a_value() -> None:
    code, out = run("--version")
    assert code == 0 and out.startswith("edgeloop ")
    for command in (
        ["edge"], ["simulate"], ["replay"], ["train"], ["trainer"], ["mlflow"], ["dashboard"], ["demo"],
        ["models", "list"], ["models", "promote"], ["models", "rollback"], ["config", "show"], ["bench"],
    ):  # fmt: skip
        code, out = run(*command, "--help")
        assert code == 0 and "Examples:" in out and "$ edgeloop" in out, command
        assert "<bool>" not in out, command


def heavy_after_import(module: str) -> str:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_importing_the_cli_pulls_in_no_heavy_library() -> None:
    assert heavy_after_import("edgeloop.cli").strip() == ""
    # And the check can fail: the evaluate command does pull them in when it runs.
    assert "pandas" in heavy_after_import("edgeloop.evaluate.cli")


def test_evaluate_passes_its_arguments_through() -> None:
    code, out = run("evaluate", "--help")
    assert code == 0 and "--dataset" in out and "edgeloop evaluate" in out
    code, out = run("evaluate", "--strategies", "nonsense", "--dataset", "sim:stationary")
    assert code == 2 and "error:" in out


def test_config_show_masks_the_webhook_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "EDGELOOP_ALERTS_WEBHOOK_URL", "https://user:pw@hooks.example.com/services/T0/B0/s3cr3t"
    )
    code, out = run("config", "show", "--json")
    assert code == 0
    shown = json.loads(out)["alerts"]["webhook_url"]
    assert "s3cr3t" not in out and "pw" not in shown and shown.startswith("https://hooks.example.com/")


def test_a_webhook_that_is_not_http_is_refused_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_ALERTS_WEBHOOK_URL", "file:///etc/passwd")
    code, out = run("config", "show")
    assert code == 2 and "webhook_url" in out and "http" in out
