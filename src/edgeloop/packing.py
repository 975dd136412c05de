"""Float buffers as compact text for state snapshots: base64 of little-endian float64, exact round trip.

Half the size of a JSON list of the same floats and no precision lost, which matters because a
restored ring buffer must score the next readings exactly as the one that was saved.

>>> unpack_floats(pack_floats([0.1, 2.5, -3.0]))
[0.1, 2.5, -3.0]
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Iterable


def pack_floats(values: Iterable[float]) -> str:
    arr = array("d", values)
    if sys.byteorder != "little":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


def unpack_floats(text: str, length: int | None = None) -> list[float]:
    """The floats of :func:`pack_floats`; ``length`` (when given) must match or ``ValueError`` is raised."""
    if not isinstance(text, str):
        raise ValueError("packed floats must be a string")
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) % 8:
        raise ValueError("packed floats: length is not a multiple of 8 bytes")
    arr = array("d")
    arr.frombytes(raw)
    if sys.byteorder != "little":
        arr.byteswap()
    if length is not None and len(arr) != length:
        raise ValueError(f"packed floats: expected {length} values, got {len(arr)}")
    return arr.tolist()
