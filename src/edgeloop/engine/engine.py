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
from typing import Any

import numpy as np

from edgeloop.config import Span
from edgeloop.drift import DriftGuard
from edgeloop.engine import decisions, status
from edgeloop.engine import state as _state
from edgeloop.engine.cadence import Cadence
from edgeloop.engine.outputs import EngineOutput, RetrainRequest, Rollback
from edgeloop.engine.rows import SampleRow, StatusRow
from edgeloop.engine.serving import ModelSlots
from edgeloop.engine.track import _Serving, _Track
from edgeloop.engine.waves import _collect_online, _Learn, _predict
from edgeloop.lifecycle.floor import Floor
from edgeloop.telemetry.schema import PERSISTENCE_VERSION, Event, Forecast, Prediction, Telemetry

__all__ = ["Engine", "EngineOutput", "GuardFactory", "RetrainRequest", "Rollback"]

log = logging.getLogger(__name__)

GuardFactory = Callable[[float | None], DriftGuard]
# One reading of a wave: its track, value, the forecast made for it, persistence's, and whether a
# model (not persistence) forecasts the next reading.
_Scored = tuple[_Track, float, "float | None", "float | None", bool]


class Engine(ModelSlots):
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
        floor_shrink: bool = True,
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
        self.floor_shrink = floor_shrink
        self.gap_intervals = gap_intervals
        self.consolidate_after = (
            consolidate_after if consolidate_after and not consolidate_after.off else None
        )
        self.refresh_every = refresh_every if refresh_every and not refresh_every.off else None
        self.train_window = train_window
        self._refresh_at: dict[str, float] = {}  # scope -> stream time its next refresh is due
        self._deferred: list[Event] = []  # events of install(), emitted with the next batch

    # -- state across restarts (see edgeloop.engine.state) ---------------------------------------
    def export_state(self) -> dict[str, Any]:
        """Per-device state as JSON-able data, for a snapshot."""
        return _state.export_state(self)

    def import_state(self, state: Any, load_model: _state.ModelLoader | None = None) -> _state.RestoreReport:
        """Continue from :meth:`export_state` output; call after installing models, before any reading."""
        return _state.import_state(self, state, load_model)

    # -- the hot path ---------------------------------------------------------------------------
    def process(self, batch: Iterable[Telemetry]) -> EngineOutput:
        out = EngineOutput()
        if self._deferred:
            out.events.extend(self._deferred)
            self._deferred = []
        wave: list[Telemetry] = []
        seen: set[str] = set()
        heard: set[str] = set()
        order = self._heard
        for msg in batch:
            device = msg.device
            # Admission (see _admit), inlined for a device already known: the common case.
            if device in order:
                if msg.ts > self._heard_ts:
                    self._heard_ts = msg.ts
                order.move_to_end(device)
                order[device] = self._heard_ts
                heard.add(device)
            elif not self._admit(msg, heard, out):
                out.dropped.append((msg, "device_full"))
                continue
            if device in seen:
                self._process_wave(wave, out)
                wave, seen = [], set()
            wave.append(msg)
            seen.add(device)
        if wave:
            self._process_wave(wave, out)
        decisions.check_initial_training(self, out)
        return out

    def _process_wave(self, wave: list[Telemetry], out: EngineOutput) -> None:
        """Score, learn and forecast one wave (each device at most once), then assemble its outputs.

        Per reading this does plain float arithmetic on the device's track; anything that may decide
        something (probation, a floor verdict, an alarm, a retrain) is in :mod:`edgeloop.engine.decisions`.
        """
        lags = self.lags
        tracks = self.tracks
        served = self.serving
        samples = self.samples_per_target
        refresh = self.refresh_every is not None
        # scope -> tracks to forecast with its model, and their windows (oldest reading first)
        groups: dict[str, list[_Track]] = {}
        windows: dict[str, list[list[float]]] = {}
        learn: dict[int, _Learn] = {}
        # Per reading, in message order: its track, (value, forecast, persistence) for its row, and
        # whether a model forecasts it (else persistence does).
        scored: list[_Scored] = []
        for msg in wave:
            ts = msg.ts
            device = msg.device
            if ts > self.stream_ts:
                self.stream_ts = ts
            for target, value in msg.values.items():
                track = tracks.get((device, target))
                if track is None:
                    track = self._track(device, target)
                hist = track.hist
                if track.cadence.observe(ts):
                    # Readings on either side of a hole are not consecutive: the window refills first,
                    # persistence serves until then, and the forecast made before the hole is not scored.
                    hist.clear()
                    track.last_forecast = track.shadow_forecast = track.model_forecast = None
                forecast = track.last_forecast
                persistence = hist[-1] if hist else None
                if forecast is not None and persistence is not None:
                    self._score(track, value, forecast, persistence, ts, out)
                samples[target] += 1
                oldest = hist[0] if len(hist) == lags else None
                hist.append(value)
                if len(hist) > lags:
                    del hist[0]
                track.mean.add(value)
                track.count += 1
                track.last_ts = ts
                if refresh and not track.count & 15:
                    # Every 16th reading is soon enough for a schedule of days, and cheap.
                    decisions.maybe_refresh(self, track, ts, out)
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
                windows[scope].append(hist.copy())
        # Online models learn from the readings just scored, before forecasting the next ones.
        for batch in learn.values():
            batch.apply()
        # One vectorised forecast per model in service.
        for scope, members in groups.items():
            self._forecast(scope, members, np.array(windows[scope], dtype=np.float64))
        self._assemble(wave, scored, out)

    def _score(
        self, track: _Track, value: float, forecast: float, persistence: float, ts: float, out: EngineOutput
    ) -> None:
        """Score the forecast made for ``value``: error windows, probation, floor, drift, retrain waits."""
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
                decisions.probation(self, track, value, own_error, p_err, out)
            floor = track.floor
            if floor is not None:
                verdict = floor.update(own_error, p_err)
                if verdict is not None:
                    decisions.floor_verdict(self, track, floor, verdict, ts, out)
            if track.guard.update(own_error):
                decisions.alarm(self, track, ts, out)
        if track.alarm_ts is not None and track.status == "drifting":
            track.since_alarm += 1
            decisions.maybe_request_drift_retrain(self, track, out)
        if track.regime_ts is not None:
            track.regime_n += 1
            decisions.maybe_consolidate(self, track, out)

    def _forecast(self, scope: str, members: list[_Track], matrix: np.ndarray) -> None:
        serving = self.serving.get(scope)
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

    def _assemble(
        self,
        wave: list[Telemetry],
        scored: list[_Scored],
        out: EngineOutput,
    ) -> None:
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
                rows.append(
                    SampleRow(device, target, ts, seq, value, forecast, persistence, prediction, model)
                )
            predictions.append(Prediction(device, seq, ts, per_msg))

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
            floor = (
                Floor(self.floor_margin, self.floor_window, shrink=self.floor_shrink)
                if self.floor_margin is not None
                else None
            )
            track = _Track(device, target, self.window, guard, floor, Cadence(self.gap_intervals))
            self.tracks[(device, target)] = track
            if device not in self._heard:  # a track made outside process() still counts and can age out
                self._heard[device] = self._heard_ts
        return track

    # -- status ---------------------------------------------------------------------------------
    def status_rows(self, wall_now: float) -> list[StatusRow]:
        """Rows for the dashboard of the tracks that changed since the last call (see :mod:`.status`)."""
        return status.status_rows(self.tracks, self._rate_mark, wall_now)

    def summary(self) -> dict[str, dict[str, float | int | str | None]]:
        """Fleet-wide RMSE per target of the serving models, beside persistence and the mean."""
        return status.summary(self.tracks)
