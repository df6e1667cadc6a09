"""What a benchmark child process measures about itself.

* :class:`SqlTimer`: time inside SQL statements, three ways, for every engine of the
  process: ``execute_s`` between SQLAlchemy's ``before_cursor_execute`` and
  ``after_cursor_execute`` events; ``fetch_s`` inside the DBAPI cursors' ``fetch*``
  calls (a SQLite statement runs while its rows are fetched, and a PostgreSQL
  server-side cursor fetches with separate ``FETCH`` round trips, neither of which the
  cursor events see); ``commit_s`` inside ``commit()`` (on PostgreSQL the WAL flush).
  ``db_s`` is their sum. It also counts statements and the rows each DML statement
  changed, per table;
* :func:`peak_rss_mib`: this process's own peak RSS (``VmHWM``), never ``ru_maxrss``,
  which a forked child inherits from its parent;
* :func:`wal_lsn` / :func:`wal_bytes_since`: PostgreSQL WAL positions.
"""

from __future__ import annotations

import os
import re
import resource
import sqlite3
import sys
import time
from collections import Counter
from typing import Any

__all__ = ["SqlTimer", "peak_rss_mib", "ru_maxrss_mib", "wal_bytes_since", "wal_lsn"]

_DML = re.compile(
    r"^\s*(UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+((?:\"[^\"]+\"|\w+)(?:\.(?:\"[^\"]+\"|\w+))?)",
    re.I,
)


def peak_rss_mib() -> float:
    """Peak RSS of this process in MiB (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return ru_maxrss_mib()


def ru_maxrss_mib() -> float:
    """``ru_maxrss`` in MiB: on Linux it keeps the parent's peak across fork and exec."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class SqlTimer:
    """Accumulates time inside SQL statements of every engine of this process.

    Install it before any engine connects (it hooks connection creation to time
    fetches and commits, and the cursor events to time statements).
    """

    _active: SqlTimer | None = None

    def __init__(self) -> None:
        self.execute_s = 0.0
        self.fetch_s = 0.0
        self.commit_s = 0.0
        self.statements = 0
        self.kinds: Counter[str] = Counter()
        self.rows_changed: Counter[str] = Counter()
        self._started: list[float] = []

    @property
    def db_s(self) -> float:
        return self.execute_s + self.fetch_s + self.commit_s

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def snapshot(self) -> dict[str, Any]:
        return {
            "db_s": round(self.db_s, 4),
            "execute_s": round(self.execute_s, 4),
            "fetch_s": round(self.fetch_s, 4),
            "commit_s": round(self.commit_s, 4),
            "statements": self.statements,
            "kinds": dict(self.kinds),
            "rows_changed": dict(self.rows_changed),
        }

    # --- installation ---------------------------------------------------------------

    def install(self) -> SqlTimer:
        import sqlalchemy as sa
        from sqlalchemy import event
        from sqlalchemy.engine import default

        SqlTimer._active = self
        event.listen(sa.engine.Engine, "before_cursor_execute", _before)
        event.listen(sa.engine.Engine, "after_cursor_execute", _after)
        event.listen(sa.engine.Engine, "do_connect", _do_connect)
        event.listen(sa.pool.Pool, "connect", _on_connect)
        original = default.DefaultDialect.do_commit
        if not getattr(original, "_bench_timed", False):

            def do_commit(dialect: Any, dbapi_connection: Any) -> None:
                started = time.perf_counter()
                try:
                    original(dialect, dbapi_connection)
                finally:
                    _add("commit_s", time.perf_counter() - started)

            do_commit._bench_timed = True  # type: ignore[attr-defined]
            default.DefaultDialect.do_commit = do_commit  # type: ignore[method-assign]
        return self


def _add(field: str, seconds: float) -> None:
    timer = SqlTimer._active
    if timer is not None:
        setattr(timer, field, getattr(timer, field) + seconds)


def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    timer = SqlTimer._active
    if timer is not None:
        timer._started.append(time.perf_counter())


def _after(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    timer = SqlTimer._active
    if timer is None or not timer._started:
        return
    timer.execute_s += time.perf_counter() - timer._started.pop()
    timer.statements += 1
    kind = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
    timer.kinds[kind] += 1
    match = _DML.match(statement)
    if match is not None:
        rowcount = getattr(cursor, "rowcount", -1)
        if isinstance(rowcount, int) and rowcount > 0:
            timer.rows_changed[match.group(2).replace('"', "").lower()] += rowcount


# --- DBAPI fetch timing -------------------------------------------------------------------


def _timed(method_name: str) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return getattr(super(type(self), self), method_name)(*args, **kwargs)
        finally:
            _add("fetch_s", time.perf_counter() - started)

    method.__name__ = method_name
    return method


class _SqliteCursor(sqlite3.Cursor):
    fetchone = _timed("fetchone")
    fetchmany = _timed("fetchmany")
    fetchall = _timed("fetchall")


class _SqliteConnection(sqlite3.Connection):
    def cursor(self, factory: Any = None) -> Any:  # type: ignore[override]
        return super().cursor(factory or _SqliteCursor)


_psycopg_classes: dict[str, type] = {}


def _psycopg_cursor_classes() -> tuple[type, type]:
    if not _psycopg_classes:
        import psycopg

        class Cursor(psycopg.Cursor):  # type: ignore[type-arg]
            fetchone = _timed("fetchone")
            fetchmany = _timed("fetchmany")
            fetchall = _timed("fetchall")

        class ServerCursor(psycopg.ServerCursor):  # type: ignore[type-arg]
            fetchone = _timed("fetchone")
            fetchmany = _timed("fetchmany")
            fetchall = _timed("fetchall")

        _psycopg_classes["cursor"] = Cursor
        _psycopg_classes["server"] = ServerCursor
    return _psycopg_classes["cursor"], _psycopg_classes["server"]


def _do_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    if dialect.name == "sqlite":
        cparams.setdefault("factory", _SqliteConnection)
    elif dialect.driver == "psycopg":
        cparams.setdefault("cursor_factory", _psycopg_cursor_classes()[0])


def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    if type(dbapi_connection).__module__.startswith("psycopg"):
        dbapi_connection.server_cursor_factory = _psycopg_cursor_classes()[1]


# --- PostgreSQL WAL -----------------------------------------------------------------------


def wal_lsn(engine: Any) -> str:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT pg_current_wal_lsn()")).scalar_one())


def wal_bytes_since(engine: Any, lsn: str) -> int:
    import sqlalchemy as sa

    with engine.connect() as conn:
        value = conn.execute(
            sa.text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(:lsn AS pg_lsn))"),
            {"lsn": lsn},
        ).scalar_one()
    return int(value)


def other_pg_activity(engine: Any) -> int:
    """Other client backends active on the server (their WAL would be counted too)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid() AND state <> 'idle'"
                )
            ).scalar_one()
        )


def load_average() -> float:
    return round(os.getloadavg()[0], 2)
