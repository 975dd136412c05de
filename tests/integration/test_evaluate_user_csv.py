"""`edgeloop evaluate` on a user's own file: the README's example, end to end through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer
from typer.testing import CliRunner

from edgeloop.evaluate.cli import evaluate_command

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "greenhouse.csv"


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(evaluate_command)
    return app


def test_evaluate_on_a_users_csv_with_labels_and_the_arf_reference(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cli(),
        [
            f"--dataset=csv:{EXAMPLE}",
            "--target=voc_ppb",
            "--strategies=persistence,static,relative,river-arf",
            "--set=model.lgbm_rounds=20",
            "--jobs=1",
            f"--out={out}",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    (block,) = payload["results"]
    assert block["devices"] == 2 and block["scored"] == 2 * 720
    assert block["onsets"] == [{"device": "greenhouse-2", "at": 600, "end": 900, "kind": "calibration_drift"}]
    m = block["strategies"]
    arf = m["river-arf"]
    assert arf["rmse"] < m["persistence"]["rmse"] and arf["retrains"] == 0 and arf["alarms"] is None
    # The engine is orders of magnitude cheaper per reading than the continuously learning forest.
    assert m["static"]["readings_per_s"] > 10 * arf["readings_per_s"]
    for entry in m["relative"]["alarm_log"]:
        assert entry["ts"].startswith("2024-03-") and entry["ts"].endswith("+00:00")
    for entry in m["relative"]["retrain_log"]:
        assert entry["requested_ts"].startswith("2024-03-")
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "csv-greenhouse-csv_voc_ppb_rolling_rmse.png" in pngs
    assert "river-ARF" in (out / "results.md").read_text()


def test_a_users_mistake_is_one_line_naming_file_and_field(tmp_path: Path) -> None:
    csv = shutil.copy(EXAMPLE, tmp_path / "site.csv")
    labels = tmp_path / "site.csv.labels.json"
    labels.write_text(json.dumps({"onsets": [{"device": "greenhouse-2", "at": "2024-03-05T04:00:00Z"}]}))
    args = [f"--dataset=csv:{csv}", "--strategies=static", "--jobs=2", "--no-plots", f"--out={tmp_path}"]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 1
    assert f"error: {labels}: onsets[0]: missing field 'at_ts'" in result.output
    assert "Traceback" not in result.output
    labels.write_text(json.dumps({"onsets": [{"device": "greenhouse-2", "at_ts": "5 March at 4"}]}))
    result = CliRunner().invoke(cli(), args)
    assert (
        result.exit_code == 1 and "onsets[0].at_ts: '5 March at 4' is not an ISO-8601 time" in result.output
    )
