"""edgeloop's exceptions.

::

    EdgeloopError
    ├── ConfigError          a setting is missing or invalid (names the key)
    ├── MessageError         a telemetry payload was rejected (carries a reason code)
    ├── ModelFileError       a model file is missing, corrupt, tampered or of an unknown kind
    ├── StoreError           the store cannot be opened or written
    └── BrokerError          no broker could be reached or started
"""

from __future__ import annotations


class EdgeloopError(Exception):
    """Base of every error edgeloop raises on purpose."""


class ConfigError(EdgeloopError):
    """A setting is missing or invalid; the message names the key and what to do."""


class MessageError(EdgeloopError):
    """A telemetry payload was rejected; ``reason`` is a short code used as a counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ModelFileError(EdgeloopError):
    """A model file cannot be trusted or read; the model in service keeps serving."""


class StoreError(EdgeloopError):
    """The store cannot be opened or written."""


class BrokerError(EdgeloopError):
    """No broker could be reached or started."""
