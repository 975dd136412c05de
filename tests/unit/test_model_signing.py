"""Signed model bundles: sign, verify, and refuse anything tampered, unsigned, truncated or foreign."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from edgeloop.cli import app
from edgeloop.config import load_settings
from edgeloop.engine.features import training_pairs
from edgeloop.errors import ConfigError
from edgeloop.models.forecasters import LinearForecaster
from edgeloop.models.modelfile import META_FILE, MODEL_FILE, save_model, sha256_bytes
from edgeloop.registry.bus import (
    BundleRefused,
    edge_verifier,
    install_bundle,
    make_bundle,
    models_topic,
    open_bundle,
    signed_bytes,
    trainer_keys,
)
from edgeloop.registry.local import LocalRegistry
from edgeloop.registry.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, Signer, Verifier
from edgeloop.scopes import scope_dirname, version_label

SCOPE = "voc_ppb@dev-001"
NAME = scope_dirname(SCOPE)


def trained_version(root: Path, version: int = 1, scope: str = SCOPE, lags: int = 5) -> Path:
    y = np.asarray([100 + ((i * 7) % 13) for i in range(300)], dtype=float)
    model = LinearForecaster(lags).fit(*training_pairs(y, lags))
    meta = {
        "scope": scope,
        "target": scope.partition("@")[0],
        "version": version,
        "label": version_label(scope, version),
    }
    return save_model(LocalRegistry(root).version_dir(scope, version), model, meta)


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def bundle(tmp_path: Path, signer: Signer) -> bytes:
    scope, payload = make_bundle(signer, trained_version(tmp_path / "trainer"))
    assert scope == SCOPE
    return payload


def refused(payload: bytes, verifier: Verifier, name: str | None = NAME) -> str:
    with pytest.raises(BundleRefused) as info:
        open_bundle(payload, verifier, topic_name=name)
    return info.value.reason


def test_a_signed_bundle_verifies_and_installs_as_champion(
    tmp_path: Path, signer: Signer, bundle: bytes
) -> None:
    opened = open_bundle(bundle, signer.verifier(), topic_name=NAME)
    assert (opened.scope, opened.version, opened.key_id) == (SCOPE, 1, signer.key_id)
    registry = LocalRegistry(tmp_path / "edge")
    assert install_bundle(registry, opened, lags=5) == "installed"
    assert registry.champion(SCOPE) == 1
    assert registry.load_champion(SCOPE, lags=5) is not None
    # Byte for byte what the trainer wrote.
    trainer_dir = LocalRegistry(tmp_path / "trainer").version_dir(SCOPE, 1)
    for name in (META_FILE, MODEL_FILE):
        assert (registry.version_dir(SCOPE, 1) / name).read_bytes() == (trainer_dir / name).read_bytes()
    assert models_topic("lab", SCOPE) == f"edgeloop/lab/models/{NAME}"


@pytest.mark.parametrize("field", ["model", "meta"])
def test_one_byte_altered_is_refused(signer: Signer, bundle: bytes, field: str) -> None:
    data = orjson.loads(bundle)
    text = data[field]
    i = next(i for i, c in enumerate(text) if c.isdigit())
    data[field] = text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1 :]
    assert "SHA-256 mismatch" in refused(orjson.dumps(data), signer.verifier())
    # ...and with the digests recomputed to match, the signature no longer does.
    data["sha256"] = sha256_bytes(data["model"].encode())
    data["meta_sha256"] = sha256_bytes(data["meta"].encode())
    assert "signature does not verify" in refused(orjson.dumps(data), signer.verifier())


def test_one_bit_of_the_signature_flipped_is_refused(signer: Signer, bundle: bytes) -> None:
    data = orjson.loads(bundle)
    raw = bytearray(base64.b64decode(data["signature"]))
    raw[10] ^= 0x01
    data["signature"] = base64.b64encode(bytes(raw)).decode()
    assert "signature does not verify" in refused(orjson.dumps(data), signer.verifier())


def test_signed_with_another_key_is_refused(tmp_path: Path, signer: Signer) -> None:
    other = Signer.generate()
    _, payload = make_bundle(other, trained_version(tmp_path / "rogue"))
    reason = refused(payload, signer.verifier())
    assert "signature does not verify" in reason and signer.key_id in reason and other.key_id in reason


def test_unsigned_is_refused(signer: Signer, bundle: bytes) -> None:
    data = orjson.loads(bundle)
    for unsigned in ({**data, "signature": ""}, {k: v for k, v in data.items() if k != "signature"}):
        assert refused(orjson.dumps(unsigned), signer.verifier()) == "unsigned"
    assert "not base64" in refused(orjson.dumps({**data, "signature": "%%%"}), signer.verifier())
    short = base64.b64encode(b"x" * 10).decode()
    assert "not 64" in refused(orjson.dumps({**data, "signature": short}), signer.verifier())


@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, -1])
def test_truncated_is_refused(signer: Signer, bundle: bytes, keep: float) -> None:
    cut = int(len(bundle) * keep) if isinstance(keep, float) else keep
    assert "not JSON" in refused(bundle[:cut], signer.verifier())


def test_a_signed_bundle_replayed_under_another_scope_or_version_is_refused(
    signer: Signer, bundle: bytes
) -> None:
    data = orjson.loads(bundle)
    other_scope = "voc_ppb@dev-002"
    assert "topic of another scope" in refused(bundle, signer.verifier(), name=scope_dirname(other_scope))
    moved = orjson.dumps({**data, "scope": other_scope})
    assert "signature does not verify" in refused(moved, signer.verifier(), name=scope_dirname(other_scope))
    assert "signature does not verify" in refused(orjson.dumps({**data, "version": 7}), signer.verifier())
    assert "format" in refused(orjson.dumps({**data, "format": "x"}), signer.verifier())


def test_signed_but_invalid_model_files_are_still_refused(tmp_path: Path, signer: Signer) -> None:
    """The signature is not a licence: the metadata and model checks of every model file still apply."""
    version_dir = trained_version(tmp_path / "trainer")
    meta = orjson.loads((version_dir / META_FILE).read_bytes())
    meta["lags"] = 3  # no longer matches its features
    meta_body = orjson.dumps(meta)
    model_body = (version_dir / MODEL_FILE).read_bytes()
    ms, ds = sha256_bytes(meta_body), sha256_bytes(model_body)
    payload = orjson.dumps(
        {
            "format": "edgeloop-model-bundle/1",
            "scope": SCOPE,
            "version": 1,
            "meta": meta_body.decode(),
            "model": model_body.decode(),
            "meta_sha256": ms,
            "sha256": ds,
            "key_id": signer.key_id,
            "signature": base64.b64encode(signer.sign(signed_bytes(SCOPE, 1, ms, ds))).decode(),
        }
    )
    assert "metadata refused" in refused(payload, signer.verifier())
    # A model the edge cannot serve (other lags) passes the signature and fails at install, unwritten.
    _, good = make_bundle(signer, trained_version(tmp_path / "three", lags=3))
    registry = LocalRegistry(tmp_path / "edge")
    with pytest.raises(BundleRefused, match="lags"):
        install_bundle(registry, open_bundle(good, signer.verifier()), lags=5)
    assert not registry.version_dir(SCOPE, 1).exists() and registry.champion(SCOPE) is None


def test_install_keeps_local_decisions_and_refuses_conflicts(tmp_path: Path, signer: Signer) -> None:
    registry = LocalRegistry(tmp_path / "edge")
    v1 = open_bundle(make_bundle(signer, trained_version(tmp_path / "t", 1))[1], signer.verifier())
    v2 = open_bundle(make_bundle(signer, trained_version(tmp_path / "t", 2))[1], signer.verifier())
    assert install_bundle(registry, v2, lags=5) == "installed"
    assert install_bundle(registry, v2, lags=5) == "present"  # the retained message, seen again
    assert install_bundle(registry, v1, lags=5) == "older"
    assert registry.champion(SCOPE) == 2
    registry.rollback(SCOPE)  # e.g. probation failed on this edge
    assert install_bundle(registry, v2, lags=5) == "present" and registry.champion(SCOPE) is None
    # Another v2 (other bytes) than the cached one: refused, the cache untouched.
    other = open_bundle(make_bundle(signer, trained_version(tmp_path / "u", 2, lags=4))[1], signer.verifier())
    with pytest.raises(BundleRefused, match="differs from"):
        install_bundle(registry, other, lags=5)


def test_keys_generate_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = CliRunner().invoke(app, ["keys", "generate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    private, public = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    signer, verifier = Signer.from_file(private), Verifier.from_file(public)
    assert signer.key_id == verifier.key_id and signer.key_id in result.output
    assert "PRIVATE KEY" not in result.output
    again = CliRunner().invoke(app, ["keys", "generate", "--out", str(out)])
    assert again.exit_code != 0 and "--force" in again.output
    assert Signer.from_file(private).key_id == signer.key_id  # not replaced
    forced = CliRunner().invoke(app, ["keys", "generate", "--out", str(out), "--force"])
    assert forced.exit_code == 0 and Signer.from_file(private).key_id != signer.key_id


def test_bus_mode_needs_its_keys(tmp_path: Path) -> None:
    Signer.generate().write(tmp_path / "a")
    Signer.generate().write(tmp_path / "b")

    def settings(**d: Any) -> Any:
        return load_settings(None, distribution={"mode": "bus", **d}, data_dir=tmp_path)

    assert edge_verifier(load_settings(None, data_dir=tmp_path)) is None
    with pytest.raises(ConfigError, match=r"distribution\.public_key_file: required"):
        edge_verifier(settings())
    with pytest.raises(ConfigError, match=r"distribution\.signing_key_file: required"):
        trainer_keys(settings())
    with pytest.raises(ConfigError, match=r"distribution\.public_key_file: cannot read"):
        edge_verifier(settings(public_key_file=tmp_path / "missing.pub"))
    with pytest.raises(ConfigError, match="not a PEM public key"):
        edge_verifier(settings(public_key_file=tmp_path / "a" / PRIVATE_KEY_FILE))
    with pytest.raises(ConfigError, match="not the public half"):
        trainer_keys(
            settings(
                signing_key_file=tmp_path / "a" / PRIVATE_KEY_FILE,
                public_key_file=tmp_path / "b" / PUBLIC_KEY_FILE,
            )
        )
    keys = trainer_keys(settings(signing_key_file=tmp_path / "a" / PRIVATE_KEY_FILE))
    assert keys is not None and keys[0].key_id == keys[1].key_id
    bad = tmp_path / "bad.yaml"
    bad.write_text("distribution:\n  mode: nfs\n")
    with pytest.raises(ConfigError, match=r"distribution\.mode: Input should be 'files' or 'bus'"):
        load_settings(bad)
