"""The ``edgeloop`` command line (Typer): every command has ``--help`` with examples.

User errors (a bad flag, a missing file, an unknown version) end in one ``error:`` line and a
non-zero exit, never a traceback. Heavy dependencies (pandas, scikit-learn, MLflow, Streamlit,
matplotlib) are imported inside the commands that need them, so ``edgeloop edge`` stays small.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Annotated

import typer
import yaml

from edgeloop.cli_models import models_app
from edgeloop.cli_support import (
    DATA_DIR_HELP,
    BrokerOpt,
    ConfigOpt,
    DataDirOpt,
    command_settings,
    examples,
    fail,
    forward_signals,
    print_version,
    run_child,
    stop_on_signals,
)
from edgeloop.errors import EdgeloopError

app = typer.Typer(
    help="edgeloop: forecast IoT telemetry on the edge, detect drift, retrain, validate and hot-swap models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    epilog=examples("edgeloop demo", "edgeloop edge -c edge.yaml", "edgeloop models list"),
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="Keys that sign champions distributed over the bus.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=print_version, is_eager=True),
    ] = False,
) -> None:
    """edgeloop: forecast IoT telemetry on the edge, detect drift, retrain, validate and hot-swap models."""


@config_app.command(
    "show", epilog=examples("edgeloop config show -c edge.yaml", "edgeloop config show --json")
)
def config_show(
    config: ConfigOpt = None, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Print the effective config (defaults < YAML < env) with secrets masked."""
    data = command_settings(config).masked()
    typer.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))


@app.command(
    epilog=examples(
        "edgeloop edge -c edge.yaml",
        "edgeloop edge --broker mqtts://broker.local:8883 --data-dir /var/lib/edgeloop",
    )
)
def edge(config: ConfigOpt = None, data_dir: DataDirOpt = None, broker: BrokerOpt = None) -> None:
    """Run the edge inference service: subscribe, forecast, publish, watch drift, retrain, hot-swap."""
    from edgeloop.service.edge import EdgeService

    settings = command_settings(
        config, {"data_dir": ("--data-dir", data_dir), "broker.url": ("--broker", broker)}
    )
    try:
        service = EdgeService(settings)
        stop_on_signals(lambda: service._stop.set())
        service.run()
    except EdgeloopError as exc:
        fail(str(exc), 1)


@app.command(
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
    """
    from edgeloop.service.publisher import SimulatorPublisher
    from edgeloop.telemetry.simulator import Simulator, parse_drift

    if mqtt_version not in ("5", "3.1.1"):
        fail(f"--mqtt-version: {mqtt_version!r} is not 5 or 3.1.1")
    settings = command_settings(config, {"broker.url": ("--broker", broker)})
    try:
        specs = [parse_drift(text) for text in drift or []]
        sim = Simulator(devices, seed=seed, interval=interval, drifts=specs)
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


@app.command(
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


@app.command(epilog=examples("edgeloop train", "edgeloop train --scope voc_ppb@dev-001 --no-mlflow"))
def train(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(help="Scope to train: a target (fleet model) or TARGET@DEVICE. Repeatable."),
    ] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")] = False,
) -> None:
    """Train candidates on the stored readings; report them beside the naive baselines; promote if better."""
    from edgeloop.adapters.store import store_exists
    from edgeloop.registry.tracking import Tracker
    from edgeloop.retrain.admin import decision_publisher, decision_signer, record_events
    from edgeloop.retrain.job import run_retrain
    from edgeloop.telemetry.schema import Event

    settings = command_settings(config, {"data_dir": ("--data-dir", data_dir)}, need_data=True)
    if not store_exists(settings.store_location):
        fail(f"no store at {settings.store_path}: run `edgeloop edge` (or the demo) first")
    try:
        signer = decision_signer(settings, "train")  # bus mode: a promotion goes out signed
    except EdgeloopError as exc:
        fail(str(exc))
    tracker = Tracker.from_settings(settings, enabled=not no_mlflow)
    failed = False
    with contextlib.ExitStack() as stack:
        try:
            publish = stack.enter_context(decision_publisher(settings, signer))
        except EdgeloopError as exc:
            fail(f"nothing trained: {exc}", 1)
        for name in scope or settings.model.targets:
            outcome = run_retrain(settings, name, trigger="manual", reason="edgeloop train", tracker=tracker)
            if publish is not None and outcome.decision == "promoted":
                try:
                    publish(name)
                except EdgeloopError as exc:
                    typer.echo(f"{name}: promoted here but not published to the edges: {exc}", err=True)
                    failed = True
            # The Models view and the edges learn of a promotion from its event, whoever promoted.
            record_events(settings, [Event.from_dict(e) for e in outcome.events])
            typer.echo(f"{name}: {outcome.decision}: {outcome.reason}")
            m = outcome.metrics
            for key in sorted(k for k in m if k.startswith("rmse_")):
                typer.echo(f"  {key[5:]:<12} validation RMSE {m[key]:.4g}")
            if m:
                typer.echo(f"  {'(mean)':<12} validation RMSE {m['mean_rmse']:.4g}")
            failed |= outcome.decision == "failed"
    raise typer.Exit(1 if failed else 0)


@keys_app.command(
    "generate",
    epilog=examples(
        "edgeloop keys generate --out /etc/edgeloop/keys",
        "edgeloop keys generate --out ./keys --force   # replace an existing pair",
    ),
)
def keys_generate(
    out: Annotated[Path, typer.Option("--out", help="Folder that receives the key pair.", file_okay=False)],
    force: Annotated[bool, typer.Option(help="Replace a key pair already in the folder.")] = False,
) -> None:
    """Write a new Ed25519 key pair: model-signing.key (private, mode 0600, for trainers only) and
    model-signing.pub (public, for edges). Point distribution.signing_key_file and
    distribution.public_key_file at them."""
    from edgeloop.registry.signing import Signer

    signer = Signer.generate()
    try:
        private, public = signer.write(out, force=force)
    except OSError as exc:
        fail(str(exc), 1)
    typer.echo(f"key id {signer.key_id}")
    typer.echo(f"  private: {private}  (trainers: distribution.signing_key_file; keep it secret)")
    typer.echo(f"  public:  {public}  (edges: distribution.public_key_file)")


@app.command(epilog=examples("edgeloop trainer -c trainer.yaml"))
def trainer(config: ConfigOpt = None, data_dir: DataDirOpt = None, broker: BrokerOpt = None) -> None:
    """Run the trainer service: consume retrain requests over MQTT, train, register, promote, report."""
    from edgeloop.retrain.service import TrainerService

    settings = command_settings(
        config, {"data_dir": ("--data-dir", data_dir), "broker.url": ("--broker", broker)}
    )
    try:
        service = TrainerService(settings)
        stop_on_signals(service.stop)
        service.run()
    except EdgeloopError as exc:
        fail(str(exc), 1)


@app.command(
    epilog=examples(
        "edgeloop mlflow",
        "edgeloop mlflow --port 5001 --data-dir /var/lib/edgeloop",
        "edgeloop mlflow --host 0.0.0.0 --backend-store-uri postgresql://mlflow@db:5432/mlflow"
        " --artifacts-destination /srv/mlartifacts",
    )
)
def mlflow(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    backend_store_uri: Annotated[
        str | None,
        typer.Option(
            help="Tracking and registry database, e.g. postgresql://mlflow@db:5432/mlflow (the fleet's"
            " registry). Default: the embedded <data_dir>/mlflow.db."
        ),
    ] = None,
    artifacts_destination: Annotated[
        str | None,
        typer.Option(
            help="Where the server keeps artifacts it receives (a directory, s3://...); trainers write"
            " through the server. Default: <data_dir>/mlartifacts."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server worker processes.")] = 1,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(help="Host headers the server accepts, comma-separated (MLflow allows private IPs)."),
    ] = None,
) -> None:
    """Start the MLflow server: the UI on the embedded tracking store, or a fleet's registry.

    With --backend-store-uri it is the tracking server of a fleet: trainers on any host set
    mlflow.tracking_uri: http://<host>:<port>, log runs and register models through it, and it keeps
    their artifacts in --artifacts-destination. MLflow's usage telemetry is off unless
    MLFLOW_DISABLE_TELEMETRY=false is set.
    """
    from edgeloop.registry.mlflow_server import ARTIFACTS_DIR, server_command

    settings = command_settings(config, {"data_dir": ("--data-dir", data_dir)})
    if backend_store_uri is None and settings.tracking_uri.startswith(("http://", "https://")):
        fail(
            f"mlflow.tracking_uri is the server {settings.tracking_uri}: give this server its own"
            " --backend-store-uri (e.g. postgresql://mlflow@db:5432/mlflow)"
        )
    cmd, env, what = server_command(
        backend=backend_store_uri or settings.tracking_uri,
        artifacts=artifacts_destination or str(settings.data_dir / ARTIFACTS_DIR),
        host=host,
        port=port,
        workers=workers,
        allowed_hosts=allowed_hosts,
    )
    note = f"MLflow on http://{host}:{port} ({what})"
    if settings.log_json:  # container logs take stdout too: keep every line JSON
        logging.getLogger("edgeloop.cli").info("%s", note)
    else:
        typer.echo(note)
    # With log_json the server's gunicorn/uvicorn lines are relayed as JSON like everything else.
    run_child(cmd, env, "the MLflow server", relay="edgeloop.mlflow_server" if settings.log_json else None)


@app.command(epilog=examples("edgeloop dashboard", "edgeloop dashboard -c edge.yaml --port 8502"))
def dashboard(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the dashboard.")] = 8501,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Start the live dashboard (Streamlit) on the store, registry and events."""
    import os

    from edgeloop.dashboard.launch import run_dashboard

    settings = command_settings(config, {"data_dir": ("--data-dir", data_dir)})
    env = {**os.environ, "EDGELOOP_DATA_DIR": str(settings.data_dir.resolve())}
    try:
        proc = run_dashboard(config, port=port, host=host, env=env)
    except (OSError, EdgeloopError) as exc:
        fail(f"cannot start the dashboard: {exc}", 1)
    typer.echo(f"dashboard on http://{host}:{port} (Ctrl-C stops)")
    # Streamlit runs in the dashboard launcher's process; forward the signal to it, then wait.
    forward_signals(proc, group=False)
    raise typer.Exit(proc.wait())


@app.command(
    epilog=examples(
        "edgeloop demo",
        "edgeloop demo --duration 120 --no-dashboard --json build/demo.json",
        "edgeloop demo --drift dev-002:level_shift@3000",
    )
)
def demo(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Seconds to run (default: until Ctrl-C).")
    ] = None,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices.")] = 4,
    rate: Annotated[
        float, typer.Option(min=0, help="Readings per second per device (a reading is a simulated minute).")
    ] = 100.0,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    drift: Annotated[
        str | None, typer.Option(help="Scheduled drift DEVICE:KIND@STEP (default: regime change on dev-001).")
    ] = "dev-001:regime_change@4500",
    no_drift: Annotated[bool, typer.Option("--no-drift", help="Run without a scheduled drift.")] = False,
    dashboard: Annotated[bool, typer.Option(help="Also start the dashboard.")] = True,
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port.")] = 8501,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help=DATA_DIR_HELP + " A demo's folder is emptied at start.")
    ] = Path("edgeloop-data/demo"),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the final report as JSON here.")
    ] = None,
) -> None:
    """Run the whole loop on embedded defaults: broker, simulator, edge, retraining, MLflow, dashboard."""
    from edgeloop.service.demo import run_demo
    from edgeloop.telemetry.simulator import parse_drift

    settings = command_settings(
        config,
        {"data_dir": ("--data-dir", data_dir), "broker.url": ("--broker", broker)},
        fixed={
            # A simulated day is 1,440 readings: train on a day of the fleet, retrain on a day after a drift.
            "model.min_train_samples": devices * 1440,
            "model.retrain_min_samples": 1440,
            # A demo leaves nothing queued at a shared broker when it ends, and shares its stream with no one.
            "broker.session_expiry": 0,
            "broker.shared_group": None,
        },
    )
    try:
        spec = None if no_drift or not drift else parse_drift(drift)
    except ValueError as exc:
        fail(f"--drift {drift!r}: {exc}")
    try:
        report = run_demo(
            settings,
            duration=duration,
            devices=devices,
            rate=rate,
            seed=seed,
            drift=spec,
            dashboard=dashboard,
            dashboard_port=dashboard_port,
            config_path=config,
        )
    except EdgeloopError as exc:
        fail(str(exc), 1)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2, default=str))


@app.command(
    "evaluate",
    # Everything after `evaluate` goes to the real command, which is imported only now: it pulls in
    # pandas, scikit-learn and matplotlib, which no other command needs.
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def evaluate(ctx: typer.Context) -> None:
    """Replay data sets through the live engine in simulated time and compare retraining strategies."""
    from edgeloop.evaluate.cli import evaluate_command

    sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    sub.command(
        epilog=examples(
            "edgeloop evaluate --dataset air_quality",
            "edgeloop evaluate -d sim:all -s persistence,relative,adwin --jobs 2",
        )
    )(evaluate_command)
    typer.main.get_command(sub).main(args=list(ctx.args), prog_name="edgeloop evaluate")


def _mount_extras() -> None:
    # Light at import (its heavy dependencies are imported when it runs).
    from edgeloop.bench.cli import bench

    app.command(
        "bench",
        epilog=examples(
            "edgeloop bench --devices 100 --rate 2000 --latency-seconds 10",
            "edgeloop bench --during-retrain --out build/bench.json",
        ),
    )(bench)


_mount_extras()


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
