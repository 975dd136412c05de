"""What every ``edgeloop`` command shares: settings from flags, one-line errors, confirmations,
and running a server child process that one signal stops entirely.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import typer.core

from edgeloop.config import Settings, load_settings
from edgeloop.errors import ConfigError
from edgeloop.logs import relay_lines, setup_logging


def _flag_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    # Typer's rich help prints `<bool>` beside on/off flags, which take no value: show nothing there.
    if self.is_flag or _typer_option_type is None:
        return None
    result: str | None = _typer_option_type(self, ctx)
    return result


_typer_option_type = getattr(typer.core.TyperOption, "display_type_rich", None)
if _typer_option_type is not None:  # Typer versions without the type column need no fix
    typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


def print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"edgeloop {version('edgeloop')}")
        except PackageNotFoundError:  # running from a source tree that was never installed
            typer.echo("edgeloop (not installed)")
        raise typer.Exit()


def examples(*lines: str) -> str:
    return "Examples:\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config file (env EDGELOOP_* overrides it).", exists=True, dir_okay=False
    ),
]
DATA_DIR_HELP = "Data folder: store, models and MLflow runs (overrides data_dir / EDGELOOP_DATA_DIR)."
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="Override broker.url, e.g. mqtt://host:1883.")
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with one ``error:`` line on stderr (the user's mistake, not a crash)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def command_settings(
    config: Path | None,
    flags: dict[str, tuple[str, Any]] | None = None,
    *,
    fixed: dict[str, Any] | None = None,
    need_data: bool = False,
) -> Settings:
    """Settings from the config file, the environment and the command's flags.

    ``flags`` maps a settings key to (flag name, value): an invalid value is reported as that flag's
    error, not as a YAML key or environment variable the user never wrote. ``need_data``: the command
    reads existing data, so a data folder that does not exist is an error (usually a typo).
    """
    flags = flags or {}
    overrides = {**(fixed or {}), **{key: value for key, (_, value) in flags.items()}}
    try:
        settings = load_settings(config, **overrides)
    except ConfigError as exc:
        _explain_config_error(config, flags, fixed or {}, exc)
    setup_logging(settings.log_level, json=settings.log_json)
    if need_data and not settings.data_dir.is_dir():
        flag = "--data-dir" if flags.get("data_dir", ("", None))[1] is not None else "data_dir"
        fail(f"{flag}: data folder {settings.data_dir} does not exist")
    return settings


def _explain_config_error(
    config: Path | None, flags: dict[str, tuple[str, Any]], fixed: dict[str, Any], exc: ConfigError
) -> NoReturn:
    try:
        load_settings(config, **fixed)
    except ConfigError as base:
        fail(str(base))  # the file or the environment is wrong, whatever the flags say
    for key, (flag, value) in flags.items():
        if value is None:
            continue
        try:
            load_settings(config, **fixed, **{key: value})
        except ConfigError as one:
            cause = one.__cause__
            errors = getattr(cause, "errors", None)
            why = "; ".join(e["msg"].removeprefix("Value error, ") for e in errors()) if errors else str(one)
            fail(f"{flag} {value!r}: {why}")
    fail(str(exc))


def stop_on_signals(stop: Any) -> None:
    """SIGTERM/SIGINT call ``stop``; SIGUSR1 prints every thread's stack to stderr (the log), so a
    process that seems stuck can be looked into without stopping it: ``kill -USR1 <pid>``."""

    def handler(signum: int, _frame: Any) -> None:
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    with contextlib.suppress(ValueError, RuntimeError, OSError):  # stderr closed or not a file
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def confirm(question: str) -> None:
    if not sys.stdin.isatty():
        fail("this changes what the edges serve: pass --yes to confirm when not at a terminal")
    if not typer.confirm(question, default=False):
        fail("cancelled", 1)


def run_child(cmd: list[str], env: dict[str, str], what: str, *, relay: str | None = None) -> NoReturn:
    """Run ``cmd`` in its own process group until it ends; SIGTERM/SIGINT stop the whole group.

    Servers such as gunicorn and Streamlit fork workers; signalling only the parent would orphan them.
    ``relay``: a logger name; the child's stdout and stderr are logged line by line through it, so with
    ``log_json`` on every line the command writes is JSON (the child's servers log plain text).
    """
    pipe = subprocess.PIPE if relay else None
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=pipe, stderr=pipe)
    except OSError as exc:
        fail(f"cannot start {what}: {exc}", 1)
    relays = []
    if relay and proc.stdout is not None and proc.stderr is not None:
        relays = [relay_lines(proc.stdout, relay), relay_lines(proc.stderr, relay)]
    forward_signals(proc)
    code = _wait_group(proc, proc.pid)  # a new session's leader: its pid is the group id
    for thread in relays:
        thread.join(5)  # the last lines the child wrote before it ended
    raise typer.Exit(code)


def forward_signals(proc: subprocess.Popen[bytes], group: bool = True) -> None:
    """Pass SIGTERM and SIGINT on to ``proc`` (``group``: to its whole process group) instead of dying."""

    def handler(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _wait_group(proc: subprocess.Popen[bytes], pgid: int, grace: float = 10.0) -> int:
    code: int = proc.wait()
    # The parent is gone; give its workers a moment to follow, then make sure none is left behind.
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return code
        except PermissionError:
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return code
