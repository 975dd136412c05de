"""Registered-model names of unusual scopes in a real MLflow store: created, found, aliased."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.registry.tracking import registered_name

pytestmark = pytest.mark.integration


def test_unusual_scopes_register_and_are_found_by_name(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for scope in ("voc_ppb@Küche", "voc_ppb@dev 1", "voc_ppb@a:b'c"):
        name = registered_name("edgeloop", scope)
        # The same search the tracker runs before it creates a name.
        assert not client.search_registered_models(filter_string=f"name='{name}'")
        client.create_registered_model(name)
        assert [m.name for m in client.search_registered_models(filter_string=f"name='{name}'")] == [name]
