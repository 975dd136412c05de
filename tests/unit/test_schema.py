"""The telemetry parser: the contract, the mapping for foreign publishers, and hostile input."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.config import Settings
from edgeloop.errors import MessageError
from edgeloop.telemetry.schema import (
    REJECT_REASONS,
    Event,
    Forecast,
    Prediction,
    TelemetryParser,
    parse_ts,
    parser_from_settings,
)

TARGETS = ["temp_c", "humidity", "voc_ppb"]


def parser(**kw: object) -> TelemetryParser:
    return TelemetryParser(TARGETS, ranges=Settings().limits.ranges, **kw)  # type: ignore[arg-type]


def test_contract_payload_parses() -> None:
    payload = {"device": "d1", "ts": 1700000000.5, "seq": 7, "temp_c": 21.5, "humidity": 40, "voc_ppb": 120.0}
    r = parser().parse("edgeloop/s/d1/telemetry", orjson.dumps({**payload, "extra": [1, 2]}))
    assert (r.device, r.ts, r.seq) == ("d1", 1700000000.5, 7)
    assert r.values == {"temp_c": 21.5, "humidity": 40.0, "voc_ppb": 120.0}


def test_device_from_topic_and_iso_timestamp() -> None:
    r = parser().parse("edgeloop/s/kitchen/telemetry", b'{"ts": "2024-01-01T00:00:01Z", "voc_ppb": 1}')
    assert r.device == "kitchen" and r.ts == 1704067201.0 and r.seq is None


def test_foreign_publisher_mapping() -> None:
    s = Settings(
        topics={"telemetry": ["roomA/sensors"], "device_level": 0},  # type: ignore[arg-type]
        mapping={"fields": {"timestamp": "ts"}},  # type: ignore[arg-type]
        model={"targets": TARGETS},  # type: ignore[arg-type]
    )
    payload = b'{"timestamp": "2024-05-01T12:00:00", "temp_c": 22.1, "humidity": 51.0, "voc_ppb": 210.0}'
    r = parser_from_settings(s).parse("roomA/sensors", payload)
    assert r.device == "roomA" and r.values["voc_ppb"] == 210.0 and r.ts == parse_ts("2024-05-01T12:00:00Z")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"x" * 9000, "oversize"),
        (b"{not json", "not_json"),
        (b"NaN", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"device": 5, "ts": 1, "voc_ppb": 1}', "bad_device"),
        (b'{"device": "a/b", "ts": 1, "voc_ppb": 1}', "bad_device"),
        (b'{"device": "d", "voc_ppb": 1}', "bad_ts"),
        (b'{"device": "d", "ts": "yesterday", "voc_ppb": 1}', "bad_ts"),
        (b'{"device": "d", "ts": 1, "seq": -1, "voc_ppb": 1}', "bad_seq"),
        (b'{"device": "d", "ts": 1, "seq": 1.5, "voc_ppb": 1}', "bad_seq"),
        (b'{"device": "d", "ts": 1, "voc_ppb": "high"}', "bad_value"),
        (b'{"device": "d", "ts": 1, "voc_ppb": true}', "bad_value"),
        (b'{"device": "d", "ts": 1, "voc_ppb": 1e400}', "not_json"),  # orjson refuses infinities
        (b'{"device": "d", "ts": 1, "humidity": 140}', "out_of_range"),
        (b'{"device": "d", "ts": 1, "co2": 400}', "missing_target"),
    ],
)
def test_bad_messages_name_their_reason(payload: bytes, reason: str) -> None:
    assert reason in REJECT_REASONS
    with pytest.raises(MessageError) as info:
        parser().parse("edgeloop/s/d/telemetry", payload)
    assert info.value.reason == reason


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(["device", "ts", "seq", *TARGETS, "x"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.dictionaries(field_names, json_values).map(orjson.dumps))
def test_parser_never_raises_anything_but_message_error(payload: bytes) -> None:
    try:
        r = parser().parse("edgeloop/s/d/telemetry", payload)
    except MessageError as exc:
        assert exc.reason in REJECT_REASONS
    else:
        assert r.values and all(math.isfinite(v) for v in r.values.values())
        assert math.isfinite(r.ts)


def test_prediction_and_event_json() -> None:
    p = Prediction("d", 3, 10.0, {"voc_ppb": Forecast(1.5, "voc_ppb:v2")})
    assert orjson.loads(p.to_json()) == {
        "device": "d",
        "seq": 3,
        "ts": 10.0,
        "predictions": {"voc_ppb": {"value": 1.5, "model": "voc_ppb:v2"}},
    }
    e = Event("model_promoted", "voc_ppb", 5.0, reason="better", version="voc_ppb:v2")
    assert Event.from_dict(e.to_dict("s")) == e
    with pytest.raises(ValueError, match="unknown event kind"):
        Event("model_exploded", "voc_ppb", 5.0)
