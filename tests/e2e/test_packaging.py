"""The built wheel works outside the checkout: the recordings ship inside it (compressed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, installed (without dependencies) into a folder of its own."""
    wheels = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if built.returncode != 0 and "setuptools" in built.stderr and "No matching distribution" in built.stderr:
        pytest.skip("the build backend (setuptools, wheel) cannot be fetched offline")
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("edgeloop-*.whl")
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=120,
    )
    return target


def outside(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run with only the installed copy of edgeloop importable, from a folder outside the checkout."""
    env = {k: v for k, v in os.environ.items() if k != "EDGELOOP_SHARED_DATA"}
    env["PYTHONPATH"] = str(target)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_installed_package_loads_every_recording_from_inside_itself(
    installed: Path, tmp_path: Path
) -> None:
    code = (
        "import json, edgeloop.telemetry.recordings as r;"
        "print(json.dumps({'file': r.__file__, 'dir': str(r.shared_data_dir()),"
        "'rows': {n: len(r.known_recording(n)) for n in r.KNOWN_RECORDINGS}}))"
    )
    done = outside(installed, tmp_path, "-c", code)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["file"].startswith(str(installed)) and got["dir"].startswith(str(installed))
    assert got["rows"] == {"air_quality": 9357, "occupancy": 20560, "nab": 22683}
    packaged = installed / "edgeloop" / "telemetry" / "data"
    assert (packaged / "nab" / "LICENSE.txt").is_file()
    assert all((packaged / name / "README.md").is_file() for name in ("air_quality", "nab", "occupancy"))


def test_evaluate_runs_on_the_packaged_air_quality_outside_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    done = outside(
        installed, tmp_path, "-m", "edgeloop", "evaluate", "--dataset", "air_quality",
        "--max-samples", "2000",
        "--strategies", "persistence,relative", "--jobs", "1", "--no-plots", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["results"], results
