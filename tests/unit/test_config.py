"""Settings: layering, stable env names, errors that name the key, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.config import SECRET_MASK, load_settings
from edgeloop.errors import ConfigError


def test_stable_env_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGELOOP_BROKER_URL", "mqtts://broker.example:8883")
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EDGELOOP_SITE", "plant-7")
    monkeypatch.setenv("EDGELOOP_DRIFT_POLICY", "relative")
    s = load_settings()
    assert (s.broker.host, s.broker.port, s.broker.tls) == ("broker.example", 8883, True)
    assert s.data_dir == tmp_path and s.site == "plant-7" and s.drift.policy == "relative"


def test_yaml_then_env_then_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("site: from-yaml\nmodel:\n  lags: 7\n  targets: [temp_c, voc_ppb]\n")
    assert load_settings(cfg).model.lags == 7
    monkeypatch.setenv("EDGELOOP_MODEL_LAGS", "9")
    s = load_settings(cfg)
    assert s.model.lags == 9 and s.site == "from-yaml" and s.model.targets == ["temp_c", "voc_ppb"]
    assert load_settings(cfg, **{"model.lags": 3}).model.lags == 3


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("broker:\n  url: http://x\n", "broker.url"),
        ("model:\n  lags: 0\n", "model.lags"),
        ("drift:\n  policy: magic\n", "drift.policy"),
        ("brokr:\n  url: mqtt://x\n", "brokr"),
        ("drift:\n  policy: rmse-threshold\n", "drift.threshold"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert key in str(info.value)


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_BROKER_PASSWORD", "hunter2")
    monkeypatch.setenv("EDGELOOP_MLFLOW_TRACKING_URI", "postgresql://u:pw@db/mlflow")
    s = load_settings()
    shown = str(s.masked())
    assert "hunter2" not in shown and "pw@" not in shown and SECRET_MASK in shown
    assert "hunter2" not in repr(s)
    assert s.broker.resolved_password() == "hunter2"


def test_password_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    monkeypatch.setenv("EDGELOOP_BROKER_PASSWORD_FILE", str(secret))
    assert load_settings().broker.resolved_password() == "from-file"
    monkeypatch.setenv("EDGELOOP_BROKER_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="password_file"):
        load_settings()


def test_password_file_that_is_a_directory_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a bind mount of a missing host file used to produce: a directory in its place.
    (tmp_path / "broker_password").mkdir()
    monkeypatch.setenv("EDGELOOP_BROKER_PASSWORD_FILE", str(tmp_path / "broker_password"))
    with pytest.raises(ConfigError, match=r"broker\.password_file: .* it is a directory") as caught:
        load_settings()
    assert "\n" not in str(caught.value)
