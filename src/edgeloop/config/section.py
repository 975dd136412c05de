"""The base of every settings section: unknown keys are refused and defaults are validated too."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
