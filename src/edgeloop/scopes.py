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
"""

from __future__ import annotations


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
