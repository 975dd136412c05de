"""Container health check for the edgeloop image (stdlib only; exit 0 healthy, 1 unhealthy).

The edge serves ``/healthz`` on ``edge.metrics_port`` (beside ``/metrics`` and ``/readyz``): 200 while
its message loop and store writer are alive, 503 (with a JSON body naming the failed check) when
not. When EDGELOOP_EDGE_METRICS_PORT is set this fetches it; HEALTHCHECK_URL overrides the URL
(dashboard: /_stcore/health, MLflow: /health). Roles with no endpoint (trainer, simulator) pass: the
restart policy handles a process that exits.
"""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = os.environ.get("HEALTHCHECK_URL")
    port = os.environ.get("EDGELOOP_EDGE_METRICS_PORT")
    if not url and port:
        url = f"http://127.0.0.1:{port}/healthz"
    if not url:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:  # noqa: S310 - a local http URL we chose
            resp.read()
    except urllib.error.HTTPError as exc:  # 503 from /healthz: say which check failed
        print(f"unhealthy: {url}: {exc.code} {exc.read()[:300].decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
