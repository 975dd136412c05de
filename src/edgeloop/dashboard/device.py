"""The Device view: one device's readings, forecasts, errors and events."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from edgeloop.dashboard import queries as q
from edgeloop.dashboard import series as series_mod
from edgeloop.dashboard.charts import forecast_chart, rmse_chart
from edgeloop.dashboard.common import (
    STATUS_LOOK,
    Context,
    Look,
    fleet_of,
    fmt_num,
    fmt_when,
    no_data,
    no_model,
    no_threshold_note,
    opt_float,
    refreshed_caption,
    store,
)  # fmt: skip
from edgeloop.dashboard.events import event_columns, event_table


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
        ctl, opt = st.columns([4, 1], vertical_alignment="bottom")
        choice = ctl.segmented_control(
            "Time range (reading time, ending at the newest reading)",
            [series_mod.AUTO, *series_mod.RANGES],
            default=series_mod.AUTO,
            format_func=range_label,
            key="device_range",
            persist_state="session",
            help="'since last event': the newest readings, reaching back to the last drift or model change",
        )
        show_mean = opt.toggle("Mean baseline", key="device_mean", persist_state="session")
        window = series_mod.window_for(
            conn, ctx.target, device, choice or series_mod.AUTO, points=ctx.options.points
        )
        series = (
            series_mod.range_series(conn, ctx.target, device, window, rolling=ctx.settings.drift.window)
            if window is not None
            else pd.DataFrame()
        )
        markers = (
            q.device_events(conn, ctx.target, device, start_ts=window.start, end_ts=window.end)
            if window is not None
            else pd.DataFrame()
        )
        recent = q.recent_device_events(conn, ctx.target, device, limit=20)
        trained = bool(q.model_scopes(conn, ctx.target))

    # A status from a newer edge is shown as it is, never as "healthy".
    look = STATUS_LOOK.get(row["status"]) or Look(str(row["status"]), "#6b7280", "gray", ":material/help:")
    rate = f"{row['rate']:.3g} msgs/s" if pd.notna(row["rate"]) else "no rate yet"
    count = int(extra["count"]) if extra["count"] is not None else None
    about.markdown(
        f"#### {device} · :{look.md}[{look.icon} {look.label}]\n"
        f":material/model_training: serving **{row['model'] or '—'}** · {rate} · "
        f"{count if count is not None else 0:,} readings · "
        f"last reading {fmt_when(row['last_seen'])} (reading time)"
    )
    if worse_than_persistence(row["model"], row["rmse"], extra["persistence_rmse"]):
        about.badge(
            "worse than persistence",
            icon=":material/warning:",
            color="red",
            help="The serving model's rolling RMSE is above the naive last-value forecast's",
        )
    ratio = row["rmse_ratio"]
    cols = st.columns(4)
    cols[0].metric(
        "Rolling RMSE",
        fmt_num(row["rmse"]),
        delta=f"{ratio:.0%} of threshold" if pd.notna(ratio) else None,
        delta_color="off" if pd.isna(ratio) else ("inverse" if ratio >= 1 else "normal"),
        delta_arrow="off",
        border=True,
        help=f"RMSE of the serving model's forecasts over the last {ctx.settings.drift.window} readings",
    )
    cols[1].metric(
        "Drift threshold",
        fmt_num(row["threshold"]),
        border=True,
        help=f"Drift policy {ctx.settings.drift.policy}"
        if pd.notna(row["threshold"])
        else no_threshold_note(ctx),
    )
    cols[2].metric(
        "Persistence RMSE",
        fmt_num(extra["persistence_rmse"]),
        border=True,
        help="Naive baseline: forecast the previous reading",
    )
    cols[3].metric(
        "Mean RMSE",
        fmt_num(extra["mean_rmse"]),
        border=True,
        help="Naive baseline: forecast the running mean",
    )

    if q.is_persistence(row["model"]) and not trained:
        no_model(ctx, device, count)
    if series.empty:
        st.info(f"No readings of {ctx.target} from {device} are stored yet.")
        refreshed_caption(ctx)
        return
    assert window is not None  # series is empty without one
    thinned = f" · one point per {window.bucket_s:.3g} s (bucket means)" if window.bucket_s > 0 else ""
    if window.capped:
        thinned += f" · shortened to the newest ~{series_mod.MAX_SCAN:,} readings"
    with st.container(border=True):
        st.markdown(f"**Actual vs predicted {ctx.target}** · {window.readings:,} readings{thinned}")
        st.altair_chart(forecast_chart(series, markers, ctx.target), width="stretch")
    with st.container(border=True):
        st.markdown(
            f"**Rolling RMSE** over {ctx.settings.drift.window} readings: the serving model against "
            "persistence, with the drift threshold"
        )
        chart = rmse_chart(
            series, markers, opt_float(row["threshold"]), opt_float(extra["mean_rmse"]), show_mean=show_mean
        )
        st.altair_chart(chart, width="stretch")
    st.markdown("**Recent events** of this device and its fleet model")
    if recent.empty:
        st.caption("No drift or model events for this device yet.")
    else:
        st.dataframe(event_table(recent), hide_index=True, placeholder="—", column_config=event_columns())
    refreshed_caption(ctx)


def worse_than_persistence(model: object, rmse: object, persistence_rmse: object) -> bool:
    """Whether a trained model serving this device forecasts worse than the last reading would.

    >>> worse_than_persistence("voc_ppb:v2", 5.0, 4.0), worse_than_persistence("persistence", 5.0, 4.0)
    (True, False)
    """
    if q.is_persistence(model if isinstance(model, str) else None):
        return False
    try:
        return float(rmse) > float(persistence_rmse)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def range_label(choice: str) -> str:
    """>>> [range_label(c) for c in ("auto", "1 h", "all")]
    ['since last event', 'last 1 h', 'all']
    """
    return (
        "since last event" if choice == series_mod.AUTO else choice if choice == "all" else f"last {choice}"
    )
