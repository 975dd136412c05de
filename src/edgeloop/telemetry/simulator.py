"""Simulated sensor devices: realistic, learnable, reproducible telemetry with scheduled drift.

Every device emits ``temp_c``, ``humidity`` and ``voc_ppb`` once per ``interval`` seconds of
simulated time (all devices share the clock: reading ``seq`` is at ``start_ts + seq * interval``).

- Temperature follows a diurnal cycle (per-device level, amplitude and local-time offset) plus
  slow AR(1) weather noise.
- Humidity moves against temperature plus its own slow AR(1) noise, clipped to 0..100.
- VOC sits on a per-device baseline that breathes with temperature; occupancy bursts (random
  arrivals, far more in local day hours) kick a damped second-order response, i.e. an AR(2)
  process: a rise over a few minutes, then a decaying oscillation back to baseline. That momentum
  is what makes the next reading predictable from the last few and makes persistence lag.

Each device draws from its own random stream, keyed by ``seed`` and the device *name*, so adding,
removing or reordering devices never changes another device's data, and scheduled drift never
changes the random draws either (a drifted run equals the clean run before the onset).

Drift kinds (per device and target, starting at reading ``at``): see :data:`DRIFT_KINDS` and
:class:`DriftSpec`, in :mod:`edgeloop.telemetry.drifts` (importable from here too).

>>> a = Simulator(2, seed=7).frame(3)
>>> a.equals(Simulator(2, seed=7).frame(3))
True
>>> list(a.columns), a["device"].tolist()[:2], a["seq"].tolist()
(['device', 'ts', 'seq', 'temp_c', 'humidity', 'voc_ppb'], ['dev-000', 'dev-001'], [0, 0, 1, 1, 2, 2])
>>> clean = Simulator(["lab-1"], seed=7).frame(4)["voc_ppb"]
>>> shifted = Simulator(["lab-1"], seed=7, drifts=[parse_drift("lab-1:level_shift@2")]).frame(4)["voc_ppb"]
>>> (shifted - clean).round(6).tolist()
[0.0, 0.0, 80.0, 80.0]
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.telemetry.drifts import DRIFT_KINDS, FIELDS, DriftSpec, parse_drift

__all__ = ["DRIFT_KINDS", "FIELDS", "DriftSpec", "Simulator", "parse_drift"]

# Per-step random draws of every device, always all of them, so drift never shifts the streams.
_N_NORMAL = 6 + len(FIELDS)  # temp AR, temp sensor, hum AR, hum sensor, voc process, voc sensor, drift noise
_N_UNIFORM = 2  # burst arrival, burst size
_BLOCK = 256  # steps of draws fetched per device at a time (amortises the per-generator call cost)


def _device_stream(seed: int, name: str) -> np.random.Generator:
    # Keyed by name, not position: adding or reordering devices leaves each device's stream alone.
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(key,))))


def _ar1(tau_s: np.ndarray, std: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """AR(1) coefficient and innovation std giving stationary ``std`` and time constant ``tau_s``."""
    phi = np.exp(-dt / tau_s)
    return phi, std * np.sqrt(1.0 - phi**2)


def _ar2(tau_s: np.ndarray, period_s: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """AR(2) coefficients of a damped oscillation: poles ``r e^{+-iw}``."""
    r = np.exp(-dt / tau_s)
    w = 2.0 * np.pi * dt / period_s
    return 2.0 * r * np.cos(w), -(r**2)


class Simulator:
    """A fleet of simulated devices; see the module docstring for the signal model.

    ``clock`` (e.g. ``time.time``) makes it live: it may run faster than real time, from a
    ``start_ts`` in the past, but never ahead of that clock. Once the simulated time has caught up,
    :meth:`step` gives a step only when its time has come, one every ``interval`` seconds as real
    sensors do; an edge drops readings stamped ahead of its clock (``limits.max_future_s``).

    >>> now = 1_700_000_000.0 + 120.0
    >>> sim = Simulator(1, clock=lambda: now)
    >>> [len(sim.step()) for _ in range(4)]  # steps at +0, +60 and +120 s are due, +180 s is not yet
    [1, 1, 1, 0]
    >>> now += 60.0
    >>> [r["ts"] - 1_700_000_000.0 for r in sim.step()]
    [180.0]
    """

    def __init__(
        self,
        devices: int | Sequence[str] = 3,
        *,
        seed: int = 0,
        interval: float = 60.0,
        start_ts: float = 1_700_000_000.0,
        drifts: Sequence[DriftSpec] = (),
        clock: Callable[[], float] | None = None,
    ) -> None:
        if isinstance(devices, str):
            devices = [devices]  # one name, not a sequence of one-letter devices
        if isinstance(devices, int):
            if devices < 1:
                raise ValueError(f"need at least one device, got {devices}")
            self.devices: list[str] = [f"dev-{i:03d}" for i in range(devices)]
        else:
            self.devices = [str(d) for d in devices]
            if not self.devices or len(set(self.devices)) != len(self.devices):
                raise ValueError("device names must be a non-empty list without duplicates")
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.seed = seed
        self.interval = float(interval)
        self.start_ts = float(start_ts)
        self.clock = clock
        self._index = {d: i for i, d in enumerate(self.devices)}
        for spec in drifts:
            if spec.device not in self._index:
                raise ValueError(f"drift {spec.to_text()!r} names unknown device {spec.device!r}")
        self.drifts: list[DriftSpec] = sorted(drifts, key=lambda s: (s.at, self._index[s.device]))
        self._streams = [_device_stream(seed, d) for d in self.devices]
        self._init_params()
        self._init_drifts()
        self._seq = 0
        self._normals = np.empty((0, len(self.devices), _N_NORMAL))
        self._uniforms = np.empty((0, len(self.devices), _N_UNIFORM))
        self._pos = 0

    # -- set-up -------------------------------------------------------------------------------

    def _init_params(self) -> None:
        # Static per-device character, drawn first from each device's own stream.
        raw = np.stack([g.random(12) for g in self._streams])  # (n, 12) uniforms
        n, dt = len(self.devices), self.interval
        p: dict[str, np.ndarray] = {
            "temp_level": 19.0 + 4.0 * raw[:, 0],
            "temp_amp": 2.0 + 2.0 * raw[:, 1],
            "tz_hours": -1.5 + 3.0 * raw[:, 2],
            "hum_base": 38.0 + 14.0 * raw[:, 3],
            "hum_coupling": 1.5 + 1.0 * raw[:, 4],  # %RH lost per degree above the device's mean
            "voc_base": 80.0 + 120.0 * raw[:, 5],
            "voc_temp": 1.0 + 2.0 * raw[:, 6],  # off-gassing, ppb per degree
            "burst_size": 8.0 + 8.0 * raw[:, 7],  # mean kick; the response peaks ~2-3x higher
            "burst_rate_day": (1.5 + 1.5 * raw[:, 8]) / 3600.0,  # arrivals per second in day hours
        }
        p["burst_rate_night"] = p["burst_rate_day"] / 12.0
        p["temp_phi"], p["temp_innov"] = _ar1(np.full(n, 2700.0), np.full(n, 0.3), dt)
        p["hum_phi"], p["hum_innov"] = _ar1(np.full(n, 1800.0), np.full(n, 1.5), dt)
        p["voc_a1"], p["voc_a2"] = _ar2(900.0 + 600.0 * raw[:, 9], 2700.0 + 1800.0 * raw[:, 10], dt)
        p["voc_innov"] = np.full(n, 0.6)
        self._p = p
        self._sensor_std = {"temp_c": 0.05, "humidity": 0.3, "voc_ppb": 0.8}
        # Latent state.
        self._temp_ar = np.zeros(n)
        self._hum_ar = np.zeros(n)
        self._voc_x = np.zeros(n)
        self._voc_x_prev = np.zeros(n)
        self._last = {f: np.full(n, np.nan) for f in FIELDS}

    def _init_drifts(self) -> None:
        # Observation-level drifts are handled as small arrays over the drift table (vectorised per
        # kind); regime changes edit the dynamics parameters at their start (and end) step.
        self._table: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        for kind in ("level_shift", "calibration_drift", "gain_change", "stuck", "noise_burst"):
            for target in FIELDS:
                specs = [s for s in self.drifts if s.kind == kind and s.target == target]
                if not specs:
                    continue
                duration = [s.effective_duration for s in specs]
                self._table[(kind, target)] = {
                    "dev": np.array([self._index[s.device] for s in specs], dtype=np.intp),
                    "at": np.array([s.at for s in specs], dtype=float),
                    "end": np.array([s.end for s in specs], dtype=float),
                    "mag": np.array([s.effective_magnitude for s in specs]),
                    "dur": np.array([d if d is not None else 1 for d in duration], dtype=float),
                    "held": np.full(len(specs), np.nan),
                }
        # step -> [(drift number, starts?)]; a regime with a duration is undone when it ends.
        self._regime_events: dict[int, list[tuple[int, bool]]] = {}
        self._regime_saved: dict[int, dict[str, float]] = {}
        for k, spec in enumerate(self.drifts):
            if spec.kind == "regime_change":
                self._regime_events.setdefault(spec.at, []).append((k, True))
                if spec.effective_duration is not None:
                    self._regime_events.setdefault(spec.at + spec.effective_duration, []).append((k, False))

    def _regime(self, k: int, start: bool) -> None:
        spec = self.drifts[k]
        i, p, dt, mag = self._index[spec.device], self._p, self.interval, spec.effective_magnitude
        if not start:
            for name, value in self._regime_saved.pop(k, {}).items():
                p[name][i] = value
            return
        if spec.target == "voc_ppb":
            names = ["voc_base", "voc_a1", "voc_a2", "burst_rate_day", "burst_rate_night", "voc_innov"]
        elif spec.target == "temp_c":
            names = ["temp_level", "temp_amp", "temp_phi", "temp_innov"]
        else:
            names = ["hum_base", "hum_coupling", "hum_phi", "hum_innov"]
        self._regime_saved[k] = {name: float(p[name][i]) for name in names}
        if spec.target == "voc_ppb":
            # A higher level and bursts that ring (a 10-minute oscillation, lightly damped) instead of
            # settling slowly. Arrivals and noise stay as they were: the new regime is as learnable as
            # the old one, so a model retrained on it can return near the old error level, while the
            # old model keeps forecasting the old dynamics and misses by several times more.
            a1, a2 = _ar2(np.array([1800.0]), np.array([600.0]), dt)
            p["voc_base"][i] += mag
            p["voc_a1"][i], p["voc_a2"][i] = a1[0], a2[0]
        elif spec.target == "temp_c":
            phi, innov = _ar1(np.array([600.0]), np.array([0.8]), dt)
            p["temp_level"][i] += mag
            p["temp_amp"][i] *= 1.5
            p["temp_phi"][i], p["temp_innov"][i] = phi[0], innov[0]
        else:
            phi, innov = _ar1(np.array([600.0]), np.array([4.0]), dt)
            p["hum_base"][i] += mag
            p["hum_coupling"][i] *= 2.0
            p["hum_phi"][i], p["hum_innov"][i] = phi[0], innov[0]

    def _draws(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pos >= len(self._normals):
            # Each device fills its block from its own stream, so its draws never depend on others.
            self._normals = np.stack([g.standard_normal((_BLOCK, _N_NORMAL)) for g in self._streams], axis=1)
            self._uniforms = np.stack([g.random((_BLOCK, _N_UNIFORM)) for g in self._streams], axis=1)
            self._pos = 0
        z, u = self._normals[self._pos], self._uniforms[self._pos]
        self._pos += 1
        return z, u

    # -- simulation ---------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The ``seq`` of the next reading."""
        return self._seq

    def ts_of(self, seq: int) -> float:
        """Timestamp of reading ``seq`` (shared by all devices)."""
        return self.start_ts + seq * self.interval

    def _advance(self) -> dict[str, np.ndarray]:
        """Compute the next reading of every device as arrays ``{field: (n,)}``."""
        seq = self._seq
        for k, start in self._regime_events.get(seq, ()):
            self._regime(k, start)
        p, dt = self._p, self.interval
        z, u = self._draws()
        ts = self.ts_of(seq)
        hour = (ts / 3600.0 + p["tz_hours"]) % 24.0

        self._temp_ar = p["temp_phi"] * self._temp_ar + p["temp_innov"] * z[:, 0]
        temp_dev = p["temp_amp"] * np.cos(2.0 * np.pi * (hour - 15.0) / 24.0) + self._temp_ar
        self._hum_ar = p["hum_phi"] * self._hum_ar + p["hum_innov"] * z[:, 2]
        hum_dev = -p["hum_coupling"] * temp_dev + self._hum_ar

        day = (hour >= 8.0) & (hour < 19.0)
        rate = np.where(day, p["burst_rate_day"], p["burst_rate_night"])
        kick = np.where(u[:, 0] < -np.expm1(-rate * dt), p["burst_size"] * -np.log1p(-u[:, 1]), 0.0)
        x = p["voc_a1"] * self._voc_x + p["voc_a2"] * self._voc_x_prev + p["voc_innov"] * z[:, 4] + kick
        self._voc_x_prev, self._voc_x = self._voc_x, x
        voc_dev = p["voc_temp"] * temp_dev + x

        base = {"temp_c": p["temp_level"], "humidity": p["hum_base"], "voc_ppb": p["voc_base"]}
        dev = {"temp_c": temp_dev, "humidity": hum_dev, "voc_ppb": voc_dev}
        out: dict[str, np.ndarray] = {}
        for k, field in enumerate(FIELDS):
            noise = self._sensor_std[field] * z[:, 2 * k + 1]
            value = self._observe(field, base[field], dev[field] + noise, z[:, 6 + k], seq)
            if field == "humidity":
                value = np.clip(value, 0.0, 100.0)
            elif field == "voc_ppb":
                value = np.maximum(value, 0.0)
            value = self._hold_stuck(field, np.round(value, 2), seq)
            self._last[field] = value
            out[field] = value
        self._seq += 1
        return out

    def _active(self, kind: str, target: str, seq: int) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        table = self._table.get((kind, target))
        if table is None:
            return None
        on = (table["at"] <= seq) & (seq < table["end"])
        return (table, on) if on.any() else None

    def _observe(self, field: str, base: np.ndarray, dev: np.ndarray, z: np.ndarray, seq: int) -> np.ndarray:
        """Apply gain, offset and noise drifts to ``base + dev`` (the clean reading)."""
        found = self._active("gain_change", field, seq)
        if found is not None:
            table, on = found
            gain = np.ones_like(dev)
            np.multiply.at(gain, table["dev"][on], table["mag"][on])
            dev = gain * dev
        value = base + dev
        found = self._active("level_shift", field, seq)
        if found is not None:
            table, on = found
            value = value.copy()
            np.add.at(value, table["dev"][on], table["mag"][on])
        found = self._active("calibration_drift", field, seq)
        if found is not None:
            table, on = found
            frac = np.minimum(1.0, (seq - table["at"][on] + 1.0) / table["dur"][on])
            value = value.copy()
            np.add.at(value, table["dev"][on], table["mag"][on] * frac)
        found = self._active("noise_burst", field, seq)
        if found is not None:
            table, on = found
            var = np.zeros_like(value)
            np.add.at(var, table["dev"][on], table["mag"][on] ** 2)
            value = value + np.sqrt(var) * z
        return value

    def _hold_stuck(self, field: str, value: np.ndarray, seq: int) -> np.ndarray:
        found = self._active("stuck", field, seq)
        if found is None:
            return value
        table, on = found
        starting = on & np.isnan(table["held"])
        if starting.any():
            # A stuck sensor repeats its last good reading (or the current one at seq 0).
            last = self._last[field][table["dev"][starting]]
            table["held"][starting] = np.where(np.isnan(last), value[table["dev"][starting]], last)
        value = value.copy()
        value[table["dev"][on]] = table["held"][on]
        return value

    def step(self) -> list[dict[str, Any]]:
        """One telemetry payload per device for the next step (``seq`` counts from 0 per device).

        With a ``clock``, nothing (``[]``) while the next step's time is still ahead of it.
        """
        seq, ts = self._seq, self.ts_of(self._seq)
        if self.clock is not None and ts > self.clock():
            return []
        out = self._advance()
        return [
            {"device": d, "ts": ts, "seq": seq, "temp_c": t, "humidity": h, "voc_ppb": v}
            for d, t, h, v in zip(
                self.devices,
                out["temp_c"].tolist(),
                out["humidity"].tolist(),
                out["voc_ppb"].tolist(),
                strict=True,
            )
        ]

    def frame(self, steps: int) -> pd.DataFrame:
        """The next ``steps`` steps in long format, rows ordered by step then device."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        n, first = len(self.devices), self._seq
        values = {f: np.empty((steps, n)) for f in FIELDS}
        for k in range(steps):
            for field, arr in self._advance().items():
                values[field][k] = arr
        seqs = np.repeat(np.arange(first, first + steps, dtype=np.int64), n)
        return pd.DataFrame(
            {
                "device": np.tile(np.array(self.devices, dtype=object), steps),
                "ts": self.start_ts + seqs * self.interval,
                "seq": seqs,
                **{f: values[f].reshape(-1) for f in FIELDS},
            }
        )

    def onsets(self) -> list[dict[str, Any]]:
        """Ground truth of every scheduled drift, ordered by onset then device."""
        return [
            {
                "device": s.device,
                "target": s.target,
                "kind": s.kind,
                "at_seq": s.at,
                "at_ts": self.ts_of(s.at),
            }
            for s in self.drifts
        ]

    def write_csv(self, path: str | Path, steps: int) -> Path:
        """Write :meth:`frame` of ``steps`` steps to ``path`` and the onsets inside it to
        ``<path>.onsets.json``; returns ``path``."""
        path = Path(path)
        first = self._seq
        self.frame(steps).to_csv(path, index=False)
        inside = [o for o in self.onsets() if first <= o["at_seq"] < first + steps]
        Path(f"{path}.onsets.json").write_text(json.dumps(inside, indent=1) + "\n")
        return path
