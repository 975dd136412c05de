"""Container health check for the edgeloop image (stdlib only; exit 0 healthy, 1 unhealthy).

The edge serves nothing over HTTP except Prometheus metrics on ``edge.metrics_port``; when
EDGELOOP_EDGE_METRICS_PORT is set this fetches ``/metrics`` and requires the edge's own counter in it.
HEALTHCHECK_URL overrides the URL (dashboard: /_stcore/health, MLflow: /health).
Roles with no endpoint (trainer, simulator) pass: the restart policy handles a process that exits.

Limit: the metrics thread answers even if the edge's processing loop is stuck, so this proves
"process up, metrics served", not "messages flowing"; the Prometheus alerts cover the latter.
"""

import os
import sys
import urllib.request


def main() -> int:
    override = os.environ.get("HEALTHCHECK_URL")
    port = os.environ.get("EDGELOOP_EDGE_METRICS_PORT")
    if override:
        url, needle = override, b""
    elif port:
        url, needle = f"http://127.0.0.1:{port}/metrics", b"edgeloop_messages_received_total"
    else:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:  # noqa: S310 - a local http URL we chose
            body = resp.read()
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if needle not in body:
        print(f"unhealthy: {url} does not serve edgeloop metrics", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
