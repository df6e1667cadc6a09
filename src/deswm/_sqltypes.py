"""SQLAlchemy column types that keep deswm's UTC rule (G10) on every backend.

The three supported databases disagree about time: PostgreSQL keeps offsets
(``timestamptz``) and returns aware values, SQLite and MySQL/MariaDB drop the offset
silently and return naive values, and MariaDB also drops microseconds unless the column
is declared ``DATETIME(6)``. :class:`UtcDateTime` hides all of that: it stores the UTC
instant with microseconds and always gives back an aware UTC ``datetime``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect

from deswm import _publish
from deswm._errors import NaiveDatetimeError
from deswm._timeutil import as_utc, require_utc

__all__ = ["UtcDateTime"]

# Backends whose datetime columns silently drop the UTC offset: they get naive UTC.
_OFFSET_DROPPING = frozenset({"sqlite", "mysql", "mariadb"})
_MYSQL_FAMILY = frozenset({"mysql", "mariadb"})


class _NaiveBindError(NaiveDatetimeError, sa.exc.DontWrapMixin):
    """A :class:`NaiveDatetimeError` that SQLAlchemy re-raises as is.

    Without :class:`~sqlalchemy.exc.DontWrapMixin` an error raised while binding
    parameters reaches the caller as a ``StatementError``; callers of deswm catch
    ``NaiveDatetimeError``.
    """


class UtcDateTime(sa.TypeDecorator[datetime]):
    """An instant in UTC with microseconds; binds aware values, returns aware UTC.

    Storage per backend:

    * PostgreSQL (and other offset-aware backends): ``TIMESTAMP WITH TIME ZONE``;
    * MySQL/MariaDB: ``DATETIME(6)`` holding naive UTC (plain ``DATETIME`` would drop
      the microseconds);
    * SQLite: SQLAlchemy's fixed-width text holding naive UTC, so text order is time
      order.

    Binding a naive ``datetime`` raises :class:`~deswm.NaiveDatetimeError`:
    guessing its zone is how instants get shifted by hours. Naive values read back
    (SQLite, MySQL) are UTC because this type only ever writes UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in _MYSQL_FAMILY:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        what = "a value bound to a UtcDateTime column"
        try:
            utc = require_utc(value, what)
        except NaiveDatetimeError:
            raise _NaiveBindError(what, value) from None
        if dialect.name in _OFFSET_DROPPING:
            return utc.replace(tzinfo=None)
        return utc

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - a driver bypassing SQLAlchemy
            raise TypeError(f"UtcDateTime column returned {type(value).__name__}: {value!r}")
        return as_utc(value)


_publish(globals())
