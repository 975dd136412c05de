"""The local registry: scope folders, metadata checks, champion fallback, the lock, crashed writers."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeloop.engine.features import training_pairs
from edgeloop.errors import ModelFileError
from edgeloop.models.forecasters import LinearForecaster, Persistence
from edgeloop.models.modelfile import META_FILE, MODEL_FILE, save_model, sha256_bytes
from edgeloop.registry.local import LocalRegistry
from edgeloop.registry.pointer import CHAMPION_FILE, JOURNAL_FILE
from edgeloop.scopes import MAX_DIRNAME, decode_scope, encode_scope, scope_dirname, version_label

SCOPE = "voc_ppb"


def meta(version: int, scope: str = SCOPE) -> dict[str, Any]:
    return {
        "scope": scope,
        "target": scope.partition("@")[0],
        "version": version,
        "label": version_label(scope, version),
    }


def linear(lags: int = 5) -> LinearForecaster:
    y = np.asarray([100 + ((i * 7) % 13) for i in range(300)], dtype=float)
    return LinearForecaster(lags).fit(*training_pairs(y, lags))


def registry_with(tmp_path: Path, versions: int, scope: str = SCOPE) -> LocalRegistry:
    """``versions`` good linear versions of ``scope``, each promoted in turn."""
    reg = LocalRegistry(tmp_path / "models")
    model = linear()
    for _ in range(versions):
        v = reg.next_version(scope)
        save_model(reg.version_dir(scope, v), model, meta(v, scope))
        reg.promote(scope, v)
    return reg


def edit_json(path: Path, **changes: Any) -> None:
    data = orjson.loads(path.read_bytes())
    data.update(changes)
    path.write_bytes(orjson.dumps(data))


# -- scope encoding ---------------------------------------------------------------------------------
# Device ids as the parser accepts them: anything but / + # and NUL, up to 128 characters.
device_ids = st.text(st.characters(blacklist_characters="/+#\x00"), min_size=1, max_size=128)


@given(device_ids)
def test_every_device_id_gets_one_reversible_safe_folder(device: str) -> None:
    scope = f"voc_ppb@{device}"
    name = encode_scope(scope)
    assert decode_scope(name) == scope
    assert re.fullmatch(r"[a-z0-9_.@%A-F-]+", name) and name not in (".", "..")
    assert not name.startswith(".") and not name.endswith(".")
    # Lowercasing loses nothing, so a case-insensitive filesystem never merges two scopes.
    assert re.sub(r"%[0-9a-f]{2}", lambda m: m.group(0).upper(), name.lower()) == name
    folder = scope_dirname(scope)
    assert len(folder.encode()) <= MAX_DIRNAME and "/" not in folder


def test_safe_scopes_are_their_own_folder_and_others_are_escaped() -> None:
    assert encode_scope("voc_ppb@dev-001") == "voc_ppb@dev-001"
    assert encode_scope("temp_c@a.b@c") == "temp_c@a.b@c"
    assert encode_scope("voc_ppb@Dev") != encode_scope("voc_ppb@dev")
    for bad in ("voc_ppb@dev%2f1", "voc_ppb@dev 1", ".hidden", "", "%2E%2e"):
        with pytest.raises(ValueError):
            decode_scope(bad)


def test_unusual_scopes_round_trip_through_the_registry(tmp_path: Path) -> None:
    long_scope = "voc_ppb@" + "Küche-房间" * 16  # 128 characters, far over a folder name's bytes
    odd = ["voc_ppb@Küche", "voc_ppb@dev 1", "voc_ppb@a\\b", "voc_ppb@..", "voc_ppb@CON", long_scope]
    reg = LocalRegistry(tmp_path)
    for scope in odd:
        v = reg.next_version(scope)
        save_model(reg.version_dir(scope, v), linear(), meta(v, scope))
        reg.promote(scope, v)
    assert reg.scopes() == sorted(odd)
    for scope in odd:
        assert reg.load_champion(scope, lags=5).meta["scope"] == scope  # type: ignore[union-attr]
    assert all(p.parent == tmp_path for p in map(reg.scope_dir, odd))


def test_folders_of_existing_data_dirs_still_read(tmp_path: Path) -> None:
    # Written before scopes were encoded: plain names, uppercase included.
    for scope in ("voc_ppb", "voc_ppb@Dev-A"):
        save_model(tmp_path / scope / "v1", linear(), meta(1, scope))
        (tmp_path / scope / CHAMPION_FILE).write_bytes(orjson.dumps({"version": 1, "history": [1]}))
    reg = LocalRegistry(tmp_path)
    assert reg.scopes() == ["voc_ppb", "voc_ppb@Dev-A"]
    assert reg.load_champion("voc_ppb@Dev-A").label == "voc_ppb@Dev-A:v1"  # type: ignore[union-attr]
    assert reg.next_version("voc_ppb@Dev-A") == 2 and reg.scope_dir("voc_ppb@Dev-A").name == "voc_ppb@Dev-A"


# -- metadata checked by type -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lags": None}, "lags"),
        ({"lags": "5"}, "lags"),
        ({"version": "abc"}, "version"),
        ({"version": 2, "label": "voc_ppb:v2"}, "version"),
        ({"version": 2}, "label"),
        ({"scope": "temp_c", "target": "temp_c", "label": "temp_c:v1"}, "scope"),
        ({"kind": 3}, "kind"),
        ({"kind": "pickle"}, "kind"),
        ({"features": {"lag_1": 1}}, "features"),
        ({"sha256": None}, "sha256"),
        ({"scores": {"val_rmse": "low"}}, "scores.val_rmse"),
        ({"scores": []}, "scores"),
        ({"format": "edgeloop-model/9"}, "format"),
        ({"model_file": "../../etc/passwd"}, "model_file"),
    ],
)
def test_bad_metadata_is_refused_naming_the_file_and_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    reg = registry_with(tmp_path, 1)
    edit_json(reg.version_dir(SCOPE, 1) / META_FILE, **change)
    with pytest.raises(ModelFileError, match=rf"meta\.json: field '{re.escape(field)}'"):
        reg.load(SCOPE, 1, lags=5)


def test_missing_fields_and_non_objects_are_refused(tmp_path: Path) -> None:
    reg = registry_with(tmp_path, 1)
    path = reg.version_dir(SCOPE, 1) / META_FILE
    data = orjson.loads(path.read_bytes())
    del data["sha256"]
    path.write_bytes(orjson.dumps(data))
    with pytest.raises(ModelFileError, match="field 'sha256': Field required"):
        reg.load(SCOPE, 1)
    path.write_bytes(b"[1, 2]")
    with pytest.raises(ModelFileError, match=r"meta\.json: not a JSON object"):
        reg.load(SCOPE, 1)


@pytest.mark.parametrize(
    "body",
    [
        {"coef": {"a": 1.0}, "intercept": 0.0},
        {"coef": [1.0, 2.0], "intercept": 0.0},
        {"coef": [0.2] * 5, "intercept": "x"},
        {"coef": [0.2] * 5},
        [1, 2, 3],
        {"coef": [1e308] * 5, "intercept": 1e308},
    ],
)
def test_a_model_file_that_does_not_build_or_predict_is_refused(tmp_path: Path, body: Any) -> None:
    reg = registry_with(tmp_path, 1)
    d = reg.version_dir(SCOPE, 1)
    raw = orjson.dumps(body)
    (d / MODEL_FILE).write_bytes(raw)
    edit_json(d / META_FILE, sha256=sha256_bytes(raw))  # consistent checksum: the writer was wrong
    with pytest.raises(ModelFileError, match=r"model\.txt"):
        reg.load(SCOPE, 1)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"version": "abc"}', "version"),
        (b'{"version": 1.5, "history": [1]}', "version"),
        (b'{"history": [1]}', "version"),
        (b'{"version": 1, "history": "1"}', "history"),
        (b'{"version": 1, "history": [0]}', "history.0"),
        (b"[]", None),
        (b"{", None),
    ],
)
def test_a_bad_champion_pointer_is_refused_and_the_journal_serves(
    tmp_path: Path, raw: bytes, field: str | None
) -> None:
    reg = registry_with(tmp_path, 2)
    (reg.scope_dir(SCOPE) / CHAMPION_FILE).write_bytes(raw)
    with pytest.raises(ModelFileError, match=f"field '{field}'" if field else "champion.json: not"):
        reg.champion(SCOPE)
    res = reg.resolve(SCOPE, lags=5)
    assert res.model is not None and res.model.label == "voc_ppb:v2"  # the last good pointer state
    assert [r.what for r in res.refused] == [CHAMPION_FILE]


# -- falling back, verifying before the pointer moves ---------------------------------------------------
def test_a_bad_champion_falls_back_through_the_history(tmp_path: Path) -> None:
    reg = registry_with(tmp_path, 3)
    (reg.version_dir(SCOPE, 3) / MODEL_FILE).write_text("tampered")
    res = reg.resolve(SCOPE, lags=5)
    assert res.wanted == 3 and res.model is not None and res.model.label == "voc_ppb:v2"
    assert res.refused[0].label == "voc_ppb:v3" and "checksum" in res.refused[0].reason
    edit_json(reg.version_dir(SCOPE, 2) / META_FILE, lags=None)
    assert reg.load_champion(SCOPE, lags=5).label == "voc_ppb:v1"  # type: ignore[union-attr]
    assert reg.resolve(SCOPE, lags=7).model is None  # no version fits an edge keeping 7 lags


def test_a_version_is_verified_before_the_pointer_moves(tmp_path: Path) -> None:
    reg = registry_with(tmp_path, 1)
    v = reg.next_version(SCOPE)
    save_model(reg.version_dir(SCOPE, v), linear(), meta(v))
    (reg.version_dir(SCOPE, v) / MODEL_FILE).write_text("{}")
    with pytest.raises(ModelFileError, match="checksum"):
        reg.promote(SCOPE, v)
    with pytest.raises(ModelFileError, match=r"no meta\.json"):
        reg.promote(SCOPE, 99)
    assert reg.champion(SCOPE) == 1


def test_rollback_skips_bad_versions_and_keeps_a_newer_champion(tmp_path: Path) -> None:
    reg = registry_with(tmp_path, 4)
    (reg.version_dir(SCOPE, 3) / MODEL_FILE).write_text("tampered")
    assert reg.rollback(SCOPE) == 2  # v4 rejected, v3 does not load
    assert reg.pointer(SCOPE)["history"] == [1, 2]  # type: ignore[index]
    reg.promote(SCOPE, 4)
    assert reg.rollback(SCOPE, rejected=2) == 4  # an edge rejected v2, but v4 was promoted meanwhile
    assert reg.pointer(SCOPE)["history"] == [1, 4]  # type: ignore[index]
    assert reg.rollback(SCOPE) == 1 and reg.rollback(SCOPE) is None and reg.champion(SCOPE) is None
    lines = (reg.scope_dir(SCOPE) / JOURNAL_FILE).read_text().splitlines()
    assert len(lines) == 4 + 1 + 1 + 3  # every pointer state is journalled


def test_stray_files_and_folders_are_ignored_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = registry_with(tmp_path, 1)
    root = reg.root
    (root / "junk").mkdir()
    (root / "notes.txt").write_text("hi")
    (root / "Bad Name").mkdir()
    (root / "voc_ppb" / "vX").mkdir()
    (root / "voc_ppb" / "v01").mkdir()
    (root / "voc_ppb" / "notes.txt").write_text("hi")
    os.mkdir(os.fsencode(root) + b"/\xff-not-utf8")
    with caplog.at_level(logging.WARNING, logger="edgeloop.registry.versions"):
        for _ in range(3):  # polls
            assert reg.scopes() == [SCOPE]
            assert reg.versions(SCOPE) == [1]
            assert reg.resolve(SCOPE, lags=5).model is not None
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 7, ignored
    assert reg.next_version(SCOPE) == 2


# -- several processes, and writers that die ------------------------------------------------------------
def _allocate_and_promote(root: str, n: int, out: str) -> None:
    reg = LocalRegistry(root)
    got = []
    for _ in range(n):
        v = reg.next_version(SCOPE)
        save_model(reg.version_dir(SCOPE, v), Persistence(5), meta(v))
        reg.promote(SCOPE, v)
        got.append(v)
    Path(out).write_text(json.dumps(got))


def test_concurrent_processes_never_share_a_version_or_lose_a_promotion(tmp_path: Path) -> None:
    procs, each = 4, 20
    ctx = multiprocessing.get_context("fork")
    workers = [
        ctx.Process(target=_allocate_and_promote, args=(str(tmp_path), each, str(tmp_path / f"out{i}")))
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    allocated = [v for i in range(procs) for v in json.loads((tmp_path / f"out{i}").read_text())]
    total = procs * each
    assert sorted(allocated) == list(range(1, total + 1))  # no duplicate, no gap
    reg = LocalRegistry(tmp_path)
    assert reg.versions(SCOPE) == list(range(1, total + 1))
    pointer = reg.pointer(SCOPE)
    assert pointer is not None and sorted(pointer["history"]) == list(range(1, total + 1))  # none lost
    journal = [orjson.loads(x) for x in (tmp_path / SCOPE / JOURNAL_FILE).read_bytes().splitlines()]
    assert [len(j["history"]) for j in journal] == list(range(1, total + 1))


def _write_and_hang(root: str, ready: str) -> None:
    reg = LocalRegistry(root)
    v = reg.next_version(SCOPE)
    real_fsync = os.fsync

    def fsync_then_hang(fd: int) -> None:
        real_fsync(fd)
        Path(ready).write_text(str(v))
        time.sleep(60)

    os.fsync = fsync_then_hang  # the model file is on disk, its metadata not yet
    save_model(reg.version_dir(SCOPE, v), linear(), meta(v))


def test_a_writer_killed_mid_write_leaves_nothing_a_reader_sees(tmp_path: Path) -> None:
    reg = registry_with(tmp_path, 1)
    ready = tmp_path / "ready"
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_write_and_hang, args=(str(reg.root), str(ready)))
    proc.start()
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert time.monotonic() < deadline and proc.is_alive()
        time.sleep(0.01)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    partial = list(reg.scope_dir(SCOPE).glob(".tmp-v2-*"))
    assert len(partial) == 1 and (partial[0] / MODEL_FILE).exists() and not (partial[0] / META_FILE).exists()
    fresh = LocalRegistry(reg.root)
    assert fresh.scopes() == [SCOPE] and fresh.versions(SCOPE) == [1]
    assert fresh.load_champion(SCOPE, lags=5).label == "voc_ppb:v1"  # type: ignore[union-attr]
    assert fresh.next_version(SCOPE) == 3  # v2 was handed out to the dead writer; never reused
    old = time.time() - 7200
    os.utime(partial[0], (old, old))
    fresh.next_version(SCOPE)
    assert not partial[0].exists()  # a long-dead writer's leftovers are swept


def _hold_lock(root: str, ready: str) -> None:
    with LocalRegistry(root).lock():
        Path(ready).write_text("held")
        time.sleep(60)


def test_the_lock_times_out_with_a_clear_error_and_dies_with_its_holder(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = multiprocessing.get_context("fork").Process(target=_hold_lock, args=(str(tmp_path), str(ready)))
    proc.start()
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert time.monotonic() < deadline and proc.is_alive()
        time.sleep(0.01)
    reg = LocalRegistry(tmp_path, lock_timeout=0.2)
    with pytest.raises(ModelFileError, match=r"\.lock: held by another process"):
        reg.next_version(SCOPE)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)  # a trainer killed mid-promotion
    proc.join(10)
    assert reg.next_version(SCOPE) == 1
    with reg.lock(), reg.lock():  # re-entrant: promote inside a held lock does not deadlock
        assert reg.next_version(SCOPE) == 2
