"""The ``edgeloop`` command line (Typer): every command has ``--help`` with examples.

User errors (a bad flag, a missing file, an unknown version) end in one ``error:`` line and a
non-zero exit, never a traceback. Heavy dependencies (pandas, scikit-learn, MLflow, Streamlit,
matplotlib) are imported inside the commands that need them, so ``edgeloop edge`` stays small.

This module holds the application, ``edge``, ``evaluate``, ``bench`` and ``config``; the other commands
are in :mod:`edgeloop.cli_feeds`, :mod:`edgeloop.cli_train`, :mod:`edgeloop.cli_servers` and
:mod:`edgeloop.cli_models`, and what they share in :mod:`edgeloop.cli_support`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
import yaml

from edgeloop.cli_feeds import feeds_app
from edgeloop.cli_models import models_app
from edgeloop.cli_servers import servers_app
from edgeloop.cli_support import (
    BrokerOpt,
    ConfigOpt,
    DataDirOpt,
    command_settings,
    examples,
    fail,
    print_version,
    stop_on_signals,
)
from edgeloop.cli_train import keys_app, training_app
from edgeloop.errors import EdgeloopError

app = typer.Typer(
    help="edgeloop: forecast IoT telemetry on the edge, detect drift, retrain, validate and hot-swap models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    epilog=examples("edgeloop demo", "edgeloop edge -c edge.yaml", "edgeloop models list"),
)
# Typer lists a group's own commands first, then those of each added Typer in the order they are added:
# that order is the order of `edgeloop --help`.
measures_app = typer.Typer()
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


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


@measures_app.command(
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

    measures_app.command(
        "bench",
        epilog=examples(
            "edgeloop bench --devices 100 --rate 2000 --latency-seconds 10",
            "edgeloop bench --during-retrain --out build/bench.json",
        ),
    )(bench)


_mount_extras()
app.add_typer(feeds_app)
app.add_typer(training_app)
app.add_typer(servers_app)
app.add_typer(measures_app)
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
