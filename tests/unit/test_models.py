"""Forecasters, training and model files: data not code, atomic, verified."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgeloop.adapters.store import Series
from edgeloop.engine.features import training_pairs
from edgeloop.errors import ModelFileError
from edgeloop.models.forecasters import LightGBMForecaster, LinearForecaster, rmse
from edgeloop.models.modelfile import MODEL_FILE, load_model, save_model
from edgeloop.models.training import NotEnoughData, train_candidates
from edgeloop.registry.local import LocalRegistry
from edgeloop.scopes import parse_label, version_label


def meta(version: int = 1, scope: str = "voc_ppb") -> dict[str, object]:
    return {"scope": scope, "target": "voc_ppb", "version": version, "label": version_label(scope, version)}


def ar_series(n: int, seed: int = 0, level: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    for t in range(2, n):
        x[t] = 1.6 * x[t - 1] - 0.8 * x[t - 2] + rng.normal()
    return level + x


@pytest.mark.parametrize("kind", ["linear", "lgbm-level", "lgbm-delta"])
def test_round_trip_is_exact(tmp_path: Path, kind: str) -> None:
    y = ar_series(600)
    x, t = training_pairs(y, 5)
    model = LinearForecaster(5) if kind == "linear" else LightGBMForecaster(5, kind.split("-")[1], rounds=20)  # type: ignore[arg-type]
    model.fit(x, t)
    save_model(tmp_path / "v1", model, meta())
    loaded = load_model(tmp_path / "v1", expect_lags=5, expect_target="voc_ppb")
    np.testing.assert_array_equal(loaded.forecaster.predict(x), model.predict(x))
    assert loaded.meta["kind"] == kind and loaded.meta["features"] == [
        "lag_5",
        "lag_4",
        "lag_3",
        "lag_2",
        "lag_1",
    ]


def test_model_files_are_text_not_pickles(tmp_path: Path) -> None:
    y = ar_series(300)
    save_model(tmp_path / "v1", LightGBMForecaster(5, "delta", rounds=5).fit(*training_pairs(y, 5)), meta())
    body = (tmp_path / "v1" / MODEL_FILE).read_bytes()
    assert body.startswith(b"tree") and b"\x80\x04" not in body[:2]


def test_tampered_or_truncated_files_are_refused(tmp_path: Path) -> None:
    y = ar_series(300)
    save_model(tmp_path / "v1", LinearForecaster(5).fit(*training_pairs(y, 5)), meta())
    path = tmp_path / "v1" / MODEL_FILE
    path.write_text(path.read_text().replace("0", "9", 1))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(tmp_path / "v1")
    path.write_text("")
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(tmp_path / "v1")
    (tmp_path / "v1" / "meta.json").write_text("{")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(tmp_path / "v1")
    with pytest.raises(ModelFileError, match="lags"):
        save_model(tmp_path / "v2", LinearForecaster(3).fit(*training_pairs(y, 3)), meta(2))
        load_model(tmp_path / "v2", expect_lags=5)


def test_versions_are_immutable_and_half_writes_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = LinearForecaster(5).fit(*training_pairs(ar_series(200), 5))
    save_model(tmp_path / "v1", model, meta())
    with pytest.raises(ModelFileError, match="immutable"):
        save_model(tmp_path / "v1", model, meta())

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(tmp_path / "v2", model, meta(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


def test_training_never_serves_worse_than_persistence_on_a_random_walk() -> None:
    rng = np.random.default_rng(5)
    walk = np.cumsum(rng.normal(size=3000))
    result = train_candidates([Series("d", np.arange(3000.0), walk)], lags=5, rounds=30)
    assert result.val_rmse <= result.scores["persistence"]
    assert set(result.scores) == {"persistence", "linear", "lgbm-level", "lgbm-delta"}
    assert result.mean_rmse > result.persistence_rmse  # the mean baseline is reported too


def test_delta_formulation_survives_a_level_shift_that_breaks_the_level_tree() -> None:
    y = ar_series(2000)
    x, t = training_pairs(y, 5)
    level = LightGBMForecaster(5, "level", rounds=50).fit(x, t)
    delta = LightGBMForecaster(5, "delta", rounds=50).fit(x, t)
    shifted = ar_series(500, seed=9, level=300.0)  # 200 above anything seen in training
    xs, ts = training_pairs(shifted, 5)
    assert rmse(delta.predict(xs), ts) < 0.2 * rmse(level.predict(xs), ts)


def test_split_is_time_ordered_per_device() -> None:
    a = Series("a", np.arange(400.0), np.arange(400.0))
    result = train_candidates([a], lags=5, candidates=["persistence"], validation_fraction=0.25)
    assert result.split.train_y.max() < result.split.val_y.min()  # no future reading leaks into training
    with pytest.raises(NotEnoughData):
        train_candidates([Series("a", np.arange(10.0), np.arange(10.0))], lags=5)


def test_the_chosen_model_is_refitted_on_its_holdout_and_keeps_its_holdout_scores() -> None:
    # The dynamics change in the newest quarter: a model fitted without it has not seen them.
    y = np.concatenate([ar_series(1500), 100 + 3 * (ar_series(500, seed=3) - 100)])
    series = [Series("d", np.arange(len(y), dtype=float), y)]
    served = train_candidates(series, lags=5, candidates=["linear"])
    stale = train_candidates(series, lags=5, candidates=["linear"], refit=False)
    assert served.kind == stale.kind == "linear" and served.scores == stale.scores
    assert served.holdout_errors is not None and len(served.holdout_errors) == len(served.split.val_y)
    split = served.split
    everything = LinearForecaster(5).fit(
        np.vstack([split.train_x, split.val_x]), np.concatenate([split.train_y, split.val_y])
    )
    assert np.allclose(served.forecaster.predict(split.val_x), everything.predict(split.val_x))
    assert rmse(served.forecaster.predict(split.val_x), split.val_y) < rmse(
        stale.forecaster.predict(split.val_x), split.val_y
    )


def test_registry_champion_pointer_and_rollback(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path)
    model = LinearForecaster(5).fit(*training_pairs(ar_series(300), 5))
    for v in (1, 2):
        save_model(reg.version_dir("voc_ppb", v), model, meta(v))
    assert reg.champion("voc_ppb") is None and reg.next_version("voc_ppb") == 3
    reg.promote("voc_ppb", 1)
    reg.promote("voc_ppb", 2)
    assert reg.load_champion("voc_ppb", lags=5).label == "voc_ppb:v2"  # type: ignore[union-attr]
    assert reg.rollback("voc_ppb") == 1 and reg.champion("voc_ppb") == 1
    assert reg.rollback("voc_ppb") is None and reg.champion("voc_ppb") is None
    assert reg.scope_dir("../etc").parent == tmp_path  # encoded: a scope never escapes the folder
    assert parse_label("voc_ppb@dev-1:v12") == ("voc_ppb@dev-1", 12)
