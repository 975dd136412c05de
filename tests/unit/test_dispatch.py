"""Retrain requests on the wire: what an edge sends and what a trainer accepts."""

from __future__ import annotations

import pytest

from edgeloop.engine.engine import RetrainRequest
from edgeloop.lifecycle.retrains import Attempt
from edgeloop.retrain.dispatch import request_from_json, request_to_json


def attempt(scope: str = "voc_ppb@Küche", number: int = 1) -> Attempt:
    return Attempt(RetrainRequest(scope, "drift", "alarm", since_ts=5.0, requested_ts=9.0), "rid-1", number)


def test_a_request_survives_the_wire() -> None:
    sent = attempt(number=2)
    assert request_from_json(request_to_json(sent)) == sent


def test_a_request_from_an_edge_without_ids_is_attempt_one_without_id() -> None:
    got = request_from_json(b'{"scope": "voc_ppb@dev 1", "trigger": "initial"}')
    assert (got.scope, got.request_id, got.number, got.request.since_ts) == ("voc_ppb@dev 1", "", 1, None)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"{nope", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"scope": 3}', "non-empty string"),
        (b'{"scope": ""}', "non-empty string"),
        (b'{"scope": "voc_ppb@a\\u0000b"}', "control characters"),
        (b'{"scope": "voc_ppb@a\\u0085b"}', "control characters"),
        (b'{"scope": "' + b"x" * 600 + b'"}', "longer than"),
        (b'{"scope": "voc_ppb", "since_ts": "yesterday"}', "since_ts"),
        (b'{"scope": "voc_ppb", "requested_ts": NaN}', "not JSON"),
        (b'{"scope": "voc_ppb", "request_id": 7}', "request_id"),
        (b'{"scope": "voc_ppb", "attempt": 0}', "attempt"),
        (b'{"scope": "voc_ppb", "attempt": true}', "attempt"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(payload: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        request_from_json(payload)
