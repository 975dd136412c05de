"""The telemetry parser: the contract, the mapping for foreign publishers, and hostile input."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.config import Settings
from edgeloop.errors import MessageError
from edgeloop.telemetry.fields import check_device, parse_ts
from edgeloop.telemetry.parser import TelemetryParser, parser_from_settings
from edgeloop.telemetry.schema import REJECT_REASONS, Event, Forecast, Prediction

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


# -- device ids that cannot hurt ------------------------------------------------------------------

POISON_CHARS = [
    "\x00", "\x01", "\x1f", "\x7f", "\x80", "\x85", "\x9f", "\ufdd0", "\ufdef", "\ufffe", "\uffff",
    "\U0001fffe", "\U0010ffff", "/", "+", "#",
]  # fmt: skip


def mqtt_topic_level_ok(level: str) -> bool:
    """Mosquitto's own rule for topic text (lib/utf8_mosq.c), written out code point by code point."""
    if not level or len(level.encode("utf-8", "surrogatepass")) > 128:
        return False
    for ch in level:
        cp = ord(ch)
        if cp <= 0x1F or 0x7F <= cp <= 0x9F or 0xD800 <= cp <= 0xDFFF or 0xFDD0 <= cp <= 0xFDEF:
            return False
        if cp & 0xFFFE == 0xFFFE or ch in "/+#":
            return False
    return True


@pytest.mark.parametrize("bad", POISON_CHARS)
def test_poison_device_ids_are_refused_in_the_payload_and_in_the_topic(bad: str) -> None:
    device = f"dev{bad}1"
    no_level = parser(device_level=None)
    with pytest.raises(MessageError) as info:
        no_level.parse("t", orjson.dumps({"device": device, "ts": 1, "voc_ppb": 1}))
    assert info.value.reason == "bad_device"
    if bad != "/":  # a slash in a topic is a level separator, not part of the id
        with pytest.raises(MessageError) as info:
            parser().parse(f"edgeloop/s/{device}/telemetry", b'{"ts": 1, "voc_ppb": 1}')
        assert info.value.reason == "bad_device"


def test_device_id_length_counts_utf8_bytes() -> None:
    p = parser(device_level=None)
    for ok in ["x" * 128, "é" * 64, "\U0001f600" * 32, "Küche", "dev 1"]:
        assert p.parse("t", orjson.dumps({"device": ok, "ts": 1, "voc_ppb": 1})).device == ok
    for too_long in ["x" * 129, "é" * 65, "\U0001f600" * 33, ""]:
        with pytest.raises(MessageError, match="bad_device"):
            p.parse("t", orjson.dumps({"device": too_long, "ts": 1, "voc_ppb": 1}))


# Lists joined rather than st.text, which all but never draws surrogates.
any_text = st.lists(
    st.characters(min_codepoint=0, max_codepoint=0x10FFFF)
    | st.sampled_from([*POISON_CHARS, "\ud800", "\udfff", "é", "\U0001f600"]),
    max_size=140,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(any_text)
def test_a_device_id_is_accepted_exactly_when_it_makes_a_valid_mqtt_topic_level(device: str) -> None:
    try:
        accepted = check_device(device) == device
    except MessageError as exc:
        assert exc.reason == "bad_device"
        accepted = False
    assert accepted == mqtt_topic_level_ok(device)


def test_default_device_must_be_a_valid_id() -> None:
    with pytest.raises(MessageError, match="bad_device"):
        parser(default_device="a\x01")


# -- the topic's device id wins ---------------------------------------------------------------------


def test_a_payload_naming_another_device_is_dropped() -> None:
    p = parser()
    with pytest.raises(MessageError) as info:
        p.parse("edgeloop/s/dev-001/telemetry", b'{"device": "dev-002", "ts": 1, "voc_ppb": 1}')
    assert info.value.reason == "device_mismatch" and "device_mismatch" in REJECT_REASONS
    same = p.parse("edgeloop/s/dev-001/telemetry", b'{"device": "dev-001", "ts": 1, "voc_ppb": 1}')
    assert same.device == "dev-001"
    # A malformed payload field is reported as malformed, not as a mismatch.
    with pytest.raises(MessageError, match="bad_device"):
        p.parse("edgeloop/s/dev-001/telemetry", b'{"device": 7, "ts": 1, "voc_ppb": 1}')


def test_the_payload_device_is_used_only_when_the_topic_has_none() -> None:
    assert parser(device_level=None).parse("a/b", b'{"device": "x", "ts": 1, "voc_ppb": 1}').device == "x"
    short = parser(device_level=4).parse("edgeloop/s/d/telemetry", b'{"device": "x", "ts": 1, "voc_ppb": 1}')
    assert short.device == "x"
    assert parser(device_level=None).parse("a/b", b'{"ts": 1, "voc_ppb": 1}').device == "default"


# -- timestamps within a window of the edge's clock ----------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("ts", "max_past_s", "reason"),
    [
        (NOW + 299, None, None),
        (NOW + 301, None, "ts_out_of_window"),
        ("5107-03-01T00:00:00Z", None, "ts_out_of_window"),  # the far-future clock of issue 8
        (1.0, None, None),  # the past stays open by default: replays of old recordings
        (NOW - 3601, 3600.0, "ts_out_of_window"),
        (NOW - 3599, 3600.0, None),
    ],
)
def test_timestamps_within_the_window_of_the_edge_clock(
    ts: float | str, max_past_s: float | None, reason: str | None
) -> None:
    p = parser(wall_clock=lambda: NOW, max_future_s=300.0, max_past_s=max_past_s)
    payload = orjson.dumps({"ts": ts, "voc_ppb": 1})
    if reason is None:
        assert p.parse("edgeloop/s/d/telemetry", payload).ts == parse_ts(ts)
    else:
        with pytest.raises(MessageError) as info:
            p.parse("edgeloop/s/d/telemetry", payload)
        assert info.value.reason == reason in REJECT_REASONS


def test_the_live_parser_bounds_the_future_and_a_replay_parser_does_not() -> None:
    far = orjson.dumps({"ts": "5107-03-01T00:00:00Z", "voc_ppb": 1})
    with pytest.raises(MessageError, match="ts_out_of_window"):
        parser_from_settings(Settings()).parse("edgeloop/s/d/telemetry", far)
    assert parser_from_settings(Settings(), wall_clock=None).parse("edgeloop/s/d/telemetry", far).ts > 1e10
    off = Settings(limits={"max_future_s": None})  # type: ignore[arg-type]
    assert parser_from_settings(off).parse("edgeloop/s/d/telemetry", far).ts > 1e10


# -- the typed fast path (edgeloop.telemetry.typed) agrees with the full parser --------------------

TOPIC = "edgeloop/s/d/telemetry"


def outcome(p: TelemetryParser, payload: bytes) -> object:
    try:
        r = p.parse(TOPIC, payload)
    except MessageError as exc:
        return ("refused", exc.reason, exc.detail)
    return ("accepted", r.device, r.ts, r.seq, r.values)


def both_paths(payload: bytes, **kw: object) -> tuple[object, object, TelemetryParser]:
    """The outcome with the fast path on (topic already seen, as for every reading but a device's first)
    and with the full parser alone."""
    fast, full = parser(**kw), parser(**kw)
    full._typed = None
    for p in (fast, full):
        p.parse(TOPIC, b'{"ts": 1, "voc_ppb": 1}')  # the topic's device is now checked and cached
    return outcome(fast, payload), outcome(full, payload), fast


number_texts = st.sampled_from(
    ["1", "-0.0", "1e400", "-1e400", "1E5", "1e-400", "2.5e300", "1e0400", "9" * 250, "18446744073709551616"]
)


@st.composite
def raw_payloads(draw: st.DrawFn) -> bytes:
    """Objects written by hand, so they can hold what orjson.dumps never writes: numbers that overflow,
    duplicate keys, non-ASCII bytes, escapes."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(["device", "ts", "seq", *TARGETS, "x", "\\u0076oc_ppb"]))
        value = draw(
            number_texts
            | st.sampled_from(
                ['"d"', '"e"', "null", "true", '"\\u00e9"', '"\\ud800"', "[1,[2]]", '"2024-01-01"']
            )
            | st.floats(allow_nan=False, allow_infinity=False).map(repr)
            | st.integers(-(2**70), 2**70).map(str)
        )
        parts.append(f'"{key}": {value}')
    text = "{" + ", ".join(parts) + "}"
    return text.encode() + draw(st.sampled_from([b"", b" ", b"\xff", b"x"]))


@settings(max_examples=400, deadline=None)
@given(raw_payloads() | st.dictionaries(field_names, json_values).map(orjson.dumps) | st.binary(max_size=200))
def test_the_fast_path_accepts_and_refuses_exactly_as_the_full_parser(payload: bytes) -> None:
    fast, full, _ = both_paths(payload)
    assert fast == full


def test_the_fast_path_serves_the_contract_payload_and_refuses_via_the_full_parser() -> None:
    good = b'{"device": "d", "ts": 1700000000.5, "seq": 7, "voc_ppb": 181.5, "temp_c": 21, "sent": 3}'
    fast, full, p = both_paths(good)
    assert fast == full == ("accepted", "d", 1700000000.5, 7, {"temp_c": 21.0, "voc_ppb": 181.5})
    assert p._typed is not None and p._typed.reading(good, "d") is not None
    # Each refusal keeps its reason and detail from the full parser.
    for payload, reason in [
        (b'{"ts": 1, "voc_ppb": 1e400}', "not_json"),
        (b'{"ts": 1, "voc_ppb": 1, "x": 1e400}', "not_json"),
        (b'{"ts": 1, "voc_ppb": 1, "x": "\xff"}', "not_json"),
        (b'{"device": "other", "ts": 1, "voc_ppb": 1}', "device_mismatch"),
        (b'{"ts": 1, "seq": 18446744073709551616, "voc_ppb": 1}', "bad_seq"),
        (b'{"ts": 1, "humidity": 140}', "out_of_range"),
    ]:
        fast, full, _ = both_paths(payload)
        assert fast == full and fast[:2] == ("refused", reason)
    future = b'{"ts": 9e10, "voc_ppb": 1}'
    fast, full, _ = both_paths(future, wall_clock=lambda: 1.7e9, max_future_s=60.0)
    assert fast == full and fast[:2] == ("refused", "ts_out_of_window")
