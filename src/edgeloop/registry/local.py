"""The deployment side of the registry: versions on disk and a ``champion`` pointer per scope.

MLflow is the system of record for runs and registered versions (see :mod:`edgeloop.registry.tracking`);
this folder is what edge processes read, so serving needs neither MLflow nor its database::

    <models_dir>/voc_ppb/v1/{model.txt, meta.json}
    <models_dir>/voc_ppb/champion.json        {"version": 1, "history": [1], "updated": ...}
    <models_dir>/voc_ppb@dev-003/v1/...

``champion.json`` is replaced atomically (write, fsync, rename); ``history`` is the stack of
champions, so a rollback restores the one before.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from edgeloop.errors import ModelFileError
from edgeloop.models.modelfile import LoadedModel, load_model, read_meta
from edgeloop.scopes import version_label

CHAMPION_FILE = "champion.json"
_SAFE = re.compile(r"^[A-Za-z0-9_.@-]+$")


class LocalRegistry:
    """Versions and champion pointers under one folder, safe for several processes."""

    def __init__(self, models_dir: Path | str) -> None:
        self.root = Path(models_dir)

    def scope_dir(self, scope: str) -> Path:
        if not _SAFE.match(scope) or scope in (".", "..") or ".." in scope:
            raise ValueError(f"unsafe scope name {scope!r}")
        return self.root / scope

    def scopes(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, scope: str) -> list[int]:
        d = self.scope_dir(scope)
        if not d.exists():
            return []
        return sorted(int(p.name[1:]) for p in d.iterdir() if p.is_dir() and re.fullmatch(r"v\d+", p.name))

    def next_version(self, scope: str) -> int:
        return max(self.versions(scope), default=0) + 1

    def version_dir(self, scope: str, version: int) -> Path:
        return self.scope_dir(scope) / f"v{version}"

    def meta(self, scope: str, version: int) -> dict[str, Any]:
        return read_meta(self.version_dir(scope, version))

    # -- champion pointer ------------------------------------------------------------------------
    def pointer(self, scope: str) -> dict[str, Any] | None:
        path = self.scope_dir(scope) / CHAMPION_FILE
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError as exc:
            raise ModelFileError(f"{path} is not valid JSON") from exc
        return data if isinstance(data, dict) and data.get("version") else None

    def champion(self, scope: str) -> int | None:
        pointer = self.pointer(scope)
        return int(pointer["version"]) if pointer else None

    def pointer_mtime(self, scope: str) -> float:
        try:
            return (self.scope_dir(scope) / CHAMPION_FILE).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _write_pointer(self, scope: str, data: dict[str, Any]) -> None:
        d = self.scope_dir(scope)
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".champion-", dir=d)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(orjson.dumps(data))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, d / CHAMPION_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def promote(self, scope: str, version: int, reason: str = "") -> None:
        if not self.version_dir(scope, version).exists():
            raise ModelFileError(f"{version_label(scope, version)} does not exist")
        pointer = self.pointer(scope) or {"history": []}
        history = [v for v in pointer.get("history", []) if v != version] + [version]
        self._write_pointer(
            scope, {"version": version, "history": history, "updated": time.time(), "reason": reason}
        )

    def rollback(self, scope: str, reason: str = "") -> int | None:
        """Restore the previous champion; returns it, or None if there was none (the pointer is cleared)."""
        pointer = self.pointer(scope)
        if pointer is None:
            return None
        history = list(pointer.get("history", []))[:-1]
        restored = history[-1] if history else None
        if restored is None:
            self._write_pointer(
                scope, {"version": None, "history": [], "updated": time.time(), "reason": reason}
            )
        else:
            self._write_pointer(
                scope, {"version": restored, "history": history, "updated": time.time(), "reason": reason}
            )
        return restored

    def load(self, scope: str, version: int, *, lags: int | None = None) -> LoadedModel:
        target = scope.partition("@")[0]
        model = load_model(self.version_dir(scope, version), expect_lags=lags, expect_target=target)
        if model.meta.get("scope") != scope or int(model.meta.get("version", -1)) != version:
            raise ModelFileError(f"{version_label(scope, version)}: metadata names another scope or version")
        return model

    def load_champion(self, scope: str, *, lags: int | None = None) -> LoadedModel | None:
        version = self.champion(scope)
        return self.load(scope, version, lags=lags) if version else None
