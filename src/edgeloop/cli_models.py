"""``edgeloop models list | promote | rollback``: the registry for an operator."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from edgeloop.cli_support import ConfigOpt, DataDirOpt, YesOpt, command_settings, confirm, examples, fail
from edgeloop.errors import EdgeloopError

if TYPE_CHECKING:
    from edgeloop.config import Settings
    from edgeloop.registry.signing import Signer

models_app = typer.Typer(help="List, promote and roll back model versions.", no_args_is_help=True)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


@models_app.command(
    "list",
    epilog=examples("edgeloop models list", "edgeloop models list --json --data-dir /var/lib/edgeloop"),
)
def models_list(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list, one object per version.")
    ] = False,
) -> None:
    """List every version per scope: created, scores, decision; `*` marks the champion."""
    from edgeloop.retrain.admin import version_rows

    settings = command_settings(config, {"data_dir": ("--data-dir", data_dir)}, need_data=True)
    try:
        rows = version_rows(settings)
    except EdgeloopError as exc:
        fail(str(exc), 1)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no models yet in {settings.models_dir}")
        return
    header = ("", "VERSION", "KIND", "CREATED", "TRIGGER", "VAL RMSE", "VS", "PERSIST", "DECISION")
    table = [header]
    for r in rows:
        if "error" in r:
            table.append(("!", r["label"], r["error"], "", "", "", "", "", ""))
            continue
        vs = f"{r['compared_with'] or 'persistence'} {_num(r['champion_rmse'])}"
        table.append(
            (
                "*" if r["champion"] else "",
                r["label"],
                str(r["kind"] or "-"),
                _when(r["created"]),
                str(r["trigger"] or "-"),
                _num(r["val_rmse"]),
                vs if r["champion_rmse"] is not None else "-",
                _num(r["persistence_rmse"]),
                r["decision"],
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@models_app.command(
    "promote",
    epilog=examples(
        "edgeloop models promote voc_ppb:v3", "edgeloop models promote voc_ppb@dev-001:v2 --force --yes"
    ),
)
def models_promote(
    version: Annotated[str, typer.Argument(help="Version label, e.g. voc_ppb:v3 or voc_ppb@dev-001:v2.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if it does not beat the champion.")
    ] = False,
    yes: YesOpt = False,
) -> None:
    """Promote a version, with the same holdout check as automatic promotion (unless --force).

    With distribution.mode bus it is published to the edges, signed: run it where
    distribution.signing_key_file is set (a trainer host).
    """
    from edgeloop.retrain.admin import decision_publisher, promote

    settings = command_settings(config, {"data_dir": ("--data-dir", data_dir)}, need_data=True)
    signer = _signer(settings, "models promote")
    if force and not yes:
        confirm(f"Serve {version} on every edge even if it is worse than the champion?")
    try:
        with decision_publisher(settings, signer) as publish:
            ok, message = promote(settings, version, force=force, publish=publish)
    except EdgeloopError as exc:
        fail(f"nothing changed: {exc}", 1)
    if not ok:
        fail(message, 1)
    typer.echo(message)


@models_app.command(
    "rollback",
    epilog=examples("edgeloop models rollback voc_ppb", "edgeloop models rollback voc_ppb@dev-001 --yes"),
)
def models_rollback(
    scope: Annotated[str, typer.Argument(help="Scope, e.g. voc_ppb or voc_ppb@dev-001.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    yes: YesOpt = False,
) -> None:
    """Take the champion of a scope out of service and restore the previous one.

    With distribution.mode bus the decision is published to the edges, signed: run it where
    distribution.signing_key_file is set (a trainer host).
    """
    from edgeloop.retrain.admin import decision_publisher, rollback

    settings = command_settings(config, {"data_dir": ("--data-dir", data_dir)}, need_data=True)
    signer = _signer(settings, "models rollback")
    if not yes:
        confirm(f"Roll back the champion of {scope} on every edge?")
    try:
        with decision_publisher(settings, signer) as publish:
            ok, message = rollback(settings, scope, publish=publish)
    except EdgeloopError as exc:
        fail(f"nothing changed: {exc}", 1)
    if not ok:
        fail(message, 1)
    typer.echo(message)


def _signer(settings: Settings, command: str) -> Signer | None:
    """The signing key in bus mode; the command stops with one line if this host has none."""
    from edgeloop.retrain.admin import decision_signer

    try:
        return decision_signer(settings, command)
    except EdgeloopError as exc:
        fail(str(exc), 2)
