"""``champion.json`` and its journal ``champion.log``: which version of a scope is the champion.

The pointer is replaced atomically (write, fsync, rename); every state written is also appended to the
journal, so a pointer that no longer parses (a disk error, a hand edit) still has a last good state.
Both are checked field by field; a bad one raises :class:`~edgeloop.errors.ModelFileError` naming the
file and the field.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeloop.atomic import write_atomic
from edgeloop.errors import ModelFileError

CHAMPION_FILE = "champion.json"
JOURNAL_FILE = "champion.log"
JOURNAL_TAIL_BYTES = 65536  # the journal is read from its end: the newest states are all that matter


class ChampionPointer(BaseModel):
    """``champion.json``; ``version`` None means the scope was rolled back to no model of its own."""

    model_config = ConfigDict(strict=True, extra="allow")

    version: Annotated[int, Field(ge=1)] | None
    history: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    updated: float | None = None
    reason: str = ""
    # Orders champion decisions published over the bus (edgeloop.registry.bus): a decision is taken
    # only if its epoch is higher than the one recorded here. 0: none was ever published or received.
    epoch: Annotated[int, Field(ge=0)] = 0

    def chain(self) -> list[int]:
        """Versions to try, newest first: the champion, then the ones before it."""
        out = [] if self.version is None else [self.version]
        for v in reversed(self.history):
            if v not in out:
                out.append(v)
        return out


def check_pointer(data: Any, path: Path) -> ChampionPointer:
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: not a JSON object")
    try:
        return ChampionPointer.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        raise ModelFileError(
            f"{path}: field {loc!r}: {first['msg']}, got {repr(first.get('input'))[:60]}"
        ) from exc


def read_pointer(scope_dir: Path) -> ChampionPointer | None:
    """The scope's pointer; None if there is none; :class:`ModelFileError` if it cannot be trusted."""
    path = scope_dir / CHAMPION_FILE
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: not valid JSON") from exc
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read: {exc}") from exc
    return check_pointer(data, path)


def read_journal(scope_dir: Path) -> ChampionPointer | None:
    """The last state in the journal that parses (a torn last line is skipped); None if none does."""
    path = scope_dir / JOURNAL_FILE
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - JOURNAL_TAIL_BYTES))
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(orjson.JSONDecodeError, ModelFileError):
            return check_pointer(orjson.loads(line), path)
    return None


def write_pointer(scope_dir: Path, pointer: ChampionPointer) -> None:
    body = orjson.dumps(pointer.model_dump())
    write_atomic(scope_dir / CHAMPION_FILE, body)
    with open(scope_dir / JOURNAL_FILE, "ab") as fh:
        fh.write(body + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def stat_key(path: Path) -> tuple[int, ...] | None:
    """Changes whenever the file is replaced or rewritten."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
