"""Checks for table and schema name settings."""

from __future__ import annotations

from deswm._errors import ConfigError

__all__ = ["check_name"]


def check_name(value: object, setting: str) -> str:
    """``value`` when it is a non-empty string; a :class:`ConfigError` naming ``setting``."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"must be a non-empty table or schema name, got {value!r}", key=setting)
    return value
