"""How a timestamp column is stored, and the UTC session MySQL ``TIMESTAMP`` needs.

The SQL source and the legacy watermark store both reflect timestamp columns they did not
create; this module is their one answer to "how are values of this column bound and read".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Final, Literal

import sqlalchemy as sa

__all__ = ["MYSQL_FAMILY", "TimeKind", "fraction_digits", "time_kind", "utc_session"]

MYSQL_FAMILY: Final = frozenset({"mysql", "mariadb"})
_NAIVE_ONLY: Final = MYSQL_FAMILY | {"sqlite"}
_SET_UTC: Final = "SET @deswm_saved_time_zone = @@session.time_zone, time_zone = '+00:00'"
_RESTORE_TZ: Final = "SET time_zone = @deswm_saved_time_zone"

TimeKind = Literal["aware", "mysql_utc", "naive", "text"]
"""aware: timestamptz-like, the driver returns aware values; bind aware UTC.
mysql_utc: MySQL/MariaDB TIMESTAMP, read and bound as naive UTC in a UTC session.
naive: a column without a zone (its meaning is the caller's: UTC or a wall time).
text: SQLite keeps text; read and compared as the stored text itself.
"""


def time_kind(dialect: str, column_type: sa.types.TypeEngine[Any]) -> TimeKind | None:
    """The kind of a column of ``column_type`` on ``dialect``; None: not a timestamp."""
    if dialect == "sqlite":
        if isinstance(column_type, sa.DateTime | sa.String | sa.types.NullType):
            return "text"
        return None
    if not isinstance(column_type, sa.DateTime):
        return None
    if dialect in MYSQL_FAMILY and isinstance(column_type, sa.TIMESTAMP):
        return "mysql_utc"
    if column_type.timezone and dialect not in _NAIVE_ONLY:
        return "aware"
    return "naive"


def fraction_digits(dialect: str, column_type: sa.types.TypeEngine[Any]) -> int:
    """The fractional-second digits a timestamp column keeps (SQLite text: 6)."""
    if dialect == "sqlite":
        return 6
    if dialect in MYSQL_FAMILY:
        return int(getattr(column_type, "fsp", None) or 0)
    precision = getattr(column_type, "precision", None)
    return 6 if precision is None else min(int(precision), 6)


@contextlib.contextmanager
def utc_session(conn: sa.Connection, *, commit: bool = False) -> Iterator[sa.Connection]:
    """``conn`` with its MySQL session time zone at UTC, put back afterwards.

    A connection left in doubt (an error while in UTC) is invalidated rather than
    returned to a shared pool with another time zone. ``commit`` ends the implicit
    transaction after each ``SET`` (for callers that begin their own).
    """
    conn.exec_driver_sql(_SET_UTC)
    if commit:
        conn.commit()
    try:
        yield conn
    except BaseException:
        conn.invalidate()
        raise
    conn.exec_driver_sql(_RESTORE_TZ)
    if commit:
        conn.commit()
