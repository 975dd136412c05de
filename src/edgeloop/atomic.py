"""Replacing a small file so that a reader or a crash sees the old or the new content, whole.

Used for every file edgeloop rewrites in place: champion pointers and version counters in the
registry, and the edge's state snapshots. (Model versions are whole folders, renamed into place by
:mod:`edgeloop.models.modelfile`.)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def write_atomic(path: Path, data: bytes | Sequence[bytes]) -> None:
    """Replace ``path`` with ``data`` (or its parts, in order): temporary file, fsync, rename, fsync of
    the folder. A unique temporary name, so several processes may write the same path at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes):
                fh.write(data)
            else:
                fh.writelines(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
