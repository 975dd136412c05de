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

from edgeloop.config import Span
from edgeloop.drift import DriftGuard
from edgeloop.engine import decisions, status
from edgeloop.engine import state as _state
from edgeloop.engine.cadence import Cadence
from edgeloop.engine.outputs import EngineOutput, RetrainRequest, Rollback
from edgeloop.engine.rows import StatusRow
from edgeloop.engine.serving import ModelSlots
from edgeloop.engine.track import _Serving, _Track
from edgeloop.engine.waves import process_wave
from edgeloop.lifecycle.floor import Floor
from edgeloop.telemetry.schema import Event, Telemetry

__all__ = ["Engine", "EngineOutput", "GuardFactory", "RetrainRequest", "Rollback"]

log = logging.getLogger(__name__)

GuardFactory = Callable[[float | None], DriftGuard]


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
                process_wave(self, wave, out)
                wave, seen = [], set()
            wave.append(msg)
            seen.add(device)
        if wave:
            process_wave(self, wave, out)
        decisions.check_initial_training(self, out)
        return out

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
