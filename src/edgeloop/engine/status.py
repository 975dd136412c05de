"""What the engine shows of itself: status rows for the dashboard and the fleet-wide summary.

Both are read every few seconds, not per reading, from the tracks the hot path keeps up to date.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from edgeloop.engine.rows import StatusRow
from edgeloop.engine.track import _Track

# Per track: wall time and count of the last rate mark, and what the last status row showed.
Mark = tuple[float, int, "tuple[Any, ...] | None"]


def status_rows(
    tracks: dict[tuple[str, str], _Track], marks: dict[tuple[str, str], Mark], wall_now: float
) -> list[StatusRow]:
    """Rows for the dashboard, one per device and target that changed since the last call (the
    store upserts, so an unchanged row stays as written); rates are per wall-clock second.

    A device that stops talking gets one more row with rate 0, then none until it talks again,
    so its ``updated`` time ages and the dashboard shows it silent.
    """
    rows = []
    for key, t in tracks.items():
        mark_time, mark_count, shown = marks.get(key, (wall_now, t.count, None))
        elapsed = wall_now - mark_time
        rate = (t.count - mark_count) / elapsed if elapsed > 0 else 0.0
        model_rmse, threshold = t.model_rmse.value, t.guard.detector.threshold
        view = (t.count, rate > 0, model_rmse, threshold, t.last_model, t.status)
        marks[key] = (wall_now, t.count, view)
        if view == shown:
            continue
        rows.append(
            StatusRow(
                t.device,
                t.target,
                t.last_ts,
                t.count,
                rate,
                model_rmse,
                threshold,
                t.persist_rmse.value,
                t.mean_rmse.value,
                t.last_model,
                t.status,
                wall_now,
            )
        )
    return rows


def summary(tracks: dict[tuple[str, str], _Track]) -> dict[str, dict[str, float | int | str | None]]:
    """Fleet-wide RMSE per target of the models now serving, beside persistence and the mean,
    on the same readings: every reading scored since each device's current model took over."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    devices: dict[str, int] = defaultdict(int)
    versions: dict[str, set[str]] = defaultdict(set)
    for (_, target), t in tracks.items():
        n, sm, sp, sa = t.since_model
        if n == 0:
            continue
        total = acc[target]
        total[0] += n
        total[1] += sm
        total[2] += sp
        total[3] += sa
        devices[target] += 1
        versions[target].add(t.last_model)
    return {
        target: {
            "model_rmse": (sm / n) ** 0.5,
            "persistence_rmse": (sp / n) ** 0.5,
            "mean_rmse": (sa / n) ** 0.5,
            "readings": int(n),
            "devices": devices[target],
            "models": ", ".join(sorted(versions[target])),
        }
        for target, (n, sm, sp, sa) in acc.items()
    }
