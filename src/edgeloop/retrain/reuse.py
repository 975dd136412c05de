"""Which finished training answers a retrain request, so a trainer pool does not train it again.

Two edges ask for the fleet model at about the same time; an edge's request comes again after its
timeout; a request waits while another trainer trains its scope. Each such request is answered by
the newest finished training of its scope, by whichever trainer, when that training saw readings as
new as the request: its newest reading (``window_end_ts`` in the verdict's metrics, ``window.end_ts``
in a champion's metadata) is at most ``retrain.reuse_slack`` seconds older than the request's
``requested_ts``. A request naming a change point (``since_ts``, a device's drift) gets no slack, a
manual request or one without ``requested_ts`` is always trained.

A request that arrives while its scope is being trained (by this trainer, or by another one it
waits for) is answered from that training's verdict whatever the reading times: the training read
its window about when the request was made (on a fast replay, the store's writer lag alone can be
minutes of reading time).

>>> from edgeloop.engine.engine import RetrainRequest
>>> from edgeloop.lifecycle.retrains import Attempt
>>> finished = FinishedTrainings()
>>> finished.note({"kind": "model_promoted", "scope": "voc_ppb", "version": "voc_ppb:v3",
...                "metrics": {"window_end_ts": 1000.0}})
>>> ask = lambda ts: Attempt(RetrainRequest("voc_ppb", "initial", "", requested_ts=ts), "r", 1)
>>> finished.covering(ask(1030.0), None, slack=60).label
'voc_ppb:v3'
>>> finished.covering(ask(1100.0), None, slack=60) is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

from edgeloop.errors import ModelFileError
from edgeloop.lifecycle.retrains import Attempt
from edgeloop.registry.local import LocalRegistry
from edgeloop.scopes import version_label


@dataclass(frozen=True)
class Finished:
    """A finished training of a scope."""

    window_end: float  # the newest reading it was trained on
    label: str | None  # the version it promoted; None: rejected
    reason: str


class FinishedTrainings:
    """The newest finished training per scope, learnt from verdict events of every trainer."""

    def __init__(self) -> None:
        self._newest: dict[str, Finished] = {}

    def note(self, event: dict[str, Any]) -> None:
        """Remember a verdict event (``model_promoted``/``model_rejected``) that says what it saw."""
        finished = verdict(event)
        scope = event.get("scope")
        if finished is None or not isinstance(scope, str):
            return
        known = self._newest.get(scope)
        if known is None or finished.window_end >= known.window_end:
            self._newest[scope] = finished

    def covering(self, attempt: Attempt, registry: LocalRegistry | None, slack: float) -> Finished | None:
        """The finished training that answers ``attempt``, if one saw readings as new as it asks for."""
        r = attempt.request
        if r.trigger == "manual" or not r.requested_ts:
            return None
        if r.since_ts is not None:
            slack = 0.0
        champion = champion_training(registry, r.scope) if registry is not None else None
        for finished in (self._newest.get(r.scope), champion):
            if finished is not None and finished.window_end + slack >= r.requested_ts:
                return finished
        return None


def verdict(event: dict[str, Any], scope: str | None = None) -> Finished | None:
    """The finished training a verdict event reports (of ``scope``, if given); None for other events."""
    kind, metrics = event.get("kind"), event.get("metrics")
    if kind not in ("model_promoted", "model_rejected") or (
        scope is not None and event.get("scope") != scope
    ):
        return None
    end = metrics.get("window_end_ts") if isinstance(metrics, dict) else None
    if not _is_number(end):
        return None  # a trainer that does not say what it trained on
    label = event.get("version") if kind == "model_promoted" else None
    reason = str(event.get("reason") or "")[:300]
    return Finished(float(end), label if isinstance(label, str) else None, reason)


def champion_training(registry: LocalRegistry, scope: str) -> Finished | None:
    """The local champion of ``scope`` (trained here, by another trainer, or from the bus)."""
    try:
        version = registry.champion(scope)
        if version is None:
            return None
        window = registry.meta(scope, version).get("window")
    except (ModelFileError, OSError, ValueError):
        return None
    end = window.get("end_ts") if isinstance(window, dict) else None
    if not _is_number(end):
        return None
    return Finished(float(end), version_label(scope, version), "the champion")


def _is_number(x: Any) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool)
