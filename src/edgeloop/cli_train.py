"""``edgeloop train``, ``edgeloop trainer`` and ``edgeloop keys``: training now, the trainer service that
answers retrain requests, and the keys that sign the champions it distributes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from edgeloop.cli_support import (
    BrokerOpt,
    ConfigOpt,
    DataDirOpt,
    command_settings,
    examples,
    fail,
    stop_on_signals,
)
from edgeloop.errors import EdgeloopError

training_app = typer.Typer()
keys_app = typer.Typer(help="Keys that sign champions distributed over the bus.", no_args_is_help=True)


@training_app.command(epilog=examples("edgeloop train", "edgeloop train --scope voc_ppb@dev-001 --no-mlflow"))
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


@training_app.command(epilog=examples("edgeloop trainer -c trainer.yaml"))
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
