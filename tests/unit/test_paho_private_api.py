"""edgeloop reads two private paho fields and overrides one private method (see
``edgeloop.adapters.mqtt_client``). This test fails loudly on a paho version nobody checked them on.

To verify a new paho version: read ``Client._update_inflight``, ``_handle_pubackcomp`` and
``publish`` in paho/mqtt/client.py; the shortcut is valid while ``_out_messages`` holds every
unacknowledged outgoing message, ``_inflight_messages`` counts those sent, and ``publish`` reads
``_max_inflight_messages`` per call. Then add the version to ``PAHO_VERIFIED`` and update the digest.
"""

from __future__ import annotations

import hashlib
import inspect

import paho.mqtt.client as mqtt

from edgeloop.adapters import mqtt_client
from edgeloop.config import BrokerSettings

# sha256 of paho 2.2.0's Client._update_inflight source, the code the shortcut stands in front of.
UPDATE_INFLIGHT_SHA256 = "d11feb21cf855b12bbda2ccccfed5655864a4eec23f19286f4721e5ec31d46b1"


def test_paho_version_was_verified() -> None:
    assert mqtt_client.PAHO_VERSION in mqtt_client.PAHO_VERIFIED, (
        f"paho-mqtt {mqtt_client.PAHO_VERSION} was not verified for edgeloop's use of its private API; "
        "see this test's docstring, then add it to PAHO_VERIFIED"
    )


def test_paho_internals_are_as_read() -> None:
    source = inspect.getsource(mqtt.Client._update_inflight)
    assert hashlib.sha256(source.encode()).hexdigest() == UPDATE_INFLIGHT_SHA256, (
        "paho's Client._update_inflight changed: re-verify _FastAckClient (see this test's docstring)"
    )
    assert "_max_inflight_messages" in inspect.getsource(mqtt.Client.publish)
    client = mqtt_client.make_client(BrokerSettings(), role="t")
    assert isinstance(client._out_messages, dict)
    assert isinstance(client._inflight_messages, int)
    assert client._max_inflight_messages == mqtt_client.MAX_INFLIGHT


def test_verified_paho_gets_the_shortcut() -> None:
    client = mqtt_client.make_client(BrokerSettings(), role="t")
    assert isinstance(client, mqtt_client._FastAckClient) == mqtt_client.PRIVATE_API_OK
