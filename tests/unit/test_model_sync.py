"""The edge's model loader: the newest good champion serves, each refusal is reported once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeloop.config import load_settings
from edgeloop.engine.features import training_pairs
from edgeloop.models.forecasters import LinearForecaster
from edgeloop.models.modelfile import MODEL_FILE, save_model
from edgeloop.registry.local import LocalRegistry
from edgeloop.scopes import version_label
from edgeloop.service.edge import build_engine
from edgeloop.service.model_sync import ModelSync
from edgeloop.telemetry.schema import Event


def setup(tmp_path: Path, versions: int) -> tuple[LocalRegistry, ModelSync, list[Event]]:
    settings = load_settings(None, data_dir=tmp_path)
    reg = LocalRegistry(settings.models_dir)
    y = 100 + 10 * np.sin(np.arange(400) / 5.0)
    model = LinearForecaster(5).fit(*training_pairs(y, 5))
    for _ in range(versions):
        v = reg.next_version("voc_ppb")
        meta = {"scope": "voc_ppb", "target": "voc_ppb", "version": v, "label": version_label("voc_ppb", v)}
        save_model(reg.version_dir("voc_ppb", v), model, meta)
        reg.promote("voc_ppb", v)
    events: list[Event] = []
    sync = ModelSync(reg, build_engine(settings), settings.model.lags, events.extend)
    return reg, sync, events


def serving(sync: ModelSync) -> str | None:
    s = sync.engine.serving.get("voc_ppb")
    return s.model.label if s else None


def test_a_bad_champion_is_reported_once_and_a_repaired_one_serves_again(tmp_path: Path) -> None:
    reg, sync, events = setup(tmp_path, 2)
    path = reg.version_dir("voc_ppb", 2) / MODEL_FILE
    good = path.read_bytes()
    path.write_bytes(good.replace(b"]", b", 1.0]", 1))
    for _ in range(5):  # polls
        sync.sync()
    assert serving(sync) == "voc_ppb:v1"
    assert [(e.kind, e.version, e.previous_version) for e in events] == [
        ("model_load_failed", "voc_ppb:v2", "voc_ppb:v1")
    ]
    path.write_bytes(good)
    sync.sync()
    assert serving(sync) == "voc_ppb:v2" and len(events) == 1


def test_a_promotion_that_does_not_load_keeps_the_current_model(tmp_path: Path) -> None:
    reg, sync, events = setup(tmp_path, 1)
    sync.sync()
    save_model(
        reg.version_dir("voc_ppb", 2),
        LinearForecaster(3).fit(*training_pairs(np.arange(100.0), 3)),  # the edge keeps 5 lags
        {"scope": "voc_ppb", "target": "voc_ppb", "version": 2, "label": "voc_ppb:v2"},
    )
    reg.promote("voc_ppb", 2)  # valid on its own, so the pointer moves
    assert not sync.install("voc_ppb", 2)
    sync.sync()
    sync.sync()
    assert serving(sync) == "voc_ppb:v1"
    assert len(events) == 1 and "field 'lags'" in events[0].reason  # the poll does not report it again
    assert reg.rollback("voc_ppb", rejected=2) == 1
    sync.sync()
    assert serving(sync) == "voc_ppb:v1" and len(events) == 1
