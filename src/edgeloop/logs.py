"""Logging set-up for the command line: plain text for people, JSON lines for ELK.

Library modules only call ``logging.getLogger(__name__)``; handlers are configured here, once,
by the CLI. With JSON on, every line a process writes to stderr is one JSON object: MLflow's own
loggers are routed through the same handler, Python warnings and uncaught exceptions are logged, and
the output of server child processes (MLflow's web server) is relayed line by line (``relay_lines``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import IO

import orjson

# Loggers MLflow gives a plain-text handler of its own (propagate off) when it is imported.
_MLFLOW_OWNED = ("mlflow", "sqlalchemy.engine", "alembic", "huey")
_LEVEL_IN_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b")


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
    if json:
        _route_everything_through(root)
    # Chatty dependencies stay at WARNING unless we debug them on purpose.
    for name in ("mlflow", "alembic", "urllib3", "amqtt", "transitions", "streamlit"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def _route_everything_through(root: logging.Logger) -> None:
    # MLflow, on import (here later, or in a child such as the retrain worker or the MLflow server),
    # would give its loggers a plain-text handler; the variable tells it not to, and loggers it has
    # already set up are handed back to the root handler.
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    for name in _MLFLOW_OWNED:
        owned = logging.getLogger(name)
        owned.handlers.clear()
        owned.propagate = True
    logging.captureWarnings(True)  # warnings.warn(...) lines become records of logger py.warnings

    def log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        root.critical("uncaught exception", exc_info=(kind, exc, tb))

    sys.excepthook = log_uncaught


def level_of(line: str) -> int:
    """The level a foreign log line names near its start (gunicorn, uvicorn, MLflow), else INFO.

    >>> level_of("[2024-01-01 00:00:00 +0000] [7] [ERROR] Worker failed") == logging.ERROR
    True
    >>> level_of("INFO:     127.0.0.1:5 - GET / 200") == logging.INFO
    True
    """
    found = _LEVEL_IN_LINE.search(line[:80])
    if found is None:
        return logging.INFO
    name = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(found.group(1), found.group(1))
    return logging.getLevelNamesMapping()[name]


def relay_lines(stream: IO[bytes], logger_name: str, out: IO[str] | None = None) -> threading.Thread:
    """Relay a child process's output as JSON log lines, in a thread; lines already JSON pass as is.

    The thread ends when the child closes the stream; join it after the child exits.
    """
    log = logging.getLogger(logger_name)

    def pump(lines: Iterable[bytes]) -> None:
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line.strip():
                continue
            if line.startswith("{"):
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError:
                    pass
                else:
                    target = out or sys.stderr
                    target.write(line + "\n")
                    target.flush()
                    continue
            log.log(level_of(line), "%s", line)

    thread = threading.Thread(target=pump, args=(stream,), name=f"relay-{logger_name}", daemon=True)
    thread.start()
    return thread
