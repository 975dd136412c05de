"""What ``edgeloop models list | promote | rollback`` do, with the same checks as the automatic loop."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from edgeloop.adapters.store import open_store, store_exists
from edgeloop.config import Settings
from edgeloop.errors import ConfigError, EdgeloopError, ModelFileError
from edgeloop.lifecycle.promotion import judge_on_holdout
from edgeloop.models.training import NotEnoughData, split_series
from edgeloop.registry.bus import trainer_keys
from edgeloop.registry.local import LocalRegistry
from edgeloop.registry.signing import Signer
from edgeloop.registry.tracking import Tracker
from edgeloop.retrain.job import serving_model
from edgeloop.scopes import parse_label, parse_scope, version_label
from edgeloop.telemetry.schema import Event

log = logging.getLogger(__name__)


def _tracker(settings: Settings) -> Tracker:
    return Tracker.from_settings(settings)


def _known_versions(registry: LocalRegistry, scope: str) -> str:
    """What exists, for an error about a version that does not: the user's next command is in it."""
    scopes = registry.scopes()
    if scope not in scopes:
        return f"no scope {scope!r}; scopes: {', '.join(scopes) or 'none yet'}"
    try:
        versions = registry.versions(scope)
        champion = registry.champion(scope)
    except ModelFileError as exc:
        return str(exc)
    listed = ", ".join(version_label(scope, v) + (" (champion)" if v == champion else "") for v in versions)
    return f"{scope} has {listed or 'no versions'}"


def _decisions(settings: Settings) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The store's row per version label, and the labels a rollback took out of service."""
    if not store_exists(settings.store_location):
        return {}, set()
    store = open_store(settings.store_location, retention_rows=settings.store.retention_rows, readonly=True)
    try:
        rows = {row["label"]: row for row in store.model_versions()}
        rolled = {
            e.previous_version
            for e in store.events(limit=100_000)
            if e.kind == "model_rolled_back" and e.previous_version
        }
    finally:
        store.close()
    return rows, rolled


def version_rows(settings: Settings) -> list[dict[str, Any]]:
    """One row per version of every scope: label, kind, created, scores, decision and champion flag.

    ``decision`` is what the version is now: ``champion``, ``retired`` (an earlier champion that a
    rollback could restore), ``rolled back``, or the decision recorded when it was trained.
    """
    registry = LocalRegistry(settings.models_dir)
    stored, rolled = _decisions(settings)
    rows: list[dict[str, Any]] = []
    for scope in registry.scopes():
        try:
            pointer = registry.pointer(scope)
        except ModelFileError as exc:
            rows.append({"scope": scope, "label": scope, "error": f"champion unreadable: {exc}"})
            pointer = None
        champion = pointer["version"] if pointer else None
        history = set(pointer["history"]) if pointer else set()
        for version in registry.versions(scope):
            label = version_label(scope, version)
            try:
                meta = registry.meta(scope, version)
            except ModelFileError as exc:
                rows.append({"scope": scope, "label": label, "error": f"unreadable: {exc}"})
                continue
            scores = meta.get("scores") or {}
            row = stored.get(label, {})
            if version == champion:
                decision = "champion"
            elif label in rolled:
                decision = "rolled back"
            elif version in history:
                decision = "retired"
            else:
                decision = row.get("decision") or "-"
            rows.append(
                {
                    "scope": scope,
                    "version": version,
                    "label": label,
                    "kind": meta.get("kind"),
                    "created": meta.get("created") or row.get("created"),
                    "trigger": meta.get("trigger") or row.get("trigger"),
                    "val_rmse": scores.get("val_rmse"),
                    "champion_rmse": scores.get("champion_rmse"),
                    "persistence_rmse": scores.get("persistence_rmse"),
                    "compared_with": scores.get("champion"),
                    "decision": decision,
                    "champion": version == champion,
                }
            )
    return rows


def _record(settings: Settings, event: Event) -> None:
    record_events(settings, [event])


def record_events(settings: Settings, events: list[Event], *, timeout: float = 3.0) -> bool:
    """Store ``events`` and publish them on ``topics.events``, where edges and dashboards listen.

    Publishing is best effort (an operator's command must not fail because the broker is down):
    False, logged, when no broker answers within ``timeout``.
    """
    if not events:
        return True
    store = open_store(settings.store_location, retention_rows=settings.store.retention_rows)
    try:
        store.write(events=events)
    finally:
        store.close()
    import orjson

    from edgeloop.adapters.mqtt import MqttSession
    from edgeloop.adapters.mqtt_client import default_client_id
    from edgeloop.adapters.topics import topic_for

    session = MqttSession(settings.broker, role="admin", client_id=default_client_id("admin"))
    try:
        session.start(timeout=timeout, wait=0)  # best effort: a command never waits for a broker
    except (EdgeloopError, OSError) as exc:
        log.warning("%d event(s) stored but not published: %s", len(events), exc)
        return False
    try:
        topic = topic_for(settings.topics.events, site=settings.site)
        for event in events:
            session.publish(topic, orjson.dumps(event.to_dict(settings.site)), qos=1)
    finally:
        session.close(drain_timeout=timeout)
    return True


def _mlflow_run(settings: Settings, scope: str, version: int) -> str | None:
    store = open_store(settings.store_location, retention_rows=settings.store.retention_rows)
    try:
        for row in store.model_versions(scope):
            if row["version"] == version:
                return row.get("mlflow_run_id")
    finally:
        store.close()
    return None


Publish = Callable[[str], str | None]  # publishes a scope's champion decision; its label


def decision_signer(settings: Settings, command: str) -> Signer | None:
    """The key that signs an operator's champion decision in bus mode (None in files mode).

    :class:`ConfigError` if this host cannot sign: edges would never see the decision.
    """
    if settings.distribution.mode != "bus":
        return None
    if settings.distribution.signing_key_file is None:
        raise ConfigError(
            f"distribution.signing_key_file: not set; with distribution.mode bus run `edgeloop {command}` "
            "where it is set (a trainer host), so the edges receive the decision signed"
        )
    keys = trainer_keys(settings)
    assert keys is not None  # bus mode
    return keys[0]


@contextlib.contextmanager
def decision_publisher(settings: Settings, signer: Signer | None) -> Iterator[Publish | None]:
    """Connected to the broker before anything changes, so an unreachable broker changes nothing.

    Yields None in files mode (edges read the shared models folder).
    """
    if signer is None:
        yield None
        return
    from edgeloop.adapters.mqtt import MqttSession
    from edgeloop.adapters.mqtt_client import default_client_id
    from edgeloop.retrain.service import publish_champion

    # Its own client id: broker.client_id names the service of this host, which it would disconnect.
    session = MqttSession(settings.broker, role="admin", client_id=default_client_id("admin"))
    session.start(timeout=10)
    registry = LocalRegistry(settings.models_dir)
    try:
        yield lambda scope: publish_champion(session, signer, registry, settings.site, scope)
    finally:
        session.close()


def promote(
    settings: Settings, label: str, *, force: bool = False, publish: Publish | None = None
) -> tuple[bool, str]:
    """Promote ``label`` if it beats the model serving its scope on the newest holdout (or ``force``).

    ``publish`` (bus mode) sends the decision to the edges, signed, before its event; if the broker
    does not take it, the result says so (running the command again publishes it again).
    """
    try:
        scope, version = parse_label(label)
    except ValueError as exc:
        return False, str(exc)
    registry = LocalRegistry(settings.models_dir)
    lags = settings.model.lags
    try:
        exists = version in registry.versions(scope)
    except (ModelFileError, ValueError):
        exists = False
    if not exists:
        return False, f"{label} does not exist: {_known_versions(registry, scope)}"
    try:
        candidate = registry.load(scope, version, lags=lags)
    except (ModelFileError, ValueError) as exc:
        return False, f"cannot promote {label}: {exc}"
    current = serving_model(registry, scope, lags)
    if current is not None and current.label == label:
        if publish is None:
            return True, f"{label} is already the champion"
        return _published(publish, scope, f"{label} is already the champion", label)
    target, device = parse_scope(scope)
    store = open_store(settings.store_location, retention_rows=settings.store.retention_rows)
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
    sent = None if publish is None else _published(publish, scope, f"promoted {label} ({verdict})", label)
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
    if sent is not None:
        return sent
    return True, f"promoted {label} ({verdict}); edges pick it up within edge.model_poll_interval"


def rollback(settings: Settings, scope: str, *, publish: Publish | None = None) -> tuple[bool, str]:
    """Take the champion of ``scope`` out of service; ``publish`` as in :func:`promote`."""
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
    fallback = restored_label or ("the fleet model" if "@" in scope else "persistence")
    done = f"rolled back {version_label(scope, current)}; now serving {fallback}"
    sent = None if publish is None else _published(publish, scope, done, restored_label)
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
    return sent if sent is not None else (True, done)


def _published(publish: Publish, scope: str, done: str, label: str | None) -> tuple[bool, str]:
    """Publish the decision on ``scope``; the command's result line."""
    try:
        sent = publish(scope)
    except EdgeloopError as exc:
        retry = (
            f"`edgeloop models promote {label}` publishes it once the broker is back"
            if label
            else "the edges keep their champion until the next decision on it is published"
        )
        return False, f"{done} here, but not published to the edges: {exc}; {retry}"
    return True, f"{done}; published {sent} to the edges, signed"
