"""The error table of ``on_error="record"``, in any SQLAlchemy database.

One row per failed file and watermark key: where the file is, the stage that failed, the
error's class and message, how many attempts failed and when the first and the last did.
The orchestrator writes failures here *before* it moves the watermark past their bucket,
so a file is always either archived or listed here (G1); ``retry_errors()`` removes rows
as their files get archived.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, TypeVar

import sqlalchemy as sa

from deswm import _publish
from deswm._defaults import ERROR_TABLE
from deswm._errors import ConfigError, DeswmError
from deswm._model import FileFailure, RecordedFailure, SourceRecord, WatermarkKey
from deswm._redact import redact
from deswm._sql.engines import EngineOwner
from deswm._sql.errors import db_errors, transient_retries
from deswm._sql.schema import LazyTables, key_string
from deswm._sqltypes import UtcDateTime
from deswm._timeutil import require_utc

__all__ = ["DEFAULT_ERROR_TABLE", "SqlErrorStore"]

DEFAULT_ERROR_TABLE: Final = ERROR_TABLE
_MESSAGE_MAX: Final = 4000
T = TypeVar("T")


def _error_table(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("pipeline", key_string(255), primary_key=True),
        sa.Column("stage", key_string(64), primary_key=True),
        sa.Column("partition_index", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_at", UtcDateTime(), primary_key=True),
        sa.Column("uid_key", sa.String(64), primary_key=True),
        sa.Column("uid", sa.Text, nullable=False),
        sa.Column("location", sa.Text, nullable=False),
        sa.Column("failure_stage", sa.String(32), nullable=False),
        sa.Column("error_type", sa.String(200), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_failure", UtcDateTime(), nullable=False),
        sa.Column("last_failure", UtcDateTime(), nullable=False),
        schema=schema,
    )


def _uid_key(uid: str) -> str:
    """The sha256 of the uid: a fixed-width key for uids of any length on every database."""
    return hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()


_DB_HINT: Final = (
    "Check that the database is reachable and that this account may create, "
    "read and write the error table; the cause is chained"
)


class SqlErrorStore(EngineOwner):
    """:class:`~deswm.ErrorStore` in a table (default ``deswm_errors``).

    Args:
        engine_or_url: the database; usually the watermark's.
        table: the table name (created on first use).
        schema: its schema.
    """

    def __init__(
        self,
        engine_or_url: sa.Engine | sa.URL | str,
        *,
        table: str = DEFAULT_ERROR_TABLE,
        schema: str | None = None,
    ) -> None:
        if not isinstance(table, str) or not table.strip():
            raise ConfigError(
                f"must be a non-empty table name, got {table!r}", key="run.error_table"
            )
        self._hold_engine(engine_or_url, "watermark.url")
        self._metadata = sa.MetaData()
        self._table = _error_table(self._metadata, table, schema)
        self._created = LazyTables(self._engine, self._metadata, (self._table,))

    def __repr__(self) -> str:
        return f"SqlErrorStore({self._table.fullname!r}, url={self.url!r})"

    @property
    def table(self) -> sa.Table:
        return self._table

    # --- the protocol -------------------------------------------------------------------

    def record(self, key: WatermarkKey, failures: Sequence[FileFailure]) -> None:
        if not failures:
            return
        self._ensure_table()
        now = datetime.now(UTC)
        table = self._table

        def write(conn: sa.Connection) -> None:
            for failure in failures:
                created_at = require_utc(failure.created_at, "failure.created_at")
                where = self._row_clause(key, failure.uid, created_at)
                values = {
                    "uid": failure.uid,
                    "location": failure.location,
                    "failure_stage": failure.stage[:32],
                    "error_type": failure.error_type[:200],
                    "message": redact(failure.message)[:_MESSAGE_MAX],
                    "last_failure": now,
                }
                updated = conn.execute(
                    sa.update(table).where(where).values(attempts=table.c.attempts + 1, **values)
                )
                if updated.rowcount == 0:
                    conn.execute(
                        sa.insert(table).values(
                            pipeline=key.pipeline,
                            stage=key.stage,
                            partition_index=key.partition,
                            created_at=created_at,
                            uid_key=_uid_key(failure.uid),
                            attempts=1,
                            first_failure=now,
                            **values,
                        )
                    )

        self._retried(f"record {len(failures)} failure(s) of {key}", write, transaction=True)

    def list(
        self, key: WatermarkKey | None = None, *, limit: int | None = None
    ) -> list[RecordedFailure]:
        if limit is not None and limit < 0:
            raise ConfigError(f"must be zero or positive, got {limit}", key="limit")
        if not self.exists():
            return []
        table = self._table
        query = sa.select(table).order_by(
            table.c.pipeline,
            table.c.stage,
            table.c.partition_index,
            table.c.created_at,
            table.c.uid,
        )
        if key is not None:
            query = query.where(self._key_clause(key))
        if limit is not None:
            query = query.limit(limit)
        rows = self._retried(
            "list recorded failures", lambda conn: conn.execute(query).mappings().all()
        )
        return [_to_recorded(row) for row in rows]

    def resolve(self, key: WatermarkKey, records: Sequence[SourceRecord]) -> int:
        if not records or not self.exists():
            return 0

        def delete(conn: sa.Connection) -> int:
            removed = 0
            for record in records:
                created_at = require_utc(record.created_at, "record.created_at")
                result = conn.execute(
                    sa.delete(self._table).where(self._row_clause(key, record.uid, created_at))
                )
                removed += result.rowcount
            return removed

        return self._retried(f"resolve failures of {key}", delete, transaction=True)

    def count(self, key: WatermarkKey | None = None) -> int:
        """How many failures are recorded (for one key, or in all)."""
        if not self.exists():
            return 0
        query = sa.select(sa.func.count()).select_from(self._table)
        if key is not None:
            query = query.where(self._key_clause(key))
        return int(
            self._retried("count recorded failures", lambda conn: conn.execute(query).scalar_one())
        )

    def create_table(self) -> None:
        """Create the error table now if absent (the first record does it anyway)."""
        self._ensure_table()

    def exists(self) -> bool:
        """Whether the error table exists: reads never create it, the first record does."""
        if self._created.ready:
            return True
        table = self._table
        found = self._retried(
            "look for the error table",
            lambda conn: sa.inspect(conn).has_table(table.name, schema=table.schema),
        )
        self._created.ready = bool(found)
        return self._created.ready

    # --- internals ----------------------------------------------------------------------

    def _key_clause(self, key: WatermarkKey) -> sa.ColumnElement[bool]:
        table = self._table
        return sa.and_(
            table.c.pipeline == key.pipeline,
            table.c.stage == key.stage,
            table.c.partition_index == key.partition,
        )

    def _row_clause(
        self, key: WatermarkKey, uid: str, created_at: datetime
    ) -> sa.ColumnElement[bool]:
        table = self._table
        return sa.and_(
            self._key_clause(key),
            table.c.created_at == created_at,
            table.c.uid_key == _uid_key(uid),
        )

    def _ensure_table(self) -> None:
        self._created.ensure(self._db_errors, "create the error table")

    def _retried(
        self, action: str, work: Callable[[sa.Connection], T], *, transaction: bool = False
    ) -> T:
        """``work`` on a connection (in a transaction when asked), tried again while it
        fails transiently (a killed session, a deadlock), then raised typed.

        A write whose commit went through but whose answer was lost is applied again:
        ``record`` then counts that failure's ``attempts`` once more, and ``resolve``
        reports fewer rows removed; both leave the table right otherwise.
        """
        with self._db_errors(action):
            for attempt in transient_retries(action):
                with (
                    attempt,
                    self._engine.begin() if transaction else self._engine.connect() as conn,
                ):
                    result = work(conn)
        return result

    def _db_errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return db_errors(action, self._table.fullname, self._engine, DeswmError, _DB_HINT)


def _to_recorded(row: sa.RowMapping) -> RecordedFailure:
    key = WatermarkKey(row["pipeline"], row["stage"], int(row["partition_index"]))
    failure = FileFailure(
        uid=row["uid"],
        created_at=row["created_at"],
        location=row["location"],
        stage=row["failure_stage"],
        error_type=row["error_type"],
        message=row["message"],
    )
    return RecordedFailure(
        key=key,
        failure=failure,
        attempts=int(row["attempts"]),
        first_failure=row["first_failure"],
        last_failure=row["last_failure"],
    )


_publish(globals())
