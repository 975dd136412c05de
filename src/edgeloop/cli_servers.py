"""``edgeloop mlflow``, ``edgeloop dashboard`` and ``edgeloop demo``: the servers beside the loop, and the
demo that runs the whole loop on one machine.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from edgeloop.cli_support import (
    DATA_DIR_HELP,
    BrokerOpt,
    ConfigOpt,
    DataDirOpt,
    command_settings,
    examples,
    fail,
    forward_signals,
    run_child,
)
from edgeloop.errors import EdgeloopError

servers_app = typer.Typer()


@servers_app.command(
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


@servers_app.command(epilog=examples("edgeloop dashboard", "edgeloop dashboard -c edge.yaml --port 8502"))
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


@servers_app.command(
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
    ] = "dev-001:regime_change@5000",
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
            # The regime change (reading 5,000) comes after the first model's detector is calibrated
            # (about reading 1,440 + 1,540: the simulator holds while the first model trains).
            "model.min_train_samples": devices * 1440,
            "model.retrain_min_samples": 1440,
            # A fleet refresh every three simulated days: one installed just as the regime change
            # begins would take the drifted device's new errors for its normal scale and hide it.
            "model.refresh_every": "3d",
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
