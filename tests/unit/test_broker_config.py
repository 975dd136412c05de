"""Broker and delivery settings: credentials in broker.url are used, never shown; flow-control bounds."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgeloop.cli import app
from edgeloop.config import SECRET_MASK, BrokerSettings, load_settings
from edgeloop.errors import ConfigError

PASSWORD = "pa:ss@w/rd"
URL = "mqtt://edge-7:pa%3Ass%40w%2Frd@broker.example:1884"


def test_credentials_in_url_are_used_and_taken_out_of_it() -> None:
    b = BrokerSettings(url=URL)
    assert (b.username, b.resolved_password()) == ("edge-7", PASSWORD)
    assert b.url == "mqtt://broker.example:1884"
    assert (b.host, b.port) == ("broker.example", 1884)


def test_user_only_url() -> None:
    b = BrokerSettings(url="mqtts://reader@broker.example")
    assert (b.username, b.password, b.url) == ("reader", None, "mqtts://broker.example")


def test_config_show_and_masked_never_print_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_BROKER_URL", URL)
    masked = load_settings().masked()
    assert masked["broker"]["password"] == SECRET_MASK
    assert masked["broker"]["url"] == "mqtt://broker.example:1884"
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "pa%3Ass" not in result.output and "ss@w" not in result.output
    assert "edge-7" in result.output


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({"broker.username": "other"}, "differs from broker.username"),
        ({"broker.password": "x"}, "broker.password(_file) is set too"),
    ],
)
def test_conflicting_credentials_are_refused_in_one_line(overrides: dict[str, str], text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, **{**overrides, "broker.url": URL})
    message = str(info.value)
    assert text in message
    assert "pa%3Ass" not in message and PASSWORD not in message


def test_bad_url_with_credentials_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, **{"broker.url": "http://u:hunter2@broker.example"})
    assert "scheme must be" in str(info.value) and "hunter2" not in str(info.value)


def test_inbox_must_hold_the_receive_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_EDGE_INBOX_MAX", "10")
    monkeypatch.setenv("EDGELOOP_BROKER_RECEIVE_MAXIMUM", "100")
    with pytest.raises(ConfigError, match=r"edge\.inbox_max must be at least broker\.receive_maximum"):
        load_settings()


def test_connect_wait_default_suits_orchestrated_boot() -> None:
    assert BrokerSettings().connect_wait >= 60  # compose/Kubernetes may start the broker later
