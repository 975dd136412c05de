"""The Events view: the drift and model event log, newest first."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from edgeloop.dashboard import queries as q
from edgeloop.dashboard.charts import MARKER_COLORS
from edgeloop.dashboard.common import UTC_FORMAT, Context, refreshed_caption, store
from edgeloop.telemetry.schema import EVENT_KINDS


def event_columns() -> dict[str, Any]:
    return {
        "time": st.column_config.DatetimeColumn(
            "Time (UTC)",
            format=UTC_FORMAT,
            help="The edge's drift and model decisions carry the reading time they happened at; "
            "trainings and CLI actions the wall clock",
        ),
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
            column_config=event_columns(),
        )
        st.caption(f"Newest {len(df)} events first (at most {limit}).")
    refreshed_caption(ctx)
