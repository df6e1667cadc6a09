"""The watermark store on a SQL database (SQLite, PostgreSQL, MySQL/MariaDB).

Two small tables, created by the first write (reads never run DDL):

* the watermark table: one row per (pipeline, stage, partition_index) holding the
  position (an exclusive upper bound), a version that every write increments, and who
  wrote it when;
* the history table: one row per manual :meth:`SqlWatermarkStore.set`, so an operator
  can see who moved a watermark, from where, to where and why.

Runners move a watermark only with a compare-and-set ``UPDATE ... WHERE version = :v``:
its rowcount is reliable on all three databases, whereas ``UPDATE ... RETURNING`` is not
available on MariaDB. Everything is SQLAlchemy Core, so table names of any spelling are
quoted by SQLAlchemy and never formatted into SQL text (G13).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs
import sqlalchemy as sa

from deswm import _publish
from deswm._checkpoints import Checkpoint, reach
from deswm._defaults import default_actor
from deswm._errors import ConfigError, WatermarkConflict, WatermarkError
from deswm._model import Watermark, WatermarkChange, WatermarkKey
from deswm._sql.engines import EngineOwner
from deswm._sql.errors import db_errors, is_transient, transient_retries
from deswm._sql.names import check_name
from deswm._sql.schema import LazyTables, history_change, history_row, history_table, key_string
from deswm._sqltypes import UtcDateTime
from deswm._stores._base import WatermarkStoreBase

__all__ = ["DEFAULT_TABLE", "SqlWatermarkStore"]

DEFAULT_TABLE: Final = "deswm_watermark"
"""The watermark table's name unless configured otherwise."""


PIPELINE_MAX: Final = 255
STAGE_MAX: Final = 64
ACTOR_MAX: Final = 255

_SET_ATTEMPTS: Final = 10


def _watermark_table(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("pipeline", key_string(PIPELINE_MAX), primary_key=True),
        sa.Column("stage", key_string(STAGE_MAX), primary_key=True),
        sa.Column("partition_index", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("position", UtcDateTime(), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("lag_seconds", sa.Double, nullable=True),
        sa.Column("partitions", sa.Integer, nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(ACTOR_MAX), nullable=True),
        schema=schema,
    )


def _history_table(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    return history_table(
        metadata,
        name,
        schema,
        sa.Column("pipeline", key_string(PIPELINE_MAX), nullable=False),
        sa.Column("stage", key_string(STAGE_MAX), nullable=False),
        sa.Column("partition_index", sa.Integer, nullable=False),
        actor_length=ACTOR_MAX,
    )


def _key_clause(table: sa.Table, key: WatermarkKey) -> sa.ColumnElement[bool]:
    return sa.and_(
        table.c.pipeline == key.pipeline,
        table.c.stage == key.stage,
        table.c.partition_index == key.partition,
    )


def _row_values(watermark: Watermark) -> dict[str, Any]:
    key = watermark.key
    return {
        "pipeline": key.pipeline,
        "stage": key.stage,
        "partition_index": key.partition,
        "position": watermark.position,
        "version": watermark.version,
        "lag_seconds": None if watermark.lag is None else watermark.lag.total_seconds(),
        "partitions": watermark.partitions,
        "updated_at": watermark.updated_at,
        "updated_by": watermark.updated_by,
    }


def _to_watermark(row: sa.RowMapping) -> Watermark:
    lag = row["lag_seconds"]
    return Watermark(
        key=WatermarkKey(row["pipeline"], row["stage"], int(row["partition_index"])),
        position=row["position"],
        version=int(row["version"]),
        lag=None if lag is None else timedelta(seconds=float(lag)),
        partitions=int(row["partitions"]),
        updated_at=row["updated_at"],
        updated_by=row["updated_by"],
    )


def _to_change(row: sa.RowMapping) -> WatermarkChange:
    key = WatermarkKey(row["pipeline"], row["stage"], int(row["partition_index"]))
    return history_change(row, key)


def _is_write_race(exc: sa.exc.DBAPIError) -> bool:
    """Whether ``exc`` means a concurrent writer got in first, or the database aborted
    the transaction (deadlock, serialization failure): worth one more try."""
    return isinstance(exc, sa.exc.IntegrityError) or is_transient(exc)


def retry_write_races(once: Callable[[], Watermark | None], failed: str, *, hint: str) -> Watermark:
    """Run ``once`` (one transaction) until it writes, starting over after a write race.

    ``once`` returns ``None`` when its compare-and-set found the row changed; a database
    error that means a concurrent writer got in first (:func:`_is_write_race`) counts
    alike. After :data:`_SET_ATTEMPTS` lost races, a :class:`WatermarkError` says
    ``failed``.
    """
    last_race: sa.exc.DBAPIError | None = None
    for _ in range(_SET_ATTEMPTS):
        try:
            written = once()
        except sa.exc.DBAPIError as exc:
            if not _is_write_race(exc):
                raise
            last_race = exc
            continue
        if written is not None:
            return written
    raise WatermarkError(
        f"{failed}: other writers changed it during each of {_SET_ATTEMPTS} attempts", hint=hint
    ) from last_race


def _now() -> datetime:
    return datetime.now(UTC)


_DB_HINT: Final = (
    "Check that the database is reachable and that this account may "
    "create, read and update the watermark tables; the cause is chained"
)


class SqlWatermarkStore(EngineOwner, WatermarkStoreBase):
    """:class:`~deswm.WatermarkStore` on any SQLAlchemy database.

    Args:
        engine_or_url: an :class:`sqlalchemy.Engine` (shared with the caller, never
            disposed here) or a database URL (the store creates and owns its engine;
            sessions get a lock timeout, so a locked table ends in
            :class:`~deswm.DatabaseTimeoutError` rather than a hang).
        table: name of the watermark table; any spelling works, SQLAlchemy quotes it.
        history_table: name of the history table; default ``f"{table}_history"``.
        schema: schema (PostgreSQL) or database (MySQL) holding both tables.
        actor: recorded as ``updated_by`` and in the history; default ``user@host``.

    The tables are created by the first write; reads of a missing table find nothing
    and create nothing. Errors from the database are raised as
    :class:`~deswm.WatermarkError` naming the table and the URL with its
    password hidden; the original exception is chained.
    """

    def __init__(
        self,
        engine_or_url: sa.Engine | sa.URL | str,
        *,
        table: str = DEFAULT_TABLE,
        history_table: str | None = None,
        schema: str | None = None,
        actor: str | None = None,
    ) -> None:
        self._hold_engine(engine_or_url, "watermark.url")
        table = check_name(table, "table")
        history_table = check_name(
            f"{table}_history" if history_table is None else history_table, "history_table"
        )
        if history_table == table:
            raise ConfigError(
                f"must differ from the watermark table {table!r}", key="history_table"
            )
        if schema is not None:
            schema = check_name(schema, "schema")
        if actor is None:
            actor = default_actor()
        if not isinstance(actor, str) or not actor or len(actor) > ACTOR_MAX:
            raise ConfigError(f"must be a string of 1 to {ACTOR_MAX} characters", key="actor")
        self._actor = actor
        self._metadata = sa.MetaData()
        self._table = _watermark_table(self._metadata, table, schema)
        self._history = _history_table(self._metadata, history_table, schema)
        self._created = LazyTables(self._engine, self._metadata, (self._table, self._history))

    # --- configuration ------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        return self._engine

    @property
    def watermark_table(self) -> sa.Table:
        """The watermark table (for reporting queries and tests)."""
        return self._table

    @property
    def history_table(self) -> sa.Table:
        """The history table of manual changes."""
        return self._history

    @property
    def actor(self) -> str:
        return self._actor

    pipeline_max = PIPELINE_MAX
    stage_max = STAGE_MAX

    def __repr__(self) -> str:
        return f"SqlWatermarkStore(table={self._table.fullname!r}, url={self.url!r})"

    # --- WatermarkStore -----------------------------------------------------------

    def create_tables(self) -> None:
        """Create both tables now if absent (writes do it on first use; reads never do).

        For deployments where an administrator creates deswm's tables before a
        restricted account uses them.
        """
        self._ensure_tables()

    def exists(self) -> bool:
        """Whether the watermark table exists (read commands never create it)."""
        if self._created.ready:
            return True
        with self._db_errors("look for the watermark table"), self._engine.connect() as conn:
            inspector = sa.inspect(conn)
            found = inspector.has_table(self._table.name, schema=self._table.schema)
            if found and inspector.has_table(self._history.name, schema=self._history.schema):
                self._created.ready = True
        return bool(found)

    def _get_watermark(self, key: WatermarkKey) -> Watermark | None:
        """Only reads: a missing table means no watermark, and is not created here."""
        if not self.exists():
            return None
        with self._db_errors(f"read watermark {key}"):
            return self._read(key)

    def _initialize_watermark(
        self, key: WatermarkKey, position: datetime, lag: timedelta | None, partitions: int
    ) -> Watermark:
        """Insert the watermark at ``position`` unless it exists; return the stored row.

        Two runners racing here both get the row that won: the loser's INSERT hits the
        primary key and it reads the winner's row instead. An existing row is never
        changed, whatever ``position``, ``lag`` and ``partitions`` say.
        """
        self._ensure_tables()
        with self._db_errors(f"initialize watermark {key}"):
            existing = self._read(key)
            if existing is not None:
                return existing
            created = Watermark(
                key=key,
                position=position,
                version=1,
                lag=lag,
                partitions=partitions,
                updated_at=_now(),
                updated_by=self._actor,
            )
            try:
                with self._engine.begin() as conn:
                    conn.execute(sa.insert(self._table).values(_row_values(created)))
                    reach(Checkpoint.STORE_INITIALIZE_IN_TRANSACTION)
            except sa.exc.IntegrityError as exc:
                winner = self._read(key)
                if winner is None:
                    raise WatermarkError(
                        f"could not initialize watermark {key} in table "
                        f"{self._table.fullname!r} at {self.url}: the insert was refused "
                        "but no row exists",
                        hint="Check the table's constraints; see the chained error",
                    ) from exc
                return winner
            return created

    def _advance_watermark(self, current: Watermark, position: datetime) -> Watermark:
        """Compare-and-set ``current`` to ``position``: one UPDATE.

        Raises :class:`~deswm.WatermarkConflict` (with the stored version, or
        ``"missing"``) when the row is not at ``current.version`` any more.
        """
        self._ensure_tables()
        updated = attrs.evolve(
            current,
            position=position,
            version=current.version + 1,
            updated_at=_now(),
            updated_by=self._actor,
        )
        with self._db_errors(f"advance watermark {current.key}"):
            for attempt in transient_retries(f"advance watermark {current.key}"):
                with attempt:
                    if attempt.retry_state.attempt_number > 1 and self._wrote(updated):
                        # The try before committed, then lost its connection: done
                        # already. Applying it again would be a conflict with ourselves.
                        return updated
                    actual = self._compare_and_set(current, updated)
                    if actual is None:
                        reach(Checkpoint.STORE_ADVANCE_AFTER_COMMIT)
                        return updated
        raise WatermarkConflict(current.key, current.version, actual)

    def _compare_and_set(self, current: Watermark, updated: Watermark) -> int | str | None:
        """One UPDATE from ``current`` to ``updated``: None if it was written, else the
        version found instead (``"missing"`` when the row is gone)."""
        table = self._table
        with self._engine.begin() as conn:
            result = conn.execute(
                sa.update(table)
                .where(_key_clause(table, current.key), table.c.version == current.version)
                .values(
                    position=updated.position,
                    version=updated.version,
                    updated_at=updated.updated_at,
                    updated_by=updated.updated_by,
                )
            )
            if result.rowcount == 1:
                reach(Checkpoint.STORE_ADVANCE_IN_TRANSACTION)
                return None
            actual = conn.execute(
                sa.select(table.c.version).where(_key_clause(table, current.key))
            ).scalar_one_or_none()
        return "missing" if actual is None else int(actual)

    def _wrote(self, updated: Watermark) -> bool:
        """Whether the stored row is exactly ``updated``: this store's write committed."""
        stored = self._read(updated.key)
        return (
            stored is not None
            and stored.version == updated.version
            and stored.position == updated.position
            and stored.updated_by == updated.updated_by
        )

    def _set_watermark(self, key: WatermarkKey, position: datetime, reason: str) -> Watermark:
        """Set the position in any direction, creating the row if absent, with history.

        One transaction reads the row (``FOR UPDATE`` where the database has it), writes
        version + 1 (compare-and-set, so SQLite, which cannot lock a row, stays exact),
        and appends ``(when, actor, previous, position, reason)`` to the history. When
        a concurrent writer wins, it starts over with the new row.
        """
        self._ensure_tables()

        def once() -> Watermark | None:
            with self._engine.begin() as conn:
                return self._set_once(conn, key, position, reason)

        with self._db_errors(f"set watermark {key}"):
            return retry_write_races(
                once,
                f"could not set watermark {key} in table {self._table.fullname!r}",
                hint="Stop the runners of this pipeline and partition, then set it again",
            )

    def list(self, pipeline: str | None = None) -> Sequence[Watermark]:
        """Every stored watermark, or one pipeline's, ordered by key.

        Sorted in Python: database collations disagree about case and accents, and the
        protocol promises :class:`~deswm.WatermarkKey` order.
        """
        if not self.exists():
            return []
        table = self._table
        query = sa.select(table)
        if pipeline is not None:
            query = query.where(table.c.pipeline == pipeline)
        with self._db_errors("list watermarks"), self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return sorted((_to_watermark(row) for row in rows), key=lambda w: w.key)

    def _list_history(self, key: WatermarkKey | None, limit: int) -> Sequence[WatermarkChange]:
        """Manual changes (from :meth:`set`), newest first, at most ``limit``.

        Newest means last inserted (the autoincrement id): clocks of different hosts
        need not agree, insertion order does.
        """
        history = self._history
        if not self._created.ready:
            with self._db_errors("look for the history table"), self._engine.connect() as conn:
                if not sa.inspect(conn).has_table(history.name, schema=history.schema):
                    return []
        query = sa.select(history).order_by(history.c.id.desc()).limit(limit)
        if key is not None:
            query = query.where(_key_clause(history, key))
        with self._db_errors("read the watermark history"), self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [_to_change(row) for row in rows]

    # --- internals ----------------------------------------------------------------

    def _read(self, key: WatermarkKey) -> Watermark | None:
        query = sa.select(self._table).where(_key_clause(self._table, key))
        for attempt in transient_retries(f"read watermark {key}"):
            with attempt, self._engine.connect() as conn:
                row = conn.execute(query).mappings().first()
        return None if row is None else _to_watermark(row)

    def _set_once(
        self, conn: sa.Connection, key: WatermarkKey, position: datetime, reason: str
    ) -> Watermark | None:
        """One attempt of :meth:`set`; ``None`` when a concurrent writer got in first."""
        table = self._table
        where = _key_clause(table, key)
        row = conn.execute(sa.select(table).where(where).with_for_update()).mappings().first()
        now = _now()
        previous: datetime | None
        if row is None:
            written = Watermark(
                key=key, position=position, version=1, updated_at=now, updated_by=self._actor
            )
            previous = None
            conn.execute(sa.insert(table).values(_row_values(written)))
        else:
            stored = _to_watermark(row)
            written = attrs.evolve(
                stored,
                position=position,
                version=stored.version + 1,
                updated_at=now,
                updated_by=self._actor,
            )
            result = conn.execute(
                sa.update(table)
                .where(where, table.c.version == stored.version)
                .values(
                    position=position,
                    version=written.version,
                    updated_at=now,
                    updated_by=self._actor,
                )
            )
            if result.rowcount != 1:
                return None
            previous = stored.position
        reach(Checkpoint.STORE_SET_IN_TRANSACTION)
        conn.execute(
            sa.insert(self._history).values(
                pipeline=key.pipeline,
                stage=key.stage,
                partition_index=key.partition,
                **history_row(now, self._actor, previous, position, reason),
            )
        )
        return written

    def _ensure_tables(self) -> None:
        """Create both tables once per store; safe against other processes doing the same."""
        self._created.ensure(self._db_errors, "create the watermark tables")

    def _db_errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Raise database failures as :class:`WatermarkError` naming table and URL."""
        return db_errors(action, self._table.fullname, self._engine, WatermarkError, _DB_HINT)


_publish(globals())
