"""edgeloop evaluate on a user's own CSV: the canonical layout, a labels file (ISO times, windows,
controls), and errors that name the user's file and field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop.evaluate.datasets import DatasetOptions, available_targets, load_dataset, tracks
from edgeloop.evaluate.labels import Label

# -- a user's CSV: canonical layout, labels file, errors -------------------------------------------


def user_csv(tmp_path: Path, n: int = 300, *, device: bool = True) -> Path:
    stamps = pd.date_range("2024-03-01", periods=n, freq="10min", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = []
    for d in ("b-2", "a-1") if device else ("only",):
        for i, ts in enumerate(stamps):
            row = {"ts": ts, "device": d, "temp_c": 20 + np.sin(i / 9), "co2": 400 + i % 7}
            if not device:
                del row["device"]
            rows.append(row)
    path = tmp_path / "site.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_labels(path: Path, data: object) -> Path:
    labels = Path(f"{path}.labels.json")
    labels.write_text(json.dumps(data))
    return labels


def test_canonical_csv_needs_no_column_mapping(tmp_path: Path) -> None:
    path = user_csv(tmp_path)
    ds = load_dataset(f"csv:{path}", DatasetOptions())
    assert ds.targets == ["temp_c", "co2"] and sorted(ds.frame["device"].unique()) == ["a-1", "b-2"]
    assert ds.frame["ts"].iloc[0] == pd.Timestamp("2024-03-01", tz="UTC").timestamp()
    assert available_targets(f"csv:{path}", DatasetOptions()) == (["temp_c", "co2"], ["temp_c", "co2"])
    assert not ds.labels and not ds.control and ds.segments == "fifths"
    (tmp_path / "one").mkdir()
    single = load_dataset(f"csv:{user_csv(tmp_path / 'one', device=False)}", DatasetOptions())
    assert list(single.frame["device"].unique()) == ["site"]
    mapped = load_dataset(f"csv:{path}", DatasetOptions(csv_columns=(("co2", "co2_ppm"),)))
    assert mapped.targets == ["co2_ppm"]


def test_labels_accept_iso_times_windows_and_devices_left_out(tmp_path: Path) -> None:
    path = user_csv(tmp_path)
    write_labels(
        path,
        {
            "onsets": [{"device": "a-1", "at_ts": "2024-03-02T00:00:00Z", "kind": "level_shift"}],
            "windows": [{"start_ts": "2024-03-01 20:00", "end_ts": 1709330400, "target": "co2"}],
        },
    )
    ds = load_dataset(f"csv:{path}", DatasetOptions())
    onset = pd.Timestamp("2024-03-02", tz="UTC").timestamp()
    assert Label("a-1", "level_shift", onset) in ds.labels
    windows = [lab for lab in ds.labels if lab.end_ts is not None]
    assert sorted(lab.device for lab in windows) == ["a-1", "b-2"]  # no device: every device
    assert all(lab.target == "co2" and lab.kind == "anomaly" for lab in windows)
    by_device = {t.device: t for t in tracks(ds, "co2", horizon=50)}
    # 2024-03-01 20:00 is reading 120, 1709330400 (22:00) reading 132; the onset (readings 144..) follows.
    assert by_device["a-1"].windows == [(120, 133, "anomaly"), (144, 194, "level_shift")]
    assert by_device["b-2"].windows == [(120, 133, "anomaly")]
    assert [t.windows for t in tracks(ds, "temp_c", horizon=50) if t.device == "b-2"] == [[]]
    assert ds.segments == "onsets" and "1 onset(s) and 2 labelled window(s)" in ds.description


def test_a_control_is_marked_in_the_labels_file_or_by_option(tmp_path: Path) -> None:
    path = user_csv(tmp_path)
    assert load_dataset(f"csv:{path}", DatasetOptions(csv_control=True)).control
    write_labels(path, {"control": True, "description": "a quiet week"})
    ds = load_dataset(f"csv:{path}", DatasetOptions())
    assert ds.control and ds.has_ground_truth and "a quiet week" in ds.description
    # An old-style onsets list (what `edgeloop simulate --csv` writes) still works.
    Path(f"{path}.labels.json").unlink()
    Path(f"{path}.onsets.json").write_text(json.dumps([{"device": "b-2", "at_ts": 1709300000.0}]))
    assert load_dataset(f"csv:{path}", DatasetOptions()).labels == [Label("b-2", "onset", 1709300000.0)]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            {"onsets": [{"device": "a-1", "at_ts": "next tuesday"}]},
            r"onsets\[0\]\.at_ts: 'next tuesday' is not",
        ),
        ({"onsets": [{"device": "a-1", "at": 5}]}, r"onsets\[0\]: missing field 'at_ts'"),
        ({"windows": [{"start_ts": 10}]}, r"windows\[0\]: missing field 'end_ts'"),
        ({"windows": [{"start_ts": 10, "end_ts": 5}]}, r"windows\[0\]: end_ts is before start_ts"),
        ({"onsets": [{"device": "z-9", "at_ts": 5}]}, r"onsets\[0\]\.device: no device 'z-9'"),
        ({"control": True, "onsets": [{"at_ts": 5}]}, "a control has no onsets"),
        ({"control": "yes"}, "control: expected true or false"),
        ({"onset": []}, "unknown field 'onset'"),
        ({"onsets": [{"device": "a-1", "at_ts": None}]}, r"onsets\[0\]\.at_ts: expected an ISO-8601 time"),
    ],
)
def test_label_errors_name_the_file_and_the_field(tmp_path: Path, labels: object, message: str) -> None:
    path = user_csv(tmp_path, n=30)
    labels_file = write_labels(path, labels)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset(f"csv:{path}", DatasetOptions())
    assert str(info.value).startswith(f"{labels_file}: ")


def test_csv_errors_name_the_users_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("ts,device,temp_c\n2024-03-01T00:00:00Z,a,20.1\n2024-03-01T00:10:00Z,a,twenty\n")
    with pytest.raises(
        ValueError, match=r"bad\.csv \(device a\): column 'temp_c' holds a non-number"
    ) as info:
        load_dataset(f"csv:{path}", DatasetOptions())
    assert "/tmp" not in str(info.value).replace(str(tmp_path), "")
    path.write_text("time,device,temp_c\n2024-03-01T00:00:00Z,a,20.1\n")
    with pytest.raises(ValueError, match=r"bad\.csv: no time column 'ts'.*--ts-column"):
        load_dataset(f"csv:{path}", DatasetOptions())
    (tmp_path / "x.csv.labels.json").write_text("{not json")
    (tmp_path / "x.csv").write_text("ts,v\n2024-03-01,1\n")
    with pytest.raises(ValueError, match=r"x\.csv\.labels\.json: not valid JSON"):
        load_dataset(f"csv:{tmp_path / 'x.csv'}", DatasetOptions())
    with pytest.raises(ValueError, match="file not found"):
        load_dataset(f"csv:{tmp_path / 'absent.csv'}", DatasetOptions())
