"""One lock for the registry across processes: ``flock`` on a file, re-entrant within a thread.

Version numbering and champion pointer moves are read-modify-write; trainers, edges and
``edgeloop models`` in other processes do them too. ``flock`` locks belong to an open file
description, so two threads of one process exclude each other as well, and the kernel drops the
lock of a process that dies: a killed trainer never leaves the registry locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edgeloop.errors import ModelFileError

LOCK_TIMEOUT = 30.0  # seconds to wait for another process's numbering or pointer move
_RETRY = 0.005


class FileLock:
    """``with lock:`` holds an exclusive ``flock`` on ``path``; raises ModelFileError after ``timeout``."""

    def __init__(self, path: Path, timeout: float = LOCK_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._held = threading.local()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        depth = getattr(self._held, "depth", 0)
        if depth:
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth = depth
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ModelFileError(
                            f"{self.path}: held by another process for {self.timeout:g} s"
                        ) from None
                    time.sleep(_RETRY)
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0
        finally:
            os.close(fd)  # closing the descriptor releases the lock
