"""One wave of a batch (each device at most once): score, learn, forecast, then the wave's outputs.

This is the engine's hot path: it runs for every reading. Per reading it does plain float arithmetic
on the device's track (error windows, the floor, the drift guard) and calls into
:mod:`edgeloop.engine.decisions` only when something may be decided (probation, a floor verdict, an
alarm, a retrain wait, a refresh). Model calls are one vectorised call per model and wave: a
forecast, and for a forecaster that declares ``online = True`` (``rls``, ``lgbm-rls``) an ``update``
with the wave's scored readings (queued per forecaster by :func:`_collect_online`) before it.
"""

from __future__ import annotations

from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeloop.engine import decisions
from edgeloop.engine.outputs import EngineOutput
from edgeloop.engine.rows import SampleRow
from edgeloop.engine.track import _Serving, _Track
from edgeloop.telemetry.schema import PERSISTENCE_VERSION, Forecast, Prediction, Telemetry

if TYPE_CHECKING:
    from edgeloop.engine.engine import Engine

# One reading of a wave: its track, value, the forecast made for it, persistence's, and whether a
# model (not persistence) forecasts the next reading.
_Scored = tuple[_Track, float, "float | None", "float | None", bool]
# NamedTuple's generated __new__ is a Python call; _make builds the same tuple for less than half.
_new_row = SampleRow._make


def process_wave(engine: Engine, wave: list[Telemetry], out: EngineOutput) -> None:
    """Score, learn and forecast one wave, then append its predictions and store rows to ``out``."""
    lags = engine.lags
    tracks = engine.tracks
    served = engine.serving
    samples = engine.samples_per_target
    refresh = engine.refresh_every is not None
    # scope -> tracks to forecast with its model, and their windows (oldest reading first). A window
    # is the track's own list, not a copy: the device's next reading, the only thing that changes it,
    # comes in a later wave, after this wave's forecasts.
    groups: dict[str, list[_Track]] = {}
    windows: dict[str, list[list[float]]] = {}
    learn: dict[int, _Learn] = {}
    # Per reading, in message order: its track, (value, forecast, persistence) for its row, and
    # whether a model forecasts it (else persistence does).
    scored: list[_Scored] = []
    for msg in wave:
        ts = msg.ts
        device = msg.device
        if ts > engine.stream_ts:
            engine.stream_ts = ts
        for target, value in msg.values.items():
            track = tracks.get((device, target))
            if track is None:
                track = engine._track(device, target)
            hist = track.hist
            if track.cadence.observe(ts):
                # Readings on either side of a hole are not consecutive: the window refills first,
                # persistence serves until then, and the forecast made before the hole is not scored.
                hist.clear()
                track.last_forecast = track.shadow_forecast = track.model_forecast = None
            forecast = track.last_forecast
            persistence = hist[-1] if hist else None
            if forecast is not None and persistence is not None:
                # Score the forecast made for `value`: error windows, probation, floor, drift, retrain waits.
                error = value - forecast
                p_err, m_err = value - persistence, value - track.mean.value
                track.model_rmse.add(error)
                track.persist_rmse.add(p_err)
                track.mean_rmse.add(m_err)
                acc = track.since_model
                acc[0] += 1
                acc[1] += error * error
                acc[2] += p_err * p_err
                acc[3] += m_err * m_err
                own = track.model_forecast
                if own is not None:
                    # Drift, probation and the floor judge the model itself, also while it is demoted.
                    own_error = value - own
                    if track.shadow_forecast is not None:
                        decisions.probation(engine, track, value, own_error, p_err, out)
                    floor = track.floor
                    if floor is not None:
                        verdict = floor.update(own_error, p_err)
                        if verdict is not None:
                            decisions.floor_verdict(engine, track, floor, verdict, ts, out)
                    if track.guard.update(own_error):
                        decisions.alarm(engine, track, ts, out)
                if track.alarm_ts is not None and track.status == "drifting":
                    track.since_alarm += 1
                    decisions.maybe_request_drift_retrain(engine, track, out)
                if track.regime_ts is not None:
                    track.regime_n += 1
                    decisions.maybe_consolidate(engine, track, out)
            samples[target] += 1
            oldest = hist[0] if len(hist) == lags else None
            hist.append(value)
            if len(hist) > lags:
                del hist[0]
            mean = track.mean  # RunningMean.add, inline: it is two float operations
            mean.n += 1
            mean.value += (value - mean.value) / mean.n
            track.count += 1
            track.last_ts = ts
            if refresh and not track.count & 15:
                # Every 16th reading is soon enough for a schedule of days, and cheap.
                decisions.maybe_refresh(engine, track, ts, out)
            scope = track.own_scope
            serving = served.get(scope)
            if serving is None:
                scope = target
                serving = served.get(target)
            if serving is None or len(hist) < lags:
                track.last_forecast = value
                track.last_model = PERSISTENCE_VERSION
                track.shadow_forecast = None
                track.model_forecast = None
                scored.append((track, value, forecast, persistence, False))
                continue
            scored.append((track, value, forecast, persistence, True))
            if oldest is not None and (
                serving.previous is not None or getattr(serving.model.forecaster, "online", False)
            ):
                _collect_online(learn, serving, device, oldest, hist)
            members = groups.get(scope)
            if members is None:
                members = groups[scope] = []
                windows[scope] = []
            members.append(track)
            windows[scope].append(hist)
    # Online models learn from the readings just scored, before forecasting the next ones.
    for batch in learn.values():
        batch.apply()
    # One vectorised forecast per model in service.
    for scope, members in groups.items():
        rows = windows[scope]
        matrix = np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=len(rows) * lags)
        _forecast(engine, scope, members, matrix.reshape(len(rows), lags))
    _assemble(wave, scored, out)


def _forecast(engine: Engine, scope: str, members: list[_Track], matrix: np.ndarray) -> None:
    serving = engine.serving.get(scope)
    if serving is None:
        # Withdrawn by a rollback earlier in this wave: its devices get persistence this once.
        for track in members:
            track.last_forecast, track.last_model = track.hist[-1], PERSISTENCE_VERSION
            track.model_forecast = track.shadow_forecast = None
        return
    values = _predict(serving.model.forecaster, matrix, members).tolist()
    shadow = (
        _predict(serving.previous.forecaster, matrix, members).tolist()
        if serving.probation_left > 0 and serving.previous is not None
        else None
    )
    label = serving.model.label
    for k, track in enumerate(members):
        own = values[k]
        track.model_forecast = own
        floor = track.floor
        if floor is not None and floor.demoted:
            # Below the floor: serve the last reading; the model keeps forecasting in the shadow.
            track.last_forecast = track.hist[-1]
            track.last_model = PERSISTENCE_VERSION
        else:
            # The soft floor: the model's forecast change, scaled by its recent least-squares weight.
            weight = floor.weight if floor is not None else 1.0
            if weight == 1.0:
                track.last_forecast = own
            else:
                last = track.hist[-1]
                track.last_forecast = last + weight * (own - last)
            track.last_model = label
        track.shadow_forecast = shadow[k] if shadow is not None else None


def _assemble(wave: list[Telemetry], scored: list[_Scored], out: EngineOutput) -> None:
    """Predictions and store rows, in message order."""
    predictions, rows = out.predictions, out.samples
    r = 0
    for msg in wave:
        device, ts, seq = msg.device, msg.ts, msg.seq
        per_msg: dict[str, Forecast] = {}
        for target in msg.values:
            track, value, forecast, persistence, modelled = scored[r]
            r += 1
            prediction, model = track.last_forecast, track.last_model
            per_msg[target] = Forecast((prediction or 0.0) if modelled else value, model)
            rows.append(_new_row((device, target, ts, seq, value, forecast, persistence, prediction, model)))
        predictions.append(Prediction(device, seq, ts, per_msg))


class _Learn:
    """The (window, reading) pairs of one wave for one online forecaster: one vectorised update."""

    __slots__ = ("devices", "forecaster", "values", "windows")

    def __init__(self, forecaster: Any) -> None:
        self.forecaster = forecaster
        self.windows: list[float] = []  # the windows one after the other, a row of the matrix each
        self.values: list[float] = []
        self.devices: list[str] = []

    def apply(self) -> None:
        windows = np.array(self.windows, dtype=np.float64).reshape(len(self.values), -1)
        self.forecaster.update(windows, np.asarray(self.values), self.devices)


def _collect_online(
    learn: dict[int, _Learn], serving: _Serving, device: str, oldest: float, hist: list[float]
) -> None:
    """Queue the window that forecast ``hist[-1]`` for the serving model (and its probation shadow)."""
    for model in (serving.model, serving.previous):
        if model is None or not getattr(model.forecaster, "online", False):
            continue
        batch = learn.get(id(model.forecaster))
        if batch is None:
            batch = learn[id(model.forecaster)] = _Learn(model.forecaster)
        batch.windows.append(oldest)
        batch.windows.extend(hist[:-1])
        batch.values.append(hist[-1])
        batch.devices.append(device)


def _predict(forecaster: Any, windows: np.ndarray, members: list[_Track]) -> np.ndarray:
    if getattr(forecaster, "online", False):
        return np.asarray(forecaster.predict(windows, [t.device for t in members]))
    return np.asarray(forecaster.predict(windows))
