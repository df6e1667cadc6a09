"""The watermark store on the earlier system's ``des_archive_config`` table.

Teams that ran the earlier DES archiver already have a singleton table::

    des_archive_config(id, archived_until, lag_days [, last_updated, updated_by])

:class:`LegacyArchiveConfigStore` lets deswm run on it unchanged, so a migration needs no
schema change and no copy of the position. Four decisions shape it:

**One watermark.** The table has no pipeline, stage or partition column, so row
``row_id`` is the watermark of one pipeline, stage ``"archived"``, partition 0. Any other
key raises :class:`~deswm.ConfigError` (use
:class:`~deswm.SqlWatermarkStore` for more); :meth:`~LegacyArchiveConfigStore.list`
and :meth:`~LegacyArchiveConfigStore.history` simply filter.

**Compare-and-set on the values, version derived from the position.** There is no
version column, and a counter kept in memory would differ between processes. Instead the
version is a pure function of the stored position, ``version = microseconds from
1970-01-01T00:00:00Z to archived_until`` (:func:`legacy_version`), which every process
computes alike, and ``advance`` is ``UPDATE ... WHERE id = :id AND archived_until =
:stored [AND last_updated = :stored]``, binding each value exactly as the database returned
it (so SQLite text such as ``'2024-05-01 00:00:00'`` matches byte for byte). Two runners
holding the same position cannot both commit (one UPDATE matches, the other finds new
values), and a runner holding an old position cannot move the watermark back (G4).
``last_updated`` (deswm creates it; the seed's PostgreSQL and MySQL tables have it) is
set by every write, so a ``set()`` makes every held copy stale, even one at the same
position (unless both writes fall in one tick of the column: a second for a plain MySQL
``DATETIME``). Without that column the compare sees the position only: a ``set()`` back to the
position a stale runner holds lets that runner's pending ``advance`` through (an ABA).
The claim it commits is still true when it commits (it published the bucket above that
position), but it can undo a replay an operator just asked for; stop the runners before
such a ``set()``, or add the column. Versions jump by a bucket's worth of microseconds per
commit and fall when a ``set()`` moves the watermark back.

**The legacy reading, mapped.** The earlier system archived ``(start, end]``: a row was
done when ``created_at <= archived_until``. deswm's position is an exclusive bound
(``created_at < position`` is done). deswm reads a stored value ``L`` as the position
``L``: it claims no more than the legacy reading did, and the next window starts at the
UTC midnight at or before ``L`` (G5), so it re-reads the rows of ``[midnight, L]`` the old
system already archived, including the row at exactly ``L``. Replaying part of a day is
safe: packing merges with what is published and is idempotent (G2, G3). deswm then writes
only bucket boundaries (UTC midnights). Read back by a legacy consumer with ``<=``, a
midnight ``M`` claims one instant too much: a row at exactly ``M`` belongs to the next
bucket and is not archived yet. Stop (or change to ``<``) legacy jobs that read the
table once deswm owns it.

**Columns as found.** A missing table is created (``id`` integer key,
``archived_until`` timestamptz / ``DATETIME(6)`` / SQLite text, ``lag_days`` integer,
plus the optional ``last_updated`` and ``updated_by``). An existing table is reflected and
used as it is: any timestamp type (naive values are UTC; MySQL ``TIMESTAMP`` columns are
read and written with the session time zone set to UTC), any fractional precision (a
position the column cannot hold exactly is refused before writing, since it would read
back different and break the compare-and-set). When ``last_updated``/``updated_by`` exist
every write sets them (UTC; the actor cut to the column's length) and reads report them;
when they do not, nothing else is required. ``lag_days`` is an integer, so lags must be
whole days; ``lag=None`` stores :data:`DEFAULT_LAG_DAYS`.

**History beside it.** The legacy schema has no history, so manual :meth:`set` calls go to
a companion table ``{table}_history`` (created by the first ``set``; reads and ``advance``
need no privilege beyond the legacy table). Edits made with plain SQL are not recorded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs
import sqlalchemy as sa

from deswm import _publish
from deswm._checkpoints import Checkpoint, reach
from deswm._defaults import LEGACY_ROW_ID, default_actor
from deswm._errors import ConfigError, WatermarkConflict, WatermarkError
from deswm._model import DEFAULT_STAGE, Watermark, WatermarkChange, WatermarkKey
from deswm._sql.engines import EngineOwner
from deswm._sql.errors import db_errors, transient_retries
from deswm._sql.names import check_name
from deswm._sql.schema import (
    LazyTables,
    create_tables,
    history_change,
    history_row,
    history_table,
)
from deswm._sql.timecols import TimeKind, fraction_digits, time_kind, utc_session
from deswm._sqltypes import UtcDateTime
from deswm._stores._base import WatermarkStoreBase
from deswm._stores.sql import retry_write_races
from deswm._timeutil import format_utc, format_wall, require_utc

__all__ = [
    "DEFAULT_LAG_DAYS",
    "LEGACY_TABLE",
    "LegacyArchiveConfigStore",
    "legacy_version",
]

LEGACY_TABLE: Final = "des_archive_config"
"""The earlier system's table name, the default."""

DEFAULT_LAG_DAYS: Final = 7
"""``lag_days`` written when a row is created without a lag (the earlier system's default)."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_PIPELINE_MAX: Final = 255
_ACTOR_MAX: Final = 255
_UPDATED_BY_MAX: Final = 100


def legacy_version(position: datetime) -> int:
    """The version :class:`LegacyArchiveConfigStore` reports for ``position``.

    Microseconds from 1970-01-01T00:00:00Z: a pure function of the stored value, so every
    process derives the same version, and it grows as the watermark advances.
    """
    return (require_utc(position, "watermark position") - _EPOCH) // _MICROSECOND


def _now() -> datetime:
    return datetime.now(UTC)


@attrs.frozen
class _TimeColumn:
    """How one timestamp column of the legacy table is read, compared and written.

    ``kind``: ``aware`` (timestamptz: bind aware UTC), ``naive`` (timestamp, DATETIME)
    and ``mysql_utc`` (MySQL TIMESTAMP under a UTC session): bind naive UTC, ``text``
    (SQLite: read and compare the stored text itself). ``digits``: fractional digits the
    column keeps.
    """

    column: sa.Column[Any]
    kind: TimeKind
    digits: int

    def select(self) -> sa.ColumnElement[Any]:
        if self.kind == "text":
            # The stored text as is: comparing against it must match byte for byte.
            return sa.type_coerce(self.column, sa.String()).label(self.column.name)
        return self.column

    def parse(self, raw: object, where: str) -> datetime:
        value = raw
        if self.kind == "text" and isinstance(raw, str):
            try:
                value = datetime.fromisoformat(raw.strip())
            except ValueError:
                value = None
        if not isinstance(value, datetime):
            raise WatermarkError(
                f"{where} holds {raw!r}, which is not a timestamp deswm can read",
                hint="Store an ISO 8601 timestamp such as '2024-05-01 00:00:00' (UTC), or "
                "set the watermark with deswm watermark set",
            )
        if value.tzinfo is None or value.utcoffset() is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @property
    def step(self) -> int:
        """The smallest step in microseconds the column can hold."""
        step: int = 10 ** (6 - self.digits)
        return step

    def fits(self, instant: datetime) -> bool:
        return instant.microsecond % self.step == 0

    def truncate(self, instant: datetime) -> datetime:
        step = self.step
        return instant.replace(microsecond=instant.microsecond - instant.microsecond % step)

    def bind(self, instant: datetime) -> sa.BindParameter[Any]:
        """A new value for the column (``instant`` is aware UTC)."""
        if self.kind == "text":
            # Without a fraction on whole seconds: the format SQLite's own functions write.
            return sa.literal(format_wall(instant), sa.String())
        if self.kind in ("naive", "mysql_utc"):
            return sa.literal(instant.replace(tzinfo=None), self.column.type)
        return sa.literal(instant, self.column.type)

    def equals_raw(self, raw: object) -> sa.ColumnElement[bool]:
        """``column = <raw value exactly as read>`` (or ``IS NULL``)."""
        if raw is None:
            return self.column.is_(None)
        if self.kind == "text":
            return self.column == sa.literal(raw, sa.String())
        return self.column == sa.literal(raw, self.column.type)


@attrs.frozen
class _Layout:
    """The legacy table as found: its columns and how to treat them."""

    table: sa.Table
    id: sa.Column[Any]
    position: _TimeColumn
    lag_days: sa.Column[Any]
    last_updated: _TimeColumn | None
    updated_by: sa.Column[Any] | None
    updated_by_length: int
    session_utc: bool

    def unchanged(self, raw_position: object, raw_updated: object) -> sa.ColumnElement[bool]:
        """The compare of a compare-and-set: the row still holds exactly these raw values.

        ``last_updated`` takes part when the column exists: every write sets it, so a
        ``set()`` to the position a runner holds still makes that runner's copy stale.
        """
        clause = self.position.equals_raw(raw_position)
        if self.last_updated is not None:
            clause = sa.and_(clause, self.last_updated.equals_raw(raw_updated))
        return clause


@attrs.frozen
class _Row:
    """One read of the row: the raw stored values (for the compare) and their meaning."""

    raw_position: object
    raw_updated: object
    watermark: Watermark


def _definition(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    """The table deswm creates when none exists: the seed's columns, portable types."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("archived_until", UtcDateTime(), nullable=False),
        sa.Column("lag_days", sa.Integer, nullable=False),
        sa.Column("last_updated", UtcDateTime(), nullable=True),
        sa.Column("updated_by", sa.String(_UPDATED_BY_MAX), nullable=True),
        schema=schema,
    )


def _history_definition(metadata: sa.MetaData, name: str, schema: str | None) -> sa.Table:
    return history_table(
        metadata,
        name,
        schema,
        sa.Column("config_id", sa.Integer, nullable=False),
        sa.Column("pipeline", sa.String(_PIPELINE_MAX), nullable=False),
        actor_length=_ACTOR_MAX,
    )


_DB_HINT: Final = (
    "Check that the database is reachable and that this account may read "
    "and update the table (and create the history table for set()); the cause "
    "is chained"
)


class LegacyArchiveConfigStore(EngineOwner, WatermarkStoreBase):
    """:class:`~deswm.WatermarkStore` on the earlier system's singleton table.

    Args:
        engine_or_url: an :class:`sqlalchemy.Engine` (shared, never disposed here) or a
            database URL (the store owns that engine; :meth:`close` disposes it).
        table: the legacy table; created with portable types if it does not exist.
        schema: its schema (PostgreSQL) or database (MySQL).
        row_id: the ``id`` of the row holding the watermark (the seed uses 1).
        pipeline: the one pipeline this row belongs to; keys of other pipelines raise
            :class:`~deswm.ConfigError`. ``None`` accepts any pipeline name (the
            table records none); :meth:`list` then names it after ``table``.
        history_table: the companion table of manual changes; default
            ``f"{table}_history"``.
        actor: written to ``updated_by`` (when the column exists) and to the history;
            default ``user@host``.

    See the module documentation for the version scheme and the ``(start, end]``
    mapping. Database failures raise :class:`~deswm.WatermarkError` naming the
    table and the URL with its password hidden.
    """

    def __init__(
        self,
        engine_or_url: sa.Engine | sa.URL | str,
        *,
        table: str = LEGACY_TABLE,
        schema: str | None = None,
        row_id: int = LEGACY_ROW_ID,
        pipeline: str | None = None,
        history_table: str | None = None,
        actor: str | None = None,
    ) -> None:
        self._hold_engine(engine_or_url, "watermark.url")
        self._table_name = check_name(table, "watermark.table")
        history_name = check_name(
            f"{table}_history" if history_table is None else history_table,
            "history_table",
        )
        if history_name == table:
            raise ConfigError(f"must differ from the legacy table {table!r}", key="history_table")
        self._schema = None if schema is None else check_name(schema, "watermark.schema")
        if isinstance(row_id, bool) or not isinstance(row_id, int):
            raise ConfigError(f"must be an integer, got {row_id!r}", key="watermark.row_id")
        self._row_id = row_id
        if pipeline is not None and (
            not isinstance(pipeline, str) or not pipeline or len(pipeline) > _PIPELINE_MAX
        ):
            raise ConfigError(
                f"must be a string of 1 to {_PIPELINE_MAX} characters, got {pipeline!r}",
                key="watermark.pipeline",
            )
        self._pipeline = pipeline
        if actor is None:
            actor = default_actor()
        if not isinstance(actor, str) or not actor or len(actor) > _ACTOR_MAX:
            raise ConfigError(f"must be a string of 1 to {_ACTOR_MAX} characters", key="actor")
        self._actor = actor
        self._history_metadata = sa.MetaData()
        self._history = _history_definition(self._history_metadata, history_name, self._schema)
        self._history_created = LazyTables(self._engine, self._history_metadata, (self._history,))
        self._layout_cache: _Layout | None = None
        self._lock = threading.Lock()

    # --- configuration ------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        return self._engine

    @property
    def table_name(self) -> str:
        """The legacy table, schema-qualified when a schema is set."""
        return f"{self._schema}.{self._table_name}" if self._schema else self._table_name

    @property
    def history_table(self) -> sa.Table:
        """The companion table of manual changes."""
        return self._history

    @property
    def row_id(self) -> int:
        return self._row_id

    @property
    def pipeline(self) -> str | None:
        return self._pipeline

    @property
    def actor(self) -> str:
        return self._actor

    pipeline_max = _PIPELINE_MAX

    def __repr__(self) -> str:
        return (
            f"LegacyArchiveConfigStore(table={self.table_name!r}, row_id={self._row_id}, "
            f"pipeline={self._pipeline!r}, url={self.url!r})"
        )

    # --- WatermarkStore -----------------------------------------------------------

    def exists(self) -> bool:
        """Whether the legacy table exists (read commands never create it)."""
        return self._existing_layout() is not None

    def _get_watermark(self, key: WatermarkKey) -> Watermark | None:
        """The watermark in row ``row_id``, or ``None`` when that row does not exist."""
        layout = self._existing_layout()
        if layout is None:
            return None
        with self._db_errors(f"read watermark {key}"):
            for attempt in transient_retries(f"read watermark {key}"):
                with attempt, self._connect(layout) as conn:
                    row = self._fetch(conn, layout, key)
        return None if row is None else row.watermark

    def _initialize_watermark(
        self, key: WatermarkKey, position: datetime, lag: timedelta | None, partitions: int
    ) -> Watermark:
        """Insert row ``row_id`` at ``position`` unless it exists; return the stored one.

        Only one partition can be kept, and ``lag`` must be whole days (``lag_days`` is an
        integer column); otherwise :class:`~deswm.ConfigError`.
        """
        if partitions != 1:
            raise ConfigError(
                f"table {self.table_name!r} holds one watermark, not {partitions} partitions",
                key="run.partitions",
                hint='Partitioned runs need SqlWatermarkStore ([watermark] kind = "sql")',
            )
        lag_days = self._lag_days(lag)
        layout = self._layout()
        with self._db_errors(f"initialize watermark {key}"):
            with self._connect(layout) as conn:
                existing = self._fetch(conn, layout, key)
            if existing is not None:
                return existing.watermark
            self._check_fits(layout, position)
            now = self._now(layout)
            values = self._audit_values(layout, now)
            values[layout.position.column.name] = layout.position.bind(position)
            values[layout.lag_days.name] = lag_days
            values[layout.id.name] = self._row_id
            try:
                with self._connect(layout) as conn, conn.begin():
                    conn.execute(sa.insert(layout.table).values(values))
                    reach(Checkpoint.STORE_INITIALIZE_IN_TRANSACTION)
            except sa.exc.IntegrityError as exc:
                with self._connect(layout) as conn:
                    winner = self._fetch(conn, layout, key)
                if winner is None:
                    raise WatermarkError(
                        f"could not initialize watermark {key} in table {self.table_name!r} "
                        f"at {self.url}: the insert was refused but row id={self._row_id} "
                        "does not exist",
                        hint="Check the table's constraints (columns without defaults?); "
                        "see the chained error",
                    ) from exc
                return winner.watermark
        return self._watermark(layout, key, position, lag_days, now)

    def _advance_watermark(self, current: Watermark, position: datetime) -> Watermark:
        """``UPDATE ... SET archived_until = :new WHERE id = :id AND archived_until = :old``.

        ``current.version`` must be :func:`legacy_version` of a stored position; the row
        is read first so the compare binds the value exactly as stored. Raises
        :class:`~deswm.WatermarkConflict` when the row holds another position (or
        is missing), :class:`~deswm.WatermarkError` for a position the column
        cannot hold.
        """
        key = current.key
        layout = self._layout()
        self._check_fits(layout, position)
        now = self._now(layout)
        with self._db_errors(f"advance watermark {key}"):
            for attempt in transient_retries(f"advance watermark {key}"):
                with attempt:
                    retried = attempt.retry_state.attempt_number > 1
                    return self._advance_once(current, position, layout, now, retried=retried)
        raise AssertionError("unreachable: the retries return or raise")  # pragma: no cover

    def _advance_once(
        self,
        current: Watermark,
        position: datetime,
        layout: _Layout,
        now: datetime,
        *,
        retried: bool,
    ) -> Watermark:
        """One try of :meth:`advance`; a ``retried`` one first looks for its own write
        (committed before the connection broke), which is not a conflict."""
        key = current.key
        with self._connect(layout) as conn:
            stored = self._fetch(conn, layout, key)
        if stored is None:
            raise self._conflict(current, "missing")
        held = stored.watermark
        moved = attrs.evolve(
            held,
            position=position,
            version=legacy_version(position),
            **self._audit_fields(layout, now),
        )
        if retried and self._holds_own_write(held, moved, current, layout):
            return moved
        if (
            held.version != current.version
            or held.position != current.position
            or (layout.last_updated is not None and held.updated_at != current.updated_at)
        ):
            raise self._conflict(current, held.version, held)
        values = self._audit_values(layout, now)
        values[layout.position.column.name] = layout.position.bind(position)
        # The read above and this compare-and-set are separate transactions on purpose:
        # the WHERE clause, not a lock, decides, so nothing is held between them.
        with self._connect(layout) as conn, conn.begin():
            result = conn.execute(
                sa.update(layout.table)
                .where(
                    layout.id == self._row_id,
                    layout.unchanged(stored.raw_position, stored.raw_updated),
                )
                .values(values)
            )
            committed = result.rowcount == 1
            if committed:
                reach(Checkpoint.STORE_ADVANCE_IN_TRANSACTION)
        if not committed:
            with self._connect(layout) as conn:
                actual = self._fetch(conn, layout, key)
            if actual is None:
                raise self._conflict(current, "missing")
            raise self._conflict(current, actual.watermark.version, actual.watermark)
        reach(Checkpoint.STORE_ADVANCE_AFTER_COMMIT)
        return moved

    def _holds_own_write(
        self, held: Watermark, moved: Watermark, current: Watermark, layout: _Layout
    ) -> bool:
        """Whether the row is what this store's advance wrote (its position, and its
        audit columns where the table has them), not ``current`` any more."""
        if held.position == current.position or held.position != moved.position:
            return False
        if layout.last_updated is not None and held.updated_at != moved.updated_at:
            return False
        return layout.updated_by is None or held.updated_by == moved.updated_by

    def _set_watermark(self, key: WatermarkKey, position: datetime, reason: str) -> Watermark:
        """Set the position in any direction (creating the row), recorded in the history.

        One transaction locks the row (where the database can), updates it with a
        compare on the value read, and appends ``(when, actor, previous, position,
        reason)`` to ``{table}_history``; a concurrent writer makes it start over.
        """
        layout = self._layout()
        self._check_fits(layout, position)
        self._ensure_history()

        def once() -> Watermark | None:
            with self._connect(layout) as conn, conn.begin():
                return self._set_once(conn, layout, key, position, reason)

        with self._db_errors(f"set watermark {key}"):
            return retry_write_races(
                once,
                f"could not set watermark {key} in table {self.table_name!r}",
                hint="Stop the runners of this pipeline, then set it again",
            )

    def list(self, pipeline: str | None = None) -> Sequence[Watermark]:
        """The one watermark (or none), filtered by ``pipeline``.

        Its key is ``(pipeline, "archived", 0)``, naming the configured pipeline, else the
        one asked for, else the table.
        """
        if self._pipeline is not None and pipeline is not None and pipeline != self._pipeline:
            return []
        name = self._pipeline or pipeline or self._table_name
        key = WatermarkKey(name, DEFAULT_STAGE, 0)
        layout = self._existing_layout()
        if layout is None:
            return []
        with self._db_errors("list watermarks"), self._connect(layout) as conn:
            row = self._fetch(conn, layout, key)
        return [] if row is None else [row.watermark]

    def _list_history(self, key: WatermarkKey | None, limit: int) -> Sequence[WatermarkChange]:
        """Manual changes of row ``row_id``, newest (last inserted) first, at most ``limit``.

        A ``key`` this store cannot hold simply has no history. Pipelines are compared in
        Python, exactly: database collations may ignore case or trailing spaces.
        """
        if limit == 0 or (key is not None and not self._holds(key)):
            return []
        history = self._history
        with self._db_errors("read the watermark history"):
            if not self._history_exists():
                return []
            query = (
                sa.select(history)
                .where(history.c.config_id == self._row_id)
                .order_by(history.c.id.desc())
            )
            changes: list[WatermarkChange] = []
            with self._engine.connect() as conn:
                for row in conn.execute(query).mappings():
                    if key is not None and row["pipeline"] != key.pipeline:
                        continue
                    key_of_row = WatermarkKey(row["pipeline"], DEFAULT_STAGE, 0)
                    changes.append(history_change(row, key_of_row))
                    if len(changes) == limit:
                        break
        return changes

    # --- internals: keys and values -----------------------------------------------

    def _holds(self, key: WatermarkKey) -> bool:
        return (
            isinstance(key, WatermarkKey)
            and key.stage == DEFAULT_STAGE
            and not isinstance(key.partition, bool)
            and key.partition == 0
            and (self._pipeline is None or key.pipeline == self._pipeline)
        )

    def _check_storable(self, key: WatermarkKey) -> None:
        if not self._holds(key):
            holds = f"{self._pipeline or '<any pipeline>'}/{DEFAULT_STAGE}/0"
            raise ConfigError(
                f"table {self.table_name!r} holds one watermark ({holds}), not {key}",
                key="watermark.kind",
                hint="The legacy table has no pipeline, stage or partition columns; use "
                'SqlWatermarkStore ([watermark] kind = "sql") for several pipelines, '
                "stages or partitions",
            )

    def _lag_days(self, lag: timedelta | None) -> int:
        if lag is None:
            return DEFAULT_LAG_DAYS
        if not isinstance(lag, timedelta) or lag < timedelta(0) or lag % timedelta(days=1):
            raise ConfigError(
                f"must be a whole number of days for table {self.table_name!r}, got {lag!r}",
                key="watermark.lag_days",
                hint="lag_days is an integer column in the legacy table; use whole days, or "
                "SqlWatermarkStore for other lags",
            )
        return lag.days

    def _check_fits(self, layout: _Layout, position: datetime) -> None:
        if not layout.position.fits(position):
            column = layout.position
            raise WatermarkError(
                f"column {column.column.name!r} of table {self.table_name!r} keeps "
                f"{column.digits} fractional digit(s) and cannot store "
                f"{format_utc(position)} exactly",
                hint="deswm itself only writes bucket boundaries; set a position the "
                "column can hold, or widen it (timestamptz, DATETIME(6))",
            )

    def _now(self, layout: _Layout) -> datetime:
        now = _now()
        return now if layout.last_updated is None else layout.last_updated.truncate(now)

    def _audit_values(self, layout: _Layout, now: datetime) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if layout.last_updated is not None:
            values[layout.last_updated.column.name] = layout.last_updated.bind(now)
        if layout.updated_by is not None:
            values[layout.updated_by.name] = self._actor[: layout.updated_by_length]
        return values

    def _audit_fields(self, layout: _Layout, now: datetime) -> dict[str, Any]:
        return {
            "updated_at": now if layout.last_updated is not None else None,
            "updated_by": (
                self._actor[: layout.updated_by_length] if layout.updated_by is not None else None
            ),
        }

    def _watermark(
        self, layout: _Layout, key: WatermarkKey, position: datetime, lag_days: int, now: datetime
    ) -> Watermark:
        return Watermark(
            key=key,
            position=position,
            version=legacy_version(position),
            lag=timedelta(days=lag_days),
            partitions=1,
            **self._audit_fields(layout, now),
        )

    def _conflict(
        self, current: Watermark, actual: object, stored: Watermark | None = None
    ) -> WatermarkConflict:
        conflict = WatermarkConflict(current.key, current.version, actual)
        note = (
            f"{self.table_name} versions are archived_until in microseconds since 1970: "
            f"this runner held {format_utc(current.position)}"
        )
        if stored is not None:
            written = format_utc(stored.updated_at) if stored.updated_at else "unknown"
            note += (
                f"; the row holds {format_utc(stored.position)}, written at {written} "
                f"by {stored.updated_by or 'unknown'}"
            )
        conflict.add_note(note)
        return conflict

    # --- internals: the database --------------------------------------------------

    def _fetch(self, conn: sa.Connection, layout: _Layout, key: WatermarkKey) -> _Row | None:
        row = conn.execute(self._select(layout)).first()
        if row is None:
            return None
        return self._to_row(layout, key, tuple(row))

    def _select(self, layout: _Layout, *, for_update: bool = False) -> sa.Select[Any]:
        columns: list[sa.ColumnElement[Any]] = [layout.position.select(), layout.lag_days]
        if layout.last_updated is not None:
            columns.append(layout.last_updated.select())
        if layout.updated_by is not None:
            columns.append(layout.updated_by)
        query = sa.select(*columns).where(layout.id == self._row_id)
        return query.with_for_update() if for_update else query

    def _to_row(self, layout: _Layout, key: WatermarkKey, row: Sequence[Any]) -> _Row:
        where = f"row id={self._row_id} of table {self.table_name!r}"
        raw = row[0]
        if raw is None:
            raise WatermarkError(
                f"{layout.position.column.name} is NULL in {where}",
                hint="Set it with deswm watermark set (or UPDATE the row) to the first "
                "instant not archived yet",
            )
        position = layout.position.parse(raw, f"{layout.position.column.name} in {where}")
        lag = self._lag(row[1], where=where)
        index = 2
        updated_at: datetime | None = None
        stamp: object = None
        if layout.last_updated is not None:
            stamp = row[index]
            index += 1
            if stamp is not None:
                updated_at = layout.last_updated.parse(
                    stamp, f"{layout.last_updated.column.name} in {where}"
                )
        updated_by = None
        if layout.updated_by is not None:
            value = row[index]
            updated_by = None if value is None else str(value)
        watermark = Watermark(
            key=key,
            position=position,
            version=legacy_version(position),
            lag=lag,
            partitions=1,
            updated_at=updated_at,
            updated_by=updated_by,
        )
        return _Row(raw, stamp, watermark)

    def _lag(self, raw: object, *, where: str) -> timedelta | None:
        """``lag_days`` as a timedelta; a value that is no whole number is an error."""
        if raw is None:
            return None
        try:
            days = int(raw)  # type: ignore[call-overload]
            if days != raw and str(days) != str(raw).strip():
                raise ValueError(raw)
        except (TypeError, ValueError):
            raise WatermarkError(
                f"lag_days in {where or f'table {self.table_name!r}'} holds {raw!r}, "
                "not a whole number of days",
                hint="Store an integer number of days in lag_days",
            ) from None
        return timedelta(days=days)

    def _set_once(
        self,
        conn: sa.Connection,
        layout: _Layout,
        key: WatermarkKey,
        position: datetime,
        reason: str,
    ) -> Watermark | None:
        """One attempt of :meth:`set`; ``None`` when a concurrent writer got in first."""
        found = conn.execute(self._select(layout, for_update=True)).first()
        now = self._now(layout)
        values = self._audit_values(layout, now)
        values[layout.position.column.name] = layout.position.bind(position)
        previous: datetime | None
        if found is None:
            values[layout.id.name] = self._row_id
            values[layout.lag_days.name] = DEFAULT_LAG_DAYS
            conn.execute(sa.insert(layout.table).values(values))
            written = self._watermark(layout, key, position, DEFAULT_LAG_DAYS, now)
            previous = None
        else:
            raw = tuple(found)
            unchanged = layout.unchanged(
                raw[0], raw[2] if layout.last_updated is not None else None
            )
            try:
                stored = self._to_row(layout, key, raw).watermark
            except WatermarkError:
                # NULL or unreadable: set() is how an operator repairs the row, so the
                # value is replaced (compared as stored) and recorded as "no previous".
                previous, lag = None, self._lag(raw[1], where="")
            else:
                previous, lag = stored.position, stored.lag
            result = conn.execute(
                sa.update(layout.table).where(layout.id == self._row_id, unchanged).values(values)
            )
            if result.rowcount != 1:
                return None
            written = Watermark(
                key=key,
                position=position,
                version=legacy_version(position),
                lag=lag,
                partitions=1,
                **self._audit_fields(layout, now),
            )
        reach(Checkpoint.STORE_SET_IN_TRANSACTION)
        conn.execute(
            sa.insert(self._history).values(
                config_id=self._row_id,
                pipeline=key.pipeline,
                **history_row(now, self._actor, previous, position, reason),
            )
        )
        return written

    @contextlib.contextmanager
    def _connect(self, layout: _Layout) -> Iterator[sa.Connection]:
        """A connection; with a MySQL ``TIMESTAMP`` column, its session in UTC meanwhile.

        A connection left in doubt (an error while in UTC) is invalidated rather than
        returned to a shared pool with another time zone.
        """
        with self._engine.connect() as conn:
            if not layout.session_utc:
                yield conn
                return
            with utc_session(conn, commit=True):
                yield conn

    def _layout(self) -> _Layout:
        """Reflect the legacy table once (creating it when absent)."""
        layout = self._existing_layout()
        if layout is not None:
            return layout
        with self._lock:
            if self._layout_cache is None:
                with self._db_errors("open the legacy table"):
                    metadata = sa.MetaData()
                    definition = _definition(metadata, self._table_name, self._schema)
                    create_tables(self._engine, metadata, (definition,))
                    table = self._reflect()
                if table is None:
                    raise WatermarkError(
                        f"table {self.table_name!r} was created but cannot be found at {self.url}",
                        hint="Check the schema setting and the account's privileges",
                    )
                self._layout_cache = self._describe_table(table)
            return self._layout_cache

    def _existing_layout(self) -> _Layout | None:
        """The table's layout, or None when it does not exist (reads never create it)."""
        if self._layout_cache is not None:
            return self._layout_cache
        with self._lock:
            if self._layout_cache is None:
                with self._db_errors("open the legacy table"):
                    table = self._reflect()
                if table is None:
                    return None
                self._layout_cache = self._describe_table(table)
            return self._layout_cache

    def _reflect(self) -> sa.Table | None:
        with self._engine.connect() as conn:
            if not sa.inspect(conn).has_table(self._table_name, schema=self._schema):
                return None
            return sa.Table(
                self._table_name, sa.MetaData(), schema=self._schema, autoload_with=conn
            )

    def _describe_table(self, table: sa.Table) -> _Layout:
        def column(name: str, required: bool) -> sa.Column[Any] | None:
            if name in table.c:
                return table.c[name]
            folded = [col for col in table.c if col.name.lower() == name]
            if len(folded) == 1:
                return folded[0]
            if required:
                raise ConfigError(
                    f"table {self.table_name!r} has no column {name!r}; its columns are "
                    f"{', '.join(repr(c.name) for c in table.c)}",
                    key="watermark.table",
                    hint="The legacy table needs id, archived_until and lag_days",
                )
            return None

        id_column = column("id", True)
        position = column("archived_until", True)
        lag_days = column("lag_days", True)
        assert id_column is not None
        assert position is not None
        assert lag_days is not None
        if not isinstance(lag_days.type, sa.Integer | sa.Numeric | sa.types.NullType):
            raise ConfigError(
                f"column lag_days of table {self.table_name!r} has type {lag_days.type}; "
                "deswm needs an integer column",
                key="watermark.table",
            )
        last_updated = column("last_updated", False)
        updated_by = column("updated_by", False)
        length = getattr(updated_by.type, "length", None) if updated_by is not None else None
        position_column = self._time_column(position)
        stamp_column = None if last_updated is None else self._time_column(last_updated)
        session_utc = any(
            col is not None and col.kind == "mysql_utc" for col in (position_column, stamp_column)
        )
        return _Layout(
            table=table,
            id=id_column,
            position=position_column,
            lag_days=lag_days,
            last_updated=stamp_column,
            updated_by=updated_by,
            updated_by_length=int(length) if length else _ACTOR_MAX,
            session_utc=session_utc,
        )

    def _time_column(self, column: sa.Column[Any]) -> _TimeColumn:
        dialect = self._engine.dialect.name
        kind = time_kind(dialect, column.type)
        if kind is not None:
            return _TimeColumn(column, kind, fraction_digits(dialect, column.type))
        raise ConfigError(
            f"column {column.name!r} of table {self.table_name!r} has type {column.type}; "
            "deswm needs a timestamp (TIMESTAMP / DATETIME) column",
            key="watermark.table",
        )

    def _ensure_history(self) -> None:
        self._history_created.ensure(self._db_errors, "create the watermark history table")

    def _history_exists(self) -> bool:
        if self._history_created.ready:
            return True
        with self._engine.connect() as conn:
            found = sa.inspect(conn).has_table(self._history.name, schema=self._schema)
        if found:
            self._history_created.ready = True
        return found

    def _db_errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Raise database failures as :class:`WatermarkError` naming the table and URL."""
        return db_errors(action, self.table_name, self._engine, WatermarkError, _DB_HINT)


_publish(globals())
