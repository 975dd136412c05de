"""What every view shares: options, the context, store access, looks and empty states."""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from edgeloop.adapters.store import STORE_READ_ERRORS, StoreConnection, describe
from edgeloop.config import Settings
from edgeloop.dashboard import fleetdata as fd
from edgeloop.dashboard import queries as q
from edgeloop.dashboard.access import redact_url
from edgeloop.errors import ConfigError, StoreError


@dataclass(frozen=True)
class Look:
    """How a status or decision is shown: text, color (CSS and Markdown name) and a Material icon."""

    label: str
    css: str
    md: str
    icon: str

    def pill(self, count: int | None = None) -> str:
        n = f" ({count})" if count is not None else ""
        return f":{self.md}[{self.icon}] {self.label}{n}"


STATUS_LOOK = {
    "healthy": Look("healthy", "#1a7f37", "green", ":material/check_circle:"),
    "drifting": Look("drifting", "#d9730d", "orange", ":material/trending_up:"),
    "retraining": Look("retraining", "#2f6eb5", "blue", ":material/model_training:"),
    "probation": Look("on probation", "#7c3aed", "violet", ":material/hourglass_top:"),
    "rolled_back": Look("rolled back", "#c62828", "red", ":material/undo:"),
    "silent": Look("silent", "#6b7280", "gray", ":material/sensors_off:"),
}
DECISION_LOOK = {
    "champion": Look("champion", "#1a7f37", "green", ":material/trophy:"),
    "promoted": Look("promoted", "#1a7f37", "green", ":material/check:"),
    "rejected": Look("rejected", "#6b7280", "gray", ":material/close:"),
    "rolled_back": Look("rolled back", "#c62828", "red", ":material/undo:"),
    "retired": Look("retired", "#6b7280", "gray", ":material/history:"),
    "trained": Look("trained", "#6b7280", "gray", ":material/model_training:"),
}
UTC_FORMAT = "YYYY-MM-DD HH:mm:ss"


@dataclass(frozen=True)
class Options:
    """What the dashboard needs beyond :class:`Settings`."""

    config: Path | None
    refresh: float
    silent_after: float
    silent_intervals: float
    auth_file: Path | None
    points: int
    mlflow_url: str


def parse_options(
    argv: Sequence[str], environ: Mapping[str, str], settings: Settings | None = None
) -> Options:
    """Flags after ``--`` win over ``EDGELOOP_DASHBOARD_*`` variables, which win over defaults.

    Raises :class:`ConfigError` for a variable that does not parse."""
    # allow_abbrev=False: under AppTest argv is pytest's, and "--co" must not be taken for "--config".
    parser = argparse.ArgumentParser(prog="edgeloop-dashboard", allow_abbrev=False, add_help=False)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--refresh", type=float, default=None)
    parser.add_argument("--silent-after", type=float, default=None)
    parser.add_argument("--silent-intervals", type=float, default=None)
    parser.add_argument("--auth-file", type=Path, default=None)
    parser.add_argument("--points", type=int, default=None)
    parser.add_argument("--mlflow-url", default=None)
    args, _unknown = parser.parse_known_args(list(argv))
    status_interval = settings.edge.status_interval if settings is not None else 1.0

    def pick(flag: Any, env: str, default: Any, cast: Callable[[str], Any]) -> Any:
        if flag is not None:
            return flag
        raw = environ.get(env)
        try:
            return cast(raw) if raw else default
        except ValueError:
            raise ConfigError(f"{env}={raw!r} is not a valid {cast.__name__}") from None

    return Options(
        config=args.config,
        refresh=max(1.0, pick(args.refresh, "EDGELOOP_DASHBOARD_REFRESH", 2 * status_interval, float)),
        # The edge writes status rows every status_interval: silence cannot be seen much sooner.
        silent_after=pick(
            args.silent_after, "EDGELOOP_DASHBOARD_SILENT_AFTER", max(5.0, 3 * status_interval), float
        ),
        silent_intervals=max(
            1.0, pick(args.silent_intervals, "EDGELOOP_DASHBOARD_SILENT_INTERVALS", 3.0, float)
        ),
        points=max(10, pick(args.points, "EDGELOOP_DASHBOARD_POINTS", 500, int)),
        auth_file=pick(args.auth_file, "EDGELOOP_DASHBOARD_AUTH_FILE", None, Path),
        mlflow_url=pick(args.mlflow_url, "EDGELOOP_DASHBOARD_MLFLOW_URL", "http://127.0.0.1:5000", str),
    )


@dataclass(frozen=True)
class Context:
    settings: Settings
    options: Options
    target: str


@contextmanager
def store(settings: Settings, *, quiet: bool = False) -> Iterator[StoreConnection | None]:
    """A fresh read-only connection per refresh: cheap, and never shared between sessions' threads.

    ``None`` while the store does not exist (the views then show their empty state)."""
    try:
        conn = q.open_store(settings.store_location)
    except StoreError as exc:
        if not quiet:
            st.error(f"Cannot open the store: {exc}")
        conn = None
    try:
        yield conn
    finally:
        if conn is not None:
            conn.close()


def refreshed_caption(ctx: Context) -> None:
    stamp = datetime.now(UTC).strftime("%H:%M:%S UTC")
    every = f"every {ctx.options.refresh:g} s" if st.session_state.get("live", True) else "paused"
    st.caption(f"Updated {stamp} (wall clock) · refreshes {every}")


def no_data(ctx: Context) -> None:
    filters = ", ".join(ctx.settings.topics.telemetry_filters(ctx.settings.site))
    broker = redact_url(ctx.settings.broker.url)
    st.info(
        f"**No data yet: is a publisher running on {broker} topic {filters}?**\n\n"
        f"The dashboard reads `{describe(ctx.settings.store_location)}`, which the edge service fills "
        f"(`edgeloop edge` or `edgeloop demo`). This page refreshes by itself.",
        icon=":material/inbox:",
    )


def no_model(ctx: Context, device: str | None = None, count: int | None = None) -> None:
    n = ctx.settings.model.min_train_samples
    have = f" ({device} has {count} so far)" if device is not None and count is not None else ""
    st.info(
        f"**No model yet: training starts after {n} samples**{have}. Until then the edge forecasts "
        f"each reading with the previous one (persistence).",
        icon=":material/hourglass_empty:",
    )


# -- fleet ---------------------------------------------------------------------------------------
def fleet_of(conn: StoreConnection, ctx: Context) -> pd.DataFrame:
    """The fleet table, silence judged against each device's own reporting interval (cached per session)."""
    cache = st.session_state.setdefault("_intervals", fd.IntervalCache())
    now = time.time()
    devices = [r[0] for r in conn.execute("SELECT device FROM scope_status WHERE target = ?", (ctx.target,))]
    return fd.fleet(
        conn,
        ctx.target,
        now=now,
        silent_after=ctx.options.silent_after,
        k=ctx.options.silent_intervals,
        intervals=cache.intervals(conn, ctx.target, devices, now),
    )


def silence_rule(ctx: Context) -> str:
    return (
        f"silent: nothing heard for {ctx.options.silent_intervals:g} of the device's own reporting "
        f"intervals (at least {ctx.options.silent_after:g} s, wall clock)"
    )


def no_threshold_note(ctx: Context) -> str:
    return (
        f"Drift policy {ctx.settings.drift.policy} has no fixed RMSE threshold: it alarms on a sustained "
        "rise of the normalised forecast error."
    )


def styled(df: pd.DataFrame, column: str | Sequence[str], looks: Mapping[str, Look]) -> Any:
    """``df`` with ``column`` (or each of several) shown as each value's label in its color (a pandas
    Styler); values without a look are shown as they are."""
    columns = [column] if isinstance(column, str) else list(column)
    colors = {look.label: look.css for look in looks.values()}
    shown = df.assign(**{c: df[c].map(lambda v: looks[v].label if v in looks else v) for c in columns})
    return shown.style.map(
        lambda v: f"color: {colors[v]}; font-weight: 600" if v in colors else "", subset=columns
    )


def fmt_when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value is not None and pd.notna(value) else "—"


def fmt_num(value: Any) -> str:
    return f"{value:.2f}" if value is not None and pd.notna(value) else "—"


def opt_float(value: Any) -> float | None:
    return float(value) if value is not None and pd.notna(value) else None


def guarded(view: Callable[[Context], None]) -> Callable[[Context], None]:
    """The view, reporting a store it cannot read instead of raising; the next refresh retries."""

    @functools.wraps(view)
    def run(ctx: Context) -> None:
        try:
            view(ctx)
        except STORE_READ_ERRORS as exc:
            st.error(
                f"Cannot read the store `{describe(ctx.settings.store_location)}`: {exc}",
                icon=":material/error:",
            )
            refreshed_caption(ctx)

    return run
