"""Model files: the model as data (native text) plus a JSON metadata file with its checksum.

A version lives in its own folder::

    <models_dir>/<scope>/v3/model.txt     LightGBM text format, or JSON coefficients
    <models_dir>/<scope>/v3/meta.json     kind, lags, features, target, window, scores, data hash, sha256

It is written to a temporary folder, flushed to disk and renamed into place, so a crash never
leaves a half-written version behind; :func:`load_model` refuses a version whose checksum or
metadata does not match, and nothing in it is ever executed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from edgeloop.errors import ModelFileError
from edgeloop.models.forecasters import KINDS, Forecaster, forecaster_from_text

FORMAT = "edgeloop-model/1"
MODEL_FILE = "model.txt"
META_FILE = "meta.json"
_REQUIRED = ("format", "scope", "target", "version", "label", "kind", "lags", "features", "sha256")


@dataclass
class LoadedModel:
    """A verified model ready to serve."""

    label: str
    forecaster: Forecaster
    meta: dict[str, Any]

    @property
    def val_rmse(self) -> float | None:
        value = self.meta.get("scores", {}).get("val_rmse")
        return float(value) if value is not None else None


def feature_names(lags: int) -> list[str]:
    """Names of the window columns, oldest first: lag_5 ... lag_1 for five lags."""
    return [f"lag_{i}" for i in range(lags, 0, -1)]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_model(version_dir: Path, forecaster: Forecaster, meta: dict[str, Any]) -> Path:
    """Write ``forecaster`` and ``meta`` atomically into ``version_dir`` (which must not exist)."""
    version_dir = Path(version_dir)
    if version_dir.exists():
        raise ModelFileError(f"{version_dir} already exists; versions are immutable")
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    body = forecaster.to_text().encode()
    full = {
        **meta,
        "format": FORMAT,
        "kind": forecaster.kind,
        "lags": forecaster.lags,
        "features": feature_names(forecaster.lags),
        "model_file": MODEL_FILE,
        "sha256": sha256_bytes(body),
    }
    missing = [k for k in _REQUIRED if k not in full]
    if missing:
        raise ModelFileError(f"metadata lacks {missing}")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version_dir.name}-", dir=version_dir.parent))
    try:
        _fsync_write(tmp / MODEL_FILE, body)
        _fsync_write(tmp / META_FILE, orjson.dumps(full, option=orjson.OPT_INDENT_2))
        os.rename(tmp, version_dir)
        dir_fd = os.open(version_dir.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version_dir


def read_meta(version_dir: Path) -> dict[str, Any]:
    try:
        meta = orjson.loads((Path(version_dir) / META_FILE).read_bytes())
    except FileNotFoundError as exc:
        raise ModelFileError(f"{version_dir}: no {META_FILE}") from exc
    except orjson.JSONDecodeError as exc:
        raise ModelFileError(f"{version_dir}: {META_FILE} is not valid JSON") from exc
    if not isinstance(meta, dict):
        raise ModelFileError(f"{version_dir}: {META_FILE} is not an object")
    return meta


def load_model(
    version_dir: Path, *, expect_lags: int | None = None, expect_target: str | None = None
) -> LoadedModel:
    """Load and verify one version; raise :class:`ModelFileError` if anything is off."""
    version_dir = Path(version_dir)
    meta = read_meta(version_dir)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ModelFileError(f"{version_dir}: metadata lacks {missing}")
    if meta["format"] != FORMAT:
        raise ModelFileError(f"{version_dir}: unknown format {meta['format']!r}")
    if meta["kind"] not in KINDS:
        raise ModelFileError(f"{version_dir}: unknown model kind {meta['kind']!r}")
    lags = int(meta["lags"])
    if meta["features"] != feature_names(lags):
        raise ModelFileError(f"{version_dir}: features {meta['features']} do not match {lags} lags")
    if expect_lags is not None and lags != expect_lags:
        raise ModelFileError(f"{version_dir}: model uses {lags} lags, the edge keeps {expect_lags}")
    if expect_target is not None and meta["target"] != expect_target:
        raise ModelFileError(f"{version_dir}: model forecasts {meta['target']!r}, not {expect_target!r}")
    try:
        body = (version_dir / MODEL_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise ModelFileError(f"{version_dir}: no {MODEL_FILE}") from exc
    if sha256_bytes(body) != meta["sha256"]:
        raise ModelFileError(f"{version_dir}: checksum mismatch: the model file is corrupt or was altered")
    forecaster = forecaster_from_text(meta["kind"], body.decode(), lags)
    return LoadedModel(label=str(meta["label"]), forecaster=forecaster, meta=meta)
