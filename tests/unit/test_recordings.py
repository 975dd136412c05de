from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop.telemetry.recordings import (
    KNOWN_RECORDINGS,
    PACKAGED_DATA,
    known_recording,
    load_air_quality,
    load_csv,
    load_nab,
    load_nab_windows,
    load_occupancy,
    shared_data_dir,
    snake_case,
)

# tests/unit/this.py -> repo -> its parent, where CI and the dev machines keep shared/data.
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def utc(text: str) -> float:
    return pd.Timestamp(text, tz="UTC").timestamp()


def assert_strictly_sorted(df: pd.DataFrame) -> None:
    assert df["ts"].dtype == np.float64
    assert (np.diff(df["ts"].to_numpy()) > 0).all()


@pytest.fixture(scope="module")
def air() -> pd.DataFrame:
    return load_air_quality(DATA / "air_quality" / "AirQualityUCI.csv")


@pytest.fixture(scope="module")
def occupancy() -> pd.DataFrame:
    return load_occupancy(DATA / "occupancy")


@pytest.fixture(scope="module")
def nab() -> pd.DataFrame:
    return load_nab(DATA / "nab" / "machine_temperature_system_failure.csv")


def test_default_data_dir_is_the_packaged_copy_and_it_equals_the_shared_original(monkeypatch) -> None:
    monkeypatch.delenv("EDGELOOP_SHARED_DATA", raising=False)
    assert shared_data_dir().resolve() == PACKAGED_DATA
    assert (DATA / "README.md").is_file()
    for name in KNOWN_RECORDINGS:
        pd.testing.assert_frame_equal(known_recording(name), known_recording(name, DATA))
    for readme in DATA.glob("*/README.md"):
        assert (PACKAGED_DATA / readme.relative_to(DATA)).read_text() == readme.read_text()
    assert (PACKAGED_DATA / "nab" / "LICENSE.txt").read_text() == (DATA / "nab" / "LICENSE.txt").read_text()


def test_the_shared_folder_is_used_when_the_package_has_no_copy(monkeypatch, tmp_path: Path) -> None:
    import edgeloop.telemetry.recordings as recordings

    monkeypatch.delenv("EDGELOOP_SHARED_DATA", raising=False)
    monkeypatch.setattr(recordings, "PACKAGED_DATA", tmp_path / "absent")
    assert shared_data_dir().resolve() == DATA.resolve()


# -- air quality ----------------------------------------------------------------------------------


def test_air_quality_rows_columns_and_decimal_comma(air: pd.DataFrame) -> None:
    assert len(air) == 9357
    assert list(air.columns[:2]) == ["device", "ts"]
    for name in ("temp_c", "humidity", "abs_humidity", "co_gt", "pt08_s2_nmhc", "nmhc_gt", "pt08_s5_o3"):
        assert air[name].dtype == np.float64, name
    first = air.iloc[0]
    assert first["ts"] == utc("2004-03-10 18:00")
    # 13,6 ; 48,9 ; 0,7578 ; 2,6 ; 11,9 in the file.
    assert (first["temp_c"], first["humidity"], first["abs_humidity"]) == (13.6, 48.9, 0.7578)
    assert (first["co_gt"], first["c6h6_gt"], first["pt08_s2_nmhc"]) == (2.6, 11.9, 1046.0)
    assert air["ts"].iloc[-1] == utc("2005-04-04 14:00")
    assert set(air["device"]) == {"air_quality"}
    assert_strictly_sorted(air)


def test_air_quality_sentinel_becomes_nan(air: pd.DataFrame) -> None:
    values = air.drop(columns=["device", "ts"])
    assert not (values == -200).any().any()
    assert air["temp_c"].isna().sum() == 366  # the rows where every sensor is missing
    assert air["nmhc_gt"].isna().sum() > 8000  # missing almost everywhere after April 2004
    assert air["temp_c"].dropna().between(-10, 50).all()


# -- occupancy ------------------------------------------------------------------------------------


def test_occupancy_three_files_concatenated(occupancy: pd.DataFrame) -> None:
    assert len(occupancy) == 20560
    assert list(occupancy.columns) == [
        "device",
        "ts",
        "temp_c",
        "humidity",
        "light",
        "co2",
        "humidity_ratio",
        "occupancy",
    ]
    assert occupancy["ts"].iloc[0] == utc("2015-02-02 14:19:00")
    assert occupancy["ts"].iloc[-1] > utc("2015-02-18")
    assert set(occupancy["occupancy"].unique()) == {0.0, 1.0}
    assert occupancy["temp_c"].between(15, 30).all()
    assert not occupancy.drop(columns="device").isna().any().any()
    assert_strictly_sorted(occupancy)


# -- NAB ------------------------------------------------------------------------------------------


def test_nab_values_and_the_repeated_hour(nab: pd.DataFrame) -> None:
    every_row = load_nab(DATA / "nab" / "machine_temperature_system_failure.csv", keep_duplicates=True)
    assert len(every_row) == 22695  # the README's count
    # The file repeats 2014-01-07 02:00-02:55; the default keeps the first copy.
    assert len(nab) == 22695 - 12
    assert_strictly_sorted(nab)
    assert list(nab.columns) == ["device", "ts", "value"]
    assert nab["ts"].iloc[0] == utc("2013-12-02 21:15")
    assert nab["value"].between(2, 109).all()
    assert nab.loc[nab["ts"] == utc("2014-01-07 02:00"), "value"].item() == pytest.approx(94.42340604)


def test_nab_windows_inside_the_recording(nab: pd.DataFrame) -> None:
    windows = load_nab_windows(DATA / "nab" / "machine_temperature_windows.json")
    assert len(windows) == 4
    assert windows[0] == (utc("2013-12-10 06:25"), utc("2013-12-12 05:35"))
    for start, end in windows:
        assert nab["ts"].iloc[0] < start < end < nab["ts"].iloc[-1]


def test_nab_windows_key_choice(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text('{"a.csv": [["2020-01-01 00:00", "2020-01-02 00:00"]], "b.csv": []}')
    assert load_nab_windows(path, key="a.csv") == [(utc("2020-01-01"), utc("2020-01-02"))]
    assert load_nab_windows(path, key="b.csv") == []
    with pytest.raises(ValueError, match="pass key="):
        load_nab_windows(path)


# -- by name --------------------------------------------------------------------------------------


def test_known_recording_by_name_and_env(monkeypatch, nab: pd.DataFrame) -> None:
    frame = known_recording("nab", DATA)
    pd.testing.assert_frame_equal(frame, nab.assign(device="nab"))
    monkeypatch.setenv("EDGELOOP_SHARED_DATA", str(DATA))
    assert shared_data_dir() == DATA
    assert len(known_recording("nab")) == len(nab)
    monkeypatch.setenv("EDGELOOP_SHARED_DATA", "/nonexistent/shared")
    with pytest.raises(FileNotFoundError, match="/nonexistent/shared"):
        known_recording("air_quality")
    with pytest.raises(ValueError, match="unknown recording 'weather'"):
        known_recording("weather", DATA)
    assert KNOWN_RECORDINGS == ("air_quality", "occupancy", "nab")


# -- load_csv -------------------------------------------------------------------------------------


def test_load_csv_maps_sorts_and_masks(tmp_path: Path) -> None:
    path = tmp_path / "site-7.csv"
    path.write_text(
        "when,temp,voc,other\n"
        "2024-01-01T00:02:00Z,21.5,-999,x\n"
        "2024-01-01T00:01:00Z,21.0,150,y\n"
        "2024-01-01T00:03:00Z,,NA,z\n"
        ",,,\n"
    )
    df = load_csv(path, ts_column="when", columns={"temp": "temp_c", "voc": "voc_ppb"}, missing=[-999])
    assert list(df.columns) == ["device", "ts", "temp_c", "voc_ppb"]
    assert df["device"].tolist() == ["site-7"] * 3
    assert df["ts"].tolist() == [utc("2024-01-01 00:01"), utc("2024-01-01 00:02"), utc("2024-01-01 00:03")]
    np.testing.assert_array_equal(df["temp_c"], [21.0, 21.5, np.nan])
    np.testing.assert_array_equal(df["voc_ppb"], [150.0, np.nan, np.nan])
    assert load_csv(path, ts_column="when", columns={}, device="x")["device"].iloc[0] == "x"


def test_load_csv_two_timestamp_columns_and_decimal_comma(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("D;T;V;;\n31/12/2004;23.00.00;1,25;;\n")
    df = load_csv(
        path, ts_column=["D", "T"], columns={"V": "v"}, sep=";", decimal=",", ts_format="%d/%m/%Y %H.%M.%S"
    )
    assert (df["ts"].item(), df["v"].item()) == (utc("2004-12-31 23:00"), 1.25)


def test_load_csv_errors_name_the_file_and_column(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_csv(tmp_path / "nope.csv", ts_column="ts", columns={})
    path = tmp_path / "r.csv"
    path.write_text("ts;T\n2024-01-01 00:00;13,6\n")
    with pytest.raises(ValueError, match=r"r\.csv: column 'RH' not found"):
        load_csv(path, ts_column="ts", columns={"T": "temp_c", "RH": "humidity"}, sep=";", decimal=",")
    with pytest.raises(ValueError, match=r"r\.csv: column 'time' not found"):
        load_csv(path, ts_column="time", columns={}, sep=";")
    with pytest.raises(ValueError, match=r"column 'T' holds a non-number \('13,6'\)"):
        load_csv(path, ts_column="ts", columns={"T": "temp_c"}, sep=";")
    path.write_text("ts,T\nyesterday,1\n")
    with pytest.raises(ValueError, match=r"r\.csv: column 'ts' has a timestamp that does not parse"):
        load_csv(path, ts_column="ts", columns={"T": "temp_c"})
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        load_occupancy(tmp_path / "missing-folder")


def test_snake_case_names() -> None:
    assert [snake_case(c) for c in ("PT08.S2(NMHC)", "CO(GT)", "NOx(GT)", "C6H6(GT)", "HumidityRatio")] == [
        "pt08_s2_nmhc",
        "co_gt",
        "nox_gt",
        "c6h6_gt",
        "humidity_ratio",
    ]
