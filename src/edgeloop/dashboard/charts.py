"""The device view's Altair charts: readings against forecasts, rolling RMSE, event markers."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

MARKER_COLORS = {
    "drift": "#f28e2b",
    "retrain": "#4e79a7",
    "promotion": "#2ca02c",
    "rejection": "#9c9c9c",
    "rollback": "#d62728",
}
SERIES_COLORS = {"actual": "#1f2937", "predicted": "#4e79a7"}
RMSE_COLORS = {"model": "#4e79a7", "persistence": "#b0b7c3"}


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
