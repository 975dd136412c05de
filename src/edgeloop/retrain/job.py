"""One retrain: read the scope's recent readings, train candidates, compare with the champion, decide.

This runs outside the edge's message loop (a worker process, or the trainer service), so ingestion
never waits for it. The decision is validated: the challenger must beat the model currently serving
the scope and persistence on the *same* recent, time-ordered holdout by ``model.promotion_margin``
(:mod:`edgeloop.lifecycle.promotion`); otherwise it is
kept on disk and in MLflow as rejected, with both scores in the event.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeloop.adapters.store import BaseStore, Series, open_store
from edgeloop.config import Settings
from edgeloop.errors import ModelFileError
from edgeloop.lifecycle.promotion import champion_margin, judge
from edgeloop.models.forecasters import holdout_forecast, rmse
from edgeloop.models.modelfile import LoadedModel, save_model
from edgeloop.models.training import NotEnoughData, TrainResult, train_candidates
from edgeloop.registry.local import LocalRegistry
from edgeloop.scopes import parse_scope, version_label
from edgeloop.telemetry.fields import format_ts
from edgeloop.telemetry.schema import Event

log = logging.getLogger(__name__)


@dataclass
class RetrainOutcome:
    """What a retrain decided; travels between processes as plain data."""

    scope: str
    decision: str  # promoted | rejected | failed
    reason: str
    version: int | None = None
    label: str | None = None
    previous_label: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrainOutcome:
        return cls(**data)


def _series_for(store: BaseStore, settings: Settings, scope: str, since_ts: float | None) -> list[Series]:
    target, device = parse_scope(scope)
    window = settings.model.train_window
    if device is None:
        return store.series(target, limit=window)
    recent = store.series(target, device=device, limit=window, since_ts=since_ts)
    if since_ts is not None and (not recent or len(recent[0].values) < settings.model.retrain_min_samples):
        # Too little since the change: take the newest minimum, even if it reaches back before it.
        recent = store.series(target, device=device, limit=settings.model.retrain_min_samples)
    return recent


def serving_model(registry: LocalRegistry, scope: str, lags: int) -> LoadedModel | None:
    """The model that serves ``scope`` today: its own champion, else (for a device) the fleet's."""
    model = registry.load_champion(scope, lags=lags)
    target, device = parse_scope(scope)
    if model is None and device is not None:
        model = registry.load_champion(target, lags=lags)
    return model


@dataclass
class Verdict:
    """A trained challenger judged against the model serving its scope, on the same holdout."""

    result: TrainResult
    champion_label: str
    champion_rmse: float
    promote: bool
    reason: str


def train_and_judge(settings: Settings, series: list[Series], current: LoadedModel | None) -> Verdict:
    """Train the candidates and decide promotion with :func:`~edgeloop.lifecycle.promotion.judge`;
    pure (no I/O), so the evaluator uses it too.

    Raises :class:`NotEnoughData` when the series are too short to train and validate.
    """
    lags = settings.model.lags
    result = train_candidates(
        series,
        lags=lags,
        candidates=settings.model.candidates,
        validation_fraction=settings.model.validation_fraction,
        rounds=settings.model.lgbm_rounds,
        min_validation=settings.model.min_validation_samples,
    )
    champion_label = current.label if current is not None else "persistence"
    val_x, val_y = result.split.val_x, result.split.val_y
    champion_rmse, over = result.persistence_rmse, None
    if current is not None:
        champion_errors = holdout_forecast(current.forecaster, val_x, val_y) - val_y
        champion_rmse = rmse(champion_errors + val_y, val_y)
        if result.holdout_errors is not None:
            over = champion_margin(result.holdout_errors, champion_errors, settings.model.promotion_margin)
    judgement = judge(
        result.val_rmse,
        champion_rmse=champion_rmse,
        persistence_rmse=result.persistence_rmse,
        margin=settings.model.promotion_margin,
        candidate=result.kind,
        champion=champion_label,
        candidate_is_persistence=result.kind == "persistence",
        champion_margin=over,
    )
    return Verdict(result, champion_label, champion_rmse, judgement.promote, judgement.reason)


def run_retrain(
    settings: Settings,
    scope: str,
    *,
    trigger: str,
    reason: str = "",
    since_ts: float | None = None,
    stream_ts: float | None = None,
    tracker: Any = None,
) -> RetrainOutcome:
    """Train, register and (if better) promote a new version of ``scope``. Never raises for bad data."""
    started = time.monotonic()
    ts = stream_ts if stream_ts is not None else time.time()
    events = [
        Event("retrain_started", scope, ts, reason=f"{trigger}: {reason}".strip(": ")).to_dict(settings.site)
    ]
    registry = LocalRegistry(settings.models_dir)
    lags = settings.model.lags
    store = open_store(settings.store_location, retention_rows=settings.store.retention_rows)
    try:
        series = _series_for(store, settings, scope, since_ts)
        try:
            current = serving_model(registry, scope, lags)
        except ModelFileError as exc:
            log.warning("champion of %s unreadable (%s); comparing against persistence", scope, exc)
            current = None
        try:
            verdict = train_and_judge(settings, series, current)
        except NotEnoughData as exc:
            return _finish(settings, scope, "failed", str(exc), events, ts, started)
        result, champion_label, champion_rmse = verdict.result, verdict.champion_label, verdict.champion_rmse
        better, why = verdict.promote, verdict.reason
        decision = "promoted" if better else "rejected"
        version = registry.next_version(scope)
        label = version_label(scope, version)
        metrics = _metrics(result, champion_rmse)
        meta = _meta(settings, scope, version, label, trigger, result, champion_label, champion_rmse)
        version_dir = save_model(registry.version_dir(scope, version), result.forecaster, meta)
        run_id, registered = (None, None)
        if tracker is not None:
            try:
                run_id, registered = tracker.log_training(
                    scope=scope,
                    version_dir=version_dir,
                    kind=result.kind,
                    booster=getattr(result.forecaster, "booster", None),
                    params={
                        "trigger": trigger,
                        "scope": scope,
                        "kind": result.kind,
                        "lags": lags,
                        "policy": settings.drift.policy,
                        # ISO-8601 UTC: people read these in the MLflow UI.
                        "window_start": format_ts(result.split.window_start),
                        "window_end": format_ts(result.split.window_end),
                        "n_samples": result.split.n_samples,
                        "data_hash": result.split.data_hash,
                    },
                    metrics={**metrics, "promoted": float(better)},
                )
            except Exception:  # tracking is a record, not a gate: a down MLflow must not stop healing
                log.exception("MLflow logging failed for %s", label)
        store.record_model_version(
            scope=scope,
            version=version,
            label=label,
            created=time.time(),
            formulation=result.kind,
            trigger=trigger,
            val_rmse=result.val_rmse,
            champion_rmse=champion_rmse,
            persistence_rmse=result.persistence_rmse,
            mean_rmse=result.mean_rmse,
            window_start=result.split.window_start,
            window_end=result.split.window_end,
            n_samples=result.split.n_samples,
            decision=decision,
            reason=why,
            mlflow_run_id=run_id,
            path=str(version_dir),
            candidates=result.scores,
        )
        if better:
            registry.promote(scope, version, why)
            if tracker is not None and registered is not None:
                try:
                    tracker.set_champion(scope, registered)
                except Exception:
                    log.exception("could not move the MLflow champion alias to %s", label)
        kind = "model_promoted" if better else "model_rejected"
        events.append(
            Event(
                "retrain_finished",
                scope,
                ts,
                reason=f"trained {len(result.scores)} candidates",
                metrics=metrics,
            ).to_dict(settings.site)
        )
        events.append(
            Event(
                kind, scope, ts, reason=why, metrics=metrics, version=label, previous_version=champion_label
            ).to_dict(settings.site)
        )
        outcome = RetrainOutcome(scope, decision, why, version, label, champion_label, metrics, events)
        outcome.seconds = time.monotonic() - started
        return outcome
    finally:
        store.close()


def _finish(
    settings: Settings,
    scope: str,
    decision: str,
    why: str,
    events: list[dict[str, Any]],
    ts: float,
    started: float,
) -> RetrainOutcome:
    events.append(Event("retrain_finished", scope, ts, reason=why).to_dict(settings.site))
    return RetrainOutcome(scope, decision, why, events=events, seconds=time.monotonic() - started)


def _metrics(result: TrainResult, champion_rmse: float) -> dict[str, Any]:
    return {
        "val_rmse": result.val_rmse,
        "champion_rmse": champion_rmse,
        "persistence_rmse": result.persistence_rmse,
        "mean_rmse": result.mean_rmse,
        **{f"rmse_{k}": v for k, v in result.scores.items()},
        "n_train": len(result.split.train_y),
        "n_val": len(result.split.val_y),
        # The newest reading it was trained on: a trainer pool answers requests no newer than this
        # from this result instead of training again (edgeloop.retrain.service).
        "window_end_ts": result.split.window_end,
    }


def _meta(
    settings: Settings,
    scope: str,
    version: int,
    label: str,
    trigger: str,
    result: TrainResult,
    champion_label: str,
    champion_rmse: float,
) -> dict[str, Any]:
    target, device = parse_scope(scope)
    return {
        "scope": scope,
        "target": target,
        "device": device,
        "version": version,
        "label": label,
        "created": time.time(),
        "trigger": trigger,
        "formulation": result.kind,
        "window": {
            "start_ts": result.split.window_start,
            "end_ts": result.split.window_end,
            "n_samples": result.split.n_samples,
        },
        "scores": {
            "val_rmse": result.val_rmse,
            "candidates": result.scores,
            "persistence_rmse": result.persistence_rmse,
            "mean_rmse": result.mean_rmse,
            "champion": champion_label,
            "champion_rmse": champion_rmse,
        },
        "data_hash": result.split.data_hash,
    }
