"""Version folders of the local registry: where each scope's versions live, numbering, loading.

The on-disk layout (the champion pointer files are :mod:`edgeloop.registry.local`'s)::

    <models_dir>/.lock                        flock: numbering and pointer moves, across processes
    <models_dir>/voc_ppb/v1/{model.txt, meta.json}
    <models_dir>/voc_ppb/.next-version       the last version number handed out
    <models_dir>/voc_ppb@dev%201/v1/...       scope ``voc_ppb@dev 1`` (:func:`edgeloop.scopes.scope_dirname`)

:class:`VersionFiles` finds scopes and versions (anything under the folder that is not a scope, a
version or a registry file is ignored with one warning), hands out version numbers under the lock,
and loads one version. It is the base of :class:`~edgeloop.registry.local.LocalRegistry`, which adds
the champion pointer; apart, because numbering and reading versions need no pointer.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

from edgeloop.atomic import write_atomic
from edgeloop.errors import ModelFileError
from edgeloop.models.modelfile import LoadedModel, load_model, read_meta
from edgeloop.registry.lock import LOCK_TIMEOUT, FileLock
from edgeloop.registry.pointer import CHAMPION_FILE, JOURNAL_FILE
from edgeloop.scopes import decode_scope, is_hashed_dirname, parse_scope, scope_dirname, version_label

log = logging.getLogger(__name__)

SCOPE_FILE = "scope.txt"  # the scope of a folder whose name is shortened by a hash
COUNTER_FILE = ".next-version"
LOCK_FILE = ".lock"
STALE_TMP_SECONDS = 3600.0  # a writer's temporary folder this old belongs to a writer that died
_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")
_LEGACY_NAME = re.compile(r"[A-Za-z0-9_.@-]+")  # folders named before scopes were encoded
_KNOWN_FILES = {CHAMPION_FILE, JOURNAL_FILE, SCOPE_FILE}


class VersionFiles:
    """The version folders of every scope under one folder, safe for several processes."""

    def __init__(self, models_dir: Path | str, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.root = Path(models_dir)
        self._warned: set[str] = set()
        self._lock = FileLock(self.root / LOCK_FILE, lock_timeout)

    # -- folders ----------------------------------------------------------------------------------
    def scope_dir(self, scope: str) -> Path:
        path = self.root / scope_dirname(scope)
        if path.name != scope and not path.exists() and self._is_legacy(scope):
            legacy = self.root / scope
            if legacy.is_dir():
                return legacy
        return path

    @staticmethod
    def _is_legacy(name: str) -> bool:
        return bool(_LEGACY_NAME.fullmatch(name)) and not name.startswith(".")

    def scopes(self) -> list[str]:
        """Every scope with a folder; anything else under the models folder is ignored with a warning."""
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._warn(self.root, f"cannot be listed: {exc}")
            return []
        found: set[str] = set()
        for path in entries:
            if path.name.startswith("."):
                continue  # the lock and writers' temporary files
            try:
                if not path.is_dir():
                    self._warn(path, "not a scope folder")
                    continue
                scope = self._scope_of(path)
                if scope is None:
                    self._warn(path, "not the folder of a scope (names are edgeloop.scopes.scope_dirname)")
                elif self._has_content(path) or any(p.name.startswith(".") for p in path.iterdir()):
                    found.add(scope)  # (only dot files: a first version is being written)
                else:
                    self._warn(path, "holds no versions and no champion")
            except OSError as exc:
                self._warn(path, f"cannot be read: {exc}")
        return sorted(found)

    def _scope_of(self, path: Path) -> str | None:
        if is_hashed_dirname(path.name):
            try:
                scope = (path / SCOPE_FILE).read_bytes().decode("utf-8", "surrogatepass")
            except (OSError, UnicodeDecodeError):
                return None
            return scope if scope and scope_dirname(scope) == path.name else None
        try:
            return decode_scope(path.name)
        except ValueError:
            return path.name if self._is_legacy(path.name) else None

    def _has_content(self, path: Path) -> bool:
        return (path / CHAMPION_FILE).exists() or any(_VERSION_DIR.fullmatch(p.name) for p in path.iterdir())

    def versions(self, scope: str) -> list[int]:
        d = self.scope_dir(scope)
        try:
            entries = list(d.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise ModelFileError(f"{d}: cannot be listed: {exc}") from exc
        out = []
        for p in entries:
            m = _VERSION_DIR.fullmatch(p.name)
            if m and p.is_dir():
                out.append(int(m.group(1)))
            elif not p.name.startswith(".") and p.name not in _KNOWN_FILES:
                self._warn(p, "not a version folder or a registry file")
        return sorted(out)

    def version_dir(self, scope: str, version: int) -> Path:
        return self.scope_dir(scope) / f"v{version}"

    def meta(self, scope: str, version: int) -> dict[str, Any]:
        meta = read_meta(self.version_dir(scope, version))
        if meta["scope"] != scope or meta["version"] != version:
            raise ModelFileError(f"{version_label(scope, version)}: metadata names {meta['label']!r}")
        return meta

    def _warn(self, path: Path, why: str) -> None:
        key = str(path)
        if key not in self._warned:
            self._warned.add(key)
            # A name with undecodable bytes must not break the log line.
            log.warning("models: ignored %s: %s", key.encode("utf-8", "backslashreplace").decode(), why)

    # -- the lock across processes ----------------------------------------------------------------
    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the registry's lock across processes (re-entrant in one thread)."""
        return self._lock.hold()

    # -- version numbers --------------------------------------------------------------------------
    def next_version(self, scope: str) -> int:
        """Hand out a new version number of ``scope``: never the same one twice, across processes."""
        with self.lock():
            d = self._ensure_scope_dir(scope)
            try:
                last = int((d / COUNTER_FILE).read_text())
            except (FileNotFoundError, ValueError):
                last = 0
            version = max(last, max(self.versions(scope), default=0)) + 1
            write_atomic(d / COUNTER_FILE, str(version).encode())
            self._sweep(d)
            return version

    def _ensure_scope_dir(self, scope: str) -> Path:
        d = self.scope_dir(scope)
        d.mkdir(parents=True, exist_ok=True)
        if is_hashed_dirname(d.name) and not (d / SCOPE_FILE).exists():
            write_atomic(d / SCOPE_FILE, scope.encode("utf-8", "surrogatepass"))
        return d

    def _sweep(self, d: Path) -> None:
        """Remove what writers that died long ago left behind (see modelfile.save_model)."""
        cutoff = time.time() - STALE_TMP_SECONDS
        for p in d.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    shutil.rmtree(p, ignore_errors=True)

    # -- loading ----------------------------------------------------------------------------------
    def load(self, scope: str, version: int, *, lags: int | None = None) -> LoadedModel:
        """Load and verify one version (see :func:`edgeloop.models.modelfile.load_model`)."""
        return load_model(
            self.version_dir(scope, version),
            expect_lags=lags,
            expect_target=parse_scope(scope)[0],
            expect_scope=scope,
            expect_version=version,
        )
