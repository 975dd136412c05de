"""edgeloop's live dashboard, a Streamlit script: ``streamlit run app.py -- --config FILE``.

It only reads the store (read-only SQLite, every query in :mod:`edgeloop.dashboard.queries`). Four
views sit in tabs that run lazily (only the open tab queries) and refresh themselves as fragments
every few seconds; there is no polling loop. The open tab and device are in the URL
(``?view=Device&device=dev-001``), so a view can be bookmarked or shared.

Settings come from ``--config`` and ``EDGELOOP_*`` like every edgeloop process. Dashboard-only knobs
have no key in :class:`Settings`, so they are environment variables (or flags after ``--``):

``EDGELOOP_DASHBOARD_REFRESH``       seconds between refreshes (default: 2 x ``edge.status_interval``, >= 1)
``EDGELOOP_DASHBOARD_SILENT_AFTER``  seconds without an update before a device shows as silent (30)
``EDGELOOP_DASHBOARD_POINTS``        readings in the device chart (500)
``EDGELOOP_DASHBOARD_MLFLOW_URL``    MLflow UI base URL for run links (http://127.0.0.1:5000)
"""

from __future__ import annotations

import argparse
import functools
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from edgeloop.config import Settings, load_settings
from edgeloop.dashboard import queries as q
from edgeloop.errors import ConfigError, StoreError
from edgeloop.telemetry.schema import EVENT_KINDS

VIEWS = ("Fleet", "Device", "Models", "Events")


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
}
MARKER_COLORS = {
    "drift": "#f28e2b",
    "retrain": "#4e79a7",
    "promotion": "#2ca02c",
    "rejection": "#9c9c9c",
    "rollback": "#d62728",
}
SERIES_COLORS = {"actual": "#1f2937", "predicted": "#4e79a7"}
RMSE_COLORS = {"model": "#4e79a7", "persistence": "#b0b7c3"}
FLEET_COLUMNS = ("device", "status", "model", "rmse", "threshold", "rmse_ratio", "rate", "last_seen", "age_s")
MODEL_COLUMNS = (
    "label", "decision", "val_rmse", "champion_rmse", "gain", "reason", "window", "mlflow",
    "persistence_rmse", "mean_rmse", "n_samples", "formulation", "trigger", "created",
)  # fmt: skip
UTC_FORMAT = "YYYY-MM-DD HH:mm:ss"


@dataclass(frozen=True)
class Options:
    """What the dashboard needs beyond :class:`Settings`."""

    config: Path | None
    refresh: float
    silent_after: float
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
        silent_after=pick(args.silent_after, "EDGELOOP_DASHBOARD_SILENT_AFTER", 30.0, float),
        points=max(10, pick(args.points, "EDGELOOP_DASHBOARD_POINTS", 500, int)),
        mlflow_url=pick(args.mlflow_url, "EDGELOOP_DASHBOARD_MLFLOW_URL", "http://127.0.0.1:5000", str),
    )


@dataclass(frozen=True)
class Context:
    settings: Settings
    options: Options
    target: str


@contextmanager
def store(settings: Settings, *, quiet: bool = False) -> Iterator[sqlite3.Connection | None]:
    """A fresh read-only connection per refresh: cheap, and never shared between sessions' threads.

    ``None`` while the store does not exist (the views then show their empty state)."""
    try:
        conn = q.open_store(settings.store_path)
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
    st.caption(f"Updated {stamp} · refreshes {every}")


def no_data(ctx: Context) -> None:
    filters = ", ".join(ctx.settings.topics.telemetry_filters(ctx.settings.site))
    st.info(
        f"**No data yet: is a publisher running on {ctx.settings.broker.url} topic {filters}?**\n\n"
        f"The dashboard reads `{ctx.settings.store_path}`, which the edge service fills "
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
def fleet_of(conn: sqlite3.Connection, ctx: Context) -> pd.DataFrame:
    """The fleet table, with silence judged by this session's memory of each device's reading count."""
    clock = st.session_state.setdefault("_silence_clock", q.SilenceClock())
    return q.fleet(conn, ctx.target, now=time.time(), silent_after=ctx.options.silent_after, clock=clock)


def no_threshold_note(ctx: Context) -> str:
    return (
        f"Drift policy {ctx.settings.drift.policy} has no fixed RMSE threshold: it alarms on a sustained "
        "rise of the normalised forecast error."
    )


def open_selected_device() -> None:
    """Fleet row clicked: show that device. Runs as a callback, before the rerun, so it may set the
    state of widgets (tabs, device picker) that the rerun then creates."""
    table = st.session_state.get("fleet_table")
    rows = list(table.selection.rows) if table is not None else []
    devices: list[str] = st.session_state.get("_fleet_devices", [])
    if rows and rows[0] < len(devices):
        st.session_state["device"] = devices[rows[0]]
        st.session_state["view"] = "Device"
        st.session_state["_jump"] = True


def styled(df: pd.DataFrame, column: str, looks: Mapping[str, Look]) -> Any:
    """``df`` with ``column`` shown as each value's label in its color (a pandas Styler)."""
    colors = {look.label: look.css for look in looks.values()}
    shown = df.assign(**{column: df[column].map(lambda v: looks[v].label if v in looks else v)})
    return shown.style.map(
        lambda v: f"color: {colors[v]}; font-weight: 600" if v in colors else "", subset=[column]
    )


def fleet_view(ctx: Context) -> None:
    if st.session_state.pop("_jump", False):
        st.rerun()  # the whole app, so the tabs switch to the device view
    with store(ctx.settings) as conn:
        df = pd.DataFrame() if conn is None else fleet_of(conn, ctx)
    if df.empty:
        no_data(ctx)
        refreshed_caption(ctx)
        return
    summary = q.FleetSummary.of(df)
    cols = st.columns(5)
    cols[0].metric("Devices", summary.devices, border=True, icon=":material/sensors:")
    cols[1].metric("Messages/s", f"{summary.msgs_per_s:,.1f}", border=True, icon=":material/speed:")
    cols[2].metric("Drifting", summary.drifting, border=True, icon=":material/trending_up:")
    cols[3].metric(
        "Silent",
        summary.silent,
        border=True,
        icon=":material/sensors_off:",
        help=f"No reading for {ctx.options.silent_after:g} s",
    )
    cols[4].metric(
        "Need attention",
        summary.attention,
        border=True,
        icon=":material/notification_important:",
        help="Drifting, rolled back or silent",
    )

    counts = df["status"].value_counts()
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    with left:
        statuses = st.pills(
            "Status",
            list(q.STATUSES),
            selection_mode="multi",
            format_func=lambda s: STATUS_LOOK[s].pill(int(counts.get(s, 0))),
            key="fleet_status",
            persist_state="session",
        )
    with right:
        search = st.text_input(
            "Search devices",
            key="fleet_search",
            placeholder="device name contains…",
            type="search",
            persist_state="session",
        )
    shown = q.filter_fleet(df, statuses=list(statuses or []), search=search or "")
    if shown.empty:
        st.warning("No device matches the filter.")
        refreshed_caption(ctx)
        return
    st.session_state["_fleet_devices"] = shown["device"].tolist()
    st.dataframe(
        styled(shown, "status", STATUS_LOOK),
        hide_index=True,
        placeholder="—",
        height=min(38 + 35 * len(shown), 640),
        column_order=FLEET_COLUMNS,
        column_config={
            "device": st.column_config.TextColumn("Device"),
            "status": st.column_config.TextColumn("Status"),
            "model": st.column_config.TextColumn("Serving model"),
            "rmse": st.column_config.NumberColumn("Rolling RMSE", format="%.2f"),
            "threshold": st.column_config.NumberColumn("Drift threshold", format="%.2f"),
            "rmse_ratio": st.column_config.ProgressColumn(
                "RMSE / threshold",
                format="percent",
                min_value=0.0,
                max_value=2.0,
                color="auto-inverse",
                help="Rolling RMSE as a share of the drift threshold: green below it, red above; "
                "the bar is half full at the threshold",
            ),
            "rate": st.column_config.NumberColumn("Msgs/s", format="%.1f"),
            "last_seen": st.column_config.DatetimeColumn("Last reading (UTC)", format=UTC_FORMAT),
            "age_s": st.column_config.NumberColumn(
                "Seen (s ago)",
                format="%.0f",
                help="Seconds since this device's last reading reached the edge",
            ),
        },
        key="fleet_table",
        on_select=open_selected_device,
        selection_mode="single-row",
    )
    note = f" · {no_threshold_note(ctx)}" if shown["threshold"].isna().all() else ""
    st.caption(
        f"{len(shown)} of {len(df)} devices · select a row to open its device view · silent: no reading "
        f"for {ctx.options.silent_after:g} s{note}"
    )
    refreshed_caption(ctx)


# -- device --------------------------------------------------------------------------------------
def _time_x() -> alt.X:
    # Epoch milliseconds on a UTC scale: the browser's time zone must not shift a page that says UTC.
    return alt.X(
        "ms:T",
        title="time (UTC)",
        scale=alt.Scale(type="utc"),
        axis=alt.Axis(format="%H:%M:%S", labelOverlap=True, grid=False),
    )


def _with_when(df: pd.DataFrame) -> pd.DataFrame:
    """Adds the x value (epoch ms) and the tooltip's preformatted UTC time."""
    return df.assign(ms=df["ts"] * 1000.0, when=df["time"].dt.strftime("%Y-%m-%d %H:%M:%S"))


def marker_layer(markers: pd.DataFrame, *, legend: bool = True) -> alt.Chart:
    """Vertical rules at drift, retrain, promotion, rejection and rollback events, colored by kind."""
    present = [k for k in MARKER_COLORS if k in set(markers["marker"])]
    data = _with_when(markers).fillna({"version": "", "previous_version": "", "reason": ""})
    return (
        alt.Chart(data)
        .mark_rule(strokeWidth=2, strokeDash=[4, 3], opacity=0.85)
        .encode(
            x=_time_x(),
            color=alt.Color(
                "marker:N",
                title="Event",
                scale=alt.Scale(domain=present, range=[MARKER_COLORS[k] for k in present]),
                legend=alt.Legend() if legend else None,
            ),
            tooltip=[
                alt.Tooltip("when:N", title="time (UTC)"),
                "kind:N",
                "scope:N",
                "version:N",
                alt.Tooltip("previous_version:N", title="previous"),
                "reason:N",
            ],
        )
    )


def forecast_chart(series: pd.DataFrame, markers: pd.DataFrame, target: str) -> alt.LayerChart | alt.Chart:
    """Actual readings against what the serving model forecast for them, with event markers."""
    long = (
        _with_when(series)
        .melt(
            id_vars=["ms", "when", "model"],
            value_vars=["value", "forecast"],
            var_name="series",
            value_name="reading",
        )
        .replace({"series": {"value": "actual", "forecast": "predicted"}})
    )
    lines = (
        alt.Chart(long)
        .mark_line(strokeWidth=1.5)
        .encode(
            x=_time_x(),
            y=alt.Y("reading:Q", title=target, scale=alt.Scale(zero=False)),
            color=alt.Color(
                "series:N",
                title="Series",
                scale=alt.Scale(domain=list(SERIES_COLORS), range=list(SERIES_COLORS.values())),
            ),
            opacity=alt.Opacity(
                "series:N", scale=alt.Scale(domain=list(SERIES_COLORS), range=[1.0, 0.8]), legend=None
            ),
            tooltip=[
                alt.Tooltip("when:N", title="time (UTC)"),
                "series:N",
                alt.Tooltip("reading:Q", format=".2f"),
                "model:N",
            ],
        )
    )
    if markers.empty:
        return lines.properties(height=320)
    return alt.layer(lines, marker_layer(markers)).resolve_scale(color="independent").properties(height=320)


def rmse_chart(
    series: pd.DataFrame, markers: pd.DataFrame, threshold: float | None, mean_rmse: float | None
) -> alt.LayerChart:
    """The serving model's and persistence's rolling RMSE, the drift threshold and the mean baseline."""
    long = (
        _with_when(series)
        .melt(
            id_vars=["ms", "when"],
            value_vars=["rolling_rmse", "rolling_persistence_rmse"],
            var_name="series",
            value_name="rmse",
        )
        .replace({"series": {"rolling_rmse": "model", "rolling_persistence_rmse": "persistence"}})
    )
    layers: list[Any] = [
        alt.Chart(long)
        .mark_line(strokeWidth=1.6)
        .encode(
            x=_time_x(),
            y=alt.Y("rmse:Q", title="RMSE"),
            color=alt.Color(
                "series:N",
                title="Rolling RMSE",
                scale=alt.Scale(domain=list(RMSE_COLORS), range=list(RMSE_COLORS.values())),
            ),
            tooltip=[
                alt.Tooltip("when:N", title="time (UTC)"),
                "series:N",
                alt.Tooltip("rmse:Q", format=".3f"),
            ],
        )
    ]
    refs = [
        (name, value, color)
        for name, value, color in (
            ("drift threshold", threshold, "#d62728"),
            ("mean RMSE", mean_rmse, "#7f7f7f"),
        )
        if value is not None
    ]
    if refs:
        ref = pd.DataFrame({"line": [r[0] for r in refs], "rmse": [r[1] for r in refs]})
        scale = alt.Scale(domain=[r[0] for r in refs], range=[r[2] for r in refs])
        rule = alt.Chart(ref).encode(y="rmse:Q", tooltip=["line:N", alt.Tooltip("rmse:Q", format=".3f")])
        layers.append(
            rule.mark_rule(strokeDash=[6, 4], strokeWidth=1.5).encode(
                color=alt.Color("line:N", title="Reference", scale=scale)
            )
        )
        layers.append(
            rule.mark_text(align="left", dx=4, dy=-7, fontSize=11).encode(
                x=alt.value(0), text="line:N", color=alt.Color("line:N", scale=scale, legend=None)
            )
        )
    if not markers.empty:
        layers.append(marker_layer(markers, legend=False))  # the chart above has the legend
    return alt.layer(*layers).resolve_scale(color="independent").properties(height=220)


def device_view(ctx: Context) -> None:
    with store(ctx.settings) as conn:
        fleet = pd.DataFrame() if conn is None else fleet_of(conn, ctx)
        if conn is None or fleet.empty:
            no_data(ctx)
            refreshed_caption(ctx)
            return
        status_of = dict(zip(fleet["device"], fleet["status"], strict=True))
        pick, about = st.columns([1, 3], vertical_alignment="bottom")
        device = pick.selectbox(
            "Device",
            sorted(status_of),
            key="device",
            bind="query-params",
            # No format_func: the bound URL parameter holds the shown label, which must stay the name.
        )
        if device is None:
            return
        row = fleet[fleet["device"] == device].iloc[0]
        extra = q.device_status(conn, ctx.target, device)
        series = q.device_series(
            conn, ctx.target, device, points=ctx.options.points, window=ctx.settings.drift.window
        )
        markers = (
            q.device_events(
                conn, ctx.target, device, start_ts=series["ts"].iloc[0], end_ts=series["ts"].iloc[-1]
            )
            if not series.empty
            else pd.DataFrame()
        )
        recent = q.recent_device_events(conn, ctx.target, device, limit=20)
        trained = bool(q.model_scopes(conn, ctx.target))

    look = STATUS_LOOK.get(row["status"], STATUS_LOOK["healthy"])
    rate = f"{row['rate']:.1f} msgs/s" if pd.notna(row["rate"]) else "no rate yet"
    count = int(extra["count"]) if extra["count"] is not None else None
    about.markdown(
        f"#### {device} · :{look.md}[{look.icon} {look.label}]\n"
        f":material/model_training: serving **{row['model'] or '—'}** · {rate} · "
        f"{count if count is not None else 0:,} readings · "
        f"last reading {_when(row['last_seen'])}"
    )
    ratio = row["rmse_ratio"]
    cols = st.columns(4)
    cols[0].metric(
        "Rolling RMSE",
        _num(row["rmse"]),
        delta=f"{ratio:.0%} of threshold" if pd.notna(ratio) else None,
        delta_color="off" if pd.isna(ratio) else ("inverse" if ratio >= 1 else "normal"),
        delta_arrow="off",
        border=True,
        help=f"RMSE of the serving model's forecasts over the last {ctx.settings.drift.window} readings",
    )
    cols[1].metric(
        "Drift threshold",
        _num(row["threshold"]),
        border=True,
        help=f"Drift policy {ctx.settings.drift.policy}"
        if pd.notna(row["threshold"])
        else no_threshold_note(ctx),
    )
    cols[2].metric(
        "Persistence RMSE",
        _num(extra["persistence_rmse"]),
        border=True,
        help="Naive baseline: forecast the previous reading",
    )
    cols[3].metric(
        "Mean RMSE", _num(extra["mean_rmse"]), border=True, help="Naive baseline: forecast the running mean"
    )

    if q.is_persistence(row["model"]) and not trained:
        no_model(ctx, device, count)
    if series.empty:
        st.info(f"No readings of {ctx.target} from {device} are stored yet.")
        refreshed_caption(ctx)
        return
    with st.container(border=True):
        st.markdown(f"**Actual vs predicted {ctx.target}** · last {len(series)} readings")
        st.altair_chart(forecast_chart(series, markers, ctx.target), width="stretch")
    with st.container(border=True):
        st.markdown(
            f"**Rolling RMSE** over {ctx.settings.drift.window} readings, with the drift threshold and "
            "the naive baselines"
        )
        st.altair_chart(
            rmse_chart(series, markers, _opt(row["threshold"]), _opt(extra["mean_rmse"])), width="stretch"
        )
    st.markdown("**Recent events** of this device and its fleet model")
    if recent.empty:
        st.caption("No drift or model events for this device yet.")
    else:
        st.dataframe(event_table(recent), hide_index=True, placeholder="—", column_config=_event_columns())
    refreshed_caption(ctx)


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value is not None and pd.notna(value) else "—"


def _num(value: Any) -> str:
    return f"{value:.2f}" if value is not None and pd.notna(value) else "—"


def _opt(value: Any) -> float | None:
    return float(value) if value is not None and pd.notna(value) else None


# -- models --------------------------------------------------------------------------------------
def _window(start: pd.Timestamp, end: pd.Timestamp) -> str:
    """A training window as one short text, e.g. ``2024-05-01 10:00 → 12:30``."""
    if pd.isna(start) or pd.isna(end):
        return ""
    tail = "%H:%M:%S" if start.date() == end.date() else "%Y-%m-%d %H:%M:%S"
    return f"{start:%Y-%m-%d %H:%M:%S} → {end.strftime(tail)}"


def models_view(ctx: Context) -> None:
    with store(ctx.settings) as conn:
        scopes = q.model_scopes(conn, ctx.target) if conn is not None else []
        if conn is None or not scopes:
            no_model(ctx)
            refreshed_caption(ctx)
            return
        all_label = f"all scopes of {ctx.target}"
        pick, _ = st.columns([1, 2])
        scope = pick.selectbox("Scope", [all_label, *scopes], key="model_scope", persist_state="session")
        df = q.model_versions(conn, ctx.target, scope=None if scope == all_label else scope)
    decisions = df["decision"].value_counts()
    cols = st.columns(5)
    cols[0].metric("Scopes", df["scope"].nunique(), border=True, icon=":material/category:")
    cols[1].metric("Versions", len(df), border=True, icon=":material/history:")
    promoted = int(decisions.get("promoted", 0) + decisions.get("champion", 0))
    cols[2].metric("Promoted", promoted, border=True, icon=":material/check:")
    cols[3].metric("Rejected", int(decisions.get("rejected", 0)), border=True, icon=":material/close:")
    cols[4].metric("Rolled back", int(decisions.get("rolled_back", 0)), border=True, icon=":material/undo:")
    table = df.assign(
        window=[_window(a, b) for a, b in zip(df["window_start"], df["window_end"], strict=True)],
        mlflow=[q.mlflow_run_url(ctx.options.mlflow_url, r) for r in df["mlflow_run_id"]],
    )
    st.dataframe(
        styled(table, "decision", DECISION_LOOK),
        hide_index=True,
        placeholder="—",
        height=min(38 + 35 * len(table), 640),
        column_order=MODEL_COLUMNS,
        column_config={
            "label": st.column_config.TextColumn("Version"),
            "decision": st.column_config.TextColumn("Decision"),
            "val_rmse": st.column_config.NumberColumn(
                "Validation RMSE", format="%.2f", help="This version's RMSE on the holdout"
            ),
            "champion_rmse": st.column_config.NumberColumn(
                "Champion RMSE",
                format="%.2f",
                help="The champion's RMSE on the same holdout (none: first model)",
            ),
            "gain": st.column_config.NumberColumn(
                "Gain", format="percent", help="How much lower the validation RMSE is than the champion's"
            ),
            "persistence_rmse": st.column_config.NumberColumn(
                "Persistence RMSE", format="%.2f", help="Naive baseline on the same holdout"
            ),
            "mean_rmse": st.column_config.NumberColumn("Mean RMSE", format="%.2f", help="Naive baseline"),
            "reason": st.column_config.TextColumn("Reason", width="medium"),
            "window": st.column_config.TextColumn("Training window (UTC)"),
            "n_samples": st.column_config.NumberColumn("Samples", format="%d"),
            "mlflow": st.column_config.LinkColumn("MLflow", display_text="open run ↗"),
            "formulation": st.column_config.TextColumn("Formulation"),
            "trigger": st.column_config.TextColumn("Trigger"),
            "created": st.column_config.DatetimeColumn("Trained (UTC)", format=UTC_FORMAT),
        },
    )
    st.caption(
        f"Newest first. Run links open the MLflow UI at {ctx.options.mlflow_url} "
        "(EDGELOOP_DASHBOARD_MLFLOW_URL)."
    )
    refreshed_caption(ctx)


# -- events --------------------------------------------------------------------------------------
def _event_columns() -> dict[str, Any]:
    return {
        "time": st.column_config.DatetimeColumn("Time (UTC)", format=UTC_FORMAT),
        "kind": st.column_config.TextColumn("Kind"),
        "scope": st.column_config.TextColumn("Scope"),
        "reason": st.column_config.TextColumn("Reason", width="medium"),
        "version": st.column_config.TextColumn("Version"),
        "previous_version": st.column_config.TextColumn("Previous version"),
        "metrics": st.column_config.TextColumn("Metrics", width="medium"),
    }


def event_table(df: pd.DataFrame) -> Any:
    """Events with their kind colored like the chart markers."""
    colors = {kind: MARKER_COLORS[marker] for kind, marker in q.MARKER_KINDS.items()}
    shown = df.fillna({"version": "", "previous_version": "", "reason": ""})
    return shown.style.map(
        lambda v: f"color: {colors[v]}; font-weight: 600" if v in colors else "", subset=["kind"]
    )


def events_view(ctx: Context) -> None:
    c1, c2, c3 = st.columns([3, 2, 1], vertical_alignment="bottom")
    kinds = c1.multiselect(
        "Kinds", list(EVENT_KINDS), key="event_kinds", placeholder="all kinds", persist_state="session"
    )
    scope = c2.text_input(
        "Scope contains", key="event_scope", placeholder="e.g. dev-001 or voc_ppb", persist_state="session"
    )
    limit = c3.selectbox("Show", [100, 500, 2000], key="event_limit", persist_state="session")
    with store(ctx.settings) as conn:
        df = (
            q.events(conn, kinds=list(kinds), scope_contains=scope or "", limit=int(limit or 100))
            if conn is not None
            else pd.DataFrame()
        )
    if df.empty:
        if kinds or scope:
            st.warning("No event matches the filter.")
        else:
            st.info("No drift or model events yet: they appear when a scope drifts or a model is trained.")
    else:
        st.dataframe(
            event_table(df),
            hide_index=True,
            placeholder="—",
            height=min(38 + 35 * len(df), 640),
            column_config=_event_columns(),
        )
        st.caption(f"Newest {len(df)} events first (at most {limit}).")
    refreshed_caption(ctx)


def guarded(view: Callable[[Context], None]) -> Callable[[Context], None]:
    """The view, reporting a store it cannot read instead of raising; the next refresh retries."""

    @functools.wraps(view)
    def run(ctx: Context) -> None:
        try:
            view(ctx)
        except sqlite3.Error as exc:
            st.error(f"Cannot read the store `{ctx.settings.store_path}`: {exc}", icon=":material/error:")
            refreshed_caption(ctx)

    return run


# -- page ----------------------------------------------------------------------------------------
def main() -> None:
    st.set_page_config(page_title="edgeloop", page_icon=":material/sensors:", layout="wide")
    try:
        settings = load_settings(parse_options(sys.argv[1:], os.environ).config)
        options = parse_options(sys.argv[1:], os.environ, settings)
    except ConfigError as exc:
        st.error(f"**Invalid configuration**\n\n```\n{exc}\n```")
        st.stop()

    with st.sidebar:
        st.header(":material/sensors: edgeloop")
        try:
            with store(settings, quiet=True) as conn:
                known = q.targets(conn) if conn is not None else []
        except sqlite3.Error:
            known = []  # the open view reports it
        choices = list(dict.fromkeys([*settings.model.targets, *known]))
        target = st.selectbox("Target", choices, key="target", bind="query-params") or choices[0]
        live = st.toggle("Live refresh", value=True, key="live", help=f"every {options.refresh:g} s")
        st.divider()
        st.caption(
            f"**Site** {settings.site}  \n**Broker** {settings.broker.url}  \n"
            f"**Store** `{settings.store_path}`  \n**Drift** {settings.drift.policy}, window "
            f"{settings.drift.window}  \n**First training after** {settings.model.min_train_samples} samples"
        )

    st.title(f"edgeloop · {settings.site}")
    ctx = Context(settings=settings, options=options, target=target)
    run_every = options.refresh if live else None
    tabs = st.tabs(list(VIEWS), key="view", on_change="rerun", bind="query-params")
    views = (fleet_view, device_view, models_view, events_view)
    for tab, view in zip(tabs, views, strict=True):
        with tab:
            # Only the open tab runs its queries; it then refreshes alone, as a fragment.
            if tab.open:
                st.fragment(guarded(view), run_every=run_every)(ctx)


# Streamlit runs this file as __main__; importing it (benchmarks, tools) only defines the views.
if __name__ == "__main__":
    main()
