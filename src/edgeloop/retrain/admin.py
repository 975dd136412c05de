"""What ``edgeloop models list | promote | rollback`` do, with the same checks as the automatic loop."""

from __future__ import annotations

import time

from edgeloop.adapters.store import Store
from edgeloop.config import Settings
from edgeloop.errors import ModelFileError
from edgeloop.lifecycle.promotion import judge_on_holdout
from edgeloop.models.training import NotEnoughData, split_series
from edgeloop.registry.local import LocalRegistry
from edgeloop.registry.tracking import Tracker
from edgeloop.retrain.job import serving_model
from edgeloop.scopes import parse_label, parse_scope, version_label
from edgeloop.telemetry.schema import Event


def _tracker(settings: Settings) -> Tracker:
    return Tracker.from_settings(settings)


def list_versions(settings: Settings) -> list[str]:
    registry = LocalRegistry(settings.models_dir)
    lines = []
    for scope in registry.scopes():
        try:
            champion = registry.champion(scope)
        except ModelFileError as exc:
            lines.append(f"{scope:<28} champion unreadable: {exc}")
            champion = None
        for version in registry.versions(scope):
            try:
                meta = registry.meta(scope, version)
            except ModelFileError as exc:
                lines.append(f"{version_label(scope, version):<28} unreadable: {exc}")
                continue
            nan = float("nan")
            # Scores are checked to be numbers or null (a NaN is stored as null).
            raw = meta.get("scores") or {}
            scores = {k: nan if v is None else v for k, v in raw.items()}
            mark = "* champion" if version == champion else ""
            lines.append(
                f"{meta['label']:<28} {meta['kind']:<12} val RMSE {scores.get('val_rmse', nan):>9.4g}"
                f"  vs {raw.get('champion') or '?'} {scores.get('champion_rmse', nan):.4g}"
                f"  persistence {scores.get('persistence_rmse', nan):.4g}"
                f"  {meta.get('trigger', '')} {mark}"
            )
    return lines


def _record(settings: Settings, event: Event) -> None:
    store = Store(settings.store_path, retention_rows=settings.store.retention_rows)
    try:
        store.write(events=[event])
    finally:
        store.close()


def _mlflow_run(settings: Settings, scope: str, version: int) -> str | None:
    store = Store(settings.store_path, retention_rows=settings.store.retention_rows)
    try:
        for row in store.model_versions(scope):
            if row["version"] == version:
                return row.get("mlflow_run_id")
    finally:
        store.close()
    return None


def promote(settings: Settings, label: str, *, force: bool = False) -> tuple[bool, str]:
    """Promote ``label`` if it beats the model serving its scope on the newest holdout (or ``force``)."""
    try:
        scope, version = parse_label(label)
    except ValueError as exc:
        return False, str(exc)
    registry = LocalRegistry(settings.models_dir)
    lags = settings.model.lags
    try:
        candidate = registry.load(scope, version, lags=lags)
    except (ModelFileError, ValueError) as exc:
        return False, f"cannot promote {label}: {exc}"
    current = serving_model(registry, scope, lags)
    if current is not None and current.label == label:
        return True, f"{label} is already the champion"
    target, device = parse_scope(scope)
    store = Store(settings.store_path, retention_rows=settings.store.retention_rows)
    try:
        series = store.series(target, device=device, limit=settings.model.train_window)
    finally:
        store.close()
    try:
        split = split_series(
            series, lags, settings.model.validation_fraction, settings.model.min_validation_samples
        )
        judgement = judge_on_holdout(
            candidate.forecaster,
            current.forecaster if current else None,
            split.val_x,
            split.val_y,
            margin=settings.model.promotion_margin,
            candidate_label=label,
            champion_label=current.label if current else "persistence",
        )
        better, verdict = judgement.promote, judgement.reason
    except NotEnoughData:
        better, verdict = False, "not enough recent data to check it"
    if not better and not force:
        return False, f"refused: {label} does not beat the champion ({verdict}); --force overrides"
    try:
        registry.promote(scope, version, reason=f"manual: {verdict}", lags=lags)
    except (ModelFileError, OSError) as exc:
        return False, f"cannot promote {label}: {exc}"
    run_id = _mlflow_run(settings, scope, version)
    if run_id:
        _tracker(settings).set_champion_by_run(scope, run_id)
    _record(
        settings,
        Event(
            "model_promoted",
            scope,
            time.time(),
            reason=f"manual promotion: {verdict}",
            version=label,
            previous_version=current.label if current else None,
        ),
    )
    return True, f"promoted {label} ({verdict}); edges pick it up within edge.model_poll_interval"


def rollback(settings: Settings, scope: str) -> tuple[bool, str]:
    registry = LocalRegistry(settings.models_dir)
    try:
        current = registry.champion(scope)
    except (ModelFileError, ValueError) as exc:
        return False, str(exc)
    if current is None:
        return False, f"{scope} has no champion to roll back"
    try:
        restored = registry.rollback(scope, reason="manual rollback")
    except (ModelFileError, OSError) as exc:
        return False, f"cannot roll back {scope}: {exc}"
    restored_label = version_label(scope, restored) if restored else None
    if restored:
        run_id = _mlflow_run(settings, scope, restored)
        if run_id:
            _tracker(settings).set_champion_by_run(scope, run_id)
    else:
        _tracker(settings).clear_champion(scope)
    _record(
        settings,
        Event(
            "model_rolled_back",
            scope,
            time.time(),
            reason="manual rollback",
            version=restored_label,
            previous_version=version_label(scope, current),
        ),
    )
    fallback = restored_label or ("the fleet model" if "@" in scope else "persistence")
    return True, f"rolled back {version_label(scope, current)}; now serving {fallback}"
