"""The Models view: every trained version of the target's scopes, newest first."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from edgeloop.dashboard import queries as q
from edgeloop.dashboard.common import (
    DECISION_LOOK,
    UTC_FORMAT,
    Context,
    no_model,
    refreshed_caption,
    store,
    styled,
)
from edgeloop.dashboard.lineage import lineage, lineage_events, pointers, serving

MODEL_COLUMNS = (
    "label", "standing", "parent", "devices", "val_rmse", "champion_rmse", "gain", "mlflow", "reason",
    "window", "persistence_rmse", "mean_rmse", "n_samples", "formulation", "trigger", "decision", "created",
)  # fmt: skip


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
        in_view = list(df["scope"].unique())
        df = lineage(
            df,
            pointers(ctx.settings.models_dir, in_view),
            lineage_events(conn, in_view),
            serving(conn, ctx.target),
        )
    standings = df["standing"].value_counts()
    cols = st.columns(5)
    cols[0].metric("Versions", len(df), border=True, icon=":material/history:")
    cols[1].metric(
        "Champions",
        int(standings.get("champion", 0)),
        border=True,
        icon=":material/trophy:",
        help="Versions the champion pointers name now (one per scope at most)",
    )
    cols[2].metric("Retired", int(standings.get("retired", 0)), border=True, icon=":material/history:")
    cols[3].metric("Rejected", int(standings.get("rejected", 0)), border=True, icon=":material/close:")
    cols[4].metric("Rolled back", int(standings.get("rolled_back", 0)), border=True, icon=":material/undo:")
    table = df.assign(
        window=[_window(a, b) for a, b in zip(df["window_start"], df["window_end"], strict=True)],
        mlflow=[q.mlflow_run_url(ctx.options.mlflow_url, r) for r in df["mlflow_run_id"]],
    )
    st.dataframe(
        styled(table, ["standing", "decision"], DECISION_LOOK),
        hide_index=True,
        placeholder="—",
        height=min(38 + 35 * len(table), 640),
        column_order=MODEL_COLUMNS,
        column_config={
            "label": st.column_config.TextColumn("Version"),
            "standing": st.column_config.TextColumn(
                "Status", help="Now: champion, retired, rolled back or rejected (pointer and events)"
            ),
            "parent": st.column_config.TextColumn(
                "Parent", help="The champion this version was measured against"
            ),
            "devices": st.column_config.TextColumn("Serving devices", help="Devices served by it now"),
            "decision": st.column_config.TextColumn("Decision at training"),
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
            "created": st.column_config.DatetimeColumn("Trained (wall clock, UTC)", format=UTC_FORMAT),
        },
    )
    st.caption(
        f"Newest first. Run links open the MLflow UI at {ctx.options.mlflow_url} "
        "(EDGELOOP_DASHBOARD_MLFLOW_URL)."
    )
    refreshed_caption(ctx)
