"""Model files: the model as data (native text) plus a JSON metadata file with its checksum.

A version lives in its own folder::

    <models_dir>/<scope>/v3/model.txt     LightGBM text format, or JSON coefficients
    <models_dir>/<scope>/v3/meta.json     kind, lags, features, target, window, scores, data hash, sha256

It is written to a temporary folder, flushed to disk and renamed into place, so a crash never
leaves a half-written version behind (a crashed writer leaves only a ``.tmp-*`` folder, which
readers ignore). :func:`load_model` checks every metadata field by type and value, the checksum,
and that the forecaster builds and predicts, and refuses the version with a
:class:`~edgeloop.errors.ModelFileError` naming the file and the field otherwise; nothing in it is
ever executed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeloop.errors import ModelFileError
from edgeloop.models.forecasters import KINDS, Forecaster, forecaster_from_text
from edgeloop.scopes import parse_scope, version_label

FORMAT = "edgeloop-model/1"
MODEL_FILE = "model.txt"
META_FILE = "meta.json"
MAX_LAGS = 10_000  # far above any useful window; refuses absurd metadata before allocating for it


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class Scores(_Strict):
    val_rmse: float | None = None
    persistence_rmse: float | None = None
    mean_rmse: float | None = None
    champion_rmse: float | None = None
    champion: str | None = None
    candidates: dict[str, float | None] = Field(default_factory=dict)


class ModelMeta(_Strict):
    """``meta.json``: every field the edge, the trainer or the CLI reads, with its type."""

    format: str
    scope: str = Field(min_length=1)
    target: str = Field(min_length=1)
    device: str | None = None
    version: int = Field(ge=1)
    label: str
    kind: str
    lags: int = Field(ge=1, le=MAX_LAGS)
    features: list[str]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    model_file: str = MODEL_FILE
    created: float | None = None
    trigger: str | None = None
    formulation: str | None = None
    data_hash: str | None = None
    window: dict[str, Any] | None = None
    scores: Scores = Field(default_factory=Scores)


def _field_error(where: Path, exc: ValidationError) -> ModelFileError:
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(top level)"
    got = repr(first.get("input"))[:60]
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return ModelFileError(f"{where}: field {loc!r}: {first['msg']}, got {got}{more}")


def check_meta(meta: Any, where: Path) -> ModelMeta:
    """Validate ``meta.json`` content by type and by its own consistency; ``where`` names the file."""
    if not isinstance(meta, dict):
        raise ModelFileError(f"{where}: not a JSON object")
    try:
        m = ModelMeta.model_validate(meta)
    except ValidationError as exc:
        raise _field_error(where, exc) from exc
    problems = [
        ("format", m.format != FORMAT, f"unknown format {m.format!r}, expected {FORMAT!r}"),
        ("kind", m.kind not in KINDS, f"unknown model kind {m.kind!r}"),
        ("features", m.features != feature_names(m.lags), f"{m.features} do not match {m.lags} lags"),
        ("target", parse_scope(m.scope)[0] != m.target, f"{m.target!r} is not the target of {m.scope!r}"),
        ("label", m.label != version_label(m.scope, m.version), f"{m.label!r} names another version"),
        ("model_file", m.model_file != MODEL_FILE, f"{m.model_file!r}, expected {MODEL_FILE!r}"),
    ]
    for name, bad, why in problems:
        if bad:
            raise ModelFileError(f"{where}: field {name!r}: {why}")
    return m


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
    check_meta(full, version_dir / META_FILE)  # never write what a reader would refuse
    return write_version(version_dir, body, orjson.dumps(full, option=orjson.OPT_INDENT_2))


def write_version(
    version_dir: Path, model_body: bytes, meta_body: bytes, *, verify: dict[str, Any] | None = None
) -> Path:
    """Write a version's two files atomically into ``version_dir`` (which must not exist).

    With ``verify`` (the keyword arguments of :func:`load_model`), the files are loaded and verified
    in the temporary folder first, and nothing is renamed into place unless they pass.
    """
    version_dir = Path(version_dir)
    if version_dir.exists():
        raise ModelFileError(f"{version_dir} already exists; versions are immutable")
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version_dir.name}-", dir=version_dir.parent))
    try:
        _fsync_write(tmp / MODEL_FILE, model_body)
        _fsync_write(tmp / META_FILE, meta_body)
        if verify is not None:
            load_model(tmp, **verify)
        try:
            os.rename(tmp, version_dir)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):  # another writer got this number first
                raise ModelFileError(f"{version_dir} already exists; versions are immutable") from exc
            raise
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
    """``meta.json`` of one version, validated by :func:`check_meta`."""
    path = Path(version_dir) / META_FILE
    try:
        meta = orjson.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ModelFileError(f"{version_dir}: no {META_FILE}") from exc
    except orjson.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: not valid JSON") from exc
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read: {exc}") from exc
    check_meta(meta, path)
    return dict(meta)


def load_model(
    version_dir: Path,
    *,
    expect_lags: int | None = None,
    expect_target: str | None = None,
    expect_scope: str | None = None,
    expect_version: int | None = None,
) -> LoadedModel:
    """Load and verify one version; raise :class:`ModelFileError` if anything is off.

    Verified means: every metadata field valid and as expected, the model file's checksum right, and
    the forecaster built from it predicts finite values on a window, so a version that passes can serve.
    """
    version_dir = Path(version_dir)
    meta = read_meta(version_dir)
    where = version_dir / META_FILE
    lags = int(meta["lags"])
    expected = (
        ("scope", expect_scope, meta["scope"], "expected"),
        ("version", expect_version, meta["version"], "expected"),
        ("target", expect_target, meta["target"], "expected"),
        ("lags", expect_lags, lags, "the edge keeps"),
    )
    for name, want, have, says in expected:
        if want is not None and have != want:
            raise ModelFileError(f"{where}: field {name!r} is {have!r}, {says} {want!r}")
    path = version_dir / MODEL_FILE
    try:
        body = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelFileError(f"{version_dir}: no {MODEL_FILE}") from exc
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read: {exc}") from exc
    if sha256_bytes(body) != meta["sha256"]:
        raise ModelFileError(f"{path}: checksum mismatch: the model file is corrupt or was altered")
    forecaster = build_forecaster(path, meta["kind"], body, lags)
    return LoadedModel(label=str(meta["label"]), forecaster=forecaster, meta=meta)


def build_forecaster(path: Path, kind: str, body: bytes, lags: int) -> Forecaster:
    """Rebuild the forecaster and make it predict once; any failure is the file's fault."""
    try:
        forecaster = forecaster_from_text(kind, body.decode(), lags)
        probe = np.linspace(1.0, 2.0, lags, dtype=np.float64).reshape(1, lags)
        with np.errstate(all="ignore"):  # an overflow is reported below as a non-finite forecast
            out = np.asarray(forecaster.predict(probe), dtype=np.float64)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    except Exception as exc:  # a malformed body can fail anywhere in a parser; all of it is refusal
        raise ModelFileError(f"{path}: not a valid {kind} model: {type(exc).__name__}: {exc}") from exc
    if out.shape != (1,) or not np.all(np.isfinite(out)):
        raise ModelFileError(f"{path}: the {kind} model does not predict a finite value (got {out!r:.60})")
    return forecaster
