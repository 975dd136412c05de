"""edgeloop reads two private paho fields and overrides one private method (see
``edgeloop.adapters.mqtt_client``). This test fails loudly on a paho version nobody checked them on.

To verify a new paho version: read ``Client._update_inflight``, ``_handle_pubackcomp`` and
``publish`` in paho/mqtt/client.py; the shortcut is valid while ``_out_messages`` holds every
unacknowledged outgoing message, ``_inflight_messages`` counts those sent, and ``publish`` reads
``_max_inflight_messages`` per call. Read ``_packet.decode_publish`` and ``properties.Properties``:
``_LeanProperties`` is valid while decode_publish builds ``Properties(PacketTypes.PUBLISH)`` by its
module-global name and calls ``unpack`` once, and ``Properties`` only reads its ``types``, ``names``
and ``properties`` tables. Then add the version to ``PAHO_VERIFIED`` and update the digests.
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


# sha256 of paho 2.2.0's _packet.decode_publish source: it builds a Properties by its module-global name
# for every incoming MQTT 5 PUBLISH, which _LeanProperties stands in for.
DECODE_PUBLISH_SHA256 = "50c158487fa3d96ecac8944c9c10b2a63d3955970512a2e4fa72f34713d17235"


def test_paho_decode_publish_is_as_read() -> None:
    from paho.mqtt import _packet

    source = inspect.getsource(_packet.decode_publish)
    assert hashlib.sha256(source.encode()).hexdigest() == DECODE_PUBLISH_SHA256, (
        "paho's _packet.decode_publish changed: re-verify _LeanProperties (see this test's docstring)"
    )
    mqtt_client.make_client(BrokerSettings(), role="t")
    assert (_packet.Properties is mqtt_client._LeanProperties) == mqtt_client.PRIVATE_API_OK


def _property_blocks() -> list[bytes]:
    """Property sections of a PUBLISH as paho packs them: none, and a few kinds."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    blocks = [b"\x00"]
    for fill in (
        {"ContentType": "application/json"},
        {"UserProperty": [("a", "1"), ("b", "2")], "MessageExpiryInterval": 60},
        {"PayloadFormatIndicator": 1, "ResponseTopic": "r/t", "CorrelationData": b"\x00\x01"},
    ):
        props = Properties(PacketTypes.PUBLISH)
        for name, value in fill.items():
            setattr(props, name, value)
        blocks.append(bytes(props.pack()))
    return blocks


def test_lean_properties_decode_every_publish_as_paho_does() -> None:
    import struct

    from paho.mqtt import _packet
    from paho.mqtt.enums import MQTTProtocolVersion
    from paho.mqtt.properties import Properties

    mqtt_client.make_client(BrokerSettings(), role="t")
    for block in _property_blocks():
        packet = struct.pack("!H", 3) + b"a/b" + struct.pack("!H", 7) + block + b'{"x": 1}'
        lean = _packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5)
        _packet.Properties = Properties
        try:
            full = _packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5)
        finally:
            mqtt_client._use_lean_properties()
        assert type(lean.properties) is (
            mqtt_client._LeanProperties if mqtt_client.PRIVATE_API_OK else Properties
        )
        assert lean.properties.json() == full.properties.json()
        assert (lean.payload, lean.topic, lean.mid, lean.qos) == (
            full.payload,
            full.topic,
            full.mid,
            full.qos,
        )
        assert lean.payload == b'{"x": 1}'
