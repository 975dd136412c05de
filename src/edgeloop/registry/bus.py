"""Champions over the message bus, signed (``distribution.mode: bus``).

A trainer that promotes a version, and an operator's ``edgeloop models promote | rollback`` on a
host holding the signing key, publish the scope's champion decision as one retained message on
``edgeloop/<site>/models/<scope folder name>`` (:func:`~edgeloop.scopes.scope_dirname`), so an edge
that connects later gets the current champion of every scope at once. The message is JSON::

    {"format": "edgeloop-model-bundle/2", "scope": "voc_ppb@dev-001", "version": 3,
     "epoch": 1717171717171, "meta": "<meta.json, verbatim>", "model": "<model.txt, verbatim>",
     "meta_sha256": "...", "sha256": "...", "key_id": "...", "signature": "<base64 Ed25519>"}

``version`` null (no ``meta``/``model``, empty digests) says the scope has no champion of its own any
more (a rollback past its first version): it falls back to the fleet model or persistence.

``epoch`` orders the decisions of a scope, not the version number: a rollback makes an older version
champion with a newer epoch (:meth:`~edgeloop.registry.local.LocalRegistry.stamp`). A receiver takes a
decision only if its epoch is higher than the last one it recorded, so a rollback installs, and an
old signed message sent again (a replay, a stale retained copy) changes nothing.

The signature covers the scope, the version, the epoch and the SHA-256 of both files
(:func:`signed_bytes`), so no byte of either file, nor the scope, version or epoch it claims, can change
without the signature failing. A receiver (:func:`open_bundle`) recomputes both digests, verifies the
signature against its configured public key, checks that the metadata names the same scope and
version, and then :func:`install_bundle` writes the files into the local registry through the same
verification as any model file (:func:`~edgeloop.models.modelfile.load_model`: every field, the
checksum, a forecast) before it is renamed into place and promoted. The local registry is the cache: a
restarted edge serves from it without the bus. Anything refused raises :class:`BundleRefused`; nothing
of it is written.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from edgeloop.errors import ConfigError, ModelFileError
from edgeloop.models.modelfile import META_FILE, MODEL_FILE, check_meta, sha256_bytes, write_version
from edgeloop.registry.local import LocalRegistry
from edgeloop.registry.signing import SIGNATURE_BYTES, Signer, Verifier
from edgeloop.scopes import parse_scope, scope_dirname, version_label

BUNDLE_FORMAT = "edgeloop-model-bundle/2"
MODELS_TOPIC = "edgeloop/{site}/models"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024  # far above a LightGBM text model of a few hundred trees


class BundleRefused(Exception):
    """A model message that must not serve; ``scope`` and ``label`` as far as they could be read."""

    def __init__(self, reason: str, scope: str | None = None, label: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.scope = scope
        self.label = label


@dataclass(frozen=True)
class Bundle:
    """A verified model message: signature and digests checked, not yet installed."""

    scope: str
    version: int | None  # None: the scope has no champion of its own
    meta_body: bytes
    model_body: bytes
    key_id: str
    epoch: int

    @property
    def label(self) -> str:
        return version_label(self.scope, self.version) if self.version else f"{self.scope}:none"


def models_topic(site: str, scope: str | None = None) -> str:
    """The filter root ``edgeloop/<site>/models`` or the retained topic of one scope."""
    root = MODELS_TOPIC.format(site=site)
    return root if scope is None else f"{root}/{scope_dirname(scope)}"


def signed_bytes(scope: str, version: int | None, epoch: int, meta_sha256: str, model_sha256: str) -> bytes:
    """What the signature covers; the format name keeps it from meaning anything elsewhere."""
    fields = (BUNDLE_FORMAT, scope, str(version or "none"), str(epoch), meta_sha256, model_sha256)
    return "\n".join(fields).encode()


def make_bundle(signer: Signer, version_dir: Path, *, epoch: int) -> tuple[str, bytes]:
    """``(scope, message)`` making the version in ``version_dir`` champion at ``epoch``, signed."""
    meta_body = (version_dir / META_FILE).read_bytes()
    model_body = (version_dir / MODEL_FILE).read_bytes()
    meta = check_meta(orjson.loads(meta_body), version_dir / META_FILE)
    meta_sha, model_sha = sha256_bytes(meta_body), sha256_bytes(model_body)
    signature = signer.sign(signed_bytes(meta.scope, meta.version, epoch, meta_sha, model_sha))
    message = {
        "format": BUNDLE_FORMAT,
        "scope": meta.scope,
        "version": meta.version,
        "epoch": epoch,
        "meta": meta_body.decode(),
        "model": model_body.decode(),
        "meta_sha256": meta_sha,
        "sha256": model_sha,
        "key_id": signer.key_id,
        "signature": base64.b64encode(signature).decode(),
    }
    return meta.scope, orjson.dumps(message)


def make_clearing(signer: Signer, scope: str, *, epoch: int) -> bytes:
    """The message saying ``scope`` has no champion of its own from ``epoch`` on, signed."""
    signature = signer.sign(signed_bytes(scope, None, epoch, "", ""))
    message = {
        "format": BUNDLE_FORMAT,
        "scope": scope,
        "version": None,
        "epoch": epoch,
        "meta_sha256": "",
        "sha256": "",
        "key_id": signer.key_id,
        "signature": base64.b64encode(signature).decode(),
    }
    return orjson.dumps(message)


def champion_message(signer: Signer, registry: LocalRegistry, scope: str) -> tuple[str, bytes] | None:
    """``(label, message)`` publishing the scope's current champion decision under a new epoch.

    The epoch is recorded in the local pointer first (:meth:`LocalRegistry.stamp`), so this host
    ignores its own message when it comes back. None if the scope has no champion pointer.
    """
    pointer = registry.stamp(scope)
    if pointer is None:
        return None
    if pointer.version is None:
        return f"{scope}:none", make_clearing(signer, scope, epoch=pointer.epoch)
    _, message = make_bundle(signer, registry.version_dir(scope, pointer.version), epoch=pointer.epoch)
    return version_label(scope, pointer.version), message


def _field(data: dict[str, Any], key: str, kind: type, scope: str | None, label: str | None) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BundleRefused(f"field {key!r} missing or not a {kind.__name__}", scope, label)
    return value


def open_bundle(payload: bytes, verifier: Verifier, *, topic_name: str | None = None) -> Bundle:
    """Check a model message; :class:`BundleRefused` says why it must not serve.

    ``topic_name`` is the last level of the topic it came on, which must be the scope's folder name.
    """
    if len(payload) > MAX_BUNDLE_BYTES:
        raise BundleRefused(f"{len(payload):,} bytes, more than the {MAX_BUNDLE_BYTES:,} allowed")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BundleRefused(f"not JSON (truncated or corrupt): {exc}") from None
    if not isinstance(data, dict):
        raise BundleRefused("not a JSON object")
    scope = data.get("scope") if isinstance(data.get("scope"), str) and data.get("scope") else None
    version = data.get("version")
    valid_version = version is None or (
        isinstance(version, int) and not isinstance(version, bool) and version >= 1
    )
    label = None
    if scope and valid_version:
        label = version_label(scope, version) if version is not None else f"{scope}:none"
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleRefused(f"format {str(data.get('format'))[:40]!r}, expected {BUNDLE_FORMAT!r}", scope)
    if scope is None or label is None:
        raise BundleRefused("no valid 'scope' and 'version'", scope)
    if topic_name is not None and scope_dirname(scope) != topic_name:
        raise BundleRefused(f"names scope {scope!r} on the topic of another scope", scope, label)
    epoch = _field(data, "epoch", int, scope, label)
    if epoch < 1:
        raise BundleRefused(f"epoch {epoch} is not a positive integer", scope, label)
    if version is None:
        meta_body, model_body = b"", b""
        meta_sha = model_sha = ""
    else:
        meta_body = _field(data, "meta", str, scope, label).encode()
        model_body = _field(data, "model", str, scope, label).encode()
        meta_sha, model_sha = sha256_bytes(meta_body), sha256_bytes(model_body)
    signature_text = data.get("signature")
    if not isinstance(signature_text, str) or not signature_text:
        raise BundleRefused("unsigned", scope, label)
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except (binascii.Error, ValueError):
        raise BundleRefused("signature is not base64", scope, label) from None
    if len(signature) != SIGNATURE_BYTES:
        raise BundleRefused(f"signature of {len(signature)} bytes, not {SIGNATURE_BYTES}", scope, label)
    if data.get("sha256") != model_sha or data.get("meta_sha256") != meta_sha:
        raise BundleRefused("SHA-256 mismatch: the model or its metadata was altered", scope, label)
    if not verifier.verify(signed_bytes(scope, version, epoch, meta_sha, model_sha), signature):
        signed_by = str(data.get("key_id"))[:32]
        raise BundleRefused(
            f"signature does not verify with the configured public key {verifier.key_id} "
            f"(message says key {signed_by})",
            scope,
            label,
        )
    if version is not None:
        try:
            meta = check_meta(orjson.loads(meta_body), Path(f"<bus>/{label}") / META_FILE)
        except (orjson.JSONDecodeError, ModelFileError) as exc:
            raise BundleRefused(f"metadata refused: {exc}", scope, label) from None
        if meta.scope != scope or meta.version != version or meta.sha256 != model_sha:
            raise BundleRefused("metadata names another scope, version or model file", scope, label)
    return Bundle(scope, version, meta_body, model_body, verifier.key_id, epoch)


def install_bundle(registry: LocalRegistry, bundle: Bundle, *, lags: int | None) -> str:
    """Take a verified champion decision into the local registry.

    Returns ``"installed"`` (the bundle's version is the champion now), ``"cleared"`` (the scope has
    no champion of its own now), or ``"stale"`` (its epoch is not newer than the last decision
    recorded here: the same retained message seen again, or a replay; nothing changes, so a local
    probation rollback stands too). Raises :class:`BundleRefused` when the files fail verification or
    conflict with the cached version of that number.
    """
    scope, version = bundle.scope, bundle.version
    try:
        known = registry.epoch(scope)
    except ModelFileError:
        known = 0  # neither the pointer nor its journal parses: the bus repairs it
    if bundle.epoch <= known:
        return "stale"
    reason = f"signed champion decision from the bus (key {bundle.key_id}, epoch {bundle.epoch})"
    try:
        if version is None:
            return "cleared" if registry.clear(scope, reason, epoch=bundle.epoch) else "stale"
        version_dir = registry.version_dir(scope, version)
        if version_dir.exists():
            try:
                same = (version_dir / META_FILE).read_bytes() == bundle.meta_body and (
                    version_dir / MODEL_FILE
                ).read_bytes() == bundle.model_body
            except OSError:
                same = False
            if not same:
                raise BundleRefused(
                    f"differs from {bundle.label} in the local cache ({version_dir})", scope, bundle.label
                )
        else:
            verify = {
                "expect_lags": lags,
                "expect_target": parse_scope(scope)[0],
                "expect_scope": scope,
                "expect_version": version,
            }
            write_version(version_dir, bundle.model_body, bundle.meta_body, verify=verify)
        promoted = registry.promote(scope, version, reason, lags=lags, epoch=bundle.epoch)
    except ModelFileError as exc:
        raise BundleRefused(str(exc), scope, bundle.label) from None
    return "installed" if promoted else "stale"


def edge_verifier(settings: Any) -> Verifier | None:
    """The edge's verifier in bus mode (None in files mode); :class:`ConfigError` if it has no key."""
    d = settings.distribution
    if d.mode != "bus":
        return None
    if d.public_key_file is None:
        raise ConfigError("distribution.public_key_file: required when distribution.mode is bus")
    return Verifier.from_file(d.public_key_file)


def trainer_keys(settings: Any) -> tuple[Signer, Verifier] | None:
    """The trainer's signer and verifier in bus mode (None in files mode).

    The verifier checks champions other trainers publish; without ``public_key_file`` it is the
    public half of the signing key.
    """
    d = settings.distribution
    if d.mode != "bus":
        return None
    if d.signing_key_file is None:
        raise ConfigError(
            "distribution.signing_key_file: required by a trainer when distribution.mode is bus"
        )
    signer = Signer.from_file(d.signing_key_file)
    verifier = Verifier.from_file(d.public_key_file) if d.public_key_file else signer.verifier()
    if verifier.key_id != signer.key_id:
        raise ConfigError(
            f"distribution.public_key_file: key {verifier.key_id} is not the public half of "
            f"distribution.signing_key_file (key {signer.key_id})"
        )
    return signer, verifier
