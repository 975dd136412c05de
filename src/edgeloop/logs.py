"""Logging set-up for the command line: plain text for people, JSON lines for ELK.

Library modules only call ``logging.getLogger(__name__)``; handlers are configured here, once,
by the CLI.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the fields Logstash/Elasticsearch index on."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup_logging(level: str = "INFO", *, json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Chatty dependencies stay at WARNING unless we debug them on purpose.
    for name in ("mlflow", "alembic", "urllib3", "amqtt", "transitions", "streamlit"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
