"""The ``edgeloop bench`` command: its options, the run, the readable report and the JSON file.

Mount with ``app.command("bench")(bench)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgeloop.errors import EdgeloopError


def bench(
    devices: Annotated[int, typer.Option(help="Simulated devices publishing round-robin.", min=1)] = 1000,
    qos: Annotated[
        list[int] | None,
        typer.Option(help="QoS level(s) to measure, in order; repeatable. Default: 1 then 0.", min=0, max=1),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            help="Use this broker (mqtt://host:port) instead of a private mosquitto on a free port; or"
            " 'nats': after the (private) Mosquitto windows, measure NATS JetStream in the same run"
            " (private nats-server from deploy/nats: ceilings, one edge, the aggregate of --nats-replicas)."
        ),
    ] = None,
    nats_replicas: Annotated[
        list[int] | None,
        typer.Option(
            help="--broker nats: edge replica counts R to measure; repeatable. Default: 1, 2, 3.", min=1
        ),
    ] = None,
    nats_load: Annotated[
        str,
        typer.Option(
            help="--broker nats: what feeds the NATS windows: 'nats' (nats-py core publishes; cheap, so"
            " the edge is measured, not the generator) or 'mqtt' (paho, MQTT 3.1.1 QoS 1 to the NATS"
            " MQTT listener, as devices). The MQTT-fed core ceiling is measured either way."
        ),
    ] = "nats",
    nats_partitions: Annotated[
        int, typer.Option(help="--broker nats: device partitions of the server's mapping.", min=1)
    ] = 6,
    overload_factor: Annotated[
        float,
        typer.Option(help="--broker nats: overload window at this multiple of the sustained rate.", min=1),
    ] = 1.5,
    overload_seconds: Annotated[
        float, typer.Option(help="--broker nats: length of the overload window in seconds.", min=1)
    ] = 6.0,
    rate: Annotated[
        float | None,
        typer.Option(help="Fixed mode: measure only at this rate (msg/s, total); no ceiling, max or search."),
    ] = None,
    during_retrain: Annotated[
        bool,
        typer.Option(
            "--during-retrain",
            help="Also retrain (edgeloop train on the edge's store) and swap mid-run under load at"
            " --retrain-rate, and report that window.",
        ),
    ] = False,
    retrain_rate: Annotated[
        float, typer.Option(help="Load (msg/s) during the retrain window.", min=1)
    ] = 5000.0,
    latency_rate: Annotated[float, typer.Option(help="Rate (msg/s) of the latency window.", min=1)] = 5000.0,
    latency_seconds: Annotated[
        float, typer.Option(help="Length of the latency (or --rate) window in seconds.", min=1)
    ] = 8.0,
    step_seconds: Annotated[
        float, typer.Option(help="Length of each fixed-rate window of the sustained-rate search.", min=1)
    ] = 5.0,
    steps: Annotated[
        int, typer.Option(help="Most fixed-rate windows in the sustained-rate search.", min=1)
    ] = 4,
    max_seconds: Annotated[
        float, typer.Option(help="Length of the closed-loop (as fast as answered) window.", min=1)
    ] = 5.0,
    ceiling_seconds: Annotated[
        float, typer.Option(help="Length of each do-nothing-subscriber ceiling window.", min=1)
    ] = 4.0,
    warmup_rate: Annotated[
        float, typer.Option(help="Load (msg/s) while the edge trains its first model.", min=1)
    ] = 5000.0,
    window: Annotated[
        int, typer.Option(help="Closed loop: most messages published but not yet answered.", min=10)
    ] = 2000,
    no_model: Annotated[
        bool,
        typer.Option("--no-model", help="Do not train a first model: the edge serves persistence (quicker)."),
    ] = False,
    candidates: Annotated[
        str | None,
        typer.Option(
            help="The edge's model.candidates, comma-separated (default: the default list), e.g."
            " persistence,linear,lgbm-level,lgbm-delta,rls to measure without lgbm-rls."
        ),
    ] = None,
    mlflow: Annotated[
        bool, typer.Option(help="Let retrains log to MLflow (slower; off by default).")
    ] = False,
    reliability: Annotated[
        bool,
        typer.Option(
            help="--no-reliability: run the edge without its delivery guarantees (QoS 1 acked on receipt,"
            " no state snapshots, unbounded inbox) to measure what they cost; never for production."
        ),
    ] = True,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Write the JSON results here.")] = Path("build/bench.json"),
    keep: Annotated[bool, typer.Option(help="Keep the temp dir (edge logs, configs, stores).")] = False,
) -> None:
    """Benchmark the live edge end to end through a real broker: ceiling, throughput, latency, loss.

    Examples:

        edgeloop bench --out build/bench.json            # Mosquitto, QoS 1 then 0 (~2 min)

        edgeloop bench --broker nats --qos 1             # and NATS JetStream: 1, 2 and 3 edges

        edgeloop bench --broker nats --qos 1 --no-model --nats-replicas 1 --steps 2   # quicker
    """
    from edgeloop.bench.options import BenchOptions
    from edgeloop.bench.report import format_report
    from edgeloop.bench.run import Bench

    nats = broker == "nats"
    if nats_load not in ("mqtt", "nats"):
        typer.echo(f"error: --nats-load must be 'mqtt' or 'nats', got {nats_load!r}", err=True)
        raise typer.Exit(2)
    options = BenchOptions(
        devices=devices,
        qos=list(qos) if qos else [1, 0],
        broker=None if nats else broker,
        nats=nats,
        nats_replicas=list(nats_replicas) if nats_replicas else [1, 2, 3],
        nats_partitions=nats_partitions,
        nats_load=nats_load,
        overload_factor=overload_factor,
        overload_seconds=overload_seconds,
        rate=rate,
        ceiling_seconds=ceiling_seconds,
        max_seconds=max_seconds,
        step_seconds=step_seconds,
        steps=steps,
        latency_rate=latency_rate,
        latency_seconds=latency_seconds,
        during_retrain=during_retrain,
        retrain_rate=retrain_rate,
        warmup_rate=warmup_rate,
        train_model=not no_model,
        candidates=[c.strip() for c in candidates.split(",") if c.strip()] if candidates else None,
        window=window,
        seed=seed,
        mlflow=mlflow,
        reliability=reliability,
        keep=keep,
    )
    try:
        result = Bench(options, progress=lambda text: typer.echo(text, err=True)).run()
    except EdgeloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    typer.echo(format_report(result))
    typer.echo(f"\nJSON: {out}")
