"""MLflow registered-model names: every scope the edge accepts gets a valid, distinct name."""

from __future__ import annotations

import pytest

from edgeloop.registry.tracking import registered_name

SCOPES = [
    "voc_ppb",
    "voc_ppb@dev-001",
    "voc_ppb@Küche",
    "voc_ppb@dev 1",
    "voc_ppb@dev:1",
    "voc_ppb@it's",
    "voc_ppb@a%20b",
    "voc_ppb@a b",
    "voc_ppb@日本",
    "voc_ppb@x@y",
    "voc_ppb@..",
]


def test_plain_scopes_keep_their_names() -> None:
    assert registered_name("edgeloop", "voc_ppb") == "edgeloop.voc_ppb"
    assert registered_name("edgeloop", "voc_ppb@dev-001") == "edgeloop.voc_ppb.device.dev-001"


def test_names_are_distinct_and_use_only_filter_safe_characters() -> None:
    names = [registered_name("edgeloop", s) for s in SCOPES]
    assert len(set(names)) == len(names)
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.%")
    assert all(set(n) <= safe for n in names)


@pytest.mark.parametrize("scope", SCOPES)
def test_mlflow_accepts_the_name(scope: str) -> None:
    validation = pytest.importorskip("mlflow.utils.validation")
    validation._validate_model_name(registered_name("edgeloop", scope))
