"""Replay a data set through the live engine in simulated time, with retraining in simulated time.

For one data set and target (:class:`TargetReplay`), every strategy gets its own
:class:`~edgeloop.engine.engine.Engine` (built as the live edge builds it) and the same stream of
:class:`~edgeloop.telemetry.schema.Telemetry`, one time step per batch. All strategies but
``persistence`` start from the same initial model, trained on each device's first readings with
:func:`~edgeloop.retrain.job.train_and_judge` and installed without probation if it passed the
promotion rule (it beats persistence by ``model.promotion_margin``; else they start from persistence).

When an engine asks for a retrain (or the ``periodic`` strategy's clock does), the replay does
what the live trainer does, in simulated time: it takes the scope's readings *as of the request*
(since the alarm, at least ``model.retrain_min_samples``, at most ``model.train_window``; the last
``train_window`` per device for a fleet scope), trains and judges them against the model serving
the scope, and ``retrain_delay`` steps later (training latency) installs the challenger on
probation if it was promoted, then reports :meth:`Engine.retrain_finished`. Rollbacks are the
engine's own; the replay only records them.

:func:`run_unit` is one (data set, target, strategy) replay; it caches the loaded data set and the
initial model per process, so a pool of workers can share the work without shared state. What a
replay is configured with and what it reports are plain data in :mod:`edgeloop.evaluate.runs`.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import cast

import numpy as np

from edgeloop.adapters.store import Series
from edgeloop.config import Settings
from edgeloop.engine.engine import Engine, EngineOutput, RetrainRequest
from edgeloop.evaluate.datasets import DatasetOptions, Track, load_dataset, tracks
from edgeloop.evaluate.learner import arf_forecasts
from edgeloop.evaluate.runs import ReplayConfig, RetrainRecord, RunResult, TargetHeader
from edgeloop.evaluate.strategies import Strategy, build_strategy_engine, parse_strategy
from edgeloop.models.forecasters import forecaster_from_text
from edgeloop.models.modelfile import LoadedModel
from edgeloop.models.training import NotEnoughData
from edgeloop.retrain.job import Verdict, train_and_judge
from edgeloop.scopes import parse_scope, scope_of
from edgeloop.telemetry.schema import Telemetry

log = logging.getLogger(__name__)


@dataclass
class InitialModel:
    """The model every strategy but persistence starts from."""

    model: LoadedModel
    kind: str
    val_rmse: float
    scores: dict[str, float]
    n_samples: int
    promoted: bool
    reason: str


@dataclass
class _Job:
    request: RetrainRequest
    due_step: int
    record: RetrainRecord
    verdict: Verdict | None


class TargetReplay:
    """Replays one target of one data set for any number of strategies (see the module docstring)."""

    def __init__(
        self,
        name: str,
        target: str,
        data: list[Track],
        settings: Settings,
        config: ReplayConfig,
        *,
        description: str = "",
        control: bool = False,
        segments: str = "fifths",
        has_ground_truth: bool = False,
    ) -> None:
        if not data:
            raise ValueError(f"{name}: no readings of {target}")
        self.name = name
        self.target = target
        self.tracks = data
        self.settings = settings.model_copy(
            update={"model": settings.model.model_copy(update={"targets": [target]})}
        )
        self.config = config
        self.initial = self._train_initial()
        self.threshold, self.threshold_rule = config.threshold_for(target, self.initial.val_rmse)
        self.header = TargetHeader(
            name,
            target,
            description,
            control,
            segments,
            has_ground_truth,
            data,
            {
                "kind": self.initial.kind,
                "val_rmse": self.initial.val_rmse,
                "scores": self.initial.scores,
                "n_samples": self.initial.n_samples,
                "beats_persistence": self.initial.promoted,
                "reason": self.initial.reason,
            },
            self.threshold,
            self.threshold_rule,
        )

    # -- the initial model --------------------------------------------------------------------
    def _train_initial(self) -> InitialModel:
        window = self.settings.model.train_window
        series = [
            Series(t.device, t.ts[: t.start][-window:], t.values[: t.start][-window:]) for t in self.tracks
        ]
        try:
            verdict = train_and_judge(self.settings, series, None)
        except NotEnoughData as exc:
            raise ValueError(f"{self.name}/{self.target}: initial segment too short: {exc}") from None
        result = verdict.result
        # Installed (see run) only if it beats persistence by the margin, as the live edge does;
        # otherwise every strategy starts from persistence.
        model = LoadedModel(
            f"{self.target}:v0",
            result.forecaster,
            {"kind": result.kind, "scores": {"val_rmse": result.val_rmse}},
        )
        return InitialModel(
            model,
            result.kind,
            float(result.val_rmse),
            {k: float(v) for k, v in result.scores.items()},
            int(result.split.n_samples),
            verdict.promote,
            verdict.reason,
        )

    # -- one strategy -------------------------------------------------------------------------
    def run(self, strategy: Strategy) -> RunResult:
        if strategy.family == "learner":
            return self._run_learner(strategy)
        started = time.perf_counter()
        engine = build_strategy_engine(
            strategy, self.settings, threshold=self.threshold, river_input=self.config.river_input
        )
        if strategy.uses_model and self.initial.promoted:
            engine.install(self.target, _fresh(self.initial.model), probation=False)
        target, lags = self.target, self.settings.model.lags
        devices = [t.device for t in self.tracks]
        by_device = {t.device: t for t in self.tracks}
        forecasts = {t.device: np.full(len(t.values), np.nan) for t in self.tracks}
        result = RunResult(strategy.name, forecasts, {d: [] for d in devices})
        position = dict.fromkeys(devices, 0)  # reading index each device is at
        jobs: list[_Job] = []
        versions = [0]
        every = self.config.periodic_every if strategy.name == "periodic" else 0
        for step, batch in enumerate(_batches(self.tracks, lags)):
            messages = []
            for k, i in batch:
                track = self.tracks[k]
                position[track.device] = i
                messages.append(
                    Telemetry(track.device, float(track.ts[i]), i, {target: float(track.values[i])})
                )
            out = engine.process(messages)
            for (k, i), row in zip(batch, out.samples, strict=True):
                if row.forecast is not None:
                    forecasts[self.tracks[k].device][i] = row.forecast
            self._record_events(out, result, position)
            requests = list(out.retrains)
            if every:
                for k, i in batch:
                    track = self.tracks[k]
                    scope = scope_of(target, track.device)
                    if i > track.start and (i - track.start) % every == 0 and scope not in engine.pending:
                        engine.pending.add(scope)
                        requests.append(
                            RetrainRequest(
                                scope, "periodic", f"every {every} readings", None, float(track.ts[i])
                            )
                        )
            for request in requests:
                jobs.append(self._submit(engine, request, step, position, by_device))
            if jobs:
                jobs = self._finish_due(engine, jobs, step, position, result, versions)
        result.seconds = time.perf_counter() - started
        return result

    def _run_learner(self, strategy: Strategy) -> RunResult:
        """A continuously learning reference (no engine): each device's own model, same scored readings."""
        started = time.perf_counter()
        lags = self.settings.model.lags
        forecasts = {t.device: arf_forecasts(t.values, start=t.start, lags=lags) for t in self.tracks}
        result = RunResult(strategy.name, forecasts, {t.device: [] for t in self.tracks})
        result.seconds = time.perf_counter() - started
        return result

    def _record_events(self, out: EngineOutput, result: RunResult, position: dict[str, int]) -> None:
        for event in out.events:
            if event.kind == "drift_detected":
                _, device = parse_scope(event.scope)
                if device is not None:
                    result.alarms[device].append(position[device])
        for rollback in out.rollbacks:
            _, device = parse_scope(rollback.scope)
            for d in [device] if device is not None else list(position):
                result.rollbacks.append((d, position[d]))

    def _submit(
        self,
        engine: Engine,
        request: RetrainRequest,
        step: int,
        position: dict[str, int],
        by_device: dict[str, Track],
    ) -> _Job:
        """Train now on the readings the store would hold at the request; install ``retrain_delay`` later."""
        target, device = parse_scope(request.scope)
        model = self.settings.model
        if device is None:
            series = [
                Series(t.device, *_last(t, position[t.device], model.train_window)) for t in self.tracks
            ]
        else:
            track = by_device[device]
            end = position[device] + 1
            begin = 0
            if request.since_ts is not None:
                begin = int(np.searchsorted(track.ts[:end], request.since_ts, side="left"))
                if end - begin < model.retrain_min_samples:
                    begin = max(0, end - model.retrain_min_samples)
            begin = max(begin, end - model.train_window)
            series = [Series(device, track.ts[begin:end], track.values[begin:end])]
        serving = engine.serving.get(request.scope) or engine.serving.get(target)
        # the replay installs only LoadedModel instances; the engine types them as ServedModel
        current = cast(LoadedModel, serving.model) if serving is not None else None
        record = RetrainRecord(
            request.scope,
            request.trigger,
            device,
            position[device] if device is not None else step,
            None,
            "failed",
            n_samples=int(sum(len(s.values) for s in series)),
            requested_ts=float(request.requested_ts),
        )
        try:
            verdict: Verdict | None = train_and_judge(self.settings, series, current)
        except NotEnoughData:
            verdict = None
        if verdict is not None:
            record.decision = "promoted" if verdict.promote else "rejected"
            record.kind = verdict.result.kind
            record.val_rmse = float(verdict.result.val_rmse)
            record.champion_rmse = float(verdict.champion_rmse)
        return _Job(request, step + self.config.retrain_delay, record, verdict)

    def _finish_due(
        self,
        engine: Engine,
        jobs: list[_Job],
        step: int,
        position: dict[str, int],
        result: RunResult,
        versions: list[int],
    ) -> list[_Job]:
        waiting = []
        for job in jobs:
            if job.due_step > step:
                waiting.append(job)
                continue
            scope, verdict = job.request.scope, job.verdict
            installed = False
            if verdict is not None and verdict.promote:
                versions[0] += 1
                meta = {
                    "kind": verdict.result.kind,
                    "trigger": job.request.trigger,
                    "scores": {"val_rmse": verdict.result.val_rmse, "champion_rmse": verdict.champion_rmse},
                }
                engine.install(scope, LoadedModel(f"{scope}:v{versions[0]}", verdict.result.forecaster, meta))
                installed = True
            engine.retrain_finished(scope, installed=installed)
            device = job.record.device
            job.record.effective_at = position[device] if device is not None else step
            job.record.effective_ts = float(engine.stream_ts)
            result.retrains.append(job.record)
        return waiting


def _fresh(model: LoadedModel) -> LoadedModel:
    """The initial model as trained: an online one learns while it serves, and each run starts anew."""
    forecaster = model.forecaster
    if not getattr(forecaster, "online", False):
        return model
    clone = forecaster_from_text(forecaster.kind, forecaster.to_text(), forecaster.lags)
    return LoadedModel(model.label, clone, model.meta)


def _last(track: Track, index: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    begin = max(0, index + 1 - window)
    return track.ts[begin : index + 1], track.values[begin : index + 1]


def _batches(data: list[Track], lags: int) -> list[list[tuple[int, int]]]:
    """(track, reading) pairs in time order, one batch per time stamp (a device at most once per batch).

    Each device starts ``lags`` readings before its first scored one, so the model forecasts from
    the first scored reading on (those priming readings are not scored).
    """
    ks, idx, ts = [], [], []
    for k, t in enumerate(data):
        first = max(0, t.start - lags)
        n = len(t.values) - first
        ks.append(np.full(n, k))
        idx.append(np.arange(first, len(t.values)))
        ts.append(t.ts[first:])
    k_all, i_all, ts_all = np.concatenate(ks), np.concatenate(idx), np.concatenate(ts)
    order = np.lexsort((k_all, ts_all))
    batches: list[list[tuple[int, int]]] = []
    last_ts = None
    for j in order.tolist():
        if last_ts is None or ts_all[j] != last_ts or any(k == k_all[j] for k, _ in batches[-1]):
            batches.append([])
            last_ts = ts_all[j]
        batches[-1].append((int(k_all[j]), int(i_all[j])))
    return batches


# -- one unit of work, for a process pool ---------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _replayer(
    spec: str, target: str, options: DatasetOptions, config: ReplayConfig, settings_json: str
) -> TargetReplay:
    dataset = load_dataset(spec, options)
    data = tracks(dataset, target, initial_fraction=options.initial_fraction, horizon=config.horizon)
    return TargetReplay(
        dataset.name,
        target,
        data,
        Settings.model_validate_json(settings_json),
        config,
        description=dataset.description,
        control=dataset.control,
        segments=dataset.segments,
        has_ground_truth=dataset.has_ground_truth,
    )


def run_unit(
    spec: str, target: str, strategy: str, options: DatasetOptions, config: ReplayConfig, settings_json: str
) -> tuple[TargetHeader, RunResult]:
    """Replay one strategy on one target of one data set (top-level and plain-data: pool friendly)."""
    replay = _replayer(spec, target, options, config, settings_json)
    return replay.header, replay.run(parse_strategy(strategy))
