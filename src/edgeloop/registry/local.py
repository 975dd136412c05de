"""The deployment side of the registry: versions on disk and a ``champion`` pointer per scope.

MLflow is the system of record for runs and registered versions (see :mod:`edgeloop.registry.tracking`);
this folder is what edge processes read, so serving needs neither MLflow nor its database::

    <models_dir>/.lock                        flock: numbering and pointer moves, across processes
    <models_dir>/voc_ppb/v1/{model.txt, meta.json}
    <models_dir>/voc_ppb/champion.json        {"version": 2, "history": [1, 2], "updated": ..., "reason": ...}
    <models_dir>/voc_ppb/champion.log         every pointer state ever written, one JSON line each
    <models_dir>/voc_ppb/.next-version       the last version number handed out
    <models_dir>/voc_ppb@dev%201/v1/...       scope ``voc_ppb@dev 1`` (:func:`edgeloop.scopes.scope_dirname`)

``champion.json`` is replaced atomically (write, fsync, rename) and only ever names a version that was
verified first (:meth:`LocalRegistry.promote`); ``history`` is the stack of champions, so a rollback
restores the one before. Readers trust nothing: a champion that does not load falls back through the
history to the last good version (:meth:`LocalRegistry.resolve`), a pointer that does not parse falls
back to the last good line of ``champion.log``, and anything under the folder that is not a scope, a
version or a registry file is ignored with one warning.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeloop.atomic import write_atomic
from edgeloop.errors import ModelFileError
from edgeloop.models.modelfile import META_FILE, MODEL_FILE, LoadedModel, load_model, read_meta
from edgeloop.registry.lock import LOCK_TIMEOUT, FileLock
from edgeloop.registry.pointer import (
    CHAMPION_FILE,
    JOURNAL_FILE,
    ChampionPointer,
    read_journal,
    read_pointer,
    stat_key,
    write_pointer,
)
from edgeloop.scopes import decode_scope, is_hashed_dirname, parse_scope, scope_dirname, version_label

log = logging.getLogger(__name__)

SCOPE_FILE = "scope.txt"  # the scope of a folder whose name is shortened by a hash
COUNTER_FILE = ".next-version"
LOCK_FILE = ".lock"
HISTORY_LIMIT = 100  # champions remembered for rollback and fallback
STALE_TMP_SECONDS = 3600.0  # a writer's temporary folder this old belongs to a writer that died
_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")
_LEGACY_NAME = re.compile(r"[A-Za-z0-9_.@-]+")  # folders named before scopes were encoded
_KNOWN_FILES = {CHAMPION_FILE, JOURNAL_FILE, SCOPE_FILE}


@dataclass(frozen=True)
class Refusal:
    """Something the registry would not serve: a version (``label``) or a pointer file, and why."""

    label: str | None
    what: str
    reason: str


@dataclass
class Resolution:
    """What serves a scope: the model (None: the fleet model or persistence) and what was refused."""

    scope: str
    wanted: int | None
    model: LoadedModel | None
    refused: list[Refusal] = field(default_factory=list)


class LocalRegistry:
    """Versions and champion pointers under one folder, safe for several processes."""

    def __init__(self, models_dir: Path | str, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.root = Path(models_dir)
        self._warned: set[str] = set()
        self._lock = FileLock(self.root / LOCK_FILE, lock_timeout)
        # A refused version is not reloaded while its files are unchanged: (scope, version) -> (stat, why).
        self._refused: dict[tuple[str, int], tuple[tuple[int, ...], str]] = {}

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

    # -- champion pointer -------------------------------------------------------------------------
    def pointer(self, scope: str) -> dict[str, Any] | None:
        """``champion.json``, validated; None if there is none; :class:`ModelFileError` if it is bad."""
        p = self._read_pointer(scope)
        return None if p is None else p.model_dump()

    def _read_pointer(self, scope: str) -> ChampionPointer | None:
        return read_pointer(self.scope_dir(scope))

    def _journal_pointer(self, scope: str) -> ChampionPointer | None:
        return read_journal(self.scope_dir(scope))

    def _pointer_or_journal(self, scope: str) -> ChampionPointer | None:
        try:
            return self._read_pointer(scope)
        except ModelFileError as exc:
            log.warning("%s; using the last good state in %s", exc, JOURNAL_FILE)
            return self._journal_pointer(scope)

    def champion(self, scope: str) -> int | None:
        p = self._read_pointer(scope)
        return None if p is None else p.version

    def pointer_mtime(self, scope: str) -> float:
        try:
            return (self.scope_dir(scope) / CHAMPION_FILE).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def pointer_state(self, scope: str) -> tuple[int, ...] | None:
        """Changes whenever ``champion.json`` is replaced; cheap enough to ask every poll."""
        return stat_key(self.scope_dir(scope) / CHAMPION_FILE)

    def _write_pointer(self, scope: str, pointer: ChampionPointer) -> None:
        write_pointer(self._ensure_scope_dir(scope), pointer)

    def promote(
        self,
        scope: str,
        version: int,
        reason: str = "",
        *,
        lags: int | None = None,
        epoch: int | None = None,
    ) -> bool:
        """Make ``version`` the champion, after verifying it loads and predicts (raises if not).

        ``epoch`` (a decision from the bus): written only if it is higher than the recorded epoch;
        False, and nothing written, if not. Without it the recorded epoch is kept.
        """
        self.load(scope, version, lags=lags)  # versions are immutable: verifying outside the lock is safe
        with self.lock():
            current = self._pointer_or_journal(scope)
            known = current.epoch if current else 0
            if epoch is not None and epoch <= known:
                return False
            history = [v for v in (current.history if current else []) if v != version]
            history = [*history[-(HISTORY_LIMIT - 1) :], version]
            self._write_pointer(
                scope,
                ChampionPointer(
                    version=version,
                    history=history,
                    updated=time.time(),
                    reason=reason,
                    epoch=known if epoch is None else epoch,
                ),
            )
            return True

    def clear(self, scope: str, reason: str, *, epoch: int) -> bool:
        """No champion of its own (the scope falls back), as decided at ``epoch`` (see :meth:`promote`)."""
        with self.lock():
            current = self._pointer_or_journal(scope)
            if current is not None and epoch <= current.epoch:
                return False
            self._write_pointer(
                scope,
                ChampionPointer(version=None, history=[], updated=time.time(), reason=reason, epoch=epoch),
            )
            return True

    def epoch(self, scope: str) -> int:
        """The epoch of the scope's last champion decision (0: none)."""
        current = self._pointer_or_journal(scope)
        return current.epoch if current else 0

    def stamp(self, scope: str) -> ChampionPointer | None:
        """Give the scope's current champion decision a new epoch, to publish it; None if no pointer.

        The epoch is a hybrid clock: the wall clock in milliseconds, or one more than the last epoch
        this registry knows when that is higher, so decisions are ordered by when they were taken
        (hosts' clocks kept in step, e.g. by NTP) and a newer decision always has a higher epoch than
        every one this host has seen.
        """
        with self.lock():
            current = self._pointer_or_journal(scope)
            if current is None:
                return None
            stamped = current.model_copy(update={"epoch": max(int(time.time() * 1000), current.epoch + 1)})
            self._write_pointer(scope, stamped)
            return stamped

    def rollback(self, scope: str, reason: str = "", *, rejected: int | None = None) -> int | None:
        """Drop ``rejected`` (default: the champion) and restore the newest good champion before it.

        Returns the restored version, or None if none is left (the pointer is cleared, so the scope
        falls back to the fleet model or persistence). Versions that fail verification are dropped too.
        A newer champion promoted meanwhile by another process stays. The recorded epoch is kept.
        """
        with self.lock():
            current = self._pointer_or_journal(scope)
            if current is None:
                return None
            drop = current.version if rejected is None else rejected
            chain = [v for v in current.chain() if v != drop]
            restored, keep = None, []
            for i, v in enumerate(chain):
                try:
                    self.load(scope, v)
                except (ModelFileError, OSError) as exc:
                    log.warning("rollback of %s skips %s: %s", scope, version_label(scope, v), exc)
                    continue
                restored, keep = v, chain[i:][::-1]
                break
            self._write_pointer(
                scope,
                ChampionPointer(
                    version=restored, history=keep, updated=time.time(), reason=reason, epoch=current.epoch
                ),
            )
            return restored

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

    def resolve(
        self, scope: str, *, lags: int | None = None, current: LoadedModel | None = None
    ) -> Resolution:
        """The newest good champion of ``scope``, walking back through the history past bad ones.

        ``current`` (the model already serving) is taken as good without reloading it.
        """
        refused: list[Refusal] = []
        with contextlib.suppress(ModelFileError):
            self.versions(scope)  # warns once about anything stray in the folder
        try:
            pointer = self._read_pointer(scope)
        except ModelFileError as exc:
            refused.append(Refusal(None, CHAMPION_FILE, str(exc)))
            pointer = self._journal_pointer(scope)
        if pointer is None:
            return Resolution(scope, None, None, refused)
        wanted = pointer.version
        for version in pointer.chain():
            label = version_label(scope, version)
            if current is not None and current.label == label:
                return Resolution(scope, wanted, current, refused)
            try:
                model = self._load_unless_refused(scope, version, lags)
            except ModelFileError as exc:
                refused.append(Refusal(label, label, str(exc)))
                continue
            return Resolution(scope, wanted, model, refused)
        return Resolution(scope, wanted, None, refused)

    def _load_unless_refused(self, scope: str, version: int, lags: int | None) -> LoadedModel:
        d = self.version_dir(scope, version)
        key = (*(stat_key(d / META_FILE) or ()), *(stat_key(d / MODEL_FILE) or ()), lags or 0)
        seen = self._refused.get((scope, version))
        if seen is not None and seen[0] == key:
            raise ModelFileError(seen[1])
        try:
            model = self.load(scope, version, lags=lags)
        except (ModelFileError, OSError) as exc:
            self._refused[(scope, version)] = (key, str(exc))
            raise ModelFileError(str(exc)) from exc
        self._refused.pop((scope, version), None)
        return model

    def load_champion(self, scope: str, *, lags: int | None = None) -> LoadedModel | None:
        """The model serving ``scope``: its champion, or the last good one before it; None if none."""
        return self.resolve(scope, lags=lags).model
