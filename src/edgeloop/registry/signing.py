"""Ed25519 keys that sign champions travelling over the message bus.

Trainers hold the private key (``distribution.signing_key_file``) and sign every champion they
publish; edges hold only the public key (``distribution.public_key_file``) and install nothing whose
signature does not verify against it. Keys are PEM files: PKCS#8 for the private key, written with
mode 0600, SubjectPublicKeyInfo for the public one (``edgeloop keys generate --out DIR``). A key is
named in logs and messages by its id (the first 16 hex digits of the SHA-256 of the raw public key),
never by its content.

>>> signer = Signer.generate()
>>> verifier = Verifier(signer.public_key)
>>> verifier.verify(b"data", signer.sign(b"data"))
True
>>> verifier.verify(b"dat4", signer.sign(b"data"))
False
>>> verifier.key_id == signer.key_id
True
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeloop.errors import ConfigError

log = logging.getLogger(__name__)

PRIVATE_KEY_FILE = "model-signing.key"
PUBLIC_KEY_FILE = "model-signing.pub"
SIGNATURE_BYTES = 64


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Verifier:
    """Checks signatures against one public key."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self.public_key = public_key
        self.key_id = key_id(public_key)

    def verify(self, data: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_file(cls, path: Path, key: str = "distribution.public_key_file") -> Verifier:
        """Load a PEM public key; :class:`ConfigError` naming ``key`` if it is not an Ed25519 key."""
        data = _read(path, key)
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise ConfigError(f"{key}: {path} is not a PEM public key ({exc})") from None
        if not isinstance(public, Ed25519PublicKey):
            raise ConfigError(f"{key}: {path} is a {type(public).__name__}, not an Ed25519 public key")
        return cls(public)


class Signer:
    """Signs with one private key; also verifies, with the public half."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def verifier(self) -> Verifier:
        return Verifier(self.public_key)

    @classmethod
    def from_file(cls, path: Path, key: str = "distribution.signing_key_file") -> Signer:
        """Load a PEM private key; :class:`ConfigError` naming ``key`` if it is not an Ed25519 key."""
        data = _read(path, key)
        with_mode = path.stat().st_mode
        if with_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: %s can be read by other users; chmod 600 it", key, path)
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            # TypeError: the key is encrypted. The message never quotes the key.
            raise ConfigError(f"{key}: {path} is not an unencrypted PEM private key ({exc})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{key}: {path} is a {type(private).__name__}, not an Ed25519 private key")
        return cls(private)

    def write(self, out_dir: Path, *, force: bool = False) -> tuple[Path, Path]:
        """Write the key pair into ``out_dir`` (private key 0600); refuses to overwrite unless ``force``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        private_path, public_path = out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE
        if not force:
            for path in (private_path, public_path):
                if path.exists():
                    raise FileExistsError(f"{path} exists; keep it, or pass --force to replace it")
        private_pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public_pem = self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write_new(private_path, private_pem, 0o600)
        _write_new(public_path, public_pem, 0o644)
        return private_path, public_path


def _read(path: Path, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode, so the private key is never readable by others, not even briefly.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # the umask may have taken bits away from the public key
    os.replace(tmp, path)
