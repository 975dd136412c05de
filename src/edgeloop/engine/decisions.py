"""The engine's lifecycle decisions on a scored reading: probation, the persistence floor, drift, retrains.

The hot path (:func:`edgeloop.engine.waves.process_wave`) does the arithmetic of every reading
itself and calls in here only when something may be decided: a model on probation, a floor verdict,
a drift alarm, a device counting readings since an alarm, a refresh that may be due. Each function
takes the engine and changes its state as the method it replaced did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeloop.engine.outputs import EngineOutput, RetrainRequest, Rollback
from edgeloop.engine.track import _Serving, _Track
from edgeloop.lifecycle.floor import Floor
from edgeloop.lifecycle.probation import judge_probation, probation_rmses
from edgeloop.scopes import parse_scope, scope_of
from edgeloop.telemetry.fields import format_ts
from edgeloop.telemetry.schema import PERSISTENCE_VERSION, Event

if TYPE_CHECKING:
    from edgeloop.engine.engine import Engine

# -- probation ------------------------------------------------------------------------------


def probation(
    engine: Engine, track: _Track, value: float, error: float, p_err: float, out: EngineOutput
) -> None:
    """Score a reading on probation; at its end apply the rule of :mod:`edgeloop.lifecycle.probation`."""
    if track.shadow_forecast is None:
        return
    scope = engine._serving_scope(track.device, track.target)
    serving = engine.serving.get(scope)
    if serving is None or serving.probation_left <= 0 or serving.previous is None:
        return
    old_error = value - track.shadow_forecast
    serving.sq_new += error * error
    serving.sq_old += old_error * old_error
    serving.sq_persist += p_err * p_err
    serving.n += 1
    serving.probation_left -= 1
    if serving.probation_left > 0:
        return
    new_rmse, old_rmse, persist_rmse = probation_rmses(
        serving.sq_new, serving.sq_old, serving.sq_persist, serving.n
    )
    verdict = judge_probation(
        new_rmse=new_rmse,
        previous_rmse=old_rmse,
        persistence_rmse=persist_rmse,
        samples=serving.n,
        tolerance=engine.probation_tolerance,
    )
    if not verdict.keep:
        rejected, restored = serving.model, serving.previous
        out.events.append(
            Event(
                "model_rolled_back",
                scope,
                engine.stream_ts,
                reason=verdict.reason or "",
                metrics=dict(verdict.metrics),
                version=restored.label,
                previous_version=rejected.label,
            )
        )
        is_fallback = restored is engine._fallback_model(scope)
        out.rollbacks.append(Rollback(scope, None if is_fallback else restored.label, rejected.label))
        if is_fallback:
            engine.uninstall(scope)
        else:
            engine.serving[scope] = _Serving(model=restored)
        for t in engine._tracks_served_by(scope):
            t.status = "rolled_back"
            t.shadow_forecast = None
            t.since_model = [0, 0.0, 0.0, 0.0]
            t.guard.model_changed(restored.val_rmse)
            reset_floor(engine, t, f"{restored.label} restored by rollback", restored.label)
    else:
        serving.previous = None
        for t in engine._tracks_served_by(scope):
            if t.status == "probation":
                t.status = "healthy"


# -- the persistence floor ------------------------------------------------------------------


def floor_verdict(
    engine: Engine, track: _Track, floor: Floor, verdict: str, ts: float, out: EngineOutput
) -> None:
    """Act on the floor's ``demote``/``restore`` verdict (see :mod:`edgeloop.lifecycle.floor`)."""
    label = engine.serving_label(track.device, track.target)
    model_rmse, persist_rmse = floor.long_rmse()
    if verdict == "demote":
        view = "its long-run error exceeds" if floor.long_view else "its recent errors exceed"
        out.events.append(
            Event(
                "model_demoted",
                scope_of(track.target, track.device),
                ts,
                reason=f"{label}: {view} {1 + floor.margin:g} x persistence's (long-run RMSE "
                f"{model_rmse:.4g} vs {persist_rmse:.4g}): serving persistence; the model keeps "
                "forecasting in the shadow",
                metrics={"model_rmse": model_rmse, "persistence_rmse": persist_rmse, "readings": floor.n},
                version=PERSISTENCE_VERSION,
                previous_version=label,
            )
        )
    else:
        restore(engine, track, "its recent errors are back below persistence's", label, ts, out.events)


def restore(
    engine: Engine, track: _Track, why: str, label: str | None, ts: float, events: list[Event]
) -> None:
    events.append(
        Event(
            "model_restored",
            scope_of(track.target, track.device),
            ts,
            reason=f"{why}: serving {label} again",
            metrics={"readings": track.floor.n if track.floor is not None else 0},
            version=label,
            previous_version=PERSISTENCE_VERSION,
        )
    )


def reset_floor(engine: Engine, track: _Track, why: str, label: str | None) -> None:
    """Another model serves the device: it starts undemoted, with a fresh comparison."""
    if track.floor is None:
        return
    if track.floor.demoted and label is not None:
        restore(engine, track, why, label, engine.stream_ts, engine._deferred)
    track.floor.reset()


# -- drift, consolidation, refresh ----------------------------------------------------------


def alarm(engine: Engine, track: _Track, ts: float, out: EngineOutput) -> None:
    scope = scope_of(track.target, track.device)
    track.alarm_count += 1
    rmse = track.model_rmse.value
    metrics = {
        "rolling_rmse": rmse,
        "persistence_rmse": track.persist_rmse.value,
        "threshold": track.guard.detector.threshold,
    }
    label = engine.serving_label(track.device, track.target)
    reason = (
        f"forecast error of {label} rose (rolling RMSE {rmse:.4g})"
        if rmse is not None
        else "forecast error rose"
    )
    # Already collecting data since an earlier alarm: that count goes on.
    busy = scope in engine.pending or track.status in ("retraining", "drifting")
    quiet_until = track.quiet_until
    held = not busy and quiet_until is not None and ts < quiet_until
    if held:
        reason += f"; no retrain before {_iso(quiet_until)}: the device's last retrain kept its model"
    out.events.append(Event("drift_detected", scope, ts, reason=reason, metrics=metrics, version=label))
    if busy or held:
        return
    track.status = "drifting"
    track.alarm_ts = ts
    track.since_alarm = 0
    # A new regime starts here: once a full cycle of it is in, retrain on all of it.
    track.regime_ts = ts if engine.consolidate_after is not None else None
    track.regime_n = 0


def quiet(engine: Engine, track: _Track) -> None:
    """A retrain of the device ended without a new model: its alarms start no retrain for a cycle.

    The challengers trained on its newest readings lost to the serving model (or could not be
    trained): the rise in error was noise, or a change these models do not learn. Another alarm
    within a cycle is most likely more of the same, and each retrain costs a training. The alarm is
    still reported, the floor still demotes a model that loses to persistence, a consolidation
    already due (trained on the whole cycle since the first alarm) still comes, and so do the
    scheduled refreshes. The cycle is ``model.consolidate_after`` (none when that is off).
    """
    if engine.consolidate_after is not None:
        track.quiet_until = engine.stream_ts + engine.consolidate_after.duration(track.interval)


def maybe_request_drift_retrain(engine: Engine, track: _Track, out: EngineOutput) -> None:
    if track.since_alarm < engine.retrain_min_samples:
        return
    scope = scope_of(track.target, track.device)
    if scope in engine.pending:
        return
    track.status = "retraining"
    request(
        engine,
        scope,
        "drift",
        f"drift detected at {_iso(track.alarm_ts)}; {track.since_alarm} readings since",
        track.alarm_ts,
        out,
        {"readings_since_alarm": track.since_alarm},
    )


def maybe_consolidate(engine: Engine, track: _Track, out: EngineOutput) -> None:
    """Retrain once more when a full cycle of the new regime is in (the fast retrain saw its start)."""
    if track.status == "drifting":
        return  # the fast retrain comes first
    assert engine.consolidate_after is not None
    need = min(
        max(engine.consolidate_after.readings(track.interval), 2 * engine.retrain_min_samples),
        engine.train_window,
    )
    scope = scope_of(track.target, track.device)
    if track.regime_n < need or scope in engine.pending:
        return
    since, track.regime_ts = track.regime_ts, None
    request(
        engine,
        scope,
        "consolidate",
        f"a full cycle of the regime that began at {_iso(since)}: {track.regime_n} readings",
        since,
        out,
        {"readings_since_alarm": track.regime_n},
    )


def maybe_refresh(engine: Engine, track: _Track, ts: float, out: EngineOutput) -> None:
    """A validated champion/challenger retrain of the scope serving this device, on a schedule."""
    scope = engine._serving_scope(track.device, track.target)
    if scope not in engine.serving and engine.auto_train:
        return  # no model yet: the initial training asks (and asks again), not the refresh
    if track.interval is None:
        return  # the schedule is set once the sampling interval is known
    due = engine._refresh_at.get(scope)
    if due is None:
        engine._refresh_at[scope] = ts + refresh_seconds(engine, track)
        return
    if ts < due or scope in engine.pending:
        return
    if track.regime_ts is not None and len(engine._tracks_served_by(scope)) == 1:
        # Its only device has a drift retrain or a consolidation coming, on the same newest
        # readings: that one takes the refresh's place (and restarts its clock, see postpone_refresh).
        return
    engine._refresh_at[scope] = ts + refresh_seconds(engine, track)
    request(engine, scope, "refresh", f"scheduled refresh every {refresh_text(engine)}", None, out, {})


def postpone_refresh(engine: Engine, scope: str) -> None:
    """A device's drift or consolidation retrain restarts the refresh clock of the scope serving it,
    if that scope serves no other device.

    Such a retrain has just trained challengers on the device's newest readings and judged them
    against the serving model on its newest holdout: a refresh soon after would repeat that
    comparison on much the same readings, and each costs a training. A fleet scope serving other
    devices keeps its schedule (their readings were not looked at).
    """
    if engine.refresh_every is None:
        return
    target, device = parse_scope(scope)
    if device is None:
        return  # a fleet scope's own request: the refresh schedules itself (see maybe_refresh)
    track = engine.tracks.get((device, target))
    if track is None or track.interval is None:
        return
    serving = engine._serving_scope(device, target)
    if serving not in engine._refresh_at:
        return  # no refresh scheduled for it (yet)
    if serving != scope and len(engine._tracks_served_by(serving)) != 1:
        return
    engine._refresh_at[serving] = max(
        engine._refresh_at[serving], engine.stream_ts + refresh_seconds(engine, track)
    )


def refresh_seconds(engine: Engine, track: _Track) -> float:
    # Never sooner than half a training window of new readings: a challenger sharing most of
    # its data with the champion rarely differs, and each one costs a training.
    assert engine.refresh_every is not None
    interval = track.interval or 60.0  # set by then (see _maybe_refresh)
    return max(engine.refresh_every.duration(interval), (engine.train_window // 2) * interval)


def refresh_text(engine: Engine) -> str:
    span = engine.refresh_every
    assert span is not None
    return f"{span.amount:g} s" if span.seconds else f"{span.amount:g} readings"


def request(
    engine: Engine,
    scope: str,
    trigger: str,
    reason: str,
    since_ts: float | None,
    out: EngineOutput,
    metrics: dict[str, float | int | None],
) -> None:
    engine.pending.add(scope)
    postpone_refresh(engine, scope)
    out.retrains.append(
        RetrainRequest(scope, trigger, reason, since_ts=since_ts, requested_ts=engine.stream_ts)
    )
    out.events.append(
        Event(
            "retrain_requested",
            scope,
            engine.stream_ts,
            reason=f"{trigger}: {reason}",
            metrics=metrics,
            version=engine.serving[scope].model.label if scope in engine.serving else None,
        )
    )


def check_initial_training(engine: Engine, out: EngineOutput) -> None:
    if not engine.auto_train:
        return
    for target in engine.targets:
        if target in engine.serving or target in engine.pending:
            continue
        needed = engine._initial_threshold.get(target, engine.min_train_samples)
        if engine.samples_per_target[target] >= needed:
            engine.pending.add(target)
            reason = f"{engine.samples_per_target[target]} readings of {target} and no model yet"
            out.retrains.append(RetrainRequest(target, "initial", reason, None, engine.stream_ts))
            out.events.append(Event("retrain_requested", target, engine.stream_ts, reason=reason))


def _iso(ts: float | None) -> str:
    """A reading time as ISO-8601 UTC for event reasons (people read them; epochs they cannot)."""
    if ts is None:
        return "an unknown time"
    try:
        return format_ts(ts)
    except (OverflowError, OSError, ValueError):
        return f"ts {ts}"
