"""The README documents every config key and every command."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from edgeloop.cli import app
from edgeloop.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_config_key_is_documented() -> None:
    missing = []
    for name, field in Settings.model_fields.items():
        ann = field.annotation
        keys = (
            [f"{name}.{sub}" for sub in ann.model_fields]
            if isinstance(ann, type) and issubclass(ann, BaseModel)
            else [name]
        )
        missing += [k for k in keys if f"`{k}`" not in README]
    assert missing == []


def test_every_command_is_documented() -> None:
    names = [c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands]
    assert names and all(f"edgeloop {n}" in README for n in names)
