"""Loading settings: defaults < YAML file < environment < command-line overrides, with one clear error
naming every bad key; and the readable-file check for mounted secrets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from edgeloop.config.settings import Settings
from edgeloop.errors import ConfigError


def _format_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        env = "EDGELOOP_" + "_".join(str(p) for p in err["loc"]).upper()
        lines.append(f"  {key}: {err['msg']} (YAML key {key!r} or env {env})")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from an optional YAML file, the environment and explicit overrides.

    Raises :class:`ConfigError` naming every bad key and why.
    """
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if path is not None:
        path = Path(path)
        source = f"{path} and environment"
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data.update(loaded)
    try:
        settings = Settings(**data)
        # Command-line overrides win over the environment, so they are applied last.
        for key, value in overrides.items():
            if value is not None:
                settings = _override(settings, key, value)
        if overrides:
            settings.check_cross_fields()  # the copies made by _override skip the model validator
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from exc
    except ValueError as exc:
        raise ConfigError(f"invalid configuration ({source}): {exc}") from exc
    if settings.broker.password_file is not None:
        check_readable("broker.password_file", settings.broker.password_file)
    return settings


def check_readable(key: str, path: Path) -> None:
    """Raise one-line :class:`ConfigError` naming ``key``, the file, its mode and owner if we cannot read it.

    A secret mounted into a container keeps the host file's owner and mode, so the usual failure is a
    file made with ``umask 077`` by another user: saying whose it is, its mode and who we run as points
    at the fix (``chown``/``chmod``, see deploy/docker/secrets/README.md).
    """
    try:
        with path.open("rb"):
            return
    except FileNotFoundError:
        raise ConfigError(f"{key}: cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: cannot read {path}: it is a directory, not a file") from None
    except OSError as exc:
        try:
            st = path.stat()
            found = f"mode {st.st_mode & 0o7777:04o}, owner uid {st.st_uid} gid {st.st_gid}"
        except OSError:
            found = "its folder cannot be searched"
        raise ConfigError(
            f"{key}: cannot read {path} ({found}; this process runs as uid {os.getuid()} gid "
            f"{os.getgid()}): {exc.strerror}"
        ) from None


def _override(settings: Settings, dotted: str, value: Any) -> Settings:
    """A copy of ``settings`` with one key replaced and validated (the environment is not read again)."""
    section, _, key = dotted.partition(".")
    if not key:
        checked = TypeAdapter(Settings.model_fields[section].annotation).validate_python(value)  # type: ignore[arg-type]
        return settings.model_copy(update={section: checked})
    current = getattr(settings, section)
    replaced = type(current).model_validate({**current.model_dump(exclude_unset=True), key: value})
    return settings.model_copy(update={section: replaced})
