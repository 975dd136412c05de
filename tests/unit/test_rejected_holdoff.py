"""A device whose drift retrain found nothing better holds off its next alarms' retrains for a while
(``model.rejected_holdoff``): the alarms are still reported, the retrains they would ask for are not."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgeloop.config import DriftSettings, Settings
from edgeloop.engine import decisions
from edgeloop.engine.engine import Engine, EngineOutput, RetrainRequest
from edgeloop.lifecycle.retrains import Retrains, RetryPolicy
from edgeloop.models.forecasters import Persistence
from edgeloop.models.modelfile import LoadedModel
from edgeloop.retrain.job import RetrainOutcome
from edgeloop.service.edge import build_engine
from edgeloop.service.lifecycle_control import LifecycleControl
from edgeloop.telemetry.schema import Event, Telemetry

N = 6000
ONSET = 1500


def engine(holdoff: str) -> Engine:
    s = Settings(
        model={  # type: ignore[arg-type]
            "retrain_min_samples": 60,
            "consolidate_after": "0",
            "refresh_every": "0",
            "rejected_holdoff": holdoff,
        },
        drift=DriftSettings(warmup=10, window=20, min_gap=50, budget=100, budget_window=1000),
    )
    eng = build_engine(s, auto_train=False)
    model = LoadedModel("voc_ppb:v1", Persistence(5), {"scores": {"val_rmse": 1.0}})
    eng.install("voc_ppb", model, probation=False)
    return eng


def replay(
    eng: Engine, *, interval: float = 60.0, installed: bool = False, rejected: bool = True
) -> tuple[list[int], list[int], list[str]]:
    """Device b's errors burst 8x every other 300 readings from ``ONSET`` on: an error rise that keeps
    coming back. Every retrain ends at once as told. Returns the readings of the drift retrain requests
    and of the alarms of b, and the alarms' reasons."""
    rng = np.random.default_rng(6)
    calm = {d: 100 + np.cumsum(rng.normal(0, 1, N)) for d in ("a", "b")}
    requests: list[int] = []
    alarms: list[int] = []
    reasons: list[str] = []
    version = 1
    for i in range(0, N, 10):
        batch = []
        for d, series in calm.items():
            values = series[i : i + 10].copy()
            if d == "b" and i >= ONSET and (i // 300) % 2 == 0:
                values += rng.normal(0, 8, len(values))
            batch += [
                Telemetry(d, (i + k) * interval, i + k, {"voc_ppb": float(v)}) for k, v in enumerate(values)
            ]
        out = eng.process(batch)
        for e in out.events:
            if e.kind == "drift_detected" and e.scope == "voc_ppb@b":
                alarms.append(i)
                reasons.append(e.reason)
        for r in out.retrains:
            assert r.scope == "voc_ppb@b" and r.trigger == "drift"
            requests.append(i)
            if installed:
                version += 1
                meta = {"scores": {"val_rmse": 1.0}}
                eng.install(
                    r.scope, LoadedModel(f"{r.scope}:v{version}", Persistence(5), meta), probation=False
                )
            eng.retrain_finished(r.scope, installed=installed, rejected=rejected)
    return requests, alarms, reasons


def test_without_a_hold_off_every_alarm_asks_for_a_retrain() -> None:
    requests, alarms, _ = replay(engine("0"))
    assert len(alarms) >= 5 and len(requests) == len(alarms)


def test_a_rejected_drift_retrain_holds_off_the_next_alarms_retrains_for_the_span() -> None:
    requests, alarms, reasons = replay(engine("1d"))
    assert len(requests) >= 2 and len(requests) < len(alarms)  # some alarms asked for no retrain
    held = [a for a, r in zip(alarms, reasons, strict=True) if "no retrain before" in r]
    assert held and set(held).isdisjoint(requests)
    # Each alarm after a rejected retrain asks again only once a day (1,440 readings at 1 a minute) has
    # passed since that retrain ended, and the first alarm after that does ask.
    for earlier, later in itertools.pairwise(requests):
        assert later - earlier >= 1440
        assert not [a for a in held if a > earlier + 1440 + 10 and a < later]
    # Still reported: the same alarms as without the hold-off (the detector is not touched).
    assert alarms == replay(engine("0"))[1]


@pytest.mark.parametrize("interval", [600.0])
def test_the_hold_off_is_a_time_span(interval: float) -> None:
    # A day is 144 readings at one every 10 minutes: shorter than the gap between these alarms.
    requests, alarms, _ = replay(engine("1d"), interval=interval)
    assert len(requests) == len(alarms)
    requests, alarms, _ = replay(engine("2000"), interval=interval)  # a count of readings stays one
    assert len(requests) < len(alarms)


def test_a_failed_or_promoted_retrain_holds_nothing_off() -> None:
    # A retrain that failed (nothing judged) is no evidence that a fresh model would not help.
    requests, alarms, _ = replay(engine("1d"), rejected=False)
    assert len(requests) == len(alarms)
    # A promoted one is the fix the alarm asked for: the next alarm is a new question.
    requests, alarms, _ = replay(engine("1d"), installed=True, rejected=False)
    assert len(requests) == len(alarms)


def test_the_hold_off_survives_a_restart() -> None:
    eng = engine("1d")
    replay(eng)
    track = eng.tracks[("b", "voc_ppb")]
    assert track.holdoff_until is not None
    again = engine("1d")
    again.import_state(eng.export_state())
    assert again.tracks[("b", "voc_ppb")].holdoff_until == track.holdoff_until


def test_a_rejected_refresh_extends_a_running_hold_off_and_a_new_model_ends_it() -> None:
    eng = engine("1d")
    rng = np.random.default_rng(1)
    values = 100 + np.cumsum(rng.normal(0, 1, 3000))

    def feed(first: int, last: int) -> None:
        for i in range(first, last):
            eng.process([Telemetry(d, i * 60.0, i, {"voc_ppb": float(values[i])}) for d in ("a", "b")])

    feed(0, 500)
    a, b = eng.tracks[("a", "voc_ppb")], eng.tracks[("b", "voc_ppb")]

    def refresh_rejected() -> None:
        decisions.request(eng, "voc_ppb", "refresh", "test", None, EngineOutput(), {})
        eng.retrain_finished("voc_ppb", installed=False, rejected=True)

    # A fleet refresh that finds nothing better starts no hold-off by itself.
    refresh_rejected()
    assert a.holdoff_until is None and b.holdoff_until is None
    decisions.request(eng, "voc_ppb@b", "drift", "test", 0.0, EngineOutput(), {})
    eng.retrain_finished("voc_ppb@b", installed=False, rejected=True)
    started = eng.stream_ts
    assert b.holdoff_until == pytest.approx(started + 86_400) and a.holdoff_until is None
    feed(500, 1100)
    refresh_rejected()  # the refresh of b's serving scope, asked while b is held off
    assert b.holdoff_until == pytest.approx(eng.stream_ts + 86_400)
    assert b.holdoff_until > started + 86_400
    assert a.holdoff_until is None
    # One asked after the hold-off ran out does not start it again.
    feed(1100, 2700)
    until = b.holdoff_until
    refresh_rejected()
    assert b.holdoff_until == until
    decisions.request(eng, "voc_ppb@b", "drift", "test", 0.0, EngineOutput(), {})
    eng.retrain_finished("voc_ppb@b", installed=False, rejected=True)
    assert b.holdoff_until is not None
    eng.install("voc_ppb", LoadedModel("voc_ppb:v2", Persistence(5), {"scores": {"val_rmse": 1.0}}))
    assert b.holdoff_until is None


class _Engine:
    def __init__(self) -> None:
        self.finished: list[tuple[str, bool, bool]] = []

    def retrain_finished(self, scope: str, *, installed: bool, rejected: bool = False) -> None:
        self.finished.append((scope, installed, rejected))


class _Edge(LifecycleControl):
    """The edge's retrain answers, without transport, store or alerts."""

    def __init__(self) -> None:
        self.engine = _Engine()  # type: ignore[assignment]
        self.retrains = Retrains(RetryPolicy())

    def _emit(self, events: list[Event]) -> None:
        pass


@pytest.mark.parametrize(("decision", "rejected"), [("rejected", True), ("failed", False)])
def test_the_edge_tells_the_engine_whether_a_retrain_was_judged_no_better(
    decision: str, rejected: bool
) -> None:
    edge = _Edge()
    rid = edge.retrains.add(RetrainRequest("voc_ppb@b", "drift", "test"))
    edge._apply_outcome(RetrainOutcome("voc_ppb@b", decision, "test"), rid)
    assert edge.engine.finished == [("voc_ppb@b", False, rejected)]  # type: ignore[attr-defined]
