"""The engine's readings/s with each model kind serving, ``rls`` (learning after every reading) included.

The pure engine, as the live edge builds it and with the model loaded as the edge loads it, fed
simulated telemetry in batches (no broker, no store): what the hot path costs per reading. Run on an
idle machine::

    PYTHONPATH=src python benchmarks/bench_engine_online.py [--devices 1000] [--steps 60] [--batch 500]

Prints the machine, then one line per model kind: readings per CPU second of the process (best of
``--repeat`` runs) and the cost relative to the first kind; then River's ARF (the ``river-arf``
reference of ``edgeloop evaluate``) on ``--arf-readings`` readings of one device, measured the same
way, and how many times faster the engine is with each online kind (``rls``, ``lgbm-rls``) serving
(the issue asks for at least 50x).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from edgeloop.config import Settings
from edgeloop.engine.features import training_pairs
from edgeloop.models.forecasters import forecaster_from_text, make_forecaster
from edgeloop.models.modelfile import LoadedModel
from edgeloop.service.edge import build_engine
from edgeloop.telemetry.schema import Telemetry
from edgeloop.telemetry.simulator import Simulator


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}; {os.cpu_count()} CPUs; load {load:.2f}; Python {platform.python_version()}"


def run(kind: str, frames: list[list[Telemetry]], train: np.ndarray, batch: int) -> float:
    settings = Settings()
    engine = build_engine(settings, auto_train=False)
    x, y = training_pairs(train, settings.model.lags)
    trained = make_forecaster(kind, settings.model.lags, rounds=200).fit(x, y)
    # Served as the edge serves it: loaded from its saved text (LightGBM through its C library).
    forecaster = forecaster_from_text(kind, trained.to_text(), settings.model.lags)
    engine.install("voc_ppb", LoadedModel("voc_ppb:v1", forecaster, {}), probation=False)
    messages = [m for frame in frames for m in frame]
    engine.process(messages[: 5 * batch])  # warm-up: every device has a full lag window
    rest = messages[5 * batch :]
    # CPU time of this process (every thread): on a shared machine wall time measures the neighbours.
    started = time.process_time()
    for i in range(0, len(rest), batch):
        engine.process(rest[i : i + batch])
    return len(rest) / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=500, help="Messages per engine.process call")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kinds", default="persistence,linear,lgbm-delta,rls,lgbm-rls")
    parser.add_argument("--arf-readings", type=int, default=2000, help="0: skip River's ARF")
    args = parser.parse_args()
    sim = Simulator([f"dev-{i:04d}" for i in range(args.devices)], seed=0)
    frame = sim.frame(args.steps)
    frames = [
        [Telemetry(str(r.device), float(r.ts), i, {"voc_ppb": float(r.voc_ppb)}) for r in group.itertuples()]
        for i, (_, group) in enumerate(frame.groupby("ts", sort=True))
    ]
    train = Simulator(["train"], seed=1).frame(3000)["voc_ppb"].to_numpy(dtype=np.float64)
    print(f"machine: {machine()}")
    print(f"engine: {args.devices} devices x {args.steps} steps, {args.batch} messages per batch")
    base = None
    rates = {}
    for kind in args.kinds.split(","):
        rate = rates[kind] = max(run(kind, frames, train, args.batch) for _ in range(args.repeat))
        base = base or rate
        print(f"{kind:>12}: {rate:10,.0f} readings/s  ({rate / base:.2f} x {args.kinds.split(',')[0]})")
    if args.arf_readings > 0:
        arf = max(arf_rate(train, args.arf_readings) for _ in range(args.repeat))
        print(f"{'river-arf':>12}: {arf:10,.0f} readings/s  (forest.ARFRegressor, 10 trees, one device)")
        for kind in ("rls", "lgbm-rls"):
            if kind in rates:
                print(f"engine with {kind} serving / ARF: {rates[kind] / arf:,.0f} x")


def arf_rate(train: np.ndarray, readings: int) -> float:
    from edgeloop.evaluate.learner import arf_forecasts

    values = train[: readings + 6]
    started = time.process_time()
    arf_forecasts(values, start=0, lags=5)
    return (len(values) - 5) / (time.process_time() - started)


if __name__ == "__main__":
    main()
