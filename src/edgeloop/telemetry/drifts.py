"""Scheduled drift of simulated devices: the kinds, their default sizes, :class:`DriftSpec` and the
``device:kind@step[:target=NAME,magnitude=X,duration=N]`` text form (:func:`parse_drift`) that
``edgeloop simulate --drift``, ``edgeloop demo`` and ``edgeloop evaluate`` take.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

FIELDS = ("temp_c", "humidity", "voc_ppb")

DRIFT_KINDS = ("level_shift", "calibration_drift", "gain_change", "stuck", "noise_burst", "regime_change")

# Defaults sized to be clearly visible against each signal's natural variation (std of roughly
# 2 C, 4 %RH and 30-60 ppb) without leaving the plausible ranges.
_DEFAULT_MAGNITUDE: dict[str, dict[str, float]] = {
    "level_shift": {"temp_c": 3.0, "humidity": 10.0, "voc_ppb": 80.0},
    "calibration_drift": {"temp_c": 3.0, "humidity": 10.0, "voc_ppb": 80.0},
    "gain_change": {"temp_c": 2.0, "humidity": 2.0, "voc_ppb": 2.0},
    "stuck": {"temp_c": 0.0, "humidity": 0.0, "voc_ppb": 0.0},
    "noise_burst": {"temp_c": 1.0, "humidity": 5.0, "voc_ppb": 30.0},
    "regime_change": {"temp_c": 4.0, "humidity": 15.0, "voc_ppb": 100.0},
}
# None: permanent. calibration_drift: steps of the linear ramp; the offset then stays.
_DEFAULT_DURATION: dict[str, int | None] = {
    "level_shift": None,
    "calibration_drift": 720,
    "gain_change": None,
    "stuck": 120,
    "noise_burst": 120,
    "regime_change": None,
}

_DRIFT_RE = re.compile(r"^(?P<device>[^:@\s]+):(?P<kind>\w+)@(?P<at>-?\d+)(?::(?P<opts>.*))?$")
_DRIFT_FORMAT = "device:kind@step[:target=NAME,magnitude=X,duration=N]"


@dataclass(frozen=True)
class DriftSpec:
    """One scheduled drift: ``kind`` hits ``target`` of ``device`` from reading ``at`` on.

    ``magnitude`` and ``duration`` default per kind and target (:attr:`effective_magnitude`,
    :attr:`effective_duration`); ``duration`` ``None`` means the drift is permanent.

    - ``level_shift``: add ``magnitude``.
    - ``calibration_drift``: an offset growing linearly to ``magnitude`` over ``duration`` steps, then held.
    - ``gain_change``: deviations from the device's baseline multiplied by ``magnitude``.
    - ``stuck``: the sensor repeats its last reading for ``duration`` steps (``magnitude`` unused).
    - ``noise_burst``: extra Gaussian noise of std ``magnitude`` for ``duration`` steps.
    - ``regime_change``: level moves by ``magnitude`` and the dynamics change with it (VOC: faster,
      differently oscillating and three times more frequent bursts; temperature and humidity:
      stronger, faster fluctuations).

    >>> DriftSpec("dev-001", "stuck", 10).effective_duration
    120
    >>> DriftSpec("dev-001", "melt", 10)
    Traceback (most recent call last):
    ...
    ValueError: unknown drift kind 'melt'; expected one of level_shift, calibration_drift, ...
    """

    device: str
    kind: str
    at: int
    target: str = "voc_ppb"
    magnitude: float | None = None
    duration: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {self.kind!r}; expected one of {', '.join(DRIFT_KINDS)}")
        if self.target not in FIELDS:
            raise ValueError(f"unknown drift target {self.target!r}; expected one of {', '.join(FIELDS)}")
        if not self.device:
            raise ValueError("drift device must not be empty")
        if isinstance(self.at, bool) or not isinstance(self.at, int) or self.at < 0:
            raise ValueError(f"drift step 'at' must be an integer >= 0, got {self.at!r}")
        if self.duration is not None and (isinstance(self.duration, bool) or self.duration < 1):
            raise ValueError(f"drift duration must be >= 1 step, got {self.duration!r}")
        if self.magnitude is not None and not math.isfinite(self.magnitude):
            raise ValueError(f"drift magnitude must be finite, got {self.magnitude!r}")

    @property
    def effective_magnitude(self) -> float:
        if self.magnitude is not None:
            return float(self.magnitude)
        return _DEFAULT_MAGNITUDE[self.kind][self.target]

    @property
    def effective_duration(self) -> int | None:
        return self.duration if self.duration is not None else _DEFAULT_DURATION[self.kind]

    @property
    def end(self) -> float:
        """First step no longer affected (infinite if permanent; calibration offsets stay)."""
        duration = self.effective_duration
        if duration is None or self.kind == "calibration_drift":
            return math.inf
        return self.at + duration

    def to_text(self) -> str:
        """The :func:`parse_drift` form of this spec."""
        opts = [f"target={self.target}"] if self.target != "voc_ppb" else []
        if self.magnitude is not None:
            opts.append(f"magnitude={self.magnitude:g}")
        if self.duration is not None:
            opts.append(f"duration={self.duration}")
        return f"{self.device}:{self.kind}@{self.at}" + (":" + ",".join(opts) if opts else "")


def parse_drift(text: str) -> DriftSpec:
    """Parse ``device:kind@step[:target=NAME,magnitude=X,duration=N]``.

    >>> d = parse_drift("dev-003:regime_change@3000")
    >>> (d.device, d.kind, d.at, d.target, d.magnitude, d.duration)
    ('dev-003', 'regime_change', 3000, 'voc_ppb', None, None)
    >>> parse_drift("dev-1:noise_burst@5:target=humidity,magnitude=5,duration=200").to_text()
    'dev-1:noise_burst@5:target=humidity,magnitude=5,duration=200'
    >>> parse_drift("dev-1@5")
    Traceback (most recent call last):
    ...
    ValueError: bad drift 'dev-1@5': expected device:kind@step[:target=NAME,magnitude=X,duration=N]
    """
    match = _DRIFT_RE.match(text.strip())
    if match is None:
        raise ValueError(f"bad drift {text!r}: expected {_DRIFT_FORMAT}")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (match["opts"] or "").split(",")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not value:
            raise ValueError(f"bad drift {text!r}: option {item!r} is not key=value")
        try:
            if key == "target":
                kwargs["target"] = value
            elif key == "magnitude":
                kwargs["magnitude"] = float(value)
            elif key == "duration":
                kwargs["duration"] = int(value)
            else:
                raise ValueError(f"bad drift {text!r}: unknown option {key!r} (target, magnitude, duration)")
        except ValueError as exc:
            if str(exc).startswith("bad drift"):
                raise
            raise ValueError(f"bad drift {text!r}: {key}={value!r} is not a number") from None
    try:
        return DriftSpec(match["device"], match["kind"], int(match["at"]), **kwargs)
    except ValueError as exc:
        raise ValueError(f"bad drift {text!r}: {exc}") from None
