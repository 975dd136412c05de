"""Loaders for real sensor recordings (CSV with a column mapping) and the shared data sets.

Every loader returns a DataFrame sorted by time with a ``device`` column (a constant), a float
``ts`` column (epoch seconds, UTC; naive timestamps are taken as UTC) and float value columns
named in edgeloop's vocabulary, missing values as NaN.

>>> import io, tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     p = Path(d) / "lab.csv"
...     _ = p.write_text("day;clock;T;VOC\\n02/01/2024;00.01.00;21,5;-200\\n01/01/2024;23.59.00;21,0;150\\n")
...     df = load_csv(p, ts_column=["day", "clock"], columns={"T": "temp_c", "VOC": "voc_ppb"}, sep=";",
...                   decimal=",", ts_format="%d/%m/%Y %H.%M.%S", missing=[-200])
>>> df["ts"].tolist(), df["temp_c"].tolist(), df["voc_ppb"].tolist(), df["device"].tolist()
([1704153540.0, 1704153660.0], [21.0, 21.5], [150.0, nan], ['lab', 'lab'])
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SHARED_DATA_ENV = "EDGELOOP_SHARED_DATA"
KNOWN_RECORDINGS = ("air_quality", "occupancy", "nab")
PACKAGED_DATA = Path(__file__).resolve().parent / "data"
COMPRESSED_SUFFIXES = (".xz", ".gz")  # pandas reads both, chosen by the suffix

AIR_QUALITY_FILE = Path("air_quality") / "AirQualityUCI.csv"
OCCUPANCY_DIR = Path("occupancy")
OCCUPANCY_FILES = ("datatraining.txt", "datatest.txt", "datatest2.txt")
NAB_FILE = Path("nab") / "machine_temperature_system_failure.csv"
NAB_WINDOWS_FILE = Path("nab") / "machine_temperature_windows.json"

_AIR_QUALITY_GASES = (
    "CO(GT)",
    "PT08.S1(CO)",
    "NMHC(GT)",
    "C6H6(GT)",
    "PT08.S2(NMHC)",
    "NOx(GT)",
    "PT08.S3(NOx)",
    "NO2(GT)",
    "PT08.S4(NO2)",
    "PT08.S5(O3)",
)
_OCCUPANCY_COLUMNS = {
    "Temperature": "temp_c",
    "Humidity": "humidity",
    "Light": "light",
    "CO2": "co2",
    "HumidityRatio": "humidity_ratio",
    "Occupancy": "occupancy",
}
_EPOCH = pd.Timestamp(0, tz="UTC")
_NA_TOKENS = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")


def snake_case(name: str) -> str:
    """A source column name as a snake_case edgeloop name.

    >>> snake_case("PT08.S2(NMHC)"), snake_case("CO(GT)"), snake_case("HumidityRatio")
    ('pt08_s2_nmhc', 'co_gt', 'humidity_ratio')
    """
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])", "_", name)
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def shared_data_dir() -> Path:
    """``$EDGELOOP_SHARED_DATA`` if set, else the copy inside the package, else ``../shared/data``.

    The package holds the recordings xz-compressed (``edgeloop/telemetry/data``), so they are there
    after ``pip install``; ``../shared/data`` next to a checkout is the uncompressed original.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    if (PACKAGED_DATA / AIR_QUALITY_FILE.parent).is_dir():
        return PACKAGED_DATA
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def existing(path: Path) -> Path:
    """``path``, or its compressed copy ``path.xz`` / ``path.gz`` when only that exists."""
    if path.exists():
        return path
    for suffix in COMPRESSED_SUFFIXES:
        packed = path.with_name(path.name + suffix)
        if packed.is_file():
            return packed
    return path


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"recording not found: {path}")


def _to_epoch(raw: pd.Series, path: Path, column: str, ts_format: str | None) -> np.ndarray:
    try:
        stamps = pd.to_datetime(raw, format=ts_format, utc=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: column {column!r} has a timestamp that does not parse: {exc}") from None
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise ValueError(f"{path}: column {column!r} has no timestamp in data row {row + 1}")
    # Division by a Timedelta works whatever resolution pandas picked (ns, us or s).
    return ((stamps - _EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)


def load_csv(
    path: str | Path,
    *,
    ts_column: str | Sequence[str],
    columns: Mapping[str, str],
    sep: str = ",",
    decimal: str = ".",
    ts_format: str | None = None,
    missing: Sequence[float] = (),
    device: str | None = None,
) -> pd.DataFrame:
    """Load one recording: ``columns`` maps source column -> edgeloop name (e.g. ``{"T": "temp_c"}``).

    ``ts_column`` is one column, or several (date and time) joined with a space before parsing with
    ``ts_format`` (strptime; ``None``: let pandas infer). Values equal to a ``missing`` sentinel
    become NaN; rows whose timestamp cells are all empty (trailing padding) are dropped.
    """
    path = existing(Path(path))
    _require_file(path)
    ts_columns = [ts_column] if isinstance(ts_column, str) else list(ts_column)
    if not ts_columns:
        raise ValueError(f"{path}: ts_column names no column")
    try:
        # Read everything as text: the numbers are parsed below so errors can name the column.
        raw = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    absent = [c for c in [*ts_columns, *columns] if c not in raw.columns]
    if absent:
        raise ValueError(f"{path}: column {absent[0]!r} not found; columns are {list(raw.columns)}")

    cells = raw[ts_columns].apply(lambda col: col.str.strip())
    raw = raw[(cells != "").any(axis=1)]
    cells = cells.loc[raw.index]
    text = cells[ts_columns[0]].str.cat([cells[c] for c in ts_columns[1:]], sep=" ")
    ts = _to_epoch(text, path, "+".join(ts_columns), ts_format)

    out = pd.DataFrame({"device": device if device is not None else path.stem, "ts": ts}, index=raw.index)
    for source, name in columns.items():
        cell = raw[source].str.strip()
        if decimal != ".":
            cell = cell.str.replace(decimal, ".", regex=False)
        blank = cell.isin(_NA_TOKENS)
        values = pd.to_numeric(cell.mask(blank), errors="coerce").astype(float)
        bad = values.isna() & ~blank
        if bad.any():
            example = cell[bad].iloc[0]
            raise ValueError(
                f"{path}: column {source!r} holds a non-number ({example!r}); "
                f"check sep={sep!r} and decimal={decimal!r}"
            )
        if len(missing):
            values = values.mask(values.isin([float(m) for m in missing]))
        out[name] = values
    return out.sort_values("ts", kind="stable").reset_index(drop=True)


def load_air_quality(path: str | Path | None = None, *, device: str = "air_quality") -> pd.DataFrame:
    """UCI Air Quality: ``temp_c`` (T), ``humidity`` (RH), ``abs_humidity`` (AH) and each gas column
    in snake_case (``"PT08.S2(NMHC)"`` -> ``pt08_s2_nmhc``); hourly, ``-200`` -> NaN."""
    path = Path(path) if path is not None else shared_data_dir() / AIR_QUALITY_FILE
    columns = {gas: snake_case(gas) for gas in _AIR_QUALITY_GASES}
    columns.update({"T": "temp_c", "RH": "humidity", "AH": "abs_humidity"})
    return load_csv(
        path,
        ts_column=["Date", "Time"],
        columns=columns,
        sep=";",
        decimal=",",
        ts_format="%d/%m/%Y %H.%M.%S",
        missing=[-200],
        device=device,
    )


def load_occupancy(folder: str | Path | None = None, *, device: str = "occupancy") -> pd.DataFrame:
    """UCI Occupancy Detection: the three files concatenated, sorted by time, duplicate stamps dropped."""
    folder = Path(folder) if folder is not None else shared_data_dir() / OCCUPANCY_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"recording folder not found: {folder}")
    # The files have a row id column without a header; load_csv reads only the named columns.
    parts = [
        load_csv(folder / name, ts_column="date", columns=_OCCUPANCY_COLUMNS, device=device)
        for name in OCCUPANCY_FILES
    ]
    frame = pd.concat(parts, ignore_index=True).sort_values("ts", kind="stable")
    return frame.drop_duplicates(subset="ts", keep="first").reset_index(drop=True)


def load_nab(
    path: str | Path | None = None, *, device: str | None = None, keep_duplicates: bool = False
) -> pd.DataFrame:
    """A Numenta Anomaly Benchmark file (``timestamp,value``) as ``ts, value``.

    The machine-temperature file repeats one hour (2014-01-07 02:00-02:55 appears twice, the clock
    stepping back after the first copy); by default the first copy in file order is kept so time
    is strictly increasing (22,683 of its 22,695 rows). ``keep_duplicates=True`` keeps every row,
    sorted stably by time.
    """
    path = Path(path) if path is not None else shared_data_dir() / NAB_FILE
    frame = load_csv(path, ts_column="timestamp", columns={"value": "value"}, device=device)
    if keep_duplicates:
        return frame
    dup = frame["ts"].duplicated(keep="first")
    if dup.any():
        logger.info("%s: dropped %d rows with a repeated timestamp", path, int(dup.sum()))
    return frame[~dup].reset_index(drop=True)


def load_nab_windows(path: str | Path | None = None, *, key: str | None = None) -> list[tuple[float, float]]:
    """NAB labelled anomaly windows as ``(start, end)`` epoch seconds.

    The file maps data file -> windows (NAB's ``combined_windows.json`` layout); ``key`` picks one
    entry and may be omitted when there is only one. A plain list of windows is accepted too.
    """
    path = Path(path) if path is not None else shared_data_dir() / NAB_WINDOWS_FILE
    _require_file(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    if isinstance(data, dict):
        if key is None:
            if len(data) != 1:
                raise ValueError(f"{path}: holds {len(data)} files' windows; pass key= one of {list(data)}")
            key = next(iter(data))
        if key not in data:
            raise ValueError(f"{path}: no windows for {key!r}; keys are {list(data)}")
        data = data[key]
    if not isinstance(data, list) or not all(isinstance(w, list | tuple) and len(w) == 2 for w in data):
        raise ValueError(f"{path}: expected a list of [start, end] windows")
    if not data:
        return []
    flat = pd.Series([str(t) for window in data for t in window])
    stamps = _to_epoch(flat, path, "windows", None)
    return [(float(stamps[i]), float(stamps[i + 1])) for i in range(0, len(stamps), 2)]


def known_recording(name: str, data_dir: str | Path | None = None) -> pd.DataFrame:
    """Load a shared recording by name: ``air_quality``, ``occupancy`` or ``nab``.

    ``data_dir`` defaults to :func:`shared_data_dir` (``$EDGELOOP_SHARED_DATA`` or ``../shared/data``).
    """
    root = Path(data_dir) if data_dir is not None else shared_data_dir()
    if name == "air_quality":
        return load_air_quality(root / AIR_QUALITY_FILE)
    if name == "occupancy":
        return load_occupancy(root / OCCUPANCY_DIR)
    if name == "nab":
        return load_nab(root / NAB_FILE, device="nab")
    raise ValueError(f"unknown recording {name!r}; known: {', '.join(KNOWN_RECORDINGS)}")
