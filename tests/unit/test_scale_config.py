"""Scale-out settings: which transport a URL selects, replica numbers, and what is refused."""

from __future__ import annotations

import pytest

from edgeloop.config import EdgeSettings, load_settings
from edgeloop.errors import ConfigError


def test_nats_url_selects_nats_with_its_default_port() -> None:
    s = load_settings(None, **{"broker.url": "nats://nats.local"})
    assert (s.broker.transport, s.broker.port, s.broker.tls) == ("nats", 4222, False)
    t = load_settings(None, **{"broker.url": "tls://nats.local:4443"})
    assert (t.broker.transport, t.broker.port, t.broker.tls) == ("nats", 4443, True)
    assert load_settings(None).broker.transport == "mqtt"


def test_replicas_behind_mqtt_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"edge.replicas > 1 needs a NATS broker.url"):
        load_settings(None, **{"edge.replicas": 2})


def test_replicas_from_the_environment_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_BROKER_URL", "nats://n:4222")
    monkeypatch.setenv("EDGELOOP_EDGE_REPLICAS", "3")
    monkeypatch.setenv("EDGELOOP_EDGE_ORDINAL", "3")
    with pytest.raises(ConfigError, match=r"edge.ordinal 3 must be below edge.replicas 3"):
        load_settings(None)
    monkeypatch.setenv("EDGELOOP_EDGE_ORDINAL", "2")
    assert load_settings(None).edge.resolved_ordinal() == 2


def test_ordinal_comes_from_the_host_name_like_a_statefulset_pod() -> None:
    assert EdgeSettings(replicas=3).resolved_ordinal("edge-2") == 2
    assert EdgeSettings(replicas=3).resolved_ordinal("edge-1.edge.default.svc") == 1
    with pytest.raises(ValueError, match="no trailing number"):
        EdgeSettings(replicas=3).resolved_ordinal("laptop")


def test_nats_credentials_need_a_nats_url_and_mqtt_retrains_need_mqtt() -> None:
    with pytest.raises(ConfigError, match="need a nats:// or tls://"):
        load_settings(None, **{"broker.creds_file": "/run/secrets/edge.creds"})
    with pytest.raises(ConfigError, match=r"edge.retrain: mqtt needs an MQTT broker.url"):
        load_settings(None, **{"broker.url": "nats://n", "edge.retrain": "mqtt"})
