"""The sequential policies' error scale: mean |e| based, so heavy tails do not blunt ``delta``."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from edgeloop.drift import Adwin, PageHinkley


def bursty(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian errors with 5 % bursts 8x larger: the RMSE is about twice the Gaussian part's."""
    errors = rng.normal(0, 1, n)
    errors[rng.random(n) < 0.05] *= 8.0
    return errors


def test_normalised_calm_errors_average_as_gaussian_ones_whatever_the_tails() -> None:
    rng = np.random.default_rng(0)
    errors = bursty(rng, 3000)
    det = PageHinkley(threshold=150.0, delta=0.5, window=100, calibration=1440)
    for e in errors:
        det.update(e)
    assert det.scale is not None and det.reference_rmse is not None
    mean_normalised = float(np.mean(np.abs(errors[1440:]))) / det.scale
    rmse_normalised = float(np.mean(np.abs(errors[1440:]))) / det.reference_rmse
    print(f"\nmean |e|/scale {mean_normalised:.2f}; |e|/RMSE would average {rmse_normalised:.2f}")
    assert 0.7 < mean_normalised < 0.9  # sqrt(2/pi) = 0.80 for Gaussian errors
    assert rmse_normalised < 0.65  # what the RMSE alone would give: delta twice as tolerant


def test_gaussian_errors_keep_the_rmse_scale() -> None:
    rng = np.random.default_rng(1)
    det = PageHinkley(threshold=150.0, delta=0.5, window=100, calibration=1440)
    for e in rng.normal(0, 3.0, 2000):
        det.update(e)
    assert det.scale is not None and det.reference_rmse is not None
    assert det.scale == pytest.approx(det.reference_rmse, rel=0.05)
    assert det.scale <= det.reference_rmse


def test_a_moderate_rise_of_bursty_errors_is_found_in_hundreds_not_thousands() -> None:
    """A 1.5x rise of every error on bursty data: found within 600 samples, none in 30,000 calm ones."""
    rng = np.random.default_rng(0)
    det = PageHinkley(threshold=150.0, delta=0.5, window=100, calibration=1440)
    false_alarms = sum(det.update(e) for e in bursty(rng, 30_000))
    alarms = [i for i, e in enumerate(1.5 * bursty(rng, 3000)) if det.update(e)]
    print(
        f"\nfalse alarms {false_alarms}; first alarm {alarms[0] if alarms else None} samples after the rise"
    )
    assert false_alarms == 0
    assert alarms and alarms[0] < 600


@pytest.mark.parametrize("make", [lambda: PageHinkley(window=100), lambda: Adwin(window=100)])
def test_snapshot_keeps_the_scale_and_an_old_snapshot_falls_back_to_the_rmse(make: object) -> None:
    rng = np.random.default_rng(2)
    first = make()  # type: ignore[operator]
    for e in bursty(rng, 500):
        first.update(e)
    state = orjson.loads(orjson.dumps(first.to_state()))
    second = make()  # type: ignore[operator]
    second.from_state(state)
    assert second.scale == first.scale and second.scale < second.reference_rmse
    del state["scale"]  # written before the scale was kept
    third = make()  # type: ignore[operator]
    third.from_state(state)
    assert third.scale == third.reference_rmse and math.isfinite(third.scale)
