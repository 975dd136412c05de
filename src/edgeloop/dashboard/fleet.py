"""The Fleet view: one row per device, the most urgent first."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from edgeloop.dashboard import fleetdata as fd
from edgeloop.dashboard.common import (
    STATUS_LOOK,
    UTC_FORMAT,
    Context,
    fleet_of,
    no_data,
    no_threshold_note,
    refreshed_caption,
    silence_rule,
    store,
    styled,
)  # fmt: skip

FLEET_COLUMNS = (
    "device", "status", "model", "rmse", "threshold", "rmse_ratio", "rate", "interval_s", "last_seen",
    "age_s",
)  # fmt: skip


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


def fleet_view(ctx: Context) -> None:
    if st.session_state.pop("_jump", False):
        st.rerun()  # the whole app, so the tabs switch to the device view
    with store(ctx.settings) as conn:
        df = pd.DataFrame() if conn is None else fleet_of(conn, ctx)
    if df.empty:
        no_data(ctx)
        refreshed_caption(ctx)
        return
    summary = fd.FleetSummary.of(df)
    cols = st.columns(5)
    cols[0].metric("Devices", summary.devices, border=True, icon=":material/sensors:")
    cols[1].metric("Messages/s", f"{summary.msgs_per_s:,.1f}", border=True, icon=":material/speed:")
    cols[2].metric("Drifting", summary.drifting, border=True, icon=":material/trending_up:")
    cols[3].metric(
        "Silent",
        summary.silent,
        border=True,
        icon=":material/sensors_off:",
        help=silence_rule(ctx).capitalize(),
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
            list(fd.STATUSES),
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
    shown = fd.filter_fleet(df, statuses=list(statuses or []), search=search or "")
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
            "rmse": st.column_config.NumberColumn("Rolling RMSE", format="%.2f", width="small"),
            "threshold": st.column_config.NumberColumn("Threshold", format="%.2f", width="small"),
            "rmse_ratio": st.column_config.ProgressColumn(
                "RMSE / threshold",
                format="percent",
                min_value=0.0,
                max_value=2.0,
                color="auto-inverse",
                help="Rolling RMSE as a share of the drift threshold: green below it, red above; "
                "the bar is half full at the threshold",
            ),
            "rate": st.column_config.NumberColumn("Msgs/s", format="%.3g", width="small"),
            "interval_s": st.column_config.NumberColumn(
                "Every (s)",
                format="%.3g",
                width="small",
                help="The device's own reporting interval: the median gap between its recent readings",
            ),
            "last_seen": st.column_config.DatetimeColumn(
                "Last reading time (UTC)",
                format=UTC_FORMAT,
                help="The timestamp the device put on its newest reading (a replay keeps its original time)",
            ),
            "age_s": st.column_config.NumberColumn(
                "Heard (s ago, wall)",
                format="%.0f",
                width="small",
                help="Wall-clock seconds since the edge last reported news of this device",
            ),
        },
        key="fleet_table",
        on_select=open_selected_device,
        selection_mode="single-row",
    )
    note = f" · {no_threshold_note(ctx)}" if shown["threshold"].isna().all() else ""
    st.caption(
        f"{len(shown)} of {len(df)} devices · select a row to open its device view · "
        f"{silence_rule(ctx)}{note}"
    )
    refreshed_caption(ctx)
