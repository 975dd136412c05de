"""The persistence floor and probation on the real engine: demotion, restore, the soft floor's share,
no flapping, and probation against both the model replaced and persistence."""

from __future__ import annotations

import numpy as np
import pytest
from tests.unit.lifecycle_support import engine, kinds, offset_model, readings

from edgeloop.lifecycle.floor import Floor
from edgeloop.lifecycle.probation import judge_probation
from edgeloop.models.forecasters import LinearForecaster, Persistence
from edgeloop.models.modelfile import LoadedModel
from edgeloop.telemetry.schema import PERSISTENCE_VERSION

# -- the persistence floor ---------------------------------------------------------------------------


def test_a_bad_model_is_demoted_within_the_window_and_restored_when_it_recovers() -> None:
    rng = np.random.default_rng(0)
    window = 100
    eng = engine(floor_window=window, floor_margin=0.05)
    eng.install("voc_ppb", offset_model(2.0), probation=False)
    # Phase 1: a random walk; the model's constant +2 makes it ~2.2x persistence's RMSE.
    walk = 100 + np.cumsum(rng.normal(0, 1, 400))
    demoted_at = None
    served = []
    for i, msg in enumerate(readings("d", walk)):
        out = eng.process([msg])
        if "model_demoted" in kinds(out):
            demoted_at = i
        served.append(out.predictions[0].forecasts["voc_ppb"])
    assert demoted_at is not None and demoted_at <= window + 10  # as soon as the window is full
    # Demoted: persistence serves (the last reading, labelled as such); the model forecasts in the shadow.
    assert all(f.model == PERSISTENCE_VERSION for f in served[demoted_at + 1 :])
    np.testing.assert_allclose([f.value for f in served[demoted_at + 1 :]], walk[demoted_at + 1 :])
    track = eng.tracks[("d", "voc_ppb")]
    assert track.demoted and track.model_forecast == pytest.approx(walk[-1] + 2.0)
    # Phase 2: the series climbs 2 per reading: now the model is right and persistence lags.
    climb = walk[-1] + 2.0 * np.arange(1, 301) + rng.normal(0, 0.3, 300)
    restored_at = None
    for i, msg in enumerate(readings("d", climb, start=400)):
        out = eng.process([msg])
        if "model_restored" in kinds(out):
            restored_at = i
    assert restored_at is not None and restored_at < 3 * window
    assert not track.demoted and eng.process(readings("d", climb[-1:] + 2, start=700)).predictions[
        0
    ].forecasts["voc_ppb"].model == ("voc_ppb:v1")


def overshoot_model(factor: float) -> LoadedModel:
    """Forecasts the last reading plus ``factor`` x the last change: on an AR(1) of the changes with
    coefficient 0.5, ``factor`` 1.0 overshoots the expected change twice over."""
    lin = LinearForecaster(5)
    lin.coef, lin.intercept = np.array([0.0, 0.0, 0.0, -factor, 1.0 + factor]), 0.0
    return LoadedModel("voc_ppb:v1", lin, {"scores": {"val_rmse": 1.0}})


@pytest.mark.parametrize("shrink", [True, False])
def test_the_soft_floor_serves_a_share_of_an_overshooting_models_change(shrink: bool) -> None:
    rng = np.random.default_rng(5)
    steps = np.zeros(3000)
    for i in range(1, len(steps)):
        steps[i] = 0.5 * steps[i - 1] + rng.normal(0, 1)
    values = 100 + np.cumsum(steps)
    eng = engine(floor_window=100, floor_shrink=shrink)
    eng.install("voc_ppb", overshoot_model(1.0), probation=False)
    served = np.array([f.forecasts["voc_ppb"].value for f in eng.process(readings("d", values)).predictions])
    own = values[4:-1] + (values[4:-1] - values[3:-2])  # the model's own forecast of readings 5..
    track = eng.tracks[("d", "voc_ppb")]
    assert not track.demoted
    late = slice(500, None)  # well after the first window, when the weight is used
    if shrink:
        # The least-squares weight of a forecast change twice the expected one is about 1/2.
        assert 0.35 < track.floor.weight < 0.65
        rmse_served = np.sqrt(np.mean((values[5:][late] - served[4:-1][late]) ** 2))
        rmse_own = np.sqrt(np.mean((values[5:][late] - own[late]) ** 2))
        assert rmse_served < 0.9 * rmse_own
        # ... and the model label stays the model's: it is served, only scaled.
        assert (
            eng.process(readings("d", values[-1:], start=3000)).predictions[0].forecasts["voc_ppb"].model
            == "voc_ppb:v1"
        )
    else:
        assert track.floor.weight == 1.0
        np.testing.assert_allclose(served[4:-1], own)


def test_a_new_model_ends_a_demotion() -> None:
    rng = np.random.default_rng(1)
    eng = engine(floor_window=50)
    eng.install("voc_ppb", offset_model(3.0), probation=False)
    out_kinds = []
    for msg in readings("d", 100 + np.cumsum(rng.normal(0, 1, 200))):
        out_kinds += kinds(eng.process([msg]))
    assert "model_demoted" in out_kinds and eng.tracks[("d", "voc_ppb")].demoted
    eng.install("voc_ppb", LoadedModel("voc_ppb:v2", Persistence(5), {}), probation=False)
    out = eng.process(readings("d", [100.0], start=200))
    restored = [e for e in out.events if e.kind == "model_restored"]
    assert restored and restored[0].version == "voc_ppb:v2" and not eng.tracks[("d", "voc_ppb")].demoted


def test_a_model_as_good_as_persistence_is_never_demoted() -> None:
    rng = np.random.default_rng(2)
    eng = engine(floor_window=50)
    eng.install("voc_ppb", LoadedModel("voc_ppb:v1", Persistence(5), {}), probation=False)
    out = eng.process(readings("d", 100 + np.cumsum(rng.normal(0, 1, 2000))))
    assert "model_demoted" not in kinds(out)


@pytest.mark.parametrize("seed", range(4))
def test_a_model_about_as_good_as_persistence_does_not_flap(seed: int) -> None:
    """Errors alike in size, heavy-tailed (Student-t, 3 degrees of freedom): over 300 readings their mean
    squares differ by 10-15 % by chance, far more than the 2 % margin. Neither a demotion nor a restore
    (the rule before the hysteresis demoted and restored such devices on noise: the bench's flapping).
    Tails this heavy may cost one demotion in 20,000 readings, never a restore that would start a flap."""
    rng = np.random.default_rng(seed)
    floor = Floor(margin=0.02, window=300)
    verdicts = [floor.update(rng.standard_t(3), rng.standard_t(3)) for _ in range(20_000)]
    assert verdicts.count("restore") == 0 and verdicts.count("demote") <= 1


def test_a_demoted_model_is_restored_only_when_clearly_better_and_a_window_later() -> None:
    rng = np.random.default_rng(5)
    floor = Floor(margin=0.02, window=100)
    steps = rng.normal(0, 1, 3000)
    assert [floor.update(s + 1.5, s) for s in steps[:200]].count("demote") == 1
    # Level with persistence again: it stays demoted (no evidence it is better).
    assert [floor.update(rng.normal(0, 1), s) for s in steps[200:2200]].count("restore") == 0
    # Clearly better (half persistence's error): restored.
    assert "restore" in [floor.update(0.5 * s, s) for s in steps[2200:]]


def test_a_floor_state_from_before_the_hysteresis_still_loads() -> None:
    old_state = {"demoted": True, "long_view": False, "n": 500, "cusum": 1.5, "scale": 2.0}
    old_state.update(long_model=3.0, long_persist=2.0)
    floor = Floor(margin=0.02, window=100)
    floor.from_state(old_state)  # type: ignore[arg-type]
    assert floor.demoted and floor.n == 500 and floor.short_model == 2.0 and floor.since == 100
    assert set(floor.to_state()) > set(old_state)
    floor.update(1.0, 1.0)  # and carries on


# -- probation against the model it replaced and against persistence --------------------------------


def test_probation_rolls_back_a_model_worse_than_persistence_when_the_old_one_was_better() -> None:
    rng = np.random.default_rng(3)
    walk = 100 + np.cumsum(rng.normal(0, 1, 600))
    eng = engine(probation_samples=100, probation_tolerance=1.5, floor_window=1000)
    eng.install("voc_ppb", offset_model(0.3), probation=False)
    eng.process(readings("d", walk[:100]))
    # 1.75x persistence's RMSE: within 1.5x of... no: the old one (+0.3) is ~1.04x persistence.
    eng.install("voc_ppb", offset_model(1.45, "voc_ppb:v2"))
    out = eng.process(readings("d", walk[100:300], start=100))
    rolled = [e for e in out.events if e.kind == "model_rolled_back"]
    assert [r.rejected for r in out.rollbacks] == ["voc_ppb:v2"] and rolled
    assert rolled[0].metrics["persistence_rmse"] is not None


def test_probation_keeps_a_model_better_than_the_old_one_even_if_worse_than_persistence() -> None:
    rng = np.random.default_rng(4)
    walk = 100 + np.cumsum(rng.normal(0, 1, 800))
    eng = engine(probation_samples=100, probation_tolerance=1.1, floor_window=100)
    eng.install("voc_ppb", offset_model(4.0), probation=False)
    eng.process(readings("d", walk[:100]))
    eng.install("voc_ppb", offset_model(2.0, "voc_ppb:v2"))
    out = eng.process(readings("d", walk[100:500], start=100))
    assert out.rollbacks == [] and eng.serving_label("d", "voc_ppb") == "voc_ppb:v2"
    # ... and the floor serves persistence instead.
    assert "model_demoted" in kinds(out)
    assert out.predictions[-1].forecasts["voc_ppb"].model == PERSISTENCE_VERSION


@pytest.mark.parametrize(
    ("new", "previous", "persistence", "keep"),
    [
        (1.0, 1.0, 1.5, True),  # as good as the old one, better than persistence
        (1.2, 1.0, 1.5, False),  # worse than the model it replaced
        (1.2, 1.3, 1.0, True),  # worse than persistence, better than the old one: the floor's job
        (1.2, 1.15, 1.0, False),  # worse than persistence and the old one did better
        (1.05, 1.0, 1.0, True),  # within the tolerance of both
    ],
)
def test_the_probation_rule_compares_with_the_model_it_replaced_and_with_persistence(
    new: float, previous: float, persistence: float, keep: bool
) -> None:
    verdict = judge_probation(
        new_rmse=new, previous_rmse=previous, persistence_rmse=persistence, samples=200, tolerance=1.1
    )
    assert verdict.keep is keep
    assert (verdict.reason is None) is keep
    assert verdict.metrics["samples"] == 200 and verdict.metrics["persistence_rmse"] == persistence
