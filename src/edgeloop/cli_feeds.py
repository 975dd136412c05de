"""``edgeloop simulate`` and ``edgeloop replay``: telemetry published to the broker, from simulated
devices or from a recording.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from edgeloop.cli_support import (
    BrokerOpt,
    ConfigOpt,
    command_settings,
    examples,
    fail,
    stop_on_signals,
)
from edgeloop.errors import EdgeloopError

feeds_app = typer.Typer()


@feeds_app.command(
    epilog=examples(
        "edgeloop simulate --devices 5 --rate 2",
        "edgeloop simulate --drift dev-001:level_shift@3000:target=temp_c,magnitude=4",
        "edgeloop simulate --steps 9000 --csv build/sim.csv",
        "edgeloop simulate --broker mqtt://nats-host:1883 --mqtt-version 3.1.1   # NATS's MQTT listener",
    )
)
def simulate(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    devices: Annotated[int, typer.Option(min=1, help="Number of simulated devices.")] = 3,
    rate: Annotated[
        float, typer.Option(min=0, help="Readings per second per device (0: as fast as possible).")
    ] = 10.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    interval: Annotated[float, typer.Option(min=0.001, help="Simulated seconds between readings.")] = 60.0,
    drift: Annotated[
        list[str] | None,
        typer.Option(help="Drift scenario DEVICE:KIND@STEP[:target=T,magnitude=X,duration=N]; repeatable."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many readings per device.")
    ] = None,
    csv: Annotated[
        Path | None, typer.Option(help="Write STEPS readings to this CSV (+ onsets JSON) and exit.")
    ] = None,
    mqtt_version: Annotated[
        str,
        typer.Option(
            "--mqtt-version",
            help="MQTT protocol version: 5, or 3.1.1 (what NATS's MQTT listener accepts).",
        ),
    ] = "5",
) -> None:
    """Simulate devices publishing telemetry (diurnal temperature, humidity, VOC bursts) with drift.

    All devices publish over one connection, as broker.username: on a broker that authorises each
    device (deploy/nats/users.conf) give it a user that may publish every device's telemetry.

    Simulated time starts in the past (2023-11-14) and runs --rate x --interval times faster than real
    time until it reaches the wall clock; from then on one reading per --interval seconds, so no
    timestamp is ever in the future.
    """
    from edgeloop.service.publisher import SimulatorPublisher
    from edgeloop.telemetry.simulator import Simulator, parse_drift

    if mqtt_version not in ("5", "3.1.1"):
        fail(f"--mqtt-version: {mqtt_version!r} is not 5 or 3.1.1")
    settings = command_settings(config, {"broker.url": ("--broker", broker)})
    try:
        specs = [parse_drift(text) for text in drift or []]
        # Live, the simulated clock runs --rate x --interval times faster than real time from a start in
        # the past; the wall clock keeps it from overtaking real time (the edge drops readings from
        # the future as ts_out_of_window).
        clock = None if csv is not None else time.time
        sim = Simulator(devices, seed=seed, interval=interval, drifts=specs, clock=clock)
    except ValueError as exc:
        fail(f"--drift: {exc}" if drift else str(exc))
    if csv is not None:
        try:
            path = sim.write_csv(csv, steps or 10_000)
        except OSError as exc:
            fail(f"--csv {csv}: {exc.strerror or exc}")
        typer.echo(f"wrote {path} and {path}.onsets.json")
        return
    publisher = SimulatorPublisher(settings, sim, rate=rate or None, steps=steps, protocol=mqtt_version)
    stop_on_signals(publisher._stop.set)
    typer.echo(f"publishing {devices} devices at {rate:g}/s to {settings.broker.url} (Ctrl-C stops)")
    try:
        publisher.run()
    except EdgeloopError as exc:
        hint = ""
        if mqtt_version == "5" and "protocol version" in str(exc).lower():
            hint = (
                " This broker does not speak MQTT 5 (NATS's MQTT listener speaks 3.1.1): "
                "add --mqtt-version 3.1.1"
            )
        fail(f"{exc}{hint}", 1)
    typer.echo(f"published {publisher.published} readings")


@feeds_app.command(
    epilog=examples(
        "edgeloop replay air_quality --rate 50",
        "edgeloop replay my.csv --column temperature=temp_c --column rh=humidity --device lab-1",
    )
)
def replay(
    file: Annotated[str, typer.Argument(help="CSV file, or a known recording: air_quality, occupancy, nab.")],
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    column: Annotated[
        list[str] | None,
        typer.Option(help="SOURCE=NAME mapping of a column to a telemetry field; repeatable."),
    ] = None,
    ts_column: Annotated[str, typer.Option(help="Timestamp column of a plain CSV.")] = "ts",
    device: Annotated[str | None, typer.Option(help="Device id for the replayed rows.")] = None,
    rate: Annotated[float, typer.Option(min=0, help="Rows per second (0: as fast as possible).")] = 100.0,
    limit: Annotated[int | None, typer.Option(min=1, help="Replay at most this many rows.")] = None,
) -> None:
    """Publish a real recording as telemetry, row by row, with a column mapping."""
    from edgeloop.service.publisher import replay as do_replay
    from edgeloop.telemetry import recordings

    settings = command_settings(config, {"broker.url": ("--broker", broker)})
    defaults = {
        "air_quality": {"temp_c": "temp_c", "humidity": "humidity", "pt08_s2_nmhc": "voc_ppb"},
        "occupancy": {"temp_c": "temp_c", "humidity": "humidity", "co2": "voc_ppb"},
        "nab": {"value": "temp_c"},
    }
    try:
        pairs = [item.split("=", 1) for item in column or []]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("--column takes SOURCE=NAME")
        if file in recordings.KNOWN_RECORDINGS:
            frame = recordings.known_recording(file)
            mapping = dict(pairs) if pairs else defaults[file]
        else:
            mapping = dict(pairs)
            if not mapping:
                raise ValueError("a plain CSV needs at least one --column SOURCE=NAME")
            frame = recordings.load_csv(file, ts_column=ts_column, columns={k: k for k in mapping})
    except (ValueError, OSError, KeyError) as exc:
        fail(str(exc))
    if limit:
        frame = frame.head(limit)
    stop = threading.Event()
    stop_on_signals(stop.set)
    name = device or Path(file).stem
    try:
        sent = do_replay(settings, frame, columns=mapping, device=name, rate=rate or None, stop=stop)
    except EdgeloopError as exc:
        fail(str(exc), 1)
    typer.echo(f"replayed {sent} rows of {file} as device {name}")
