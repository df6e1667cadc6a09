"""Pieces shared by deswm's own SQL tables (watermarks, history, recorded failures)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from deswm._model import WatermarkChange, WatermarkKey
from deswm._sqltypes import UtcDateTime

__all__ = [
    "LazyTables",
    "create_tables",
    "history_change",
    "history_row",
    "history_table",
    "key_string",
]

_CREATE_ATTEMPTS: Final = 3
_MYSQL: Final = frozenset({"mysql", "mariadb"})


class _KeyString(sa.types.TypeDecorator[str]):
    """Text compared byte for byte: ``VARBINARY`` on MySQL/MariaDB, plain strings elsewhere.

    MySQL/MariaDB's utf8mb4 collations are case-insensitive, and even ``utf8mb4_bin`` is
    PAD SPACE (``'orders'`` equals ``'orders '``); either would make two keys share a row
    there and nowhere else. Binary columns compare exactly, on every server version.
    """

    impl = sa.String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in _MYSQL:
            return dialect.type_descriptor(mysql.VARBINARY(self.length * 4))
        return dialect.type_descriptor(sa.String(self.length))

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> Any:
        if value is not None and dialect.name in _MYSQL:
            return value.encode("utf-8")
        return value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> str | None:
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode("utf-8")
        return None if value is None else str(value)


def key_string(length: int) -> sa.types.TypeEngine[str]:
    """A key column (pipeline, stage) that compares exactly on every database."""
    return _KeyString(length)


def history_table(
    metadata: sa.MetaData,
    name: str,
    schema: str | None,
    *key_columns: sa.Column[Any],
    actor_length: int,
) -> sa.Table:
    """A table of manual watermark changes: an id, ``key_columns``, then who moved what when.

    No index beyond the primary key: rows are manual changes, a handful per year.
    """
    return sa.Table(
        name,
        metadata,
        sa.Column(
            "id",
            # SQLite only autoincrements an INTEGER PRIMARY KEY, not a BIGINT one.
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        *key_columns,
        sa.Column("changed_at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(actor_length), nullable=False),
        sa.Column("previous_position", UtcDateTime(), nullable=True),
        sa.Column("new_position", UtcDateTime(), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        schema=schema,
    )


def history_row(
    changed_at: datetime, actor: str, previous: datetime | None, position: datetime, reason: str
) -> dict[str, Any]:
    """The columns :func:`history_table` adds, for one manual change (key columns apart)."""
    return {
        "changed_at": changed_at,
        "actor": actor,
        "previous_position": previous,
        "new_position": position,
        "reason": reason,
    }


def history_change(row: sa.RowMapping, key: WatermarkKey) -> WatermarkChange:
    """A row of a :func:`history_table` as the change of ``key`` it records."""
    return WatermarkChange(
        key=key,
        changed_at=row["changed_at"],
        actor=row["actor"],
        previous=row["previous_position"],
        position=row["new_position"],
        reason=row["reason"],
    )


def create_tables(engine: sa.Engine, metadata: sa.MetaData, tables: Sequence[sa.Table]) -> None:
    """Create ``tables`` if absent, tolerating other processes doing the same at once.

    ``checkfirst`` alone races: another process can create a table between our check and
    our CREATE. Its "already exists" error is fine once every table is there; when only
    some are (MySQL commits each CREATE alone), try again.
    """
    for attempt in range(1, _CREATE_ATTEMPTS + 1):
        try:
            metadata.create_all(engine, tables=list(tables), checkfirst=True)
        except sa.exc.DBAPIError:
            if _tables_exist(engine, tables):
                return
            if attempt == _CREATE_ATTEMPTS:
                raise
        else:
            return


class LazyTables:
    """Tables a store creates on its first write, once per store (reads never create them).

    ``ready`` says they are known to exist; a store that finds them may set it.
    """

    def __init__(self, engine: sa.Engine, metadata: sa.MetaData, tables: Sequence[sa.Table]):
        self.ready = False
        self._engine = engine
        self._metadata = metadata
        self._tables = tuple(tables)
        self._lock = threading.Lock()

    def ensure(
        self, errors: Callable[[str], contextlib.AbstractContextManager[None]], action: str
    ) -> None:
        """Create the tables if this store has not yet; ``errors(action)`` types failures."""
        if self.ready:
            return
        with self._lock:
            if not self.ready:  # another thread may have finished while we waited
                with errors(action):
                    create_tables(self._engine, self._metadata, self._tables)
                self.ready = True


def _tables_exist(engine: sa.Engine, tables: Sequence[sa.Table]) -> bool:
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        return all(inspector.has_table(table.name, schema=table.schema) for table in tables)
