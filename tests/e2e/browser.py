"""The dashboard as a user starts it, and headless Chromium to look at it: shared by the e2e tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeloop.adapters.broker import find_free_port
from edgeloop.dashboard.launch import run_dashboard, wait_ready

CHROMIUM = Path("/usr/bin/chromium")
# Outside CI a developer without Chromium may skip the browser tests; in CI (CI set, as GitHub Actions,
# .ci/run's runner and the Jenkinsfile do) a missing browser fails them instead of skipping silently.
SKIP_WITHOUT_CHROMIUM = not CHROMIUM.exists() and not os.environ.get("CI")
BUILD = Path(__file__).resolve().parents[2] / "build"


@contextmanager
def serving(
    tmp_path: Path, data: Path, *, site: str = "lab-7", extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """The dashboard over the store in ``data``, started as a user would (a config file, a port).

    By default silence is judged only after 120 s: a test's rows written once stay "live" for the
    whole test; ``extra_env`` overrides that and any other dashboard variable."""
    config = tmp_path / "edgeloop.yaml"
    config.write_text(f"site: {site}\ndata_dir: {data}\n")
    port = find_free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    env["EDGELOOP_DASHBOARD_SILENT_AFTER"] = "120"
    env["EDGELOOP_DASHBOARD_REFRESH"] = "1"
    env.update(extra_env or {})
    proc = run_dashboard(config, port, env=env, log_file=tmp_path / "streamlit.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=60, proc=proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def chromium(height: int = 1000, color_scheme: str = "light") -> Iterator[Any]:
    """A page in Debian's headless Chromium, flags as this sandbox needs them (no network, no sandbox)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            # Streamlit follows the system theme: the page's color scheme picks light or dark.
            yield browser.new_page(viewport={"width": 1600, "height": height}, color_scheme=color_scheme)
        finally:
            browser.close()
