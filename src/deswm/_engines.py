"""Engines from URLs, with friendly errors and without leaking passwords (G13)."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from deswm._redact import redact
from deswm.errors import ConfigError

__all__ = ["create_engine", "default_actor", "engine_from", "resolve_sqlite_url"]

SQLITE_BUSY_TIMEOUT = 30.0
"""Seconds a SQLite connection waits for a concurrent writer before "database is locked"."""

_DRIVER_EXTRAS = {
    "psycopg": "postgres",
    "psycopg2": "postgres",
    "postgresql": "postgres",
    "pymysql": "mysql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "mysqldb": "mysql",
}


def resolve_sqlite_url(url: str, base: Path) -> str:
    """Make a relative ``sqlite:///file`` path relative to ``base`` instead of the CWD."""
    try:
        parsed = sa.make_url(url)
    except ArgumentError:
        return url
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return url
    if database.startswith("file:") or Path(database).is_absolute():
        return url
    return parsed.set(database=str((base / database).resolve())).render_as_string(
        hide_password=False
    )


def create_engine(url: str | sa.URL, *, key: str) -> sa.Engine:
    """An engine for ``url``; a bad URL or a missing driver raises ConfigError naming ``key``.

    Connections are pinged before use (a pooled connection may have been closed by the
    server during a long pack), and SQLite waits for a concurrent writer.
    """
    try:
        parsed = sa.make_url(url)
    except ArgumentError:
        # The text may hold a password: do not repeat it.
        raise ConfigError(
            "is not a valid SQLAlchemy database URL (not shown: it may contain a password)",
            key=key,
            hint="use e.g. sqlite:///files.db or postgresql+psycopg://user@host/db",
        ) from None
    options: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite" and "timeout" not in parsed.query:
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    try:
        return sa.create_engine(parsed, **options)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        driver = parsed.get_driver_name() or parsed.get_backend_name()
        extra = _DRIVER_EXTRAS.get(driver) or _DRIVER_EXTRAS.get(parsed.get_backend_name())
        hint = f"pip install 'deswm[{extra}]'" if extra else "install the database driver"
        raise ConfigError(
            f"cannot create an engine for {parsed.render_as_string(hide_password=True)}: "
            f"{type(exc).__name__}: {redact(str(exc))}",
            key=key,
            hint=hint,
        ) from None


def engine_from(value: object, *, key: str) -> tuple[sa.Engine, bool]:
    """``(engine, owned)`` from an Engine (not owned) or a URL (owned: dispose it)."""
    if isinstance(value, sa.Engine):
        return value, False
    if not isinstance(value, str | sa.URL):
        raise ConfigError(
            f"must be a SQLAlchemy Engine or URL, got {type(value).__name__}", key=key
        )
    return create_engine(value, key=key), True


def default_actor() -> str:
    """``user@host`` of this process, for ``updated_by`` and the history.

    Containers often run as a uid without a passwd entry, where ``getpass.getuser()``
    raises; the numeric uid still tells an operator who it was.
    """
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    try:
        host = socket.gethostname()
    except OSError:
        host = "unknown-host"
    return f"{user}@{host}"
