"""The device view's Altair charts: readings against forecasts, rolling RMSE, event markers.

Colours are mid-tone so they read on Streamlit's light and dark themes alike; the forecast line is
also dashed, so actual and predicted differ without colour. Event markers stand on their own lane
each (a symbol at a fixed height per kind), so a retrain finishing a second before its promotion is
not hidden under it.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

MARKER_COLORS = {
    "drift": "#f28e2b",
    "retrain": "#3b82f6",
    "promotion": "#22a34a",
    "rejection": "#9ca3af",
    "rollback": "#e03131",
    "other": "#b07cc6",  # kinds this dashboard does not know yet
}
MARKER_SHAPES = {
    "drift": "triangle-down",
    "retrain": "circle",
    "promotion": "diamond",
    "rejection": "cross",
    "rollback": "square",
    "other": "triangle-up",
}
SERIES_COLORS = {"actual": "#0ea5b7", "predicted": "#e8590c"}
RMSE_COLORS = {"model": "#e8590c", "persistence": "#8b95a5"}
REFERENCE_COLORS = {"drift threshold": "#e03131", "mean RMSE": "#a78bfa"}
DAY_S = 86400.0


def _time_x(span_s: float = 0.0) -> alt.X:
    # Epoch milliseconds on a UTC scale: the browser's time zone must not shift a page that says UTC.
    # Across days the labels carry the date, within one day the seconds.
    fmt = "%m-%d %H:%M" if span_s > DAY_S / 2 else "%H:%M:%S"
    return alt.X(
        "ms:T",
        title="reading time (UTC)",
        scale=alt.Scale(type="utc"),
        axis=alt.Axis(format=fmt, labelOverlap=True, grid=False),
    )


def _span(df: pd.DataFrame) -> float:
    return float(df["ts"].max() - df["ts"].min()) if len(df) > 1 else 0.0


def _with_when(df: pd.DataFrame) -> pd.DataFrame:
    """Adds the x value (epoch ms) and the tooltip's preformatted UTC time."""
    when = pd.to_datetime(df["ts"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
    return df.assign(ms=df["ts"] * 1000.0, when=when)


def marker_layer(markers: pd.DataFrame, *, span_s: float = 0.0, legend: bool = True) -> alt.LayerChart:
    """Rules at drift, retrain, promotion, rejection and rollback events, each kind with a symbol on
    its own lane at the top. The legend lists every kind even when none is in view."""
    data = markers if "marker" in markers else markers.assign(marker=pd.Series(dtype=str))
    data = data.assign(marker=data["marker"].fillna("other")) if not data.empty else data
    lane = {k: 6 + 11 * i for i, k in enumerate(MARKER_COLORS)}
    data = _with_when(data) if not data.empty else data.assign(ms=[], when=[])
    data = data.assign(lane=data["marker"].map(lane)).fillna(
        {"version": "", "previous_version": "", "reason": "", "kind": "", "scope": ""}
    )
    for col in ("kind", "scope", "version", "previous_version", "reason"):
        if col not in data:
            data[col] = ""
    color = alt.Color(
        "marker:N",
        title="Event",
        scale=alt.Scale(domain=list(MARKER_COLORS), range=list(MARKER_COLORS.values())),
        legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=3) if legend else None,
    )
    tooltip: list[Any] = [
        alt.Tooltip("when:N", title="reading time (UTC)"),
        "kind:N",
        "scope:N",
        "version:N",
        alt.Tooltip("previous_version:N", title="previous"),
        "reason:N",
    ]
    base = alt.Chart(data).encode(x=_time_x(span_s), color=color, tooltip=tooltip)
    rules = base.mark_rule(strokeWidth=2, strokeDash=[4, 3], opacity=0.8)
    symbols = base.mark_point(filled=True, size=70, opacity=1.0).encode(
        y=alt.Y("lane:Q", scale=None),
        shape=alt.Shape(
            "marker:N",
            scale=alt.Scale(domain=list(MARKER_SHAPES), range=list(MARKER_SHAPES.values())),
            legend=None,
        ),
    )
    return alt.LayerChart(layer=[rules, symbols])


def forecast_chart(series: pd.DataFrame, markers: pd.DataFrame, target: str) -> alt.LayerChart:
    """Actual readings against what the serving model forecast for them, with event markers."""
    span = _span(series)
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
        .mark_line(strokeWidth=1.6)
        .encode(
            x=_time_x(span),
            y=alt.Y("reading:Q", title=target, scale=alt.Scale(zero=False)),
            color=alt.Color(
                "series:N",
                title="Series",
                scale=alt.Scale(domain=list(SERIES_COLORS), range=list(SERIES_COLORS.values())),
            ),
            # Same field and title as the color: one merged legend, showing colours and dashes.
            strokeDash=alt.StrokeDash(
                "series:N",
                title="Series",
                scale=alt.Scale(domain=list(SERIES_COLORS), range=[[1, 0], [5, 3]]),
            ),
            tooltip=[
                alt.Tooltip("when:N", title="reading time (UTC)"),
                "series:N",
                alt.Tooltip("reading:Q", format=".2f"),
                "model:N",
            ],
        )
    )
    return (
        alt.layer(lines, marker_layer(markers, span_s=span))
        .resolve_scale(color="independent", shape="independent", strokeDash="independent")
        .properties(height=320)
    )


def rmse_top(series: pd.DataFrame) -> float | None:
    """The RMSE chart's y maximum: the larger of model and persistence, so a far-off reference line
    does not squash them (``None`` without any)."""
    values = pd.concat([series["rolling_rmse"], series["rolling_persistence_rmse"]]).dropna()
    return float(values.max()) * 1.15 if not values.empty and values.max() > 0 else None


def rmse_chart(
    series: pd.DataFrame,
    markers: pd.DataFrame,
    threshold: float | None,
    mean_rmse: float | None,
    *,
    show_mean: bool = False,
) -> alt.LayerChart:
    """The serving model's and persistence's rolling RMSE, scaled to those two, with the drift
    threshold and (``show_mean``) the mean baseline where they fall within the scale."""
    span = _span(series)
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
    top = rmse_top(series)
    y_scale = alt.Scale(domain=[0, top], clamp=True) if top is not None else alt.Scale(zero=True)
    layers: list[Any] = [
        alt.Chart(long)
        .mark_line(strokeWidth=1.6)
        .encode(
            x=_time_x(span),
            y=alt.Y("rmse:Q", title="RMSE", scale=y_scale),
            color=alt.Color(
                "series:N",
                title="Rolling RMSE",
                scale=alt.Scale(domain=list(RMSE_COLORS), range=list(RMSE_COLORS.values())),
            ),
            tooltip=[
                alt.Tooltip("when:N", title="reading time (UTC)"),
                "series:N",
                alt.Tooltip("rmse:Q", format=".3f"),
            ],
        )
    ]
    refs = [
        (name, value)
        for name, value in (("drift threshold", threshold), ("mean RMSE", mean_rmse if show_mean else None))
        if value is not None and (top is None or value <= top)
    ]
    if refs:
        ref = pd.DataFrame({"line": [r[0] for r in refs], "rmse": [r[1] for r in refs]})
        names = [r[0] for r in refs]
        scale = alt.Scale(domain=names, range=[REFERENCE_COLORS[n] for n in names])
        rule = alt.Chart(ref).encode(
            y=alt.Y("rmse:Q", scale=y_scale), tooltip=["line:N", alt.Tooltip("rmse:Q", format=".3f")]
        )
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
    layers.append(marker_layer(markers, span_s=span, legend=False))  # the chart above has the legend
    return alt.layer(*layers).resolve_scale(color="independent", shape="independent").properties(height=220)
