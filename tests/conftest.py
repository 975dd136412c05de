"""Fixtures shared by all tests.

Brokers are private mosquitto processes on free ports of 127.0.0.1, started once per session and
shared; ``unique_topic`` keeps tests on a shared broker from seeing each other's messages.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop.adapters.broker import MosquittoBroker, make_test_certs, mosquitto_binary

TEST_USER = "edge"
TEST_PASSWORD = "s3cret-test"


def _require_mosquitto() -> None:
    if mosquitto_binary() is None:
        pytest.skip("no mosquitto binary on PATH or in /usr/sbin (apt-get install mosquitto)")


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    """A private anonymous mosquitto (MQTT v5) for the whole test session."""
    _require_mosquitto()
    with MosquittoBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def mosquitto_auth() -> Iterator[MosquittoBroker]:
    """A private mosquitto that refuses anonymous clients; user TEST_USER / TEST_PASSWORD."""
    _require_mosquitto()
    with MosquittoBroker(users={TEST_USER: TEST_PASSWORD}) as broker:
        yield broker


@pytest.fixture(scope="session")
def mosquitto_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A private TLS-only mosquitto (self-signed CA in ``broker.tls.ca``) with password auth."""
    _require_mosquitto()
    certs = make_test_certs(tmp_path_factory.mktemp("certs"))
    with MosquittoBroker(users={TEST_USER: TEST_PASSWORD}, tls=certs) as broker:
        yield broker


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> str:
    """A topic prefix unique to this test (no trailing slash), e.g. ``test/test_x_1_/3f2a9c1e``."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)
    return f"test/{name}/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    """An empty edgeloop data directory for this test."""
    path = tmp_path / "edgeloop-data"
    path.mkdir()
    return path
