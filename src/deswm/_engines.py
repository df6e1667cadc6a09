"""Engines from URLs, with friendly errors and without leaking passwords (G13)."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import attrs
import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.sql.util import find_tables

from deswm._defaults import DEFAULT_LOCK_TIMEOUT, default_actor
from deswm._errors import ConfigError, DatabaseTimeoutError
from deswm._redact import redact, redact_url, remember

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "Limits",
    "apply_limits",
    "create_engine",
    "default_actor",
    "engine_from",
    "first_line",
    "parse_url",
    "resolve_sqlite_url",
    "timeout_error",
    "timeout_kind",
]

log = logging.getLogger("deswm.db")

_SQLITE_FOREVER: Final = 2_000_000.0

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


def parse_url(url: str | sa.URL, key: str) -> sa.URL:
    """``url`` parsed by SQLAlchemy; a bad one (or a raw ``@`` in it) is a ConfigError.

    SQLAlchemy reads ``u:p@ss@host`` as password ``p`` on host ``ss@host``: the rest
    of the password would show up as a host name in every error, so it is refused.
    """
    remember(url)
    try:
        parsed = sa.make_url(url)
    except ArgumentError:
        # The text may hold a password: do not repeat it.
        raise ConfigError(
            "is not a valid SQLAlchemy database URL (not shown: it may contain a password)",
            key=key,
            hint="use e.g. sqlite:///files.db or postgresql+psycopg://user@host/db",
        ) from None
    if parsed.host and "@" in parsed.host:
        raise ConfigError(
            f"the user name or password in {redact_url(url)} holds a raw '@'",
            key=key,
            hint="URL-encode special characters in the user name and password "
            "('@' is %40, '/' is %2F, ':' is %3A, '%' is %25), e.g. with "
            "urllib.parse.quote(password, safe='')",
        )
    return parsed


def _setting(key: str, name: str) -> str:
    """``source.lock_timeout`` from ``source.url`` (the key the engine was built for)."""
    section = key.rpartition(".")[0] if "." in key else key
    return f"{section}.{name}" if section else name


@attrs.frozen
class Limits:
    """How long a statement may wait for a lock, and run, before it is cancelled.

    ``None`` or ``0`` means no limit. ``lock_key`` and ``statement_key`` are the settings
    named in a :class:`~deswm.DatabaseTimeoutError`.
    """

    lock: float | None = DEFAULT_LOCK_TIMEOUT
    statement: float | None = None
    lock_key: str = "lock_timeout"
    statement_key: str = "statement_timeout"


def create_engine(
    url: str | sa.URL,
    *,
    key: str,
    lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
    statement_timeout: float | None = None,
    read_only: bool = False,
    section: str | None = None,
) -> sa.Engine:
    """An engine for ``url``; a bad URL or a missing driver raises ConfigError naming ``key``.

    Connections are pinged before use (a pooled connection may have been closed by the
    server during a long pack). Every session gets ``lock_timeout`` and
    ``statement_timeout`` (seconds; ``None`` or 0: no limit), so a table locked by
    another session fails with :class:`~deswm.DatabaseTimeoutError` instead of
    hanging. ``read_only`` opens a SQLite file read-only and refuses a missing one, so a
    mistyped path is not created by a command that only reads. ``section`` names the
    settings in a timeout error (default: the section of ``key``).
    """
    parsed = parse_url(url, key)
    limits = Limits(
        lock=lock_timeout or None,
        statement=statement_timeout or None,
        lock_key=_setting(section or key, "lock_timeout"),
        statement_key=_setting(section or key, "statement_timeout"),
    )
    options: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        if read_only:
            parsed = _read_only_sqlite(parsed, key)
        if "timeout" not in parsed.query:
            wait = limits.lock if limits.lock is not None else _SQLITE_FOREVER
            options["connect_args"] = {"timeout": wait}
    try:
        engine = sa.create_engine(parsed, **options)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        driver = parsed.get_driver_name() or parsed.get_backend_name()
        extra = _DRIVER_EXTRAS.get(driver) or _DRIVER_EXTRAS.get(parsed.get_backend_name())
        hint = f"pip install 'deswm[{extra}]'" if extra else "install the database driver"
        raise ConfigError(
            f"cannot create an engine for {redact_url(parsed)}: "
            f"{type(exc).__name__}: {redact(str(exc))}",
            key=key,
            hint=hint,
        ) from None
    apply_limits(engine, limits)
    return engine


def _read_only_sqlite(parsed: sa.URL, key: str) -> sa.URL:
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return parsed
    if not Path(database).is_file():
        raise ConfigError(
            f"SQLite database {database!r} does not exist; commands that only read do not "
            "create it",
            key=key,
            hint="check the path; `deswm run` creates deswm's own database on its first cycle",
        )
    uri = "file:" + quote(str(Path(database).resolve()))
    return parsed.set(database=uri, query={**parsed.query, "mode": "ro", "uri": "true"})


def apply_limits(engine: sa.Engine, limits: Limits) -> None:
    """Set the session limits on every new connection and type their timeouts."""
    backend = engine.dialect.name
    statements = _limit_statements(backend, limits)
    if statements:

        @sa.event.listens_for(engine, "connect")
        def _set_limits(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                for alternatives in statements:
                    for statement in alternatives:
                        try:
                            cursor.execute(statement)
                            break
                        except Exception as exc:
                            log.debug("session limit %r not supported: %s", statement, exc)
                            _rollback(dbapi_connection)
                    else:
                        log.warning(
                            "cannot set a session limit on %s (%s); a locked table may "
                            "block without a timeout",
                            redact_url(engine.url),
                            alternatives[0],
                        )
            finally:
                cursor.close()
            _commit(dbapi_connection)

    @sa.event.listens_for(engine, "handle_error")
    def _typed_timeout(context: sa.engine.ExceptionContext) -> None:
        kind = timeout_kind(context.original_exception)
        if kind is None:
            return
        table = _statement_tables(context)
        setting, seconds = (
            (limits.lock_key, limits.lock)
            if kind == "lock"
            else (limits.statement_key, limits.statement)
        )
        error = DatabaseTimeoutError(
            "a lock wait" if kind == "lock" else "a statement",
            table=table,
            setting=setting,
            seconds=seconds,
            detail=f"{type(context.original_exception).__name__}: "
            f"{first_line(context.original_exception)}",
        )
        log.warning("%s", error)
        raise error from context.sqlalchemy_exception or context.original_exception


def _commit(dbapi_connection: Any) -> None:
    commit = getattr(dbapi_connection, "commit", None)
    if commit is not None:
        commit()


def _rollback(dbapi_connection: Any) -> None:
    rollback = getattr(dbapi_connection, "rollback", None)
    if rollback is not None:
        with contextlib.suppress(Exception):
            rollback()


def _limit_statements(backend: str, limits: Limits) -> list[tuple[str, ...]]:
    """Per limit, the statements that set it, tried in order until one works."""
    found: list[tuple[str, ...]] = []
    if backend == "postgresql":
        if limits.lock is not None:
            found.append((f"SET lock_timeout = {_millis(limits.lock)}",))
        if limits.statement is not None:
            found.append((f"SET statement_timeout = {_millis(limits.statement)}",))
    elif backend in ("mysql", "mariadb"):
        if limits.lock is not None:
            whole = max(1, math.ceil(limits.lock))
            found.append((f"SET SESSION innodb_lock_wait_timeout = {whole}",))
            # Table locks (LOCK TABLES, DDL) wait on metadata locks: a second limit.
            found.append((f"SET SESSION lock_wait_timeout = {whole}",))
        if limits.statement is not None:
            found.append(
                (
                    f"SET SESSION max_statement_time = {limits.statement:.3f}",  # MariaDB
                    f"SET SESSION max_execution_time = {_millis(limits.statement)}",  # MySQL
                )
            )
    return found


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))


# PostgreSQL SQLSTATEs, MySQL/MariaDB error numbers that mean "a limit fired".
_PG_LOCK = frozenset({"55P03"})
_PG_STATEMENT = frozenset({"57014"})
_MYSQL_LOCK = frozenset({1205})
_MYSQL_STATEMENT = frozenset({1969, 3024})
_SQLITE_BUSY = 5


def timeout_kind(exc: BaseException | None) -> str | None:
    """``"lock"`` or ``"statement"`` when ``exc`` (a DBAPI error) is a timeout, else None."""
    orig = getattr(exc, "orig", None) or exc
    if orig is None:
        return None
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _PG_LOCK:
        return "lock"
    if sqlstate in _PG_STATEMENT:
        return "statement"
    args: tuple[Any, ...] = getattr(orig, "args", ())
    code = args[0] if args else None
    if type(orig).__module__.startswith(("pymysql", "MySQLdb", "mariadb", "mysql")):
        if code in _MYSQL_LOCK:
            return "lock"
        if code in _MYSQL_STATEMENT:
            return "statement"
    if type(orig).__module__ == "sqlite3" and (
        getattr(orig, "sqlite_errorcode", None) == _SQLITE_BUSY or "database is locked" in str(orig)
    ):
        return "lock"
    return None


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, redacted."""
    lines = str(exc).strip().splitlines()
    return redact(lines[0]) if lines else ""


def _statement_tables(context: sa.engine.ExceptionContext) -> str:
    compiled = getattr(context.execution_context, "compiled", None)
    statement = getattr(compiled, "statement", None)
    if statement is not None:
        try:
            tables = find_tables(statement, include_crud=True)
        except Exception:
            tables = []
        names = sorted({str(getattr(t, "fullname", t)) for t in tables})
        if names:
            return ", ".join(repr(name) for name in names)
    return "(unknown)"


def timeout_error(
    exc: BaseException, *, what: str, table: str, limits: Limits | None = None
) -> DatabaseTimeoutError | None:
    """The typed error for ``exc`` when it is a lock or statement timeout, else None."""
    kind = timeout_kind(exc)
    if kind is None:
        return None
    limits = limits or Limits(lock=None)
    orig = getattr(exc, "orig", None) or exc
    return DatabaseTimeoutError(
        what,
        table=table,
        setting=limits.lock_key if kind == "lock" else limits.statement_key,
        seconds=limits.lock if kind == "lock" else limits.statement,
        detail=f"{type(orig).__name__}: {first_line(orig)}",
    )


def engine_from(value: object, *, key: str) -> tuple[sa.Engine, bool]:
    """``(engine, owned)`` from an Engine (not owned) or a URL (owned: dispose it)."""
    if isinstance(value, sa.Engine):
        return value, False
    if not isinstance(value, str | sa.URL):
        raise ConfigError(
            f"must be a SQLAlchemy Engine or URL, got {type(value).__name__}", key=key
        )
    return create_engine(value, key=key), True
