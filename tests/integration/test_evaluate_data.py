"""edgeloop evaluate on the shared recordings and a simulator CSV (small slices: a few seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from edgeloop.config import ModelSettings, Settings
from edgeloop.evaluate.cli import evaluate, evaluate_command
from edgeloop.evaluate.datasets import DatasetOptions, load_dataset, tracks
from edgeloop.evaluate.runs import ReplayConfig
from edgeloop.evaluate.strategies import parse_strategies
from edgeloop.telemetry.recordings import load_nab_windows
from edgeloop.telemetry.simulator import DriftSpec, Simulator

pytestmark = pytest.mark.integration

# tests/integration/this.py -> repo -> its parent, where CI and the dev machines keep shared/data.
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
FAST = Settings(model=ModelSettings(candidates=["persistence", "linear", "lgbm-delta"], lgbm_rounds=20))


@pytest.fixture(autouse=True)
def _need_data() -> None:
    if not (DATA / "air_quality" / "AirQualityUCI.csv").is_file():
        pytest.skip(f"shared data not found under {DATA}")


def options(**kw: object) -> DatasetOptions:
    return DatasetOptions(data_dir=str(DATA), **kw)  # type: ignore[arg-type]


def test_air_quality_sentinels_are_skipped_per_target() -> None:
    ds = load_dataset("air_quality", options(max_samples=1500))
    assert ds.targets == ["temp_c", "humidity", "pt08_s2_nmhc", "pt08_s4_no2"] and not ds.has_ground_truth
    (gas,) = tracks(ds, "pt08_s2_nmhc")
    raw = ds.frame["pt08_s2_nmhc"].to_numpy()
    assert np.isnan(raw).any()  # the slice holds -200 rows...
    assert len(gas.values) == int(np.isfinite(raw).sum())  # ...which are skipped, never replayed as -200
    assert gas.values.min() > 0 and np.all(np.diff(gas.ts) > 0)


def test_nab_windows_map_to_readings_and_the_training_part_ends_before_them() -> None:
    ds = load_dataset("nab", options(max_samples=5000))
    (track,) = tracks(ds, "value", initial_fraction=0.9)
    windows = load_nab_windows(DATA / "nab" / "machine_temperature_windows.json")
    assert [w[2] for w in track.windows] == ["anomaly", "anomaly"]  # the two windows inside the slice
    for (first, end, _), (start_ts, end_ts) in zip(track.windows, windows, strict=False):
        assert track.ts[first] == start_ts and track.ts[end - 1] <= end_ts < track.ts[min(end, 4999)]
    assert track.start == track.windows[0][0]  # 90% asked for, cut at the first labelled window


def test_evaluate_writes_json_markdown_and_plots_on_the_control_data(tmp_path: Path) -> None:
    strategies = parse_strategies(["persistence,static,periodic,page-hinkley,river-ph"])
    payload = evaluate(
        ["occupancy"],
        strategies=strategies,
        options=options(max_samples=2500, targets=("co2",)),
        config=ReplayConfig(periodic_every=500, retrain_delay=20),
        settings=FAST,
        out=tmp_path,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"] == json.loads(json.dumps(payload["results"]))
    (block,) = saved["results"]
    assert block["control"] and block["dataset"] == "occupancy" and block["target"] == "co2"
    m = block["strategies"]
    assert m["periodic"]["retrains"] == 3  # readings 500, 1000, 1500 after the 500 training readings
    assert m["persistence"]["rmse_vs_persistence"] == 1.0 and m["static"]["rmse_vs_static"] == 1.0
    for name in ("page-hinkley", "river-ph"):  # on a control every alarm is a false alarm
        assert m[name]["false_alarms"] == m[name]["alarms"]
    assert {c["check"] for c in saved["targets"]} >= {
        "RMSE <= persistence",
        "retrains + refreshes <= half of periodic's",
    }
    text = (tmp_path / "results.md").read_text()
    assert "## occupancy / co2" in text and "| **page-hinkley** * |" in text
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["occupancy_co2_forecast.png", "occupancy_co2_rolling_rmse.png", "summary.png"]
    assert all((tmp_path / "plots" / p).stat().st_size > 10_000 for p in pngs)


def test_cli_on_a_simulator_csv_with_its_onsets(tmp_path: Path) -> None:
    import typer

    sim = Simulator(["a", "b"], seed=3, drifts=[DriftSpec("b", "regime_change", 1400)])
    csv = sim.write_csv(tmp_path / "sim.csv", 2000)
    app = typer.Typer()
    app.command()(evaluate_command)
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            f"--dataset=csv:{csv}",
            "--column=voc_ppb=voc_ppb",
            "--strategies=static,relative",
            "--set=model.lgbm_rounds=20",
            "--retrain-delay=10",
            "--jobs=1",
            "--no-plots",
            f"--out={out}",
        ],
    )
    assert result.exit_code == 0, result.output
    (block,) = json.loads((out / "results.json").read_text())["results"]
    assert block["devices"] == 2 and block["scored"] == 2 * 1600
    assert block["onsets"] == [{"device": "b", "at": 1400, "end": 2000, "kind": "regime_change"}]
    assert block["segments"] == ["before", "after"]
    assert block["strategies"]["relative"]["detection"]["windows"] == 1
    assert not (out / "plots").exists()
    bad = CliRunner().invoke(app, ["--dataset=sim:melt", f"--out={out}"])
    assert bad.exit_code == 2 and "unknown scenario" in bad.output
    assert pd.read_csv(csv).shape[0] == 4000
