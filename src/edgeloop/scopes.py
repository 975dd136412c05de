"""Scopes and version labels: what a model serves and what it is called.

A *scope* is what a model serves: ``voc_ppb`` is the fleet model of a target, ``voc_ppb@dev-001`` one
device's own model, which wins over the fleet model for that device. A *version label* names one
trained version of a scope: ``voc_ppb:v3``. Every part of edgeloop (engine, registry, trainer, CLI,
evaluator, dashboard) builds and reads them through this module only.

>>> scope_of("voc_ppb", "dev-001")
'voc_ppb@dev-001'
>>> parse_scope("voc_ppb@dev-001")
('voc_ppb', 'dev-001')
>>> parse_label(version_label("voc_ppb@dev-001", 3))
('voc_ppb@dev-001', 3)

On disk a scope is a folder named by :func:`scope_dirname`: one reversible, filesystem-safe encoding,
so every device id the parser accepts can get its own model. Lowercase ASCII letters, digits and
``_ - . @`` stand for themselves (so the folders of such scopes are named by the scope itself); every
other character is percent-encoded as its UTF-8 bytes, uppercase letters included, so two scopes
never share a folder on a case-insensitive filesystem either. A leading or trailing ``.`` is encoded
too: no scope becomes ``.``, ``..``, a hidden folder, or a name Windows would trim.

>>> encode_scope("voc_ppb@dev-001")
'voc_ppb@dev-001'
>>> encode_scope("voc_ppb@Küche")
'voc_ppb@%4B%C3%BCche'
>>> encode_scope("voc_ppb@dev 1"), encode_scope("voc_ppb@a/b"), encode_scope("..")
('voc_ppb@dev%201', 'voc_ppb@a%2Fb', '%2E%2E')
>>> all(decode_scope(encode_scope(s)) == s for s in ("voc_ppb@Küche", "voc_ppb@dev 1", "voc_ppb@a/b", "."))
True
>>> decode_scope("voc_ppb@dev%201")
'voc_ppb@dev 1'

A name that is not the canonical encoding of a scope is refused, so one scope has one folder:

>>> decode_scope("voc_ppb@dev%2f1")
Traceback (most recent call last):
...
ValueError: 'voc_ppb@dev%2f1' is not an encoded scope
"""

from __future__ import annotations

import hashlib
import re

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.@")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")
# Folder names stay well under the 255-byte limit of common filesystems; longer encodings (a long id
# of non-ASCII characters) are shortened to a prefix and a hash, and the scope is recorded beside them.
MAX_DIRNAME = 200
HASHED_MARK = "~"  # never part of an encoding: "~" itself is always escaped


def scope_of(target: str, device: str | None = None) -> str:
    """``voc_ppb`` for the fleet model of a target, ``voc_ppb@dev-001`` for one device's model."""
    return target if device is None else f"{target}@{device}"


def parse_scope(scope: str) -> tuple[str, str | None]:
    """``(target, device)``; device is None for a fleet scope. Device ids may themselves hold ``@``."""
    target, _, device = scope.partition("@")
    return target, device or None


def version_label(scope: str, version: int) -> str:
    """``voc_ppb:v3``: what predictions, events and the dashboard call a version."""
    return f"{scope}:v{version}"


def parse_label(label: str) -> tuple[str, int]:
    scope, _, v = label.rpartition(":v")
    if not scope or not v.isdigit():
        raise ValueError(f"not a version label: {label!r} (expected e.g. voc_ppb:v3)")
    return scope, int(v)


def encode_scope(scope: str) -> str:
    """The canonical, reversible, filesystem-safe spelling of ``scope`` (see the module doc)."""
    if not scope:
        raise ValueError("empty scope")
    last = len(scope) - 1
    out: list[str] = []
    for i, ch in enumerate(scope):
        if ch in _SAFE and not (ch == "." and i in (0, last)):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def decode_scope(name: str) -> str:
    """The scope whose :func:`encode_scope` is ``name``; ``ValueError`` for any other name."""
    try:
        raw = bytearray()
        pos = 0
        for m in _ESCAPE.finditer(name):
            raw += name[pos : m.start()].encode("ascii")
            raw.append(int(m.group(1), 16))
            pos = m.end()
        raw += name[pos:].encode("ascii")
        scope = raw.decode("utf-8", "surrogatepass")
        if scope and encode_scope(scope) == name:
            return scope
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    raise ValueError(f"{name!r} is not an encoded scope")


def scope_dirname(scope: str) -> str:
    """The folder name of ``scope``: its encoding, or, past :data:`MAX_DIRNAME`, a prefix and a hash.

    >>> name = scope_dirname("voc_ppb@" + "Küche" * 40)
    >>> len(name) <= MAX_DIRNAME, HASHED_MARK in name, is_hashed_dirname(name)
    (True, True, True)
    """
    name = encode_scope(scope)
    if len(name) <= MAX_DIRNAME:
        return name
    digest = hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    head = name[: MAX_DIRNAME - len(digest) - 1]
    cut = head.rfind("%", len(head) - 2)  # never end the prefix inside an escape
    return f"{head[:cut] if cut >= 0 else head}{HASHED_MARK}{digest}"


def is_hashed_dirname(name: str) -> bool:
    return HASHED_MARK in name
