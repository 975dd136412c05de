"""Which model serves which device: the engine's model slots per scope.

A scope is a target (the fleet model, ``voc_ppb``) or a target on one device (that device's own
model, ``voc_ppb@dev-001``; see :mod:`edgeloop.scopes`). A device is served by its own model if there
is one, else by the fleet model, else by persistence. Installing a model resets the error and floor
bookkeeping of the devices it now serves and keeps the model it replaced for probation; withdrawing
one hands its devices back to the fleet model. :class:`~edgeloop.engine.engine.Engine` inherits these
methods; they run between batches, never per reading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from edgeloop.engine import decisions
from edgeloop.engine.rows import ServedModel
from edgeloop.engine.track import _Serving, _Track
from edgeloop.scopes import parse_scope, scope_of
from edgeloop.telemetry.schema import PERSISTENCE_VERSION

if TYPE_CHECKING:
    from edgeloop.engine.engine import Engine


class ModelSlots:
    """The serving model per scope and the rules for putting one in or taking it out."""

    tracks: dict[tuple[str, str], _Track]
    serving: dict[str, _Serving]
    pending: set[str]
    samples_per_target: dict[str, int]
    probation_samples: int
    _initial_threshold: dict[str, int]
    _refresh_at: dict[str, float]

    @property
    def _engine(self) -> Engine:
        # The decisions module works on the whole engine; only Engine inherits this class.
        return cast("Engine", self)

    def install(self, scope: str, model: ServedModel, *, probation: bool = True) -> None:
        """Serve ``model`` for ``scope`` from the next wave on; the one it replaces is kept for probation."""
        current = self.serving.get(scope)
        if current is not None and current.model.label == model.label:
            return
        previous = current.model if current is not None else self._fallback_model(scope)
        self.serving[scope] = _Serving(
            model=model,
            previous=previous if probation else None,
            probation_left=self.probation_samples if probation and previous is not None else 0,
        )
        self.pending.discard(scope)
        self._refresh_at.pop(scope, None)  # a new model restarts its scope's refresh clock
        fleet = parse_scope(scope)[1] is None
        # A refresh replaces a model by a validated, slightly better one trained on the same stream:
        # its error scale barely moves, so detectors keep their calibration (recalibrating would
        # leave every device of the scope blind to drift for drift.calibration readings).
        refresh = model.meta.get("trigger") == "refresh"
        for track in self._tracks_served_by(scope):
            if not refresh:
                track.guard.model_changed(model.val_rmse)
            track.model_rmse.reset()
            track.since_model = [0, 0.0, 0.0, 0.0]
            track.shadow_forecast = None
            track.quiet_until = None  # alarms about this model are new evidence (see decisions.quiet)
            decisions.reset_floor(self._engine, track, f"{model.label} now serves", model.label)
            if fleet and track.status in ("drifting", "retraining"):
                continue  # a new fleet model does not cancel a device's own drift retrain
            track.status = "probation" if probation and previous is not None else "healthy"
            track.alarm_ts = None

    def uninstall(self, scope: str) -> None:
        """Stop serving ``scope``'s model: its devices fall back to the fleet model or persistence."""
        if self.serving.pop(scope, None) is not None:
            for track in self._tracks_served_by(scope):
                fallback = self._fallback_model(scope)
                track.guard.model_changed(fallback.val_rmse if fallback else None)
                track.model_rmse.reset()
                track.since_model = [0, 0.0, 0.0, 0.0]
                decisions.reset_floor(
                    self._engine,
                    track,
                    f"{scope}'s model was withdrawn",
                    fallback.label if fallback else None,
                )

    def retrain_finished(self, scope: str, *, installed: bool) -> None:
        """The adapter reports a retrain's end; a failed or rejected one may be asked again later."""
        self.pending.discard(scope)
        if not installed:
            target, device = parse_scope(scope)
            if device is None:
                # Not enough or not good enough data yet: ask again once twice as much has arrived.
                self._initial_threshold[target] = self.samples_per_target[target] * 2
            # The device's alarms are held for a cycle (decisions.quiet). Only the device's own drift
            # retrain ends its wait; a rejected fleet refresh, or a device refresh while the device
            # still collects data after an alarm, leaves it going.
            for track in self._tracks_served_by(scope) if device is not None else ():
                decisions.quiet(self._engine, track)
                if track.status == "retraining":
                    track.status = "healthy"
                    track.alarm_ts = None

    def serving_label(self, device: str, target: str) -> str:
        serving = self._resolve(device, target)
        return serving.model.label if serving else PERSISTENCE_VERSION

    def _serving_scope(self, device: str, target: str) -> str:
        own = scope_of(target, device)
        return own if own in self.serving else target

    def _resolve(self, device: str, target: str) -> _Serving | None:
        return self.serving.get(scope_of(target, device)) or self.serving.get(target)

    def _fallback_model(self, scope: str) -> ServedModel | None:
        target, device = parse_scope(scope)
        if device is not None and target in self.serving:
            return self.serving[target].model
        return None

    def _tracks_served_by(self, scope: str) -> list[_Track]:
        target, device = parse_scope(scope)
        if device is not None:
            track = self.tracks.get((device, target))
            return [track] if track is not None else []
        return [
            t
            for (d, tg), t in self.tracks.items()
            if tg == target and scope_of(target, d) not in self.serving
        ]
