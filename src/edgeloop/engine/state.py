"""The engine's per-device state as plain data: what a restart needs to carry on without amnesia.

:func:`export_state` turns the engine's state into a JSON-able dict (no pickle: a snapshot is data
that another version may read, so it is versioned by ``FORMAT`` and validated field by field);
:func:`import_state` loads it into a fresh engine whose models are already installed. Writing the
dict to disk is an adapter's job (``edgeloop.adapters.snapshot``).

What is kept, per device and target: the lag window, the last forecast (so the first reading after
the restart is scored), rolling RMSEs of the model and the baselines, the running mean, drift
guard and detector (so detection stays armed: no new warm-up or calibration), the alarm bookkeeping
and the per-model accumulators of the summary. Per scope: the probation of a model on trial. Per
target: the readings counted towards the first training.

An online model's (``rls``, ``lgbm-rls``) per-device coefficients and covariance are kept too, in
the model's own data form (``device_state``), so such a device does not restart from the trained
state. What is not: retrains in flight. The worker or trainer that was running them is gone or will answer
a request nobody waits for, so a device that was waiting for its retrain is put back to "drifting"
with its count of readings since the alarm, and asks again on its next scored reading; a target
without a model asks again at once.

>>> from edgeloop.config import DriftSettings
>>> from edgeloop.drift import make_guarded
>>> from edgeloop.engine.engine import Engine
>>> from edgeloop.telemetry.schema import Telemetry
>>> def build():
...     return Engine(targets=["t"], lags=3, guard_factory=lambda r: make_guarded(DriftSettings(), r))
>>> a = build()
>>> _ = a.process([Telemetry("d1", float(i), i, {"t": float(i)}) for i in range(5)])
>>> b = build()
>>> import_state(b, export_state(a)).restored
1
>>> b.tracks[("d1", "t")].hist, b.samples_per_target["t"]
([2.0, 3.0, 4.0], 5)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from edgeloop.engine.engine import Engine
    from edgeloop.engine.rows import ServedModel
    from edgeloop.engine.track import _Track

FORMAT = "edgeloop-engine-state/2"
_STATUSES = ("healthy", "drifting", "retraining", "probation", "rolled_back")

ModelLoader = Callable[[str], "ServedModel | None"]
# What a malformed part of a snapshot raises while it is read.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)


class StateError(ValueError):
    """A snapshot that does not fit this engine (format, lags or window); nothing was loaded."""


@dataclass
class RestoreReport:
    restored: int = 0  # device/target tracks loaded
    rebased: int = 0  # of those, served by another model now: error and drift state started afresh
    skipped: int = 0  # malformed tracks left out
    probations: int = 0  # models whose probation continues


def export_state(engine: Engine, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The engine's state as a JSON-able dict (orjson); cost is about linear in devices x window.

    ``extra`` adds the caller's own top-level keys (the edge's memory of answered readings); they
    travel in the same file, so both are replaced by one atomic write, and :func:`import_state`
    ignores them.
    """
    state = _export_header(engine, extra)
    state["tracks"] = [_export_track(engine, t) for t in engine.tracks.values()]
    return state


class Exporter:
    """:func:`export_state` a slice of devices per :meth:`step`, so the loop never pauses for long.

    Devices are independent, so a snapshot taken over several passes of the loop is as good as one
    taken at once; a device that appears meanwhile is in the next snapshot. Each slice is serialised at
    once, a slice per part: a track is ~5 kB of JSON but ~15 kB as Python objects, and thousands
    of small objects held across slices fragmented the edge's heap (5,000 devices: +76 MB of RSS that
    stayed after the snapshot was written).
    """

    def __init__(self, engine: Engine, chunk: int = 200) -> None:
        self._engine = engine
        self._chunk = chunk
        # The same document as orjson.dumps(export_state(engine)): the header's keys, then "tracks".
        self._parts = [orjson.dumps(_export_header(engine))[:-1] + b',"tracks":[']
        self._keys = list(engine.tracks)
        self._first = True
        self._pos = 0

    def step(self) -> list[bytes] | None:
        """Export the next slice; once the last slice is done, the whole state as JSON in parts."""
        tracks = self._engine.tracks
        slice_parts = []
        for key in self._keys[self._pos : self._pos + self._chunk]:
            track = tracks.get(key)
            if track is not None:  # gone meanwhile (evicted): nothing to keep
                if not self._first:
                    slice_parts.append(b",")
                self._first = False
                slice_parts.append(orjson.dumps(_export_track(self._engine, track)))
        self._parts.append(b"".join(slice_parts))
        self._pos += self._chunk
        if self._pos < len(self._keys):
            return None
        self._parts.append(b"]}")
        return self._parts


def _export_header(engine: Engine, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        **(extra or {}),
        "format": FORMAT,
        "lags": engine.lags,
        "window": engine.window,
        "stream_ts": engine.stream_ts,
        "samples_per_target": dict(engine.samples_per_target),
        "initial_threshold": dict(engine._initial_threshold),
        "serving": {
            scope: {
                "label": s.model.label,
                "previous": s.previous.label if s.previous is not None else None,
                "probation_left": s.probation_left,
                "sq_new": s.sq_new,
                "sq_old": s.sq_old,
                "n": s.n,
            }
            for scope, s in engine.serving.items()
        },
        "refresh_at": dict(engine._refresh_at),
    }


def _export_track(engine: Engine, t: _Track) -> dict[str, Any]:
    return {
        "device": t.device,
        "target": t.target,
        "served": engine.serving_label(t.device, t.target),
        "hist": list(t.hist),
        "last_forecast": t.last_forecast,
        "shadow_forecast": t.shadow_forecast,
        "last_model": t.last_model,
        "last_ts": t.last_ts,
        "count": t.count,
        "mean": t.mean.to_state(),
        "model_rmse": t.model_rmse.to_state(),
        "persist_rmse": t.persist_rmse.to_state(),
        "mean_rmse": t.mean_rmse.to_state(),
        "guard": t.guard.to_state(),
        "status": t.status,
        "alarm_ts": t.alarm_ts,
        "alarm_count": t.alarm_count,
        "since_alarm": t.since_alarm,
        "since_model": list(t.since_model),
        "model_forecast": t.model_forecast,
        "floor": t.floor.to_state() if t.floor is not None else None,
        "cadence": t.cadence.to_state(),
        "regime_ts": t.regime_ts,
        "regime_n": t.regime_n,
        "quiet_until": t.quiet_until,
        "online": _online_state(engine, t),
    }


def _online_state(engine: Engine, t: _Track) -> Any:
    """What the serving model learnt from this device since it was trained (an online model's own data)."""
    serving = engine._resolve(t.device, t.target)
    export = getattr(serving.model.forecaster, "device_state", None) if serving is not None else None
    return export(t.device) if export is not None else None


def import_state(engine: Engine, state: Any, load_model: ModelLoader | None = None) -> RestoreReport:
    """Load :func:`export_state` output into ``engine``, which has its models installed and no devices yet.

    ``load_model(label)`` gives the model a probation compares against (None: the probation ends).
    Raises :class:`StateError` when the snapshot as a whole does not fit; a malformed device entry is
    skipped and counted, never fatal.
    """
    if engine.tracks:
        raise StateError("restore into an engine that has already seen readings")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise StateError(f"unknown snapshot format {found!r} (expected {FORMAT})")
    if state.get("lags") != engine.lags or state.get("window") != engine.window:
        raise StateError(
            f"snapshot made with lags={state.get('lags')}, window={state.get('window')}; "
            f"this edge uses lags={engine.lags}, window={engine.window}"
        )
    try:
        if not isinstance(state["tracks"], list):
            raise TypeError(f"tracks is a {type(state['tracks']).__name__}, not a list")
        tracks = state["tracks"]
        counts = {str(k): int(v) for k, v in dict(state["samples_per_target"]).items()}
        thresholds = {str(k): int(v) for k, v in dict(state["initial_threshold"]).items()}
        stream_ts = _finite(state["stream_ts"])
        serving = dict(state["serving"])
        refresh_at = {str(k): _finite(v) for k, v in dict(state.get("refresh_at") or {}).items()}
    except _MALFORMED as exc:
        raise StateError(f"malformed snapshot: {exc!r}") from exc
    report = RestoreReport()
    for entry in tracks:
        try:
            rebased = _import_track(engine, entry)
        except _MALFORMED:
            report.skipped += 1
            if isinstance(entry, dict):
                engine.tracks.pop((str(entry.get("device")), str(entry.get("target"))), None)
            continue
        report.restored += 1
        report.rebased += rebased
    for scope, saved in serving.items():
        try:
            report.probations += _import_serving(engine, scope, saved, load_model)
        except _MALFORMED:
            continue
    engine.samples_per_target.update(counts)
    engine._initial_threshold.update(thresholds)
    engine._refresh_at.update({k: v for k, v in refresh_at.items() if k in engine.serving})
    engine.stream_ts = max(engine.stream_ts, stream_ts)
    return report


def _finite(value: Any) -> float:
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"not a finite number: {value!r}")
    return out


def _optional(value: Any) -> float | None:
    return None if value is None else _finite(value)


def _import_track(engine: Engine, e: dict[str, Any]) -> bool:
    """Load one device/target; True if another model serves it now (error state then starts afresh)."""
    device, target = e["device"], e["target"]
    if not isinstance(device, str) or not isinstance(target, str) or target not in engine.targets:
        raise ValueError("track of an unknown target")
    hist = [_finite(v) for v in e["hist"]][-engine.lags :]
    since_model = [int(e["since_model"][0])] + [_finite(v) for v in e["since_model"][1:4]]
    status = e["status"] if e["status"] in _STATUSES else "healthy"
    if len(since_model) != 4:
        raise ValueError("since_model")
    track = engine._track(device, target)  # a fresh guard for the model serving now
    fresh_guard = track.guard
    track.hist = hist
    track.last_forecast = _optional(e["last_forecast"])
    track.shadow_forecast = _optional(e["shadow_forecast"])
    track.last_model = str(e["last_model"])
    track.last_ts = _finite(e["last_ts"])
    track.cadence.from_state(e["cadence"])
    track.count = int(e["count"])
    track.mean.from_state(e["mean"])
    track.persist_rmse.from_state(e["persist_rmse"])
    track.mean_rmse.from_state(e["mean_rmse"])
    track.alarm_count = int(e["alarm_count"])
    served_now = engine.serving_label(device, target)
    if e["served"] != served_now:
        # The champion changed while the edge was down: what was learnt about the old model's errors
        # says nothing about this one, exactly as when a model is installed live.
        track.status = "healthy"
        track.shadow_forecast = None
        return True
    track.model_rmse.from_state(e["model_rmse"])
    try:
        track.guard.from_state(e["guard"])
    except _MALFORMED:
        # The drift policy or its window changed: keep the lag window, start detection afresh.
        track.guard = engine.guard_factory(fresh_guard.detector.reference_rmse)
        track.since_model = [0, 0.0, 0.0, 0.0]
        return True
    track.since_model = since_model
    track.model_forecast = _optional(e["model_forecast"])
    if track.floor is not None and e["floor"] is not None:
        track.floor.from_state(e["floor"])
    track.regime_ts = _optional(e["regime_ts"])
    track.regime_n = int(e["regime_n"])
    track.quiet_until = _optional(e.get("quiet_until"))  # absent from older snapshots
    online = e.get("online")
    serving = engine._resolve(device, target)
    load_online = getattr(serving.model.forecaster, "load_device_state", None) if serving else None
    if online is not None and load_online is not None:
        load_online(device, online)  # one that does not fit is refused and the device starts afresh
    track.alarm_ts = _optional(e["alarm_ts"])
    track.since_alarm = int(e["since_alarm"])
    if status == "retraining":
        # The retrain in flight died with the old process: count on, and ask again (module docstring).
        status = "drifting" if track.alarm_ts is not None else "healthy"
    track.status = status
    return False


def _import_serving(engine: Engine, scope: str, saved: dict[str, Any], load_model: ModelLoader | None) -> int:
    serving = engine.serving.get(scope)
    if serving is None or serving.model.label != saved["label"]:
        return 0
    left = int(saved["probation_left"])
    previous = saved["previous"]
    prev_model = None
    if left > 0 and isinstance(previous, str):
        current_prev = serving.previous
        if current_prev is not None and current_prev.label == previous:
            prev_model = current_prev
        elif load_model is not None:
            prev_model = load_model(previous)
    if prev_model is None or left <= 0:
        # No probation at the time of the snapshot (or its reference model is gone): none now either,
        # else every restart would put each device model back on trial.
        serving.previous, serving.probation_left = None, 0
        serving.sq_new = serving.sq_old = 0.0
        serving.n = 0
        for track in engine._tracks_served_by(scope):
            if track.status == "probation":
                track.status = "healthy"
            track.shadow_forecast = None
        return 0
    serving.previous = prev_model
    serving.probation_left = min(left, engine.probation_samples)
    serving.sq_new = _finite(saved["sq_new"])
    serving.sq_old = _finite(saved["sq_old"])
    serving.n = int(saved["n"])
    return 1
