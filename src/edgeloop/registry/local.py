"""The deployment side of the registry: versions on disk and a ``champion`` pointer per scope.

MLflow is the system of record for runs and registered versions (see :mod:`edgeloop.registry.tracking`);
this folder is what edge processes read, so serving needs neither MLflow nor its database. The version
folders, their numbering and the lock are :mod:`edgeloop.registry.versions`'s; this module moves the
pointer::

    <models_dir>/voc_ppb/champion.json        {"version": 2, "history": [1, 2], "updated": ..., "reason": ...}
    <models_dir>/voc_ppb/champion.log         every pointer state ever written, one JSON line each

``champion.json`` is replaced atomically (write, fsync, rename) and only ever names a version that was
verified first (:meth:`LocalRegistry.promote`); ``history`` is the stack of champions, so a rollback
restores the one before. Readers trust nothing: a champion that does not load falls back through the
history to the last good version (:meth:`LocalRegistry.resolve`), and a pointer that does not parse
falls back to the last good line of ``champion.log``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeloop.errors import ModelFileError
from edgeloop.models.modelfile import META_FILE, MODEL_FILE, LoadedModel
from edgeloop.registry.lock import LOCK_TIMEOUT
from edgeloop.registry.pointer import (
    CHAMPION_FILE,
    JOURNAL_FILE,
    ChampionPointer,
    read_journal,
    read_pointer,
    stat_key,
    write_pointer,
)
from edgeloop.registry.versions import VersionFiles
from edgeloop.scopes import version_label

log = logging.getLogger(__name__)

HISTORY_LIMIT = 100  # champions remembered for rollback and fallback


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


class LocalRegistry(VersionFiles):
    """Versions and champion pointers under one folder, safe for several processes."""

    def __init__(self, models_dir: Path | str, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
        super().__init__(models_dir, lock_timeout=lock_timeout)
        # A refused version is not reloaded while its files are unchanged: (scope, version) -> (stat, why).
        self._refused: dict[tuple[str, int], tuple[tuple[int, ...], str]] = {}

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

    # -- what serves ------------------------------------------------------------------------------
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
