from __future__ import annotations

import json
import time

import numpy as np
import orjson
import pandas as pd
import pytest

from edgeloop.telemetry.parser import TelemetryParser
from edgeloop.telemetry.simulator import DRIFT_KINDS, FIELDS, DriftSpec, Simulator, parse_drift

RANGES = {"temp_c": (-80.0, 150.0), "humidity": (0.0, 100.0), "voc_ppb": (0.0, 1e6)}


def series(sim: Simulator, steps: int, device: str, field: str = "voc_ppb") -> np.ndarray:
    df = sim.frame(steps)
    return df.loc[df["device"] == device, field].to_numpy()


def ar_figures(y: np.ndarray, lags: int = 5) -> tuple[float, float, float]:
    """In-sample RMSE of a least-squares AR(lags) with intercept, persistence RMSE, std."""
    x = np.column_stack([y[lags - k - 1 : len(y) - k - 1] for k in range(lags)] + [np.ones(len(y) - lags)])
    target = y[lags:]
    coef, *_ = np.linalg.lstsq(x, target, rcond=None)
    ar = float(np.sqrt(np.mean((target - x @ coef) ** 2)))
    persistence = float(np.sqrt(np.mean((target - x[:, 0]) ** 2)))
    return ar, persistence, float(target.std())


# -- reproducibility and independence -----------------------------------------------------------


def test_same_seed_same_data_and_other_seed_other_data() -> None:
    a = Simulator(3, seed=11).frame(50)
    pd.testing.assert_frame_equal(a, Simulator(3, seed=11).frame(50))
    assert not np.allclose(a["voc_ppb"], Simulator(3, seed=12).frame(50)["voc_ppb"])


def test_frame_continues_where_it_stopped() -> None:
    sim = Simulator(2, seed=3)
    joined = pd.concat([sim.frame(20), sim.frame(30)], ignore_index=True)
    pd.testing.assert_frame_equal(joined, Simulator(2, seed=3).frame(50))


def test_adding_or_reordering_devices_does_not_change_a_device() -> None:
    alone = series(Simulator(["a"], seed=5), 300, "a")
    crowd = series(Simulator(["z", "b", "a", "c"], seed=5), 300, "a")
    np.testing.assert_array_equal(alone, crowd)
    small, big = Simulator(3, seed=1).frame(100), Simulator(10, seed=1).frame(100)
    big = big[big["device"].isin(small["device"].unique())].reset_index(drop=True)
    pd.testing.assert_frame_equal(small, big)
    # ...yet devices differ from one another.
    assert not np.allclose(series(Simulator(["a", "b"], seed=5), 50, "b"), alone[:50])


def test_int_devices_are_zero_padded_names() -> None:
    assert Simulator(3).devices == ["dev-000", "dev-001", "dev-002"]
    assert Simulator(["x", "y"]).devices == ["x", "y"]
    with pytest.raises(ValueError, match="duplicates"):
        Simulator(["x", "x"])


# -- the telemetry contract ---------------------------------------------------------------------


def test_step_payloads_follow_the_contract() -> None:
    sim = Simulator(3, seed=2, interval=30.0, start_ts=1000.0)
    parser = TelemetryParser(targets=FIELDS, ranges=RANGES)
    for step in range(3):
        payloads = sim.step()
        assert [p["device"] for p in payloads] == sim.devices
        for p in payloads:
            assert set(p) == {"device", "ts", "seq", *FIELDS}
            assert p["seq"] == step and p["ts"] == 1000.0 + 30.0 * step
            assert all(type(p[f]) is float for f in (*FIELDS, "ts"))
            parsed = parser.parse(f"edgeloop/s/{p['device']}/telemetry", orjson.dumps(p))
            assert parsed.values == {f: p[f] for f in FIELDS}


def test_step_and_frame_agree() -> None:
    sim = Simulator(2, seed=9)
    stepped = pd.DataFrame([p for _ in range(5) for p in sim.step()])
    framed = Simulator(2, seed=9).frame(5)
    pd.testing.assert_frame_equal(stepped[framed.columns], framed, check_dtype=False)


def test_live_simulator_never_runs_ahead_of_the_clock_over_days() -> None:
    # A live simulator publishes `rate` steps a second of `interval` simulated seconds each, from a
    # start in the past: the compose simulator (--rate 5, 60 s) ran 300x faster than the wall clock and
    # overtook it after a few days, and the edge then dropped every reading as ts_out_of_window. Here
    # the publisher's ticks are driven by hand against an injected clock, two days behind it at first.
    interval, rate, day = 60.0, 1.0, 86_400.0
    start = 1_700_000_000.0
    wall = start + 2 * day
    sim = Simulator(2, seed=3, interval=interval, start_ts=start, clock=lambda: wall)
    stamps: list[float] = []
    caught_up_at = None
    while wall < start + 4 * day:
        readings = sim.step()
        assert all(r["ts"] <= wall for r in readings), (wall - start) / day
        if readings:
            assert len(readings) == 2 and readings[0]["seq"] == len(stamps)
            stamps.append(readings[0]["ts"])
        elif caught_up_at is None:
            caught_up_at = wall
        wall += 1.0 / rate  # the publisher's pacer: one tick every 1/rate seconds of wall time
    assert caught_up_at is not None
    # Faster than real time while behind (a step every tick), then one step per interval: the edge
    # keeps getting readings on time, evenly spaced, over the whole simulated span.
    last_tick = wall - 1.0 / rate
    assert len(stamps) == int((last_tick - start) // interval) + 1
    assert np.allclose(np.diff(stamps), interval)
    ticks_to_catch_up = (caught_up_at - start - 2 * day) * rate
    assert ticks_to_catch_up == pytest.approx(2 * day * rate / (interval * rate - 1), abs=2)


def test_values_stay_in_plausible_ranges() -> None:
    df = Simulator(4, seed=21).frame(2 * 1440)  # two simulated days
    assert df["temp_c"].between(10, 35).all()
    assert df["humidity"].between(0, 100).all()
    assert df["voc_ppb"].between(0, 2000).all()
    per_device = df.groupby("device")
    # A day has a real temperature cycle and VOC bursts well above the baseline.
    assert (per_device["temp_c"].max() - per_device["temp_c"].min()).min() > 2.5
    assert (per_device["voc_ppb"].max() - per_device["voc_ppb"].median()).min() > 50


def test_voc_is_learnable_from_five_lags() -> None:
    df = Simulator(3, seed=0).frame(2000)
    for device, group in df.groupby("device"):
        ar, persistence, std = ar_figures(group["voc_ppb"].to_numpy())
        print(
            f"{device}: AR(5) RMSE {ar:.2f}  persistence {persistence:.2f}  std {std:.2f}  "
            f"AR/persistence {ar / persistence:.2f}  AR/std {ar / std:.2f}"
        )
        assert ar < 0.85 * persistence
        assert ar < 0.6 * std


def test_step_cost_for_a_thousand_devices() -> None:
    sim = Simulator(1000, seed=0)
    sim.step()
    started = time.perf_counter()
    for _ in range(50):
        payloads = sim.step()
    print(f"1000 devices: {(time.perf_counter() - started) / 50 * 1000:.2f} ms per step")
    assert len(payloads) == 1000 and payloads[-1]["seq"] == 50


# -- drift ----------------------------------------------------------------------------------------

DRIFT_CASES = [(kind, "voc_ppb") for kind in DRIFT_KINDS] + [
    ("level_shift", "temp_c"),
    ("calibration_drift", "humidity"),
    ("gain_change", "temp_c"),
    ("stuck", "humidity"),
    ("noise_burst", "temp_c"),
    ("regime_change", "humidity"),
    ("regime_change", "temp_c"),
]


@pytest.mark.parametrize(("kind", "target"), DRIFT_CASES)
def test_drift_changes_the_series_from_its_onset_only(kind: str, target: str) -> None:
    at, steps, devices = 300, 700, ["d0", "d1"]
    spec = DriftSpec("d1", kind, at, target=target)
    clean = Simulator(devices, seed=4).frame(steps)
    drifted = Simulator(devices, seed=4, drifts=[spec]).frame(steps)
    pd.testing.assert_frame_equal(clean[clean["device"] == "d0"], drifted[drifted["device"] == "d0"])
    for field in FIELDS:
        a = clean.loc[clean["device"] == "d1", field].to_numpy()
        b = drifted.loc[drifted["device"] == "d1", field].to_numpy()
        np.testing.assert_array_equal(a[:at], b[:at])
        if field != target and not (kind == "regime_change" and target == "temp_c"):
            # (a temperature regime reaches humidity and VOC through their coupling to temperature)
            np.testing.assert_array_equal(a, b)
    a = clean.loc[clean["device"] == "d1", target].to_numpy()
    b = drifted.loc[drifted["device"] == "d1", target].to_numpy()
    after, diff = slice(at, at + 100), (b - a)[at : at + 100]
    mag = spec.effective_magnitude
    assert not np.array_equal(a[after], b[after])
    if kind == "level_shift":
        np.testing.assert_allclose(diff, mag, atol=0.011)
    elif kind == "calibration_drift":
        duration = spec.effective_duration
        assert duration is not None
        np.testing.assert_allclose(diff, mag * np.arange(1, 101) / duration, atol=0.011)
        np.testing.assert_allclose((b - a)[at + duration :], mag, atol=0.011)
    elif kind == "gain_change":
        assert np.std(b[after]) > 1.5 * np.std(a[after])
    elif kind == "stuck":
        assert np.all(b[at : at + 120] == a[at - 1])
        np.testing.assert_array_equal(a[at + 120 :], b[at + 120 :])
    elif kind == "noise_burst":
        assert 0.6 * mag < np.std(diff) < 1.4 * mag
        np.testing.assert_array_equal(a[at + 120 :], b[at + 120 :])
    elif kind == "regime_change":
        assert np.mean(diff) > 0.5 * mag
        # The dynamics changed, not only the level: livelier step-to-step moves.
        print(f"{target}: step std {np.std(np.diff(b[at:])):.2f} vs {np.std(np.diff(a[at:])):.2f}")
        assert np.std(np.diff(b[at:])) > 1.3 * np.std(np.diff(a[at:]))


def test_drift_with_duration_ends_and_onsets_are_reported(tmp_path) -> None:
    specs = [
        parse_drift("dev-001:level_shift@10:magnitude=-5,duration=20"),
        parse_drift("dev-000:regime_change@40"),
    ]
    sim = Simulator(2, seed=8, drifts=specs)
    assert sim.onsets() == [
        {
            "device": "dev-001",
            "target": "voc_ppb",
            "kind": "level_shift",
            "at_seq": 10,
            "at_ts": sim.ts_of(10),
        },
        {
            "device": "dev-000",
            "target": "voc_ppb",
            "kind": "regime_change",
            "at_seq": 40,
            "at_ts": sim.ts_of(40),
        },
    ]
    a = series(Simulator(2, seed=8), 60, "dev-001")
    b = series(Simulator(2, seed=8, drifts=specs), 60, "dev-001")
    np.testing.assert_allclose((b - a)[10:30], -5.0, atol=0.011)
    np.testing.assert_array_equal(a[30:], b[30:])

    path = sim.write_csv(tmp_path / "run.csv", 30)
    written = pd.read_csv(path)
    assert len(written) == 60 and list(written.columns) == ["device", "ts", "seq", *FIELDS]
    onsets = json.loads((tmp_path / "run.csv.onsets.json").read_text())
    assert [o["at_seq"] for o in onsets] == [10]  # the regime starts after the written range


def test_regime_change_with_duration_is_undone() -> None:
    spec = parse_drift("dev-000:regime_change@100:duration=200")
    b = series(Simulator(1, seed=6, drifts=[spec]), 1200, "dev-000")
    a = series(Simulator(1, seed=6), 1200, "dev-000")
    assert np.mean((b - a)[120:300]) > 50
    assert abs(np.mean((b - a)[800:])) < 10


def test_unknown_drift_device_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown device 'dev-009'"):
        Simulator(3, drifts=[parse_drift("dev-009:stuck@5")])


# -- parse_drift ----------------------------------------------------------------------------------


def test_parse_drift_forms() -> None:
    spec = parse_drift("dev-003:regime_change@3000")
    assert spec == DriftSpec("dev-003", "regime_change", 3000)
    assert spec.effective_magnitude == 100.0 and spec.effective_duration is None
    spec = parse_drift(" dev-1:noise_burst@5:target=humidity, magnitude=5 ,duration=200 ")
    assert spec == DriftSpec("dev-1", "noise_burst", 5, target="humidity", magnitude=5.0, duration=200)
    assert parse_drift(spec.to_text()) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dev-1", "expected device:kind@step"),
        ("dev-1:stuck", "expected device:kind@step"),
        ("dev-1:stuck@x", "expected device:kind@step"),
        ("dev-1:melt@5", "unknown drift kind 'melt'"),
        ("dev-1:stuck@-5", "'at' must be an integer >= 0"),
        ("dev-1:stuck@5:target=pressure", "unknown drift target 'pressure'"),
        ("dev-1:stuck@5:magnitude=big", "magnitude='big' is not a number"),
        ("dev-1:stuck@5:duration=0", "duration must be >= 1"),
        ("dev-1:stuck@5:colour=red", "unknown option 'colour'"),
        ("dev-1:stuck@5:duration", "is not key=value"),
    ],
)
def test_parse_drift_rejects_bad_text_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="bad drift") as info:
        parse_drift(text)
    assert message in str(info.value)
