"""Telemetry parsing per reading on the bench's payloads: the parser, and the two JSON decoders alone.

The payloads are the load generator's (simulated readings of 1,000 devices, with its ``sent`` field),
each on its device's topic; every topic is seen once before timing, as on a live edge. Run::

    PYTHONPATH=src python benchmarks/bench_parse.py [--readings 20000]

Prints microseconds per reading (best of ``--rounds``): ``parser`` (TelemetryParser.parse, msgspec fast path),
``parser, orjson only`` (the full validating path), and each decoder alone (``orjson.loads`` into a
dict, msgspec into the parser's typed struct).
"""

from __future__ import annotations

import argparse
import time
import timeit

import msgspec
import orjson

from edgeloop.config import Settings
from edgeloop.telemetry.parser import parser_from_settings
from edgeloop.telemetry.simulator import Simulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9, help="Timed rounds; the best of each is shown")
    args = parser.parse_args()
    sim = Simulator([f"dev-{i:04d}" for i in range(1000)], seed=0)
    payloads: list[tuple[str, bytes]] = []
    while len(payloads) < args.readings:
        for p in sim.step():
            p["sent"] = time.time()
            payloads.append((f"edgeloop/site-a/{p['device']}/telemetry", orjson.dumps(p)))
    settings = Settings()
    fast = parser_from_settings(settings)
    full = parser_from_settings(settings)
    full._typed = None
    for topic, payload in payloads[:1000]:
        fast.parse(topic, payload)
        full.parse(topic, payload)
    targets = settings.model.targets
    struct = msgspec.defstruct(
        "Reading", [(n, float | str | None, None) for n in ("device", "ts", "seq", *targets)], gc=False
    )
    decoder = msgspec.json.Decoder(struct)
    cases = {
        "parser": lambda: [fast.parse(t, p) for t, p in payloads],
        "parser, orjson only": lambda: [full.parse(t, p) for t, p in payloads],
        "orjson.loads": lambda: [orjson.loads(p) for _, p in payloads],
        "msgspec struct": lambda: [decoder.decode(p) for _, p in payloads],
    }
    print(f"{len(payloads)} payloads like {payloads[0][1].decode()}")
    # Rounds interleave the cases, so a busy spell of the machine does not favour one of them.
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.rounds):
        for name, run in cases.items():
            best[name] = min(best[name], timeit.timeit(run, number=1))
    for name, seconds in best.items():
        print(f"{name:>20}: {seconds / len(payloads) * 1e6:6.2f} us per reading")


if __name__ == "__main__":
    main()
