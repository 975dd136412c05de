"""The ``edgeloop`` command line (Typer): every command has ``--help``."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from edgeloop.config import Settings, load_settings
from edgeloop.errors import EdgeloopError
from edgeloop.logs import setup_logging

app = typer.Typer(
    help="edgeloop: forecast IoT telemetry on the edge, detect drift, retrain, validate and hot-swap models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
models_app = typer.Typer(help="List, promote and roll back model versions.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config file (env EDGELOOP_* overrides it).", exists=True, dir_okay=False
    ),
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Override data_dir.")]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="Override broker.url, e.g. mqtt://host:1883.")
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        settings = load_settings(config, **overrides)
    except EdgeloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings.log_level, json=settings.log_json)
    return settings


def _stop_on_signals(stop: Any) -> None:
    def handler(signum: int, _frame: Any) -> None:
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@config_app.command("show")
def config_show(config: ConfigOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Print the effective config (defaults < YAML < env) with secrets masked."""
    data = _settings(config).masked()
    typer.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))


@app.command()
def edge(config: ConfigOpt = None, data_dir: DataDirOpt = None, broker: BrokerOpt = None) -> None:
    """Run the edge inference service: subscribe, forecast, publish, watch drift, retrain, hot-swap."""
    from edgeloop.service.edge import EdgeService

    settings = _settings(config, data_dir=data_dir, **{"broker.url": broker})
    service = EdgeService(settings)
    _stop_on_signals(lambda: service._stop.set())
    try:
        service.run()
    except EdgeloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def simulate(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    devices: Annotated[int, typer.Option(help="Number of simulated devices.")] = 3,
    rate: Annotated[
        float, typer.Option(help="Readings per second per device (0: as fast as possible).")
    ] = 10.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    interval: Annotated[float, typer.Option(help="Simulated seconds between readings.")] = 60.0,
    drift: Annotated[
        list[str] | None,
        typer.Option(help="Drift scenario DEVICE:KIND@STEP[:target=T,magnitude=X,duration=N]; repeatable."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Stop after this many readings per device.")] = None,
    csv: Annotated[
        Path | None, typer.Option(help="Write STEPS readings to this CSV (+ onsets JSON) and exit.")
    ] = None,
) -> None:
    """Simulate devices publishing telemetry (diurnal temperature, humidity, VOC bursts) with drift."""
    from edgeloop.service.publisher import SimulatorPublisher
    from edgeloop.telemetry.simulator import Simulator, parse_drift

    settings = _settings(config, **{"broker.url": broker})
    try:
        specs = [parse_drift(text) for text in drift or []]
        sim = Simulator(devices, seed=seed, interval=interval, drifts=specs)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if csv is not None:
        path = sim.write_csv(csv, steps or 10_000)
        typer.echo(f"wrote {path} and {path}.onsets.json")
        return
    publisher = SimulatorPublisher(settings, sim, rate=rate or None, steps=steps)
    _stop_on_signals(publisher._stop.set)
    typer.echo(f"publishing {devices} devices at {rate:g}/s to {settings.broker.url} (Ctrl-C stops)")
    publisher.run()
    typer.echo(f"published {publisher.published} readings")


@app.command()
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
    rate: Annotated[float, typer.Option(help="Rows per second (0: as fast as possible).")] = 100.0,
    limit: Annotated[int | None, typer.Option(help="Replay at most this many rows.")] = None,
) -> None:
    """Publish a real recording as telemetry, row by row, with a column mapping."""
    from edgeloop.service.publisher import replay as do_replay
    from edgeloop.telemetry import recordings

    settings = _settings(config, **{"broker.url": broker})
    defaults = {
        "air_quality": {"temp_c": "temp_c", "humidity": "humidity", "pt08_s2_nmhc": "voc_ppb"},
        "occupancy": {"temp_c": "temp_c", "humidity": "humidity", "co2": "voc_ppb"},
        "nab": {"value": "temp_c"},
    }
    try:
        if file in recordings.KNOWN_RECORDINGS:
            frame = recordings.known_recording(file)
            mapping = defaults[file]
        else:
            mapping = dict(item.split("=", 1) for item in column or [])
            if not mapping:
                raise ValueError("a plain CSV needs at least one --column SOURCE=NAME")
            frame = recordings.load_csv(file, ts_column=ts_column, columns={k: k for k in mapping})
        if column and file in recordings.KNOWN_RECORDINGS:
            mapping = dict(item.split("=", 1) for item in column)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if limit:
        frame = frame.head(limit)
    stop = threading.Event()
    _stop_on_signals(stop.set)
    name = device or Path(file).stem
    sent = do_replay(settings, frame, columns=mapping, device=name, rate=rate or None, stop=stop)
    typer.echo(f"replayed {sent} rows of {file} as device {name}")


@app.command()
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
    from edgeloop.registry.tracking import Tracker
    from edgeloop.retrain.job import run_retrain

    settings = _settings(config, data_dir=data_dir)
    if not settings.store_path.exists():
        typer.echo(
            f"error: no store at {settings.store_path}: run `edgeloop edge` (or the demo) first", err=True
        )
        raise typer.Exit(2)
    tracker = Tracker.from_settings(settings, enabled=not no_mlflow)
    failed = False
    for name in scope or settings.model.targets:
        outcome = run_retrain(settings, name, trigger="manual", reason="edgeloop train", tracker=tracker)
        typer.echo(f"{name}: {outcome.decision}: {outcome.reason}")
        m = outcome.metrics
        for key in sorted(k for k in m if k.startswith("rmse_")):
            typer.echo(f"  {key[5:]:<12} validation RMSE {m[key]:.4g}")
        if m:
            typer.echo(f"  {'(mean)':<12} validation RMSE {m['mean_rmse']:.4g}")
        failed |= outcome.decision == "failed"
    raise typer.Exit(1 if failed else 0)


@app.command()
def trainer(config: ConfigOpt = None, data_dir: DataDirOpt = None, broker: BrokerOpt = None) -> None:
    """Run the trainer service: consume retrain requests over MQTT, train, register, promote, report."""
    from edgeloop.retrain.service import TrainerService

    settings = _settings(config, data_dir=data_dir, **{"broker.url": broker})
    service = TrainerService(settings)
    _stop_on_signals(service.stop)
    service.run()


@models_app.command("list")
def models_list(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """List every version per scope with its scores, decision and whether it is the champion."""
    from edgeloop.retrain.admin import list_versions

    settings = _settings(config, data_dir=data_dir)
    rows = list_versions(settings)
    if not rows:
        typer.echo(f"no models yet in {settings.models_dir}")
        return
    for row in rows:
        typer.echo(row)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Version label, e.g. voc_ppb:v3 or voc_ppb@dev-001:v2.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    force: Annotated[bool, typer.Option(help="Promote even if it does not beat the champion.")] = False,
) -> None:
    """Promote a version, with the same holdout check as automatic promotion (unless --force)."""
    from edgeloop.retrain.admin import promote

    settings = _settings(config, data_dir=data_dir)
    ok, message = promote(settings, version, force=force)
    typer.echo(message)
    raise typer.Exit(0 if ok else 1)


@models_app.command("rollback")
def models_rollback(
    scope: Annotated[str, typer.Argument(help="Scope, e.g. voc_ppb or voc_ppb@dev-001.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Restore the previous champion of a scope."""
    from edgeloop.retrain.admin import rollback

    settings = _settings(config, data_dir=data_dir)
    ok, message = rollback(settings, scope)
    typer.echo(message)
    raise typer.Exit(0 if ok else 1)


@app.command()
def mlflow(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the embedded tracking store."""
    import os
    import subprocess

    settings = _settings(config, data_dir=data_dir)
    artifacts = (settings.data_dir / "mlartifacts").resolve()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", settings.tracking_uri,
        "--default-artifact-root", artifacts.as_uri(),
        "--host", host, "--port", str(port),
    ]  # fmt: skip
    typer.echo(f"MLflow UI on http://{host}:{port} (tracking {settings.tracking_uri})")
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


@app.command()
def dashboard(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    port: Annotated[int, typer.Option(help="Port of the dashboard.")] = 8501,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Start the live dashboard (Streamlit) on the store, registry and events."""
    import os

    from edgeloop.dashboard.launch import run_dashboard

    settings = _settings(config, data_dir=data_dir)
    env = {**os.environ, "EDGELOOP_DATA_DIR": str(settings.data_dir.resolve())}
    proc = run_dashboard(config, port=port, host=host, env=env)
    typer.echo(f"dashboard on http://{host}:{port} (Ctrl-C stops)")
    try:
        raise typer.Exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()


@app.command()
def demo(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    duration: Annotated[float | None, typer.Option(help="Seconds to run (default: until Ctrl-C).")] = None,
    devices: Annotated[int, typer.Option(help="Simulated devices.")] = 4,
    rate: Annotated[
        float, typer.Option(help="Readings per second per device (a reading is a simulated minute).")
    ] = 100.0,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    drift: Annotated[
        str | None, typer.Option(help="Scheduled drift DEVICE:KIND@STEP (default: regime change on dev-001).")
    ] = "dev-001:regime_change@4500",
    no_drift: Annotated[bool, typer.Option("--no-drift", help="Run without a scheduled drift.")] = False,
    dashboard: Annotated[bool, typer.Option(help="Also start the dashboard.")] = True,
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port.")] = 8501,
    data_dir: Annotated[Path, typer.Option(help="Folder for this demo's data (emptied at start).")] = Path(
        "edgeloop-data/demo"
    ),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the final report as JSON here.")
    ] = None,
) -> None:
    """Run the whole loop on embedded defaults: broker, simulator, edge, retraining, MLflow, dashboard."""
    from edgeloop.service.demo import run_demo
    from edgeloop.telemetry.simulator import parse_drift

    settings = _settings(
        config,
        data_dir=data_dir,
        **{
            "broker.url": broker,
            # A simulated day is 1,440 readings: train on a day of the fleet, retrain on a day after a drift.
            "model.min_train_samples": devices * 1440,
            "model.retrain_min_samples": 1440,
            # A demo leaves nothing queued at a shared broker when it ends, and shares its stream with no one.
            "broker.session_expiry": 0,
            "broker.shared_group": None,
        },
    )
    spec = None if no_drift or not drift else parse_drift(drift)
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
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2, default=str))


def _mount_extras() -> None:
    # Imported here: each brings its own dependencies (matplotlib, psutil) only when its command runs.
    from edgeloop.bench.cli import bench
    from edgeloop.evaluate.cli import evaluate_command

    app.command("evaluate")(evaluate_command)
    app.command("bench")(bench)


_mount_extras()


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
