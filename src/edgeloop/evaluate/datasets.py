"""Data sets for ``edgeloop evaluate``: simulator scenarios with ground truth, and real recordings.

A data set is a long frame (``device``, ``ts``, one column per target) plus what is known about
it: ground-truth drift onsets (simulator, or a CSV's labels file), labelled windows (NAB, or a
CSV's labels file), or nothing at all (a *control*, where every alarm is a false one; see
:mod:`~edgeloop.evaluate.labels`). :func:`tracks` turns one
target of it into per-device series with the first readings set aside to train the initial model.

Specs accepted by :func:`expand_specs` / :func:`load_dataset`:

- ``sim:<kind>`` for every simulator drift kind, ``sim:stationary`` (no drift), ``sim:all``;
- ``air_quality``, ``occupancy``, ``nab`` (from :func:`~edgeloop.telemetry.recordings.shared_data_dir`);
- ``csv:PATH``: the canonical layout ``ts,device,<target>,...`` (every other column is a target;
  no ``device`` column: one device named after the file), or any layout with a column mapping in
  :class:`DatasetOptions`; labels from ``PATH.labels.json`` (or ``PATH.onsets.json``) if present;
- ``all``: every simulator scenario and the three recordings.

>>> expand_specs(["sim:all"])[:3]
['sim:stationary', 'sim:level_shift', 'sim:calibration_drift']
>>> ds = load_dataset("sim:level_shift", DatasetOptions(sim_steps=1000, sim_devices=2))
>>> ds.targets, [(lab.device, lab.kind) for lab in ds.labels]
(['voc_ppb'], [('dev-000', 'level_shift'), ('dev-001', 'level_shift')])
>>> [(t.device, t.start, len(t.values), t.windows) for t in tracks(ds, "voc_ppb", horizon=200)]
[('dev-000', 200, 1000, [(466, 666, 'level_shift')]), ('dev-001', 200, 1000, [(733, 933, 'level_shift')])]
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from edgeloop.evaluate.labels import Label, load_labels
from edgeloop.telemetry.recordings import (
    known_recording,
    load_csv,
    load_nab_windows,
    shared_data_dir,
)
from edgeloop.telemetry.simulator import DRIFT_KINDS, FIELDS, DriftSpec, Simulator

SIM_PREFIX = "sim:"
CSV_PREFIX = "csv:"
SIM_SCENARIOS = ("stationary", *DRIFT_KINDS)
RECORDINGS = ("air_quality", "occupancy", "nab")
# Targets evaluated per recording when --target does not say otherwise. PT08.S2(NMHC) is the
# VOC-like metal-oxide sensor; PT08.S4(NO2) is the one whose drift the data set's README quantifies.
RECORDING_TARGETS: dict[str, tuple[str, ...]] = {
    "air_quality": ("temp_c", "humidity", "pt08_s2_nmhc", "pt08_s4_no2"),
    "occupancy": ("temp_c", "humidity", "co2"),
    "nab": ("value",),
}
SIM_DEFAULT_TARGETS = ("voc_ppb",)


@dataclass
class Dataset:
    """One data set ready to replay; see the module docstring."""

    name: str
    frame: pd.DataFrame
    targets: list[str]
    labels: list[Label] = field(default_factory=list)
    control: bool = False  # no drift documented: every alarm is a false alarm
    segments: str = "fifths"  # "onsets": per-segment RMSE between onsets; "fifths": fixed fifths
    description: str = ""

    @property
    def has_ground_truth(self) -> bool:
        return self.control or bool(self.labels)


@dataclass(frozen=True)
class DatasetOptions:
    """How to build the data sets (hashable: workers cache loaded data sets by it)."""

    sim_steps: int = 9000
    sim_devices: int = 3
    seed: int = 0
    initial_fraction: float = 0.2
    max_samples: int | None = None  # keep only the first N rows of each recording (quick runs)
    data_dir: str | None = None
    targets: tuple[str, ...] = ()  # empty: each data set's default targets
    csv_columns: tuple[tuple[str, str], ...] = ()  # source column -> edgeloop name
    csv_ts_column: tuple[str, ...] = ("ts",)
    csv_sep: str = ","
    csv_decimal: str = "."
    csv_ts_format: str | None = None
    csv_missing: tuple[float, ...] = ()
    csv_device_column: str = "device"
    csv_labels: str | None = None  # default: <path>.labels.json, else <path>.onsets.json, if present
    csv_control: bool = False  # nothing drifts in the CSV(s): every alarm is a false alarm


@dataclass
class Track:
    """One device's readings of one target (NaN rows dropped), oldest first.

    Readings before ``start`` train the initial model and are not scored. ``windows`` are
    ``(first, end, kind)`` reading indices (end exclusive) in which a first alarm is a detection.
    """

    device: str
    ts: np.ndarray
    values: np.ndarray
    start: int
    windows: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def onsets(self) -> list[int]:
        return [w[0] for w in self.windows if w[2] != "anomaly"]


def expand_specs(specs: list[str]) -> list[str]:
    """``all`` and ``sim:all`` expanded, duplicates dropped, order kept; unknown specs raise."""
    out: list[str] = []
    for spec in specs:
        spec = spec.strip()
        if spec == "all":
            items = [SIM_PREFIX + k for k in SIM_SCENARIOS] + list(RECORDINGS)
        elif spec == "sim:all":
            items = [SIM_PREFIX + k for k in SIM_SCENARIOS]
        elif spec.startswith(SIM_PREFIX):
            if spec[len(SIM_PREFIX) :] not in SIM_SCENARIOS:
                raise ValueError(
                    f"unknown scenario {spec!r}; choose sim:all or sim:<{'|'.join(SIM_SCENARIOS)}>"
                )
            items = [spec]
        elif spec in RECORDINGS or spec.startswith(CSV_PREFIX):
            items = [spec]
        else:
            raise ValueError(
                f"unknown data set {spec!r}; "
                f"use all, sim:all, sim:<kind>, {', '.join(RECORDINGS)} or csv:PATH"
            )
        out.extend(i for i in items if i not in out)
    return out


def available_targets(spec: str, options: DatasetOptions) -> tuple[list[str], list[str]]:
    """``(default targets, every target the data set has)`` of a spec, without building it."""
    if spec.startswith(SIM_PREFIX):
        return list(SIM_DEFAULT_TARGETS), list(FIELDS)
    if spec.startswith(CSV_PREFIX):
        names = list(csv_columns(Path(spec[len(CSV_PREFIX) :]), options).values())
        return names, names
    if spec in RECORDINGS:
        root = Path(options.data_dir) if options.data_dir else shared_data_dir()
        columns = [c for c in known_recording(spec, root).columns if c not in ("device", "ts")]
        return list(RECORDING_TARGETS[spec]), columns
    raise ValueError(f"unknown data set {spec!r}")


def load_dataset(spec: str, options: DatasetOptions) -> Dataset:
    """Build the data set named by ``spec`` (see the module docstring)."""
    if spec.startswith(SIM_PREFIX):
        return simulator_dataset(spec[len(SIM_PREFIX) :], options)
    if spec.startswith(CSV_PREFIX):
        return csv_dataset(Path(spec[len(CSV_PREFIX) :]), options)
    if spec in RECORDINGS:
        return recording_dataset(spec, options)
    raise ValueError(f"unknown data set {spec!r}")


def simulator_dataset(scenario: str, options: DatasetOptions) -> Dataset:
    """``sim_devices`` simulated devices; device k drifts at its own onset, all after the training part.

    Onsets are spread evenly over the evaluated span (so each device has a clean stretch before and
    a long stretch after), on every requested target (default ``voc_ppb``).
    """
    if scenario not in SIM_SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SIM_SCENARIOS)}")
    targets = list(options.targets) or list(SIM_DEFAULT_TARGETS)
    unknown = [t for t in targets if t not in FIELDS]
    if unknown:
        raise ValueError(f"simulator targets are {', '.join(FIELDS)}; not {', '.join(unknown)}")
    steps, n = options.sim_steps, options.sim_devices
    start = int(steps * options.initial_fraction)
    devices = [f"dev-{i:03d}" for i in range(n)]
    drifts: list[DriftSpec] = []
    if scenario != "stationary":
        for k, device in enumerate(devices):
            at = start + (k + 1) * (steps - start) // (n + 1)
            drifts.extend(DriftSpec(device, scenario, at, target=t) for t in targets)
    sim = Simulator(devices, seed=options.seed, drifts=drifts)
    frame = sim.frame(steps)[["device", "ts", *targets]]
    labels = [Label(o["device"], o["kind"], float(o["at_ts"]), None, o["target"]) for o in sim.onsets()]
    what = "no drift" if scenario == "stationary" else f"{scenario} on each device at its own onset"
    return Dataset(
        name=SIM_PREFIX + scenario,
        frame=frame,
        targets=targets,
        labels=labels,
        control=scenario == "stationary",
        segments="onsets",
        description=f"simulator, {n} devices x {steps} readings (1 min), seed {options.seed}: {what}",
    )


def recording_dataset(name: str, options: DatasetOptions) -> Dataset:
    """A shared recording: air_quality (drift, unlabelled), occupancy (control) or nab (labelled windows)."""
    root = Path(options.data_dir) if options.data_dir else shared_data_dir()
    frame = known_recording(name, root)
    if options.max_samples is not None:
        frame = frame.iloc[: options.max_samples].reset_index(drop=True)
    targets = _pick_targets(list(options.targets) or list(RECORDING_TARGETS[name]), frame, name)
    device = str(frame["device"].iloc[0])
    labels: list[Label] = []
    if name == "nab":
        labels = [
            Label(device, "anomaly", s, e)
            for s, e in load_nab_windows(root / "nab" / "machine_temperature_windows.json")
        ]
    descriptions = {
        "air_quality": "UCI Air Quality, hourly, a year; documented sensor and concept drift, "
        "no labelled onsets (-200 sentinel -> missing, rows skipped per target)",
        "occupancy": "UCI Occupancy, 1 min, 16 days; control: no documented drift, "
        "every alarm is a false alarm",
        "nab": "NAB machine temperature, 5 min; alarms scored against the 4 labelled anomaly windows",
    }
    return Dataset(
        name=name,
        frame=frame[["device", "ts", *targets]],
        targets=targets,
        labels=labels,
        control=name == "occupancy",
        segments="fifths",
        description=descriptions[name],
    )


def csv_columns(path: Path, options: DatasetOptions) -> dict[str, str]:
    """Source column -> target name: the mapping given, else every column but the time and device."""
    if options.csv_columns:
        return dict(options.csv_columns)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        header = pd.read_csv(path, sep=options.csv_sep, nrows=0)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the header: {exc}") from None
    skip = {*options.csv_ts_column, options.csv_device_column}
    names = [str(c).strip() for c in header.columns]
    absent = [c for c in options.csv_ts_column if c not in names]
    if absent:
        raise ValueError(
            f"{path}: no time column {absent[0]!r}; columns are {names} "
            "(the canonical layout is ts,device,<targets>; or name yours with --ts-column)"
        )
    targets = [c for c in names if c not in skip]
    if not targets:
        raise ValueError(f"{path}: no target column besides {', '.join(sorted(skip))}")
    return {c: c for c in targets}


def csv_dataset(path: Path, options: DatasetOptions) -> Dataset:
    """A user's CSV (see the module docstring); labels and control from :mod:`~edgeloop.evaluate.labels`."""
    columns = csv_columns(path, options)
    kwargs = {
        "ts_column": list(options.csv_ts_column),
        "columns": columns,
        "sep": options.csv_sep,
        "decimal": options.csv_decimal,
        "ts_format": options.csv_ts_format,
        "missing": list(options.csv_missing),
    }
    raw = pd.read_csv(path, sep=options.csv_sep, dtype=str, keep_default_na=False)
    raw.columns = [str(c).strip() for c in raw.columns]
    ts_columns = list(options.csv_ts_column)
    if len(ts_columns) == 1 and ts_columns[0] in raw.columns and options.csv_ts_format is None and len(raw):
        # Epoch seconds (as `edgeloop simulate --csv` writes): load_csv parses dates only; hand it ISO text.
        epoch = pd.to_numeric(raw[ts_columns[0]].str.strip(), errors="coerce")
        if epoch.notna().all():
            stamps = pd.to_datetime(epoch, unit="s", utc=True)
            raw[ts_columns[0]] = stamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    by_device = options.csv_device_column in raw.columns
    groups = raw.groupby(options.csv_device_column, sort=True) if by_device else [(path.stem, raw)]
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        # load_csv owns parsing (sentinels, decimal commas, error messages); feed it one device at a time.
        for device, group in groups:
            part = Path(tmp) / path.name
            group.to_csv(part, sep=options.csv_sep, index=False)
            try:
                parts.append(load_csv(part, device=str(device), **kwargs))  # type: ignore[arg-type]
            except ValueError as exc:  # name the user's file, not the temporary part
                where = f" (device {device})" if by_device else ""
                raise ValueError(str(exc).replace(str(part), f"{path}{where}")) from None
    if not parts:
        raise ValueError(f"{path}: no rows")
    frame = pd.concat(parts, ignore_index=True).sort_values(["ts", "device"], kind="stable")
    frame = frame.reset_index(drop=True)
    if options.max_samples is not None:
        frame = frame.iloc[: options.max_samples].reset_index(drop=True)
    targets = _pick_targets(list(options.targets) or list(columns.values()), frame, str(path))
    devices = sorted(str(d) for d in frame["device"].unique())
    labels_path = _labels_path(path, options)
    truth = (
        load_labels(labels_path, devices, control=options.csv_control) if labels_path is not None else None
    )
    labels = truth.labels if truth else []
    control = truth.control if truth else options.csv_control
    what = f"CSV {path}"
    if labels:
        onsets = sum(lab.end_ts is None for lab in labels)
        what += f" with {onsets} onset(s) and {len(labels) - onsets} labelled window(s) from {labels_path}"
    if control:
        what += "; control: no drift known, every alarm is a false alarm"
    if truth and truth.description:
        what += f" ({truth.description})"
    return Dataset(
        name=CSV_PREFIX + path.name,
        frame=frame[["device", "ts", *targets]],
        targets=targets,
        labels=labels,
        control=control,
        segments="onsets" if any(lab.end_ts is None for lab in labels) else "fifths",
        description=what,
    )


def _labels_path(path: Path, options: DatasetOptions) -> Path | None:
    if options.csv_labels:
        return Path(options.csv_labels)
    for candidate in (Path(f"{path}.labels.json"), Path(f"{path}.onsets.json")):
        if candidate.is_file():
            return candidate
    return None


def _pick_targets(targets: list[str], frame: pd.DataFrame, name: str) -> list[str]:
    missing = [t for t in targets if t not in frame.columns or t in ("device", "ts")]
    if missing:
        cols = [c for c in frame.columns if c not in ("device", "ts")]
        raise ValueError(f"{name}: no target {', '.join(missing)}; available: {', '.join(cols)}")
    return targets


def tracks(
    dataset: Dataset, target: str, *, initial_fraction: float = 0.2, horizon: int = 1000
) -> list[Track]:
    """Per-device series of ``target`` with the training part and the scoring windows marked.

    The training part is the first ``initial_fraction`` of each device's readings, cut short so it
    ends before the first labelled window or onset (no model trains on the change it should meet).
    An onset's window runs ``horizon`` readings or up to the next onset, whichever is first.
    """
    out = []
    frame = dataset.frame
    for device, group in frame.groupby("device", sort=True):
        values = group[target].to_numpy(dtype=np.float64)
        ok = np.isfinite(values)
        ts = group["ts"].to_numpy(dtype=np.float64)[ok]
        values = values[ok]
        n = len(values)
        mine = sorted(
            (lab for lab in dataset.labels if lab.device == device and lab.target in (None, target)),
            key=lambda lab: lab.start_ts,
        )
        starts = [int(np.searchsorted(ts, lab.start_ts, side="left")) for lab in mine]
        start = int(n * initial_fraction)
        if starts:
            start = min(start, starts[0])
        windows = []
        for j, (lab, first) in enumerate(zip(mine, starts, strict=True)):
            if lab.end_ts is not None:
                end = int(np.searchsorted(ts, lab.end_ts, side="right"))
            else:
                following = [s for s in starts[j + 1 :] if s > first]
                end = min(first + horizon, following[0] if following else n, n)
            if first < n and end > first:
                windows.append((first, end, lab.kind))
        out.append(Track(str(device), ts, values, start, windows))
    return out
