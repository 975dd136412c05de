"""The edge's model loader: keeps the engine serving each scope's newest good champion.

It polls the local registry between batches. A scope is looked at again only when its
``champion.json`` was replaced, or while it serves a fallback (so a repaired file is picked up). A
champion that does not verify falls back through the champion history
(:meth:`~edgeloop.registry.local.LocalRegistry.resolve`); every refusal is reported once, as a
``model_load_failed`` event naming what was refused and what serves instead, never at every poll.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from edgeloop.engine.engine import Engine, Rollback
from edgeloop.engine.rows import ServedModel
from edgeloop.errors import ModelFileError
from edgeloop.models.modelfile import LoadedModel
from edgeloop.registry.local import LocalRegistry, Refusal
from edgeloop.scopes import parse_label, parse_scope, version_label
from edgeloop.service import metrics
from edgeloop.telemetry.schema import Event

log = logging.getLogger(__name__)


class ModelSync:
    """Moves champions from the registry into the engine; ``emit`` publishes and stores events."""

    def __init__(
        self,
        registry: LocalRegistry,
        engine: Engine,
        lags: int,
        emit: Callable[[list[Event]], None],
        on_swap: Callable[[], None] = lambda: None,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.lags = lags
        self._emit = emit
        self._on_swap = on_swap
        self._pointer_states: dict[str, tuple[int, ...] | None] = {}
        self._degraded: set[str] = set()  # scopes serving a fallback: looked at every poll
        self._reported: set[tuple[str, str, str]] = set()  # (scope, file, reason) already reported

    def sync(self) -> None:
        """Serve every scope's newest good champion (also the start-up load)."""
        for scope in self.registry.scopes():
            state = self.registry.pointer_state(scope)
            if scope not in self._degraded and self._pointer_states.get(scope, ()) == state:
                continue
            serving = self.engine.serving.get(scope)
            try:
                # The edge installs only registry models, so what serves is a LoadedModel.
                current = cast(LoadedModel, serving.model) if serving else None
                res = self.registry.resolve(scope, lags=self.lags, current=current)
            except (ModelFileError, OSError, ValueError) as exc:
                log.warning("cannot read the models of %s: %s", scope, exc)
                continue
            self._pointer_states[scope] = state
            if res.refused:
                self._degraded.add(scope)
            else:
                self._degraded.discard(scope)
                self._reported = {r for r in self._reported if r[0] != scope}
            self._report(scope, res.refused, res.model)
            if res.model is None:
                if serving is not None and res.wanted is None and not res.refused:
                    self.engine.uninstall(scope)  # rolled back to no model of its own
                # (every version refused: the model in service keeps serving)
            elif serving is None or serving.model.label != res.model.label:
                self._serve(scope, res.model)

    def install(self, scope: str, version: int) -> bool:
        """Serve ``version`` of ``scope`` (a promotion we were told of); False if it was refused."""
        label = version_label(scope, version)
        try:
            model = self.registry.load(scope, version, lags=self.lags)
        except (ModelFileError, OSError, ValueError) as exc:
            self._report(scope, [Refusal(label, label, str(exc))], None)
            self._pointer_states.pop(scope, None)  # the next poll walks the champion history
            return False
        self._serve(scope, model)
        return True

    def refuse(self, scope: str, label: str | None, what: str, reason: str) -> None:
        """Report a model that came from elsewhere (the bus) and was refused; what serves stays."""
        self._report(scope, [Refusal(label, what, reason)], None)

    def record_rollback(self, rollback: Rollback) -> None:
        """Move the champion pointer off a version the engine rolled back on probation."""
        try:
            _, rejected = parse_label(rollback.rejected)
            restored = self.registry.rollback(
                rollback.scope, reason=f"probation failed for {rollback.rejected}", rejected=rejected
            )
        except (ModelFileError, OSError, ValueError) as exc:
            log.error("could not record rollback of %s: %s", rollback.scope, exc)
            return
        log.warning("rolled back %s -> %s", rollback.rejected, restored)

    def _serve(self, scope: str, model: LoadedModel) -> None:
        self.engine.install(scope, model, probation=True)
        self._on_swap()
        metrics.SWAPS.inc()
        log.info("now serving %s (%s)", model.label, model.meta.get("kind"))

    def _report(self, scope: str, refused: list[Refusal], instead: ServedModel | None) -> None:
        fresh = [r for r in refused if (scope, r.what, r.reason) not in self._reported]
        if not fresh:
            return
        if instead is None and scope in self.engine.serving:
            instead = self.engine.serving[scope].model
        target, device = parse_scope(scope)
        if instead is not None:
            fallback = instead.label
        elif device is not None:
            fallback = self.engine.serving_label(device, target)  # the fleet model, or persistence
        else:
            fallback = "persistence"
        events = []
        for r in fresh:
            self._reported.add((scope, r.what, r.reason))
            metrics.MODEL_LOAD_FAILURES.inc()
            log.error("refused %s: %s; serving %s instead", r.what, r.reason, fallback)
            events.append(
                Event(
                    "model_load_failed",
                    scope,
                    self.engine.stream_ts,
                    reason=f"refused {r.what}: {r.reason}; serving {fallback} instead",
                    version=r.label,
                    previous_version=fallback,
                )
            )
        self._emit(events)
