"""The engine: telemetry batches in; predictions, store rows, events and decisions out.

It knows nothing of sockets, files or clocks, so the live edge, the offline evaluator and the
benchmarks all drive this same code. Per device and target it keeps the last ``lags`` readings,
scores the previous forecast when the next reading arrives, tracks rolling RMSE beside the naive
baselines, runs the drift policy, and decides when to ask for a retrain or to roll a model back.

Model resolution for a device and target: the device's own model (scope ``voc_ppb@dev-001``,
trained after drift on that device) if there is one, else the fleet model of the target (scope
``voc_ppb``), else persistence.

The model lifecycle per device (see :class:`Engine`): a persistence floor at run time (a model whose
recent error exceeds persistence's is demoted and keeps forecasting in the shadow until it recovers),
a fast retrain soon after a drift alarm and a consolidation retrain once a full cycle of the new
regime is in, a scheduled validated refresh per scope, and a lag window reset after a gap in the
data. Spans are times (``1d``) or readings, turned into readings with each device's observed
sampling interval.

Every batch is cut into waves in which each device appears at most once, so forecasts can be made
with one vectorised call per model and a wave and the reading after it are scored exactly as if
messages were processed one by one. A forecaster that declares ``online = True`` (``rls``) learns
from each wave's scored readings, one vectorised ``update`` per model, before the wave's forecasts.

State is kept for at most ``max_devices`` devices. A reading of a new device when the engine is full
evicts the device heard from least recently, if that one has been silent for ``device_idle_s`` of
reading time (the newest timestamp seen so far: the same in a live stream and an accelerated replay);
else the reading is dropped as ``device_full`` and reported in :attr:`EngineOutput.dropped`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeloop.config import Span
from edgeloop.drift import DriftGuard
from edgeloop.engine import state as _state
from edgeloop.engine.cadence import Cadence
from edgeloop.engine.monitor import RollingRmse, RunningMean
from edgeloop.engine.rows import SampleRow, ServedModel, StatusRow
from edgeloop.lifecycle.floor import Floor
from edgeloop.scopes import parse_scope, scope_of
from edgeloop.telemetry.schema import PERSISTENCE_VERSION, Event, Forecast, Prediction, Telemetry, format_ts

log = logging.getLogger(__name__)


@dataclass
class RetrainRequest:
    scope: str
    trigger: str  # initial | drift | consolidate | refresh | manual | periodic
    reason: str
    since_ts: float | None = None
    requested_ts: float = 0.0


@dataclass
class Rollback:
    scope: str
    restored: str | None  # label of the model serving again (None: the scope falls back)
    rejected: str


@dataclass
class EngineOutput:
    predictions: list[Prediction] = field(default_factory=list)
    samples: list[SampleRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    retrains: list[RetrainRequest] = field(default_factory=list)
    rollbacks: list[Rollback] = field(default_factory=list)
    # Readings the engine refused (reason ``device_full``); they get no prediction and no row.
    dropped: list[tuple[Telemetry, str]] = field(default_factory=list)
    evicted: int = 0  # devices evicted to make room for new ones


GuardFactory = Callable[[float | None], DriftGuard]


@dataclass
class _Serving:
    """A model in service for one scope, with its probation against the model it replaced."""

    model: ServedModel
    previous: ServedModel | None = None
    probation_left: int = 0
    sq_new: float = 0.0
    sq_old: float = 0.0
    n: int = 0
    sq_persist: float = 0.0


class _Track:
    """State of one device and target."""

    __slots__ = (  # noqa: RUF023 - lifecycle fields last, so parallel additions merge cleanly
        "alarm_count",
        "alarm_ts",
        "count",
        "device",
        "guard",
        "hist",
        "last_forecast",
        "last_model",
        "last_ts",
        "mean",
        "mean_rmse",
        "model_rmse",
        "persist_rmse",
        "shadow_forecast",
        "since_alarm",
        "since_model",
        "status",
        "target",
        "cadence",
        "floor",
        "model_forecast",
        "regime_n",
        "regime_ts",
    )

    def __init__(
        self, device: str, target: str, window: int, guard: DriftGuard, floor: Floor | None, cadence: Cadence
    ) -> None:
        self.device = device
        self.target = target
        self.hist: list[float] = []
        self.last_forecast: float | None = None
        self.shadow_forecast: float | None = None
        self.last_model = PERSISTENCE_VERSION
        self.last_ts = 0.0
        self.count = 0
        self.mean = RunningMean()
        self.model_rmse = RollingRmse(window)
        self.persist_rmse = RollingRmse(window)
        self.mean_rmse = RollingRmse(window)
        self.guard = guard
        self.status = "healthy"
        self.alarm_ts: float | None = None
        self.alarm_count = 0
        self.since_alarm = 0
        # Scored readings and squared errors (model, persistence, mean) since the serving model changed.
        self.since_model = [0, 0.0, 0.0, 0.0]
        # The model's own forecast of the next reading, served or (while demoted) in the shadow.
        self.model_forecast: float | None = None
        self.floor = floor  # None: no floor (the evaluator's baselines)
        self.cadence = cadence
        # Start of the regime an alarm announced, and readings since: for the consolidation retrain.
        self.regime_ts: float | None = None
        self.regime_n = 0

    @property
    def demoted(self) -> bool:
        return self.floor is not None and self.floor.demoted

    @property
    def interval(self) -> float | None:
        return self.cadence.interval


class _Learn:
    """The (window, reading) pairs of one wave for one online forecaster: one vectorised update."""

    __slots__ = ("devices", "forecaster", "values", "windows")

    def __init__(self, forecaster: Any) -> None:
        self.forecaster = forecaster
        self.windows: list[list[float]] = []
        self.values: list[float] = []
        self.devices: list[str] = []

    def apply(self) -> None:
        self.forecaster.update(
            np.asarray(self.windows, dtype=np.float64), np.asarray(self.values), self.devices
        )


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
        batch.windows.append([oldest, *hist[:-1]])
        batch.values.append(hist[-1])
        batch.devices.append(device)


def _predict(forecaster: Any, windows: np.ndarray, members: list[tuple[int, _Track]]) -> np.ndarray:
    if getattr(forecaster, "online", False):
        return np.asarray(forecaster.predict(windows, [t.device for _, t in members]))
    return np.asarray(forecaster.predict(windows))


class Engine:
    """See the module docstring. Not thread-safe: one thread drives it."""

    def __init__(
        self,
        *,
        targets: Sequence[str],
        lags: int,
        guard_factory: GuardFactory,
        window: int = 100,
        min_train_samples: int = 400,
        retrain_min_samples: int = 300,
        probation_samples: int = 200,
        probation_tolerance: float = 1.1,
        auto_train: bool = True,
        floor_margin: float | None = 0.02,
        floor_window: int = 300,
        gap_intervals: float | None = 5.0,
        consolidate_after: Span | None = None,
        refresh_every: Span | None = None,
        train_window: int = 4000,
        max_devices: int = 10_000,
        device_idle_s: float = 86_400.0,
    ) -> None:
        self.targets = tuple(targets)
        self.lags = lags
        self.window = window
        self.guard_factory = guard_factory
        self.min_train_samples = min_train_samples
        self.retrain_min_samples = retrain_min_samples
        self.probation_samples = probation_samples
        self.probation_tolerance = probation_tolerance
        self.auto_train = auto_train
        self.tracks: dict[tuple[str, str], _Track] = {}
        self.serving: dict[str, _Serving] = {}
        self.pending: set[str] = set()
        self.samples_per_target: dict[str, int] = defaultdict(int)
        self._initial_threshold: dict[str, int] = {}
        self.stream_ts = 0.0
        self.max_devices = max_devices
        self.device_idle_s = device_idle_s
        # Device -> reading time it was last heard at, least recently heard first.
        self._heard: OrderedDict[str, float] = OrderedDict()
        self._heard_ts = 0.0
        self.evictions = 0
        # Per track: wall time and count of the last rate mark, and what the last status row showed.
        self._rate_mark: dict[tuple[str, str], tuple[float, int, tuple[Any, ...] | None]] = {}
        # Lifecycle knobs; None switches a mechanism off (the evaluator's baselines do).
        self.floor_margin = floor_margin
        self.floor_window = floor_window
        self.gap_intervals = gap_intervals
        self.consolidate_after = (
            consolidate_after if consolidate_after and not consolidate_after.off else None
        )
        self.refresh_every = refresh_every if refresh_every and not refresh_every.off else None
        self.train_window = train_window
        self._refresh_at: dict[str, float] = {}  # scope -> stream time its next refresh is due
        self._deferred: list[Event] = []  # events of install(), emitted with the next batch

    # -- models ---------------------------------------------------------------------------------
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
            self._reset_floor(track, f"{model.label} now serves", model.label)
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
                self._reset_floor(
                    track, f"{scope}'s model was withdrawn", fallback.label if fallback else None
                )

    def retrain_finished(self, scope: str, *, installed: bool) -> None:
        """The adapter reports a retrain's end; a failed or rejected one may be asked again later."""
        self.pending.discard(scope)
        if not installed:
            target, device = parse_scope(scope)
            if device is None:
                # Not enough or not good enough data yet: ask again once twice as much has arrived.
                self._initial_threshold[target] = self.samples_per_target[target] * 2
            # Only the device's own drift retrain ends its wait; a rejected fleet refresh, or a
            # device refresh while the device still collects data after an alarm, leaves it going.
            for track in self._tracks_served_by(scope) if device is not None else ():
                if track.status == "retraining":
                    track.status = "healthy"
                    track.alarm_ts = None

    # -- state across restarts (see edgeloop.engine.state) ---------------------------------------
    def export_state(self) -> dict[str, Any]:
        """Per-device state as JSON-able data, for a snapshot."""
        return _state.export_state(self)

    def import_state(self, state: Any, load_model: _state.ModelLoader | None = None) -> _state.RestoreReport:
        """Continue from :meth:`export_state` output; call after installing models, before any reading."""
        return _state.import_state(self, state, load_model)

    def serving_label(self, device: str, target: str) -> str:
        serving = self._resolve(device, target)
        return serving.model.label if serving else PERSISTENCE_VERSION

    # -- the hot path ---------------------------------------------------------------------------
    def process(self, batch: Iterable[Telemetry]) -> EngineOutput:
        out = EngineOutput()
        if self._deferred:
            out.events.extend(self._deferred)
            self._deferred = []
        wave: list[Telemetry] = []
        seen: set[str] = set()
        heard: set[str] = set()
        for msg in batch:
            if not self._admit(msg, heard, out):
                out.dropped.append((msg, "device_full"))
                continue
            if msg.device in seen:
                self._process_wave(wave, out)
                wave, seen = [], set()
            wave.append(msg)
            seen.add(msg.device)
        if wave:
            self._process_wave(wave, out)
        self._check_initial_training(out)
        return out

    def _process_wave(self, wave: list[Telemetry], out: EngineOutput) -> None:
        # Score the previous forecasts and collect the windows to forecast from.
        groups: dict[str, list[tuple[int, _Track]]] = defaultdict(list)
        windows: list[list[float]] = []
        rows: list[list[Any]] = []
        forecasts: list[dict[str, Forecast]] = []
        learn: dict[int, _Learn] = {}
        for msg in wave:
            if msg.ts > self.stream_ts:
                self.stream_ts = msg.ts
            per_msg: dict[str, Forecast] = {}
            forecasts.append(per_msg)
            for target, value in msg.values.items():
                track = self._track(msg.device, target)
                if track.cadence.observe(msg.ts):
                    # Readings on either side of a hole are not consecutive: the window refills first,
                    # persistence serves until then, and the forecast made before the hole is not scored.
                    track.hist.clear()
                    track.last_forecast = track.shadow_forecast = track.model_forecast = None
                row = self._score(track, msg, value, out)
                self.samples_per_target[target] += 1
                hist = track.hist
                oldest = hist[0] if len(hist) == self.lags else None
                hist.append(value)
                if len(hist) > self.lags:
                    del hist[0]
                track.mean.add(value)
                track.count += 1
                track.last_ts = msg.ts
                if self.refresh_every is not None and not track.count & 15:
                    # Every 16th reading is soon enough for a schedule of days, and cheap.
                    self._maybe_refresh(track, msg.ts, out)
                serving = self._resolve(msg.device, target)
                if (
                    oldest is not None
                    and serving is not None
                    and (getattr(serving.model.forecaster, "online", False) or serving.previous is not None)
                ):
                    _collect_online(learn, serving, msg.device, oldest, hist)
                if serving is None or len(hist) < self.lags:
                    track.last_forecast = value
                    track.last_model = PERSISTENCE_VERSION
                    track.shadow_forecast = None
                    track.model_forecast = None
                    per_msg[target] = Forecast(value, PERSISTENCE_VERSION)
                    row.extend([value, PERSISTENCE_VERSION])
                else:
                    groups[self._serving_scope(msg.device, target)].append((len(windows), track))
                    windows.append(list(hist))
                    row.extend([None, None])
                rows.append(row)
        # Online models learn from the readings just scored, before forecasting the next ones.
        for batch in learn.values():
            batch.apply()
        # One vectorised forecast per model in service.
        if windows:
            matrix = np.asarray(windows, dtype=np.float64)
            for scope, members in groups.items():
                serving = self.serving[scope]
                idx = [j for j, _ in members]
                values = _predict(serving.model.forecaster, matrix[idx], members)
                shadow = (
                    _predict(serving.previous.forecaster, matrix[idx], members)
                    if serving.probation_left > 0 and serving.previous is not None
                    else None
                )
                label = serving.model.label
                for k, (_, track) in enumerate(members):
                    own = float(values[k])
                    track.model_forecast = own
                    if track.demoted:
                        # Below the floor: serve the last reading; the model keeps forecasting in the shadow.
                        track.last_forecast = track.hist[-1]
                        track.last_model = PERSISTENCE_VERSION
                    else:
                        track.last_forecast = own
                        track.last_model = label
                    track.shadow_forecast = float(shadow[k]) if shadow is not None else None
        # Assemble predictions and store rows in message order.
        r = 0
        for i, msg in enumerate(wave):
            per_msg = forecasts[i]
            for target in msg.values:
                track = self.tracks[(msg.device, target)]
                row = rows[r]
                r += 1
                if row[-1] is None:
                    row[-2], row[-1] = track.last_forecast, track.last_model
                    per_msg[target] = Forecast(track.last_forecast or 0.0, track.last_model)
                out.samples.append(SampleRow(*row))
            out.predictions.append(Prediction(msg.device, msg.seq, msg.ts, per_msg))

    def _score(self, track: _Track, msg: Telemetry, value: float, out: EngineOutput) -> list[Any]:
        forecast = track.last_forecast
        persistence = track.hist[-1] if track.hist else None
        if forecast is not None and persistence is not None:
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
                self._probation(track, value, own_error, p_err, out)
                if track.floor is not None:
                    self._floor(track, track.floor, own_error, p_err, msg.ts, out)
                if track.guard.update(own_error):
                    self._alarm(track, msg.ts, out)
            if track.alarm_ts is not None and track.status == "drifting":
                track.since_alarm += 1
                self._maybe_request_drift_retrain(track, out)
            if track.regime_ts is not None:
                track.regime_n += 1
                self._maybe_consolidate(track, out)
        return [msg.device, track.target, msg.ts, msg.seq, value, forecast, persistence]

    def _probation(self, track: _Track, value: float, error: float, p_err: float, out: EngineOutput) -> None:
        if track.shadow_forecast is None:
            return
        scope = self._serving_scope(track.device, track.target)
        serving = self.serving.get(scope)
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
        new_rmse = (serving.sq_new / serving.n) ** 0.5
        old_rmse = (serving.sq_old / serving.n) ** 0.5
        persist_rmse = (serving.sq_persist / serving.n) ** 0.5
        metrics = {
            "probation_rmse": new_rmse,
            "previous_rmse": old_rmse,
            "persistence_rmse": persist_rmse,
            "samples": serving.n,
        }
        tol = self.probation_tolerance
        reason = None
        if new_rmse > old_rmse * tol:
            reason = (
                f"live RMSE {new_rmse:.4g} on probation > {tol:g} x {old_rmse:.4g} of the model it replaced, "
                f"on the same {serving.n} readings"
            )
        elif new_rmse > persist_rmse * tol and old_rmse < new_rmse:
            # Worse than persistence, and the model it replaced did better: restore that one (the
            # floor then judges it). Worse than persistence but better than the old one: keep it and
            # let the floor serve persistence.
            reason = (
                f"live RMSE {new_rmse:.4g} on probation > {tol:g} x persistence's {persist_rmse:.4g}, and "
                f"the model it replaced did better ({old_rmse:.4g}), on the same {serving.n} readings"
            )
        if reason is not None:
            rejected, restored = serving.model, serving.previous
            out.events.append(
                Event(
                    "model_rolled_back",
                    scope,
                    self.stream_ts,
                    reason=reason,
                    metrics=metrics,
                    version=restored.label,
                    previous_version=rejected.label,
                )
            )
            is_fallback = restored is self._fallback_model(scope)
            out.rollbacks.append(Rollback(scope, None if is_fallback else restored.label, rejected.label))
            if is_fallback:
                self.uninstall(scope)
            else:
                self.serving[scope] = _Serving(model=restored)
            for t in self._tracks_served_by(scope):
                t.status = "rolled_back"
                t.shadow_forecast = None
                t.since_model = [0, 0.0, 0.0, 0.0]
                t.guard.model_changed(restored.val_rmse)
                self._reset_floor(t, f"{restored.label} restored by rollback", restored.label)
        else:
            serving.previous = None
            for t in self._tracks_served_by(scope):
                if t.status == "probation":
                    t.status = "healthy"

    # -- the persistence floor ------------------------------------------------------------------
    def _floor(
        self, track: _Track, floor: Floor, error: float, p_err: float, ts: float, out: EngineOutput
    ) -> None:
        """Demote or restore the device's model (see :mod:`edgeloop.lifecycle.floor`)."""
        verdict = floor.update(error, p_err)
        if verdict is None:
            return
        label = self.serving_label(track.device, track.target)
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
            self._restore(track, "its recent errors are back below persistence's", label, ts, out.events)

    def _restore(self, track: _Track, why: str, label: str | None, ts: float, events: list[Event]) -> None:
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

    def _reset_floor(self, track: _Track, why: str, label: str | None) -> None:
        """Another model serves the device: it starts undemoted, with a fresh comparison."""
        if track.floor is None:
            return
        if track.floor.demoted and label is not None:
            self._restore(track, why, label, self.stream_ts, self._deferred)
        track.floor.reset()

    # -- drift, consolidation, refresh ----------------------------------------------------------
    def _alarm(self, track: _Track, ts: float, out: EngineOutput) -> None:
        scope = scope_of(track.target, track.device)
        track.alarm_count += 1
        rmse = track.model_rmse.value
        metrics = {
            "rolling_rmse": rmse,
            "persistence_rmse": track.persist_rmse.value,
            "threshold": track.guard.detector.threshold,
        }
        label = self.serving_label(track.device, track.target)
        out.events.append(
            Event(
                "drift_detected",
                scope,
                ts,
                reason=f"forecast error of {label} rose (rolling RMSE {rmse:.4g})"
                if rmse is not None
                else "forecast error rose",
                metrics=metrics,
                version=label,
            )
        )
        if scope in self.pending or track.status in ("retraining", "drifting"):
            return  # already collecting data since an earlier alarm: keep that count going
        track.status = "drifting"
        track.alarm_ts = ts
        track.since_alarm = 0
        # A new regime starts here: once a full cycle of it is in, retrain on all of it.
        track.regime_ts = ts if self.consolidate_after is not None else None
        track.regime_n = 0

    def _maybe_request_drift_retrain(self, track: _Track, out: EngineOutput) -> None:
        if track.since_alarm < self.retrain_min_samples:
            return
        scope = scope_of(track.target, track.device)
        if scope in self.pending:
            return
        track.status = "retraining"
        self._request(
            scope,
            "drift",
            f"drift detected at {_iso(track.alarm_ts)}; {track.since_alarm} readings since",
            track.alarm_ts,
            out,
            {"readings_since_alarm": track.since_alarm},
        )

    def _maybe_consolidate(self, track: _Track, out: EngineOutput) -> None:
        """Retrain once more when a full cycle of the new regime is in (the fast retrain saw its start)."""
        if track.status == "drifting":
            return  # the fast retrain comes first
        assert self.consolidate_after is not None
        need = min(
            max(self.consolidate_after.readings(track.interval), 2 * self.retrain_min_samples),
            self.train_window,
        )
        scope = scope_of(track.target, track.device)
        if track.regime_n < need or scope in self.pending:
            return
        since, track.regime_ts = track.regime_ts, None
        self._request(
            scope,
            "consolidate",
            f"a full cycle of the regime that began at {_iso(since)}: {track.regime_n} readings",
            since,
            out,
            {"readings_since_alarm": track.regime_n},
        )

    def _maybe_refresh(self, track: _Track, ts: float, out: EngineOutput) -> None:
        """A validated champion/challenger retrain of the scope serving this device, on a schedule."""
        scope = self._serving_scope(track.device, track.target)
        if scope not in self.serving and self.auto_train:
            return  # no model yet: the initial training asks (and asks again), not the refresh
        if track.interval is None:
            return  # the schedule is set once the sampling interval is known
        due = self._refresh_at.get(scope)
        if due is None:
            self._refresh_at[scope] = ts + self._refresh_seconds(track)
            return
        if ts < due or scope in self.pending:
            return
        self._refresh_at[scope] = ts + self._refresh_seconds(track)
        self._request(scope, "refresh", f"scheduled refresh every {self._refresh_text()}", None, out, {})

    def _refresh_seconds(self, track: _Track) -> float:
        # Never sooner than half a training window of new readings: a challenger sharing most of
        # its data with the champion rarely differs, and each one costs a training.
        assert self.refresh_every is not None
        interval = track.interval or 60.0  # set by then (see _maybe_refresh)
        span = self.refresh_every
        seconds = span.amount if span.seconds else span.amount * interval
        return max(seconds, (self.train_window // 2) * interval)

    def _refresh_text(self) -> str:
        span = self.refresh_every
        assert span is not None
        return f"{span.amount:g} s" if span.seconds else f"{span.amount:g} readings"

    def _request(
        self,
        scope: str,
        trigger: str,
        reason: str,
        since_ts: float | None,
        out: EngineOutput,
        metrics: dict[str, float | int | None],
    ) -> None:
        self.pending.add(scope)
        request = RetrainRequest(scope, trigger, reason, since_ts=since_ts, requested_ts=self.stream_ts)
        out.retrains.append(request)
        out.events.append(
            Event(
                "retrain_requested",
                scope,
                self.stream_ts,
                reason=f"{trigger}: {reason}",
                metrics=metrics,
                version=self.serving[scope].model.label if scope in self.serving else None,
            )
        )

    def _check_initial_training(self, out: EngineOutput) -> None:
        if not self.auto_train:
            return
        for target in self.targets:
            if target in self.serving or target in self.pending:
                continue
            needed = self._initial_threshold.get(target, self.min_train_samples)
            if self.samples_per_target[target] >= needed:
                self.pending.add(target)
                reason = f"{self.samples_per_target[target]} readings of {target} and no model yet"
                out.retrains.append(RetrainRequest(target, "initial", reason, None, self.stream_ts))
                out.events.append(Event("retrain_requested", target, self.stream_ts, reason=reason))

    # -- bounded state --------------------------------------------------------------------------
    def _admit(self, msg: Telemetry, heard: set[str], out: EngineOutput) -> bool:
        """Note that ``msg.device`` was heard; make room for a new device or refuse it."""
        if msg.ts > self._heard_ts:
            self._heard_ts = msg.ts
        device, order = msg.device, self._heard
        if device in order:
            order.move_to_end(device)
        else:
            while len(order) >= self.max_devices:
                oldest, last = next(iter(order.items()))
                # Never evict a device of this batch: its readings may sit in a wave not yet processed.
                if oldest in heard or self._heard_ts - last < self.device_idle_s:
                    return False
                self.evict(oldest)
                out.evicted += 1
        order[device] = self._heard_ts
        heard.add(device)
        return True

    def evict(self, device: str) -> None:
        """Forget a device's state (lag windows, error scales, detectors); its models stay in service.

        Not to be called while :meth:`process` runs (the engine is single-threaded anyway)."""
        self._heard.pop(device, None)
        for target in self.targets:
            self.tracks.pop((device, target), None)
            self._rate_mark.pop((device, target), None)
        # Online models keep per-device state too; free it with the device's, or it grows without bound.
        for serving in self.serving.values():
            for model in (serving.model, serving.previous):
                forget = getattr(model.forecaster, "forget", None) if model is not None else None
                if forget is not None:
                    forget(device)
        self.evictions += 1

    @property
    def devices(self) -> int:
        """Devices whose state the engine keeps."""
        return len(self._heard)

    # -- lookups --------------------------------------------------------------------------------
    def _track(self, device: str, target: str) -> _Track:
        track = self.tracks.get((device, target))
        if track is None:
            serving = self._resolve(device, target)
            guard = self.guard_factory(serving.model.val_rmse if serving else None)
            floor = Floor(self.floor_margin, self.floor_window) if self.floor_margin is not None else None
            track = _Track(device, target, self.window, guard, floor, Cadence(self.gap_intervals))
            self.tracks[(device, target)] = track
            if device not in self._heard:  # a track made outside process() still counts and can age out
                self._heard[device] = self._heard_ts
        return track

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

    # -- status ---------------------------------------------------------------------------------
    def status_rows(self, wall_now: float) -> list[StatusRow]:
        """Rows for the dashboard, one per device and target that changed since the last call (the
        store upserts, so an unchanged row stays as written); rates are per wall-clock second.

        A device that stops talking gets one more row with rate 0, then none until it talks again,
        so its ``updated`` time ages and the dashboard shows it silent.
        """
        rows = []
        for key, t in self.tracks.items():
            mark_time, mark_count, shown = self._rate_mark.get(key, (wall_now, t.count, None))
            elapsed = wall_now - mark_time
            rate = (t.count - mark_count) / elapsed if elapsed > 0 else 0.0
            model_rmse, threshold = t.model_rmse.value, t.guard.detector.threshold
            view = (t.count, rate > 0, model_rmse, threshold, t.last_model, t.status)
            self._rate_mark[key] = (wall_now, t.count, view)
            if view == shown:
                continue
            rows.append(
                StatusRow(
                    t.device,
                    t.target,
                    t.last_ts,
                    t.count,
                    rate,
                    model_rmse,
                    threshold,
                    t.persist_rmse.value,
                    t.mean_rmse.value,
                    t.last_model,
                    t.status,
                    wall_now,
                )
            )
        return rows

    def summary(self) -> dict[str, dict[str, float | int | str | None]]:
        """Fleet-wide RMSE per target of the models now serving, beside persistence and the mean,
        on the same readings: every reading scored since each device's current model took over."""
        acc: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
        devices: dict[str, int] = defaultdict(int)
        versions: dict[str, set[str]] = defaultdict(set)
        for (_, target), t in self.tracks.items():
            n, sm, sp, sa = t.since_model
            if n == 0:
                continue
            total = acc[target]
            total[0] += n
            total[1] += sm
            total[2] += sp
            total[3] += sa
            devices[target] += 1
            versions[target].add(t.last_model)
        return {
            target: {
                "model_rmse": (sm / n) ** 0.5,
                "persistence_rmse": (sp / n) ** 0.5,
                "mean_rmse": (sa / n) ** 0.5,
                "readings": int(n),
                "devices": devices[target],
                "models": ", ".join(sorted(versions[target])),
            }
            for target, (n, sm, sp, sa) in acc.items()
        }


def _iso(ts: float | None) -> str:
    """A reading time as ISO-8601 UTC for event reasons (people read them; epochs they cannot)."""
    if ts is None:
        return "an unknown time"
    try:
        return format_ts(ts)
    except (OverflowError, OSError, ValueError):
        return f"ts {ts}"
