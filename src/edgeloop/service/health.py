"""The edge's HTTP endpoint: Prometheus ``/metrics`` beside the ``/healthz`` and ``/readyz`` probes.

``/healthz`` (liveness) answers 503 when the process should be restarted: its message loop or its
store writer has died or stalled. ``/readyz`` (readiness) answers 503 until the edge can do its job:
connected to the broker, subscribed, and the model registry read. Both return a small JSON body with
the checks, so ``curl`` tells an operator which one failed. Any other path is 404 (prometheus_client's
own server answers every path with metrics, which made a probe on ``/healthz`` meaningless).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from edgeloop.errors import ConfigError

log = logging.getLogger(__name__)

Check = Callable[[], dict[str, Any]]  # named checks: each value truthy when fine (or a detail)


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            check = self.server.live if path == "/healthz" else self.server.ready
            try:
                checks = check()
                ok = all(bool(v) for k, v in checks.items() if not k.startswith("_"))
            except Exception as exc:  # a probe that cannot evaluate says so, it never kills the server
                checks, ok = {"error": str(exc)}, False
            body = orjson.dumps({"ok": ok, **checks}, default=str)
            self._send(200 if ok else 503, body, "application/json")
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds are not worth a log line each


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], live: Check, ready: Check) -> None:
        super().__init__(addr, _Handler)
        self.live = live
        self.ready = ready


def serve(port: int, live: Check, ready: Check, addr: str = "0.0.0.0") -> HealthServer:  # noqa: S104 - scraped from outside
    """Serve the three paths on a daemon thread; ``shutdown()`` the result to stop."""
    try:
        server = HealthServer((addr, port), live, ready)
    except OSError as exc:
        raise ConfigError(
            f"edge.metrics_port {port}: cannot listen on {addr}:{port} ({exc.strerror})"
        ) from None
    threading.Thread(target=server.serve_forever, name="edgeloop-http", daemon=True).start()
    log.info("serving /metrics, /healthz and /readyz on port %d", server.server_address[1])
    return server
