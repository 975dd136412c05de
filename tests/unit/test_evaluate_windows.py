"""edgeloop evaluate, per labelled window: which strategy alarmed inside it, when, in JSON and markdown."""

from __future__ import annotations

from typing import Any

import numpy as np
from tests.unit.test_evaluate import regime_change_replay

from edgeloop.evaluate import report
from edgeloop.evaluate.datasets import Track
from edgeloop.evaluate.runs import RunResult, TargetHeader
from edgeloop.evaluate.strategies import parse_strategies

STEP = 300.0  # 5-minute readings, as NAB's
DAY0 = 1_386_028_800.0  # 2013-12-03T00:00:00Z
INITIAL = {"kind": "linear", "val_rmse": 1.0, "n_samples": 100}


def fabricated(*, control: bool = False, has_ground_truth: bool = True) -> TargetHeader:
    """Two devices; dev-a's first window starts inside the training part (reading 50 < start 100)."""
    n = 1000
    ts = DAY0 + np.arange(n) * STEP
    tracks = [
        Track(
            "dev-a",
            ts,
            np.zeros(n),
            100,
            [(50, 150, "anomaly"), (400, 500, "anomaly"), (700, 800, "anomaly")],
        ),
        Track("dev-b", ts, np.zeros(n), 100, [(300, 360, "level_shift")]),
    ]
    return TargetHeader("nab", "value", "test", control, "fifths", has_ground_truth, tracks, INITIAL, 1.0, "")


ALARMS = {
    # reading 60 is in dev-a's training part: not scored, so 120 detects the first window
    "page-hinkley": {"dev-a": [60, 120, 130, 450, 900], "dev-b": [359]},
    "river-ph": {"dev-a": [20, 499, 500, 650], "dev-b": [200, 360]},
    "static": {"dev-a": [], "dev-b": []},
}


def block_of(header: TargetHeader, alarms: dict[str, dict[str, list[int]]] = ALARMS) -> dict[str, Any]:
    strategies = parse_strategies(["static,page-hinkley,river-ph"])
    runs = {
        name: RunResult(
            name, {t.device: np.zeros(len(t.values)) for t in header.tracks}, dict(a), seconds=1.0
        )
        for name, a in alarms.items()
    }
    return report.target_report(header, runs, strategies, {})


def assert_windows_agree_with_detection(block: dict[str, Any]) -> None:
    """The per-window table and the detected/windows counts are one rule seen two ways."""
    for name, m in block["strategies"].items():
        det = m["detection"]
        if det is None:
            assert all(name not in w["first_alarm"] for w in block["windows"])
            continue
        hits = [w["first_alarm"][name] for w in block["windows"]]
        assert det["windows"] == len(block["windows"])
        assert det["detected"] == sum(h is not None for h in hits)
        assert det["delays"] == [h["delay_readings"] for h in hits if h is not None]


def test_each_window_lists_each_alarming_strategys_first_alarm_inside_it() -> None:
    block = block_of(fabricated())
    windows = block["windows"]
    assert [(w["device"], w["kind"], w["in_initial_training"]) for w in windows] == [
        ("dev-a", "anomaly", True),
        ("dev-a", "anomaly", False),
        ("dev-a", "anomaly", False),
        ("dev-b", "level_shift", False),
    ]
    assert windows[1]["start"] == "2013-12-04T09:20:00+00:00"  # reading 400, 33h20 after DAY0
    assert windows[1]["end"] == "2013-12-04T17:35:00+00:00"  # reading 499, the last inside
    assert (windows[1]["first_reading"], windows[1]["last_reading"]) == (400, 499)
    # Only strategies that raise alarms get an entry.
    assert all(list(w["first_alarm"]) == ["page-hinkley", "river-ph"] for w in windows)
    ph = [w["first_alarm"]["page-hinkley"] for w in windows]
    assert [None if a is None else a["reading"] for a in ph] == [120, 450, None, 359]
    assert ph[0] == {
        "ts": "2013-12-03T10:00:00+00:00",
        "reading": 120,
        "delay_readings": 70,
        "delay_hours": 5.833,
    }
    # river-ph: 20 is in training, 499 is the window's last reading, 500 and 360 are just past the end.
    river = [w["first_alarm"]["river-ph"] for w in windows]
    assert [None if a is None else a["delay_readings"] for a in river] == [None, 99, None, None]
    assert_windows_agree_with_detection(block)


def test_no_windows_on_a_control_or_without_ground_truth() -> None:
    assert block_of(fabricated(control=True))["windows"] == []
    assert block_of(fabricated(has_ground_truth=False))["windows"] == []


def test_windows_agree_with_detection_on_a_real_replay() -> None:
    r = regime_change_replay()
    strategies = parse_strategies(["static,relative,river-ph"])
    block = report.target_report(r.header, {s.name: r.run(s) for s in strategies}, strategies, {})
    assert len(block["windows"]) == 1 and set(block["windows"][0]["first_alarm"]) == {"relative", "river-ph"}
    assert block["strategies"]["river-ph"]["detection"]["detected"] == 1  # so the agreement is not vacuous
    assert_windows_agree_with_detection(block)


def test_markdown_has_one_row_per_window_and_a_column_per_alarming_strategy() -> None:
    block = block_of(fabricated())
    payload = {
        "default_policy": "page-hinkley",
        "strategies": ["static", "page-hinkley", "river-ph"],
        "descriptions": {},
        "settings_note": "",
        "results": [block],
        "targets": [],
    }
    lines = report.markdown(payload).splitlines()
    head = lines.index("| window (device) | kind | start | end | PH* | river-PH |")
    assert lines[head + 2 : head + 6] == [
        "| 1 (dev-a), *initial training* | anomaly | 2013-12-03T04:10 | 2013-12-03T12:25 | +5.83h (70) | - |",
        "| 2 (dev-a) | anomaly | 2013-12-04T09:20 | 2013-12-04T17:35 | +4.17h (50) | +8.25h (99) |",
        "| 3 (dev-a) | anomaly | 2013-12-05T10:20 | 2013-12-05T18:35 | - | - |",
        "| 1 (dev-b) | level_shift | 2013-12-04T01:00 | 2013-12-04T05:55 | +4.92h (59) | - |",
    ]
    without = report.markdown({**payload, "results": [block_of(fabricated(has_ground_truth=False))]})
    assert "| window (device) |" not in without
