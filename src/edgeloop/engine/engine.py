"""The engine: telemetry batches in; predictions, store rows, events and decisions out.

It knows nothing of sockets, files or clocks, so the live edge, the offline evaluator and the
benchmarks all drive this same code. Per device and target it keeps the last ``lags`` readings,
scores the previous forecast when the next reading arrives, tracks rolling RMSE beside the naive
baselines, runs the drift policy, and decides when to ask for a retrain or to roll a model back.

Model resolution for a device and target: the device's own model (scope ``voc_ppb@dev-001``,
trained after drift on that device) if there is one, else the fleet model of the target (scope
``voc_ppb``), else persistence.

Every batch is cut into waves in which each device appears at most once, so forecasts can be made
with one vectorised call per model and a wave and the reading after it are scored exactly as if
messages were processed one by one.

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

from edgeloop.drift import DriftGuard
from edgeloop.engine import state as _state
from edgeloop.engine.monitor import RollingRmse, RunningMean
from edgeloop.engine.rows import SampleRow, ServedModel, StatusRow
from edgeloop.scopes import parse_scope, scope_of
from edgeloop.telemetry.schema import PERSISTENCE_VERSION, Event, Forecast, Prediction, Telemetry

log = logging.getLogger(__name__)


@dataclass
class RetrainRequest:
    scope: str
    trigger: str  # initial | drift | manual | periodic
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


class _Track:
    """State of one device and target."""

    __slots__ = (
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
    )

    def __init__(self, device: str, target: str, window: int, guard: DriftGuard) -> None:
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
        for track in self._tracks_served_by(scope):
            track.guard.model_changed(model.val_rmse)
            track.model_rmse.reset()
            track.since_model = [0, 0.0, 0.0, 0.0]
            track.status = "probation" if probation and previous is not None else "healthy"
            track.alarm_ts = None
            track.shadow_forecast = None

    def uninstall(self, scope: str) -> None:
        """Stop serving ``scope``'s model: its devices fall back to the fleet model or persistence."""
        if self.serving.pop(scope, None) is not None:
            for track in self._tracks_served_by(scope):
                fallback = self._fallback_model(scope)
                track.guard.model_changed(fallback.val_rmse if fallback else None)
                track.model_rmse.reset()
                track.since_model = [0, 0.0, 0.0, 0.0]

    def retrain_finished(self, scope: str, *, installed: bool) -> None:
        """The adapter reports a retrain's end; a failed or rejected one may be asked again later."""
        self.pending.discard(scope)
        if not installed:
            target, device = parse_scope(scope)
            if device is None:
                # Not enough or not good enough data yet: ask again once twice as much has arrived.
                self._initial_threshold[target] = self.samples_per_target[target] * 2
            for track in self._tracks_served_by(scope):
                if track.status in ("drifting", "retraining"):
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
        for msg in wave:
            if msg.ts > self.stream_ts:
                self.stream_ts = msg.ts
            per_msg: dict[str, Forecast] = {}
            forecasts.append(per_msg)
            for target, value in msg.values.items():
                track = self._track(msg.device, target)
                row = self._score(track, msg, value, out)
                self.samples_per_target[target] += 1
                hist = track.hist
                hist.append(value)
                if len(hist) > self.lags:
                    del hist[0]
                track.mean.add(value)
                track.count += 1
                track.last_ts = msg.ts
                serving = self._resolve(msg.device, target)
                if serving is None or len(hist) < self.lags:
                    track.last_forecast = value
                    track.last_model = PERSISTENCE_VERSION
                    track.shadow_forecast = None
                    per_msg[target] = Forecast(value, PERSISTENCE_VERSION)
                    row.extend([value, PERSISTENCE_VERSION])
                else:
                    groups[self._serving_scope(msg.device, target)].append((len(windows), track))
                    windows.append(list(hist))
                    row.extend([None, None])
                rows.append(row)
        # One vectorised forecast per model in service.
        if windows:
            matrix = np.asarray(windows, dtype=np.float64)
            for scope, members in groups.items():
                serving = self.serving[scope]
                idx = [j for j, _ in members]
                values = serving.model.forecaster.predict(matrix[idx])
                shadow = (
                    serving.previous.forecaster.predict(matrix[idx])
                    if serving.probation_left > 0 and serving.previous is not None
                    else None
                )
                for k, (_, track) in enumerate(members):
                    track.last_forecast = float(values[k])
                    track.last_model = serving.model.label
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
            self._probation(track, value, error, out)
            if track.last_model != PERSISTENCE_VERSION and track.guard.update(error):
                self._alarm(track, msg.ts, out)
            if track.alarm_ts is not None and track.status == "drifting":
                track.since_alarm += 1
                self._maybe_request_drift_retrain(track, out)
        return [msg.device, track.target, msg.ts, msg.seq, value, forecast, persistence]

    def _probation(self, track: _Track, value: float, error: float, out: EngineOutput) -> None:
        if track.shadow_forecast is None:
            return
        scope = self._serving_scope(track.device, track.target)
        serving = self.serving.get(scope)
        if serving is None or serving.probation_left <= 0 or serving.previous is None:
            return
        old_error = value - track.shadow_forecast
        serving.sq_new += error * error
        serving.sq_old += old_error * old_error
        serving.n += 1
        serving.probation_left -= 1
        if serving.probation_left > 0:
            return
        new_rmse = (serving.sq_new / serving.n) ** 0.5
        old_rmse = (serving.sq_old / serving.n) ** 0.5
        metrics = {"probation_rmse": new_rmse, "previous_rmse": old_rmse, "samples": serving.n}
        if new_rmse > old_rmse * self.probation_tolerance:
            rejected, restored = serving.model, serving.previous
            out.events.append(
                Event(
                    "model_rolled_back",
                    scope,
                    self.stream_ts,
                    reason=f"live RMSE {new_rmse:.4g} on probation > {self.probation_tolerance:g} x "
                    f"{old_rmse:.4g} of the model it replaced, on the same {serving.n} readings",
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
        else:
            serving.previous = None
            for t in self._tracks_served_by(scope):
                if t.status == "probation":
                    t.status = "healthy"

    def _alarm(self, track: _Track, ts: float, out: EngineOutput) -> None:
        scope = scope_of(track.target, track.device)
        track.alarm_count += 1
        rmse = track.model_rmse.value
        metrics = {
            "rolling_rmse": rmse,
            "persistence_rmse": track.persist_rmse.value,
            "threshold": track.guard.detector.threshold,
        }
        out.events.append(
            Event(
                "drift_detected",
                scope,
                ts,
                reason=f"forecast error of {track.last_model} rose (rolling RMSE {rmse:.4g})"
                if rmse is not None
                else "forecast error rose",
                metrics=metrics,
                version=track.last_model,
            )
        )
        if scope in self.pending or track.status in ("retraining", "drifting"):
            return  # already collecting data since an earlier alarm: keep that count going
        track.status = "drifting"
        track.alarm_ts = ts
        track.since_alarm = 0

    def _maybe_request_drift_retrain(self, track: _Track, out: EngineOutput) -> None:
        if track.since_alarm < self.retrain_min_samples:
            return
        scope = scope_of(track.target, track.device)
        if scope in self.pending:
            return
        self.pending.add(scope)
        track.status = "retraining"
        request = RetrainRequest(
            scope,
            "drift",
            f"drift detected at ts {track.alarm_ts}; {track.since_alarm} readings since",
            since_ts=track.alarm_ts,
            requested_ts=self.stream_ts,
        )
        out.retrains.append(request)
        out.events.append(
            Event("retrain_requested", scope, self.stream_ts, reason=request.reason, version=track.last_model)
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
            track = _Track(device, target, self.window, guard)
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
