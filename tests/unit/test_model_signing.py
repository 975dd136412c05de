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
    BUNDLE_FORMAT,
    BundleRefused,
    champion_message,
    edge_verifier,
    install_bundle,
    make_bundle,
    make_clearing,
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
    scope, payload = make_bundle(signer, trained_version(tmp_path / "trainer"), epoch=1)
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
    _, payload = make_bundle(other, trained_version(tmp_path / "rogue"), epoch=1)
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
    assert "signature does not verify" in refused(orjson.dumps({**data, "epoch": 2**62}), signer.verifier())
    # A promotion turned into "no champion" (digests emptied to match): the signature says no.
    cleared = {**data, "version": None, "sha256": "", "meta_sha256": ""}
    assert "signature does not verify" in refused(orjson.dumps(cleared), signer.verifier())
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
            "format": BUNDLE_FORMAT,
            "scope": SCOPE,
            "version": 1,
            "epoch": 1,
            "meta": meta_body.decode(),
            "model": model_body.decode(),
            "meta_sha256": ms,
            "sha256": ds,
            "key_id": signer.key_id,
            "signature": base64.b64encode(signer.sign(signed_bytes(SCOPE, 1, 1, ms, ds))).decode(),
        }
    )
    assert "metadata refused" in refused(payload, signer.verifier())
    # A model the edge cannot serve (other lags) passes the signature and fails at install, unwritten.
    _, good = make_bundle(signer, trained_version(tmp_path / "three", lags=3), epoch=1)
    registry = LocalRegistry(tmp_path / "edge")
    with pytest.raises(BundleRefused, match="lags"):
        install_bundle(registry, open_bundle(good, signer.verifier()), lags=5)
    assert not registry.version_dir(SCOPE, 1).exists() and registry.champion(SCOPE) is None


def test_decisions_are_ordered_by_epoch_not_version(tmp_path: Path, signer: Signer) -> None:
    registry = LocalRegistry(tmp_path / "edge")

    dirs = {v: trained_version(tmp_path / "t", v) for v in (1, 2)}

    def decision(version: int, epoch: int) -> Any:
        return open_bundle(make_bundle(signer, dirs[version], epoch=epoch)[1], signer.verifier())

    v1_at_10, v2_at_20, v1_at_30 = decision(1, 10), decision(2, 20), decision(1, 30)
    assert install_bundle(registry, v2_at_20, lags=5) == "installed"
    assert install_bundle(registry, v2_at_20, lags=5) == "stale"  # the retained message, seen again
    assert install_bundle(registry, v1_at_10, lags=5) == "stale"  # an older decision
    assert registry.champion(SCOPE) == 2
    # A rollback to v1, decided after v2: installed although v1 < v2.
    assert install_bundle(registry, v1_at_30, lags=5) == "installed" and registry.champion(SCOPE) == 1
    # The promotion of v2 replayed (signed, genuine): nothing changes.
    assert install_bundle(registry, v2_at_20, lags=5) == "stale" and registry.champion(SCOPE) == 1
    assert registry.epoch(SCOPE) == 30
    # A local probation rollback keeps the epoch: the same retained message does not undo it.
    registry.promote(SCOPE, 2)
    registry.rollback(SCOPE, rejected=2)
    assert registry.champion(SCOPE) == 1 and registry.epoch(SCOPE) == 30
    assert install_bundle(registry, v1_at_30, lags=5) == "stale"
    # "No champion of its own", signed and newer: the pointer is cleared (the scope falls back).
    cleared = open_bundle(make_clearing(signer, SCOPE, epoch=40), signer.verifier())
    assert cleared.version is None and install_bundle(registry, cleared, lags=5) == "cleared"
    assert registry.champion(SCOPE) is None and registry.load_champion(SCOPE, lags=5) is None
    assert install_bundle(registry, decision(2, 35), lags=5) == "stale"
    # Another v2 (other bytes) than the cached one: refused, the cache untouched.
    other = open_bundle(
        make_bundle(signer, trained_version(tmp_path / "w", 2, lags=4), epoch=50)[1], signer.verifier()
    )
    with pytest.raises(BundleRefused, match="differs from"):
        install_bundle(registry, other, lags=5)


def test_stamped_epochs_grow_and_the_publisher_ignores_its_own_message(
    tmp_path: Path, signer: Signer
) -> None:
    trainer = LocalRegistry(tmp_path / "t")
    trained_version(tmp_path / "t", 1)
    trained_version(tmp_path / "t", 2)
    trainer.promote(SCOPE, 1)
    trainer.promote(SCOPE, 2)
    label, first = champion_message(signer, trainer, SCOPE) or ("", b"")
    assert label == version_label(SCOPE, 2)
    trainer.rollback(SCOPE)
    label, second = champion_message(signer, trainer, SCOPE) or ("", b"")
    assert label == version_label(SCOPE, 1)
    e1, e2 = orjson.loads(first)["epoch"], orjson.loads(second)["epoch"]
    assert e2 > e1 and trainer.epoch(SCOPE) == e2
    assert install_bundle(trainer, open_bundle(second, signer.verifier()), lags=5) == "stale"
    edge = LocalRegistry(tmp_path / "edge")
    for payload in (first, second):
        assert install_bundle(edge, open_bundle(payload, signer.verifier()), lags=5) == "installed"
    assert edge.champion(SCOPE) == 1
    trainer.rollback(SCOPE)  # nothing left: published as "no champion"
    label, third = champion_message(signer, trainer, SCOPE) or ("", b"")
    assert label == f"{SCOPE}:none" and orjson.loads(third)["version"] is None
    assert install_bundle(edge, open_bundle(third, signer.verifier()), lags=5) == "cleared"
    assert champion_message(signer, LocalRegistry(tmp_path / "empty"), SCOPE) is None


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
