"""Start the dashboard as its own process (``streamlit run app.py``) and wait until it answers.

Streamlit owns its process (signal handlers, event loop, server), so edgeloop starts it as a child
instead of embedding it; the caller stops it with ``proc.terminate()``.

>>> cmd = dashboard_command(Path("edge.yaml"), 8501)
>>> cmd[1:4], cmd[cmd.index("--server.port") + 1], cmd[-3:]
(['-m', 'streamlit', 'run'], '8501', ['--', '--config', 'edge.yaml'])
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from edgeloop.dashboard.access import AUTH_ENV, PROXY_ENV, is_loopback, login_by_proxy, require_auth

APP_PATH = Path(__file__).with_name("app.py")

logger = logging.getLogger(__name__)


def dashboard_command(
    config_path: Path | None, port: int, host: str = "127.0.0.1", headless: bool = True
) -> list[str]:
    """The command line that serves the dashboard (arguments after ``--`` go to the app)."""
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_PATH),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true" if headless else "false",
        "--browser.gatherUsageStats",
        "false",
        # The app's source does not change while it serves: no file watcher, no rerun on save.
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        # No "Deploy" button or developer menu: this is an operator's screen, not a Streamlit project.
        "--client.toolbarMode",
        "minimal",
        "--",
    ]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    return cmd


def run_dashboard(
    config_path: Path | None,
    port: int,
    host: str = "127.0.0.1",
    headless: bool = True,
    *,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    auth_file: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start the dashboard on ``http://host:port`` and return its process (not yet ready: see
    :func:`wait_ready`).

    ``env`` replaces the environment (default: inherited); ``log_file`` takes Streamlit's output,
    which otherwise goes to this process's stdout and stderr. ``auth_file`` (default: the
    ``EDGELOOP_DASHBOARD_AUTH_FILE`` variable) holds the login secret, required unless ``host`` is
    loopback: raises :class:`~edgeloop.errors.ConfigError` (one line) without it.
    """
    environ = env if env is not None else os.environ
    if auth_file is None and environ.get(AUTH_ENV):
        auth_file = Path(environ[AUTH_ENV])
    by_proxy = login_by_proxy(environ)
    require_auth(host, auth_file, by_proxy=by_proxy)
    if by_proxy and auth_file is None and not is_loopback(host):
        logger.warning("dashboard on %s has no login of its own: %s is set", host, PROXY_ENV)
    cmd = dashboard_command(config_path, port, host, headless)
    if auth_file is not None:
        cmd += ["--auth-file", str(auth_file.resolve())]
    out: IO[Any] | None = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        out = log_file.open("ab")
    logger.info("starting dashboard on http://%s:%d", host, port)
    try:
        return subprocess.Popen(
            cmd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
        )
    finally:
        if out is not None:
            out.close()  # the child holds its own descriptor


def wait_ready(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until the dashboard at ``url`` reports healthy.

    Raises ``RuntimeError`` if ``proc`` exits first and ``TimeoutError`` after ``timeout`` seconds.
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    health = url.rstrip("/") + "/_stcore/health"
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"dashboard exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(health, timeout=2) as resp:  # noqa: S310 (http checked above)
                if resp.status == 200 and resp.read().strip() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        if time.monotonic() >= deadline:
            raise TimeoutError(f"dashboard at {url} not ready after {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
