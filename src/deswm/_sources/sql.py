"""The rows of a window from any SQL database SQLAlchemy speaks.

:class:`SqlSourceProvider` reads ``files(uid, created_at, file_location, size_bytes)``
(names configurable) with SQLAlchemy Core. Four facts, measured on SQLite, PostgreSQL
and MariaDB, shape it:

* **Keyset pagination.** Pages follow ``created_at >= :ts AND (created_at > :ts OR
  uid > :uid)``: the one predicate that uses the ``(created_at, uid)`` index on SQLite,
  PostgreSQL and MariaDB alike. ``OFFSET`` would rescan, row values full-scan on MariaDB.
  The keyset binds the *raw* values the database returned for the last row, so paging
  never depends on a time zone conversion round trip.
* **Streaming.** PostgreSQL and MySQL/MariaDB pages stream through a server-side cursor
  on a connection used for nothing else while the page is open: on MariaDB any other
  statement on a streaming connection silently ends the stream. Iteration also stops only
  at an *empty* page, so a stream cut short by the server costs one more query, never rows.
* **SQLite buffers.** An open SQLite read statement holds a shared lock that blocks the
  watermark write another connection makes to the same file, so each page is fetched in
  full and the connection released before any row is yielded.
* **Time zones.** Bounds are bound in the form the column stores (aware UTC for
  ``timestamptz``, naive wall time in the source time zone otherwise), and every record
  comes out aware UTC with microseconds kept (G10).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Collection, Generator, Iterator, Sequence
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import attrs
import sqlalchemy as sa

from deswm import _publish
from deswm._checkpoints import Checkpoint, reach
from deswm._container import MAX_UID_BYTES
from deswm._defaults import CREATED_AT_COLUMN, LOCATION_COLUMN, PAGE_SIZE, SIZE_COLUMN, UID_COLUMN
from deswm._engines import engine_from
from deswm._errors import BadRowError, ConfigError, SourceError, UnplaceableRowError
from deswm._model import LocationReference, Partition, PendingStats, SourceRecord, Window
from deswm._protocols import ShardRouter
from deswm._redact import redact_url
from deswm._routing import DesRouter
from deswm._sql.errors import db_errors, transient_retries
from deswm._sql.shardsql import (
    POSTGRES_CRC32_NAME,
    POSTGRES_CRC32_TABLE,
    SQLITE_FUNCTION,
    partition_clause,
    shard_expression,
    sqlite_shard,
)
from deswm._sql.timecols import MYSQL_FAMILY, TimeKind, time_kind, utc_session
from deswm._sql.transactions import SqlTransactionProbe
from deswm._throttle import SourceThrottle
from deswm._timeutil import format_wall, parse_timezone

if TYPE_CHECKING:
    AnySelect = sa.Select[*tuple[Any, ...]]

__all__ = ["SqlSourceProvider", "SqlTransactionProbe"]

log = logging.getLogger("deswm.sources.sql")  # a stable logger name (docs/operations.md)


# How created_at is stored (see TimeKind) decides how bounds are bound and values read;
# here a naive column (and SQLite's text) holds wall times in the source time zone.
_SQLITE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d{6})?")
_SQLITE_GLOB_SECONDS = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]"
_SQLITE_GLOB_MICROS = _SQLITE_GLOB_SECONDS + ".[0-9][0-9][0-9][0-9][0-9][0-9]"
_DB_ERRORS = (sa.exc.DBAPIError, sa.exc.TimeoutError, sa.exc.DisconnectionError)
_SHOW_MAX = 80
_FIRST_BUCKET = datetime(1, 1, 1, tzinfo=UTC)
_LAST_BUCKET = datetime(9999, 12, 31, tzinfo=UTC)  # has no end: no window can hold it
_EVERY_INSTANT = Window(_FIRST_BUCKET, datetime.max.replace(tzinfo=UTC))
_REFERENCE_BATCH = 500  # locations per IN (...): far below every dialect's parameter limit
_COUNT_BUCKETS = 366  # buckets per GROUP BY statement: one bound parameter each


@attrs.frozen
class _Columns:
    """The resolved table and columns (reflected once, on first use)."""

    table: sa.Table
    uid: sa.Column[Any]
    created_at: sa.Column[Any]
    location: sa.Column[Any]
    size: sa.Column[Any] | None
    mode: TimeKind


class SqlSourceProvider:
    """Streams the rows of a ``[start, end)`` window in ``(created_at, uid)`` order.

    Args:
        engine_or_url: an :class:`sqlalchemy.Engine` (shared, never disposed here) or a
            URL (the provider creates the engine and :meth:`close` disposes it).
        table: the table name, or a declared :class:`sqlalchemy.Table` (no reflection).
        schema: the schema (PostgreSQL) or database (MySQL) holding ``table``.
        uid_column, created_at_column, location_column: column names.
        size_column: the column holding the file size, or ``None`` if there is none.
        timezone: the zone naive ``created_at`` values are wall times in (tzinfo or an
            IANA name); ignored for ``timestamptz`` and MySQL ``TIMESTAMP`` columns.
        page_size: rows per keyset page; bounds memory whatever the window holds (G9).
        throttle: limits on how fast pages are read (rows and pages per second, a sleep
            proportional to each page's query time, a pause while a replica lags),
            waited out between pages; see :mod:`deswm._throttle`. ``None``: no limit.

    Identifiers always go through SQLAlchemy's quoting (G13), so mixed case, spaces and
    quotes in table and column names work. The table is reflected on first use; a
    missing table or column raises :class:`~deswm.ConfigError` naming the setting.
    (SQLAlchemy's MySQL reflection reads a backtick in a column name back doubled: pass
    a declared ``Table`` for such a table.)

    Time zones: a ``timestamptz`` column is compared with aware UTC bounds. A naive
    column (``timestamp``, MySQL ``DATETIME``, SQLite) is compared with the bounds
    converted to wall time in ``timezone``, and its values are read in that zone. In the
    hour a DST change repeats, wall times are ambiguous: a value is read as its first
    occurrence unless only the second lies in the window that selected it, so records
    always fall inside their window, but such a value can be off by the DST shift. MySQL
    ``TIMESTAMP`` values are read and bound in UTC: the provider sets the session
    ``time_zone`` to ``'+00:00'`` on the connections it uses and restores it afterwards.

    SQLite keeps timestamps as text. The only format SQLAlchemy writes, and the only one
    that compares correctly as text, is ``YYYY-MM-DD HH:MM:SS[.ffffff]``; a row in any
    other format (``T`` separator, offsets, other fraction widths) raises
    :class:`~deswm.BadRowError` when a window selects it, and
    :meth:`malformed_created_at` finds such rows anywhere in the table.

    Pages are keyset pages on ``(created_at, uid)``. MySQL/MariaDB collations may
    compare distinct uids equal (``'a' = 'A'``, and ``'a' = 'a '`` even in MariaDB's
    ``utf8mb4_bin``), so there each page of a text uid column is followed by one lookup
    of the rows equal to its last key: no uid is skipped whatever the collation.

    A streamed page stays open while its rows are consumed, so a consumer slower than
    the server's patience (MySQL ``net_write_timeout``, PostgreSQL
    ``idle_in_transaction_session_timeout``) needs a smaller ``page_size``; DDL on the
    table waits for the open page. A stream the server cuts short without an error is
    resumed by the next page query; one it aborts with an error raises
    :class:`~deswm.SourceError`.

    Subclass and override :meth:`filter_query` to add a filter or a join.
    """

    def __init__(
        self,
        engine_or_url: sa.Engine | sa.URL | str,
        table: str | sa.Table,
        *,
        schema: str | None = None,
        uid_column: str = UID_COLUMN,
        created_at_column: str = CREATED_AT_COLUMN,
        location_column: str = LOCATION_COLUMN,
        size_column: str | None = SIZE_COLUMN,
        timezone: tzinfo | str = UTC,
        page_size: int = PAGE_SIZE,
        throttle: SourceThrottle | None = None,
    ) -> None:
        self.engine, self._owns_engine = engine_from(engine_or_url, key="source.url")
        if not isinstance(table, sa.Table | str) or not str(
            table.name if isinstance(table, sa.Table) else table
        ):
            raise ConfigError(f"must be a table name, got {table!r}", key="source.table")
        self._table_arg = table
        self.schema = table.schema if isinstance(table, sa.Table) else schema
        self.table_name = table.name if isinstance(table, sa.Table) else table
        self.uid_column = _column_name(uid_column, "source.uid_column")
        self.created_at_column = _column_name(created_at_column, "source.created_at_column")
        self.location_column = _column_name(location_column, "source.location_column")
        self.size_column = (
            None if size_column is None else _column_name(size_column, "source.size_column")
        )
        self.timezone = (
            parse_timezone(timezone, "source.timezone") if isinstance(timezone, str) else timezone
        )
        if not isinstance(self.timezone, tzinfo):
            raise ConfigError(
                f"must be a tzinfo or an IANA name, got {timezone!r}", key="source.timezone"
            )
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ConfigError(
                f"must be a positive integer, got {page_size!r}",
                key="source.page_size",
                hint="10000 suits most tables; smaller pages hold a stream open for less time",
            )
        self.page_size = page_size
        if throttle is not None and not isinstance(throttle, SourceThrottle):
            raise ConfigError(f"must be a SourceThrottle, got {throttle!r}", key="throttle")
        self.throttle = throttle
        self._stop_waits: threading.Event | None = None
        self._columns: _Columns | None = None
        self._lock = threading.Lock()
        self._postgres_crc32: bool | None = None  # whether deswm_crc32() exists (checked once)
        self._told_no_pushdown = False

    # --- configuration ------------------------------------------------------------------

    @property
    def redacted_url(self) -> str:
        """The engine URL with the password replaced by ``***``."""
        return redact_url(self.engine.url)

    @property
    def table(self) -> sa.Table:
        """The source table (reflected on first access)."""
        return self._resolve().table

    @property
    def uid_col(self) -> sa.Column[Any]:
        return self._resolve().uid

    @property
    def created_at_col(self) -> sa.Column[Any]:
        return self._resolve().created_at

    @property
    def location_col(self) -> sa.Column[Any]:
        return self._resolve().location

    @property
    def size_col(self) -> sa.Column[Any] | None:
        return self._resolve().size

    def __repr__(self) -> str:
        zone = getattr(self.timezone, "key", None) or str(self.timezone)
        return (
            f"{type(self).__name__}({self._table_ref}, url={self.redacted_url!r}, "
            f"timezone={zone!r}, page_size={self.page_size})"
        )

    def close(self) -> None:
        """Dispose the engine if this provider created it from a URL."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> SqlSourceProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def stop_waits_on(self, stop: threading.Event) -> Iterator[None]:
        """While inside, the throttle's waits end when ``stop`` is set, raising
        :class:`~deswm._errors.WaitInterrupted` (the orchestrator binds its stop here).

        One binding at a time: a provider shared by concurrent cycles keeps the first.
        """
        if self._stop_waits is not None:
            yield
            return
        self._stop_waits = stop
        try:
            yield
        finally:
            self._stop_waits = None

    # --- the subclassing hook -----------------------------------------------------------

    def filter_query(self, query: AnySelect) -> AnySelect:
        """Return ``query`` narrowed to the rows this provider should archive.

        THE place to add a filter (a tenant, a file type) or a join. ``query`` selects
        from :attr:`table` with the window condition already applied; columns are
        available as ``self.table.c[name]`` or :attr:`uid_col`, :attr:`created_at_col`,
        ... Add ``.where(...)`` and ``.join(...)`` clauses only: do not change the
        selected columns, the order or the limit, which the provider adds afterwards.
        It is applied to :meth:`iter_records`, :meth:`pending_stats` and the
        diagnostics, so they always agree. A join must not multiply rows: join on a
        unique key, or use ``EXISTS``. The default returns ``query`` unchanged.
        """
        return query

    # --- SourceProvider -----------------------------------------------------------------

    def iter_records(self, window: Window) -> Iterator[SourceRecord]:
        """Rows with ``window.start <= created_at < window.end`` in (created_at, uid) order.

        Lazy and bounded: at most one page is held (SQLite) or open (streaming backends)
        at a time. Raises :class:`~deswm.BadRowError` naming a row that cannot be
        archived, and :class:`~deswm.SourceError` when the database fails.
        """
        cols = self._resolve()
        if window.empty:
            return iter(())
        return self._iter_records(cols, window)

    def iter_partition_records(
        self, window: Window, router: ShardRouter, partition: Partition
    ) -> Iterator[SourceRecord]:
        """:meth:`iter_records` narrowed in SQL to the rows ``partition`` owns.

        The window query also keeps ``MOD(shard index, K) = k`` where the database can
        compute the :class:`~deswm._routing.DesRouter` shard index (see
        :mod:`deswm._sql.shardsql` and docs/backends.md), so K partitions read the
        window once between them instead of K times. Rows whose shard the database
        cannot compute are returned too, and so is every row when the router is not a
        plain ``DesRouter`` or the uid column's type is not text or integer: the caller
        filters by :meth:`~deswm._model.Partition.owns` whatever it gets.
        """
        cols = self._resolve()
        if window.empty:
            return iter(())
        return self._iter_records(cols, window, self._partition_clause(cols, router, partition))

    def pending_stats(self, window: Window) -> PendingStats:
        """Files, bytes, oldest and newest ``created_at`` in ``window``: one aggregate query."""
        cols = self._resolve()
        if window.empty:
            return PendingStats(window=window, files=0, bytes=0, oldest=None, newest=None)
        stamp = self._created_at_expr(cols)
        total = sa.func.coalesce(sa.func.sum(cols.size), 0) if cols.size is not None else sa.null()
        query = (
            sa.select(sa.func.count(), total, sa.func.min(stamp), sa.func.max(stamp))
            .select_from(cols.table)
            .where(self._window_clause(cols, window))
        )
        query = self.filter_query(query)
        with self._db_errors("computing pending stats"):
            for attempt in transient_retries("computing pending stats"):
                with attempt, self._connection(cols) as conn:
                    files, size, oldest, newest = conn.execute(query).one()
        return PendingStats(
            window=window,
            files=int(files),
            bytes=int(size or 0),
            oldest=None if oldest is None else self._stat_instant(cols, oldest, window),
            newest=None if newest is None else self._stat_instant(cols, newest, window),
        )

    def bucket_counts(
        self, window: Window, router: ShardRouter, partition: Partition | None = None
    ) -> dict[datetime, int] | None:
        """Rows of ``window`` per bucket start that ``partition`` owns: one ``GROUP BY``.

        The bucket of a row is found by comparing ``created_at`` with the bucket bounds
        bound exactly as :meth:`iter_records` binds a window's (a balanced ``CASE`` over
        them, so every time zone and storage type places a row where a cycle does), at
        most :data:`_COUNT_BUCKETS` buckets per statement. ``None`` when the rows of
        ``partition`` cannot be told apart in SQL (no partition pushdown): the caller
        then streams them (:func:`deswm._sources.bucket_counts`).
        """
        cols = self._resolve()
        partition = partition or Partition()
        only = self._partition_clause(cols, router, partition)
        if partition.count > 1 and only is None:
            return None
        counts: dict[datetime, int] = {}
        if window.empty:
            return counts
        bounds = [router.bucket_start(window.start)]
        while bounds[-1] < window.end:
            bounds.append(router.next_bucket(bounds[-1]))
        for first in range(0, len(bounds) - 1, _COUNT_BUCKETS):
            chunk = bounds[first : first + _COUNT_BUCKETS + 1]
            part = Window(max(chunk[0], window.start), min(chunk[-1], window.end))
            bucket = self._bucket_case(cols, chunk, 0, len(chunk) - 1).label("bucket")
            inner = sa.select(bucket).select_from(cols.table).where(self._window_clause(cols, part))
            inner = self.filter_query(inner)
            if only is not None:
                inner = inner.where(only)
            rows = inner.subquery("per_day")
            query = sa.select(rows.c.bucket, sa.func.count()).group_by(rows.c.bucket)
            with self._db_errors("counting rows per day"):
                for attempt in transient_retries("counting rows per day"):
                    with attempt, self._connection(cols) as conn:
                        found = conn.execute(query).all()
            for index, count in found:
                counts[chunk[int(index)]] = int(count)
        return counts

    def _bucket_case(
        self, cols: _Columns, bounds: Sequence[datetime], low: int, high: int
    ) -> sa.ColumnElement[Any]:
        """The index ``i`` in ``[low, high)`` with ``bounds[i] <= created_at < bounds[i+1]``:
        nested ``CASE``s halving the range, so a row costs log2(buckets) comparisons."""
        if high - low == 1:
            return sa.literal_column(str(low), sa.Integer())
        middle = (low + high) // 2
        return sa.case(
            (
                cols.created_at < self._bind_instant(cols, bounds[middle]),
                self._bucket_case(cols, bounds, low, middle),
            ),
            else_=self._bucket_case(cols, bounds, middle, high),
        )

    # --- diagnostics --------------------------------------------------------------------

    def window_clause(self, window: Window) -> sa.ColumnElement[bool]:
        """``start <= created_at < end`` in the column's own terms (time zone, text form).

        For tools that address the same rows in other statements, like the flag stage's
        ``UPDATE``; the same bounds :meth:`iter_records` uses.
        """
        return self._window_clause(self._resolve(), window)

    def null_created_at(self, limit: int = 10) -> list[str]:
        """Uids of up to ``limit`` rows whose ``created_at`` is NULL.

        Such rows fall in no window and so are never archived; ``deswm stats`` warns
        about them. A NULL uid is shown as ``"<NULL>"``. Scans the table when
        ``created_at`` is not indexed for NULLs.
        """
        cols = self._resolve()
        query = sa.select(cols.uid).select_from(cols.table).where(cols.created_at.is_(None))
        return self._sample_uids(cols, query, limit, "looking for NULL created_at")

    def malformed_created_at(self, limit: int = 10) -> list[str]:
        """Uids of up to ``limit`` SQLite rows whose ``created_at`` text is not canonical.

        Text that is not ``YYYY-MM-DD HH:MM:SS[.ffffff]`` (or not text at all) compares
        wrongly against the window bounds, so such a row can be skipped without a window
        ever selecting it. Always empty on databases with real timestamp types. Scans.
        """
        cols = self._resolve()
        if cols.mode != "text":
            return []
        stamp = cols.created_at
        canonical = sa.and_(
            sa.func.typeof(stamp) == "text",
            sa.or_(stamp.op("GLOB")(_SQLITE_GLOB_SECONDS), stamp.op("GLOB")(_SQLITE_GLOB_MICROS)),
        )
        query = (
            sa.select(cols.uid)
            .select_from(cols.table)
            .where(stamp.is_not(None), sa.not_(canonical))
        )
        return self._sample_uids(cols, query, limit, "looking for malformed created_at")

    def unplaceable_created_at(self, limit: int = 10) -> list[str]:
        """Uids of up to ``limit`` rows whose non-NULL ``created_at`` no window can hold.

        The watermark would pass such a row without any window selecting it (G17):
        on SQLite a value stored as a number (epoch INTEGER, julian REAL: they sort
        before every text bound) or as a BLOB (after every one), or text outside
        ``0001-01-01`` .. ``9999-12-30``; on MariaDB a zero date (``0000-00-00``); on
        PostgreSQL a BC date, a year after 9999 or ``infinity``; everywhere the last day
        9999-12-31, whose end no ``datetime`` can name. :meth:`iter_records` raises
        :class:`~deswm.UnplaceableRowError` naming them before it yields a row.
        Two range conditions on ``created_at``: indexed where ``created_at`` is.
        """
        cols = self._resolve()
        query = sa.select(cols.uid).select_from(cols.table).where(self._unplaceable_clause(cols))
        return self._sample_uids(cols, query, limit, "looking for unplaceable created_at")

    def check_placeable(self, limit: int = 10) -> None:
        """Raise :class:`~deswm.UnplaceableRowError` naming up to ``limit`` rows
        that :meth:`unplaceable_created_at` finds, with their stored values."""
        cols = self._resolve()
        query = sa.select(cols.uid, self._stored_text(cols)).select_from(cols.table)
        query = self.filter_query(query.where(self._unplaceable_clause(cols)))
        query = query.order_by(cols.uid).limit(limit + 1)
        with self._db_errors("looking for unplaceable created_at"):
            for attempt in transient_retries("looking for unplaceable created_at"):
                with attempt, self._connection(cols) as conn:
                    found = conn.execute(query).all()
        if not found:
            return
        rows = [
            ("<NULL>" if uid is None else str(_shorten(_uid_text(uid))), stored)
            for uid, stored in found[:limit]
        ]
        raise UnplaceableRowError(rows, table=self._table_ref, more=len(found) > limit)

    def location_references(self, locations: Collection[str]) -> Iterator[LocationReference]:
        """Every row, whatever its ``created_at``, whose location is one of ``locations``.

        For the purge (G15): a location is deleted only when every row referencing it is
        archived and verified. One ``location IN (...)`` query per 500 locations (an
        index on the location column makes it a lookup). :meth:`filter_query` is *not*
        applied: a row this provider does not archive still needs its file. A
        ``created_at`` that cannot be read gives ``created_at=None``.
        """
        cols = self._resolve()
        wanted = sorted(set(locations))
        for first in range(0, len(wanted), _REFERENCE_BATCH):
            chunk = wanted[first : first + _REFERENCE_BATCH]
            query = sa.select(cols.uid, self._created_at_expr(cols), cols.location).where(
                cols.location.in_(chunk)
            )
            with self._db_errors("looking up the rows of file locations"):
                rows = list(self._page(cols, query))
            for raw_uid, raw_ts, raw_location in rows:
                location = (
                    bytes(raw_location).decode("utf-8", "replace")
                    if isinstance(raw_location, bytes | bytearray | memoryview)
                    else str(raw_location)
                )
                instant = None if raw_ts is None else self._instant(cols, raw_ts, _EVERY_INSTANT)
                yield LocationReference(
                    location=location,
                    uid="<NULL>" if raw_uid is None else _uid_text(raw_uid),
                    created_at=instant,
                )

    # --- internals: reflection ----------------------------------------------------------

    @property
    def _table_ref(self) -> str:
        return repr(f"{self.schema}.{self.table_name}" if self.schema else self.table_name)

    def _resolve(self) -> _Columns:
        if self._columns is not None:
            return self._columns
        with self._lock:
            if self._columns is None:
                self._columns = self._reflect()
            return self._columns

    def _reflect(self) -> _Columns:
        if isinstance(self._table_arg, sa.Table):
            table = self._table_arg
        else:
            with self._db_errors("reflecting the table"):
                try:
                    table = sa.Table(
                        self._table_arg,
                        sa.MetaData(),
                        schema=self.schema,
                        autoload_with=self.engine,
                    )
                except sa.exc.NoSuchTableError:
                    self._missing_table()
        uid = self._column(table, self.uid_column, "source.uid_column")
        created_at = self._column(table, self.created_at_column, "source.created_at_column")
        location = self._column(table, self.location_column, "source.location_column")
        size = (
            None
            if self.size_column is None
            else self._column(table, self.size_column, "source.size_column")
        )
        return _Columns(table, uid, created_at, location, size, self._time_mode(created_at))

    def _missing_table(self) -> NoReturn:
        with self._db_errors("listing the tables"):
            existing = sa.inspect(self.engine).get_table_names(schema=self.schema)
        where = f"schema {self.schema!r}" if self.schema else "the default schema"
        raise ConfigError(
            f"table {self._table_ref} does not exist in {where} of {self.redacted_url}; "
            f"tables there: {_listing(existing)}",
            key="source.table",
            hint="Check source.table and source.schema (names are case-sensitive)",
        )

    def _column(self, table: sa.Table, name: str, key: str) -> sa.Column[Any]:
        if name in table.c:
            return table.c[name]
        # Databases resolve unquoted names case-insensitively; accept that if unambiguous.
        folded = [col for col in table.c if col.name.lower() == name.lower()]
        if len(folded) == 1:
            return folded[0]
        raise ConfigError(
            f"column {name!r} does not exist in table {self._table_ref}; "
            f"its columns are: {_listing([col.name for col in table.c])}",
            key=key,
            hint=f"Set {key} to one of the existing columns",
        )

    def _time_mode(self, column: sa.Column[Any]) -> TimeKind:
        mode = time_kind(self.engine.dialect.name, column.type)
        if mode is not None:
            return mode
        raise ConfigError(
            f"column {column.name!r} of table {self._table_ref} has type {column.type}; "
            "deswm needs a timestamp (DATETIME / TIMESTAMP) column",
            key="source.created_at_column",
        )

    # --- internals: queries -------------------------------------------------------------

    def _created_at_expr(self, cols: _Columns) -> sa.ColumnElement[Any]:
        # On SQLite read the stored text as is, so a malformed value names its row
        # instead of failing inside SQLAlchemy's parser for the whole page.
        if cols.mode == "text":
            return sa.type_coerce(cols.created_at, sa.String())
        return cols.created_at

    def _bind_instant(self, cols: _Columns, instant: datetime) -> sa.ColumnElement[Any]:
        """A window bound in the form the column compares correctly with."""
        if cols.mode == "aware":
            return sa.literal(instant, cols.created_at.type)
        if cols.mode == "mysql_utc":
            return sa.literal(instant.replace(tzinfo=None), cols.created_at.type)
        wall = self._wall(instant)
        if cols.mode == "naive":
            return sa.literal(wall, cols.created_at.type)
        # Text without a fraction sorts before the same second with one, so a bound on a
        # whole second is written without it: "X" and "X.000000" then both compare right.
        # The year has four digits: "999-..." would sort after "2024-..." (G17).
        return sa.literal(format_wall(wall), sa.String())

    def _wall(self, instant: datetime) -> datetime:
        """``instant`` as naive wall time in the source zone, clamped to what datetime holds.

        UTC 0001-01-01 00:00 is year 0 in a zone behind UTC: the bound then becomes the
        first (or last) datetime, and the rows beyond it name themselves when read.
        """
        try:
            return instant.astimezone(self.timezone).replace(tzinfo=None)
        except OverflowError:
            return datetime.min if instant.year == 1 else datetime.max

    def _unplaceable_clause(self, cols: _Columns) -> sa.ColumnElement[bool]:
        """``created_at`` below the first day or on/after the last: no window holds it.

        On SQLite numbers sort before every text and blobs after it, so the two range
        conditions find them as well as text outside the years 0001-9999 (and NULL
        matches neither: :meth:`null_created_at` reports it).
        """
        stamp = cols.created_at
        return sa.or_(
            stamp < self._bind_instant(cols, _FIRST_BUCKET),
            stamp >= self._bind_instant(cols, _LAST_BUCKET),
        )

    def _stored_text(self, cols: _Columns) -> sa.ColumnElement[Any]:
        """``created_at`` as the database stores it, as text, for messages."""
        if cols.mode == "text":
            stamp = cols.created_at
            return (
                sa.func.quote(stamp)
                .concat(" (")
                .concat(sa.func.upper(sa.func.typeof(stamp)))
                .concat(")")
            )
        return sa.cast(cols.created_at, sa.String())

    def _bind_raw(self, cols: _Columns, column: sa.Column[Any], raw: object) -> Any:
        if cols.mode == "text" and column is cols.created_at:
            return sa.literal(raw, sa.String())
        return sa.literal(raw, column.type)

    def _window_clause(self, cols: _Columns, window: Window) -> sa.ColumnElement[bool]:
        return sa.and_(
            cols.created_at >= self._bind_instant(cols, window.start),
            cols.created_at < self._bind_instant(cols, window.end),
        )

    def _base_query(self, cols: _Columns, window: Window, *, start: bool = True) -> AnySelect:
        """The window's rows (without its lower bound when ``start`` is false)."""
        selected: list[sa.ColumnElement[Any]] = [
            cols.uid,
            self._created_at_expr(cols),
            cols.location,
        ]
        if cols.size is not None:
            selected.append(cols.size)
        condition = (
            self._window_clause(cols, window)
            if start
            else cols.created_at < self._bind_instant(cols, window.end)
        )
        query = sa.select(*selected).select_from(cols.table).where(condition)
        return self.filter_query(query)

    def _iter_records(
        self, cols: _Columns, window: Window, only: sa.ColumnElement[bool] | None = None
    ) -> Iterator[SourceRecord]:
        # One lower bound per page: the window's start for the first, the keyset for the
        # next (it is inside the window, so it implies the start). With both, SQLite
        # ranges the index from the window's start on every page: each page then cost
        # more than the last (measured: page 100 of 1,000,000 rows 12 times page 1).
        # Rows no window can hold would be passed silently by the watermark (G17): name
        # them before the first row is yielded, so nothing is committed past them.
        self.check_placeable()
        base = self._base_query(cols, window, start=False)
        if only is not None:
            base = base.where(only)
        start = cols.created_at >= self._bind_instant(cols, window.start)
        reader = _RowReader(self, cols, window)
        buffered = self._buffered
        ties = self._collation_may_tie(cols)
        tied: set[object] = set()  # uids yielded at the last created_at (when ``ties``)
        last: tuple[object, object] | None = None
        total = pages = 0
        throttle = self.throttle
        pacer = (
            throttle.pacer(self._stop_waits)
            if throttle is not None and throttle.limits_anything
            else None
        )
        while True:
            if last is None:
                query = base.where(start)
            else:
                ts = self._bind_raw(cols, cols.created_at, last[0])
                uid = self._bind_raw(cols, cols.uid, last[1])
                query = base.where(
                    cols.created_at >= ts, sa.or_(cols.created_at > ts, cols.uid > uid)
                )
            query = query.order_by(cols.created_at, cols.uid).limit(self.page_size)
            rows = 0
            pages += 1
            if pacer is not None:
                pacer.before_page()  # no page is open: nothing is held while it waits
            with contextlib.closing(self._page(cols, query)) as page:
                for row in page if pacer is None else pacer.timed(page):
                    rows += 1
                    record = reader.record(row)
                    if ties:
                        if last is None or row[1] != last[0]:
                            tied = set()
                        tied.add(row[0])
                    last = (row[1], row[0])
                    yield record
            # A streamed page that comes back short may have been cut by the server
            # (MariaDB ends a stream silently), so only an empty page ends a streamed
            # window: one more query instead of lost rows. Buffered pages are complete.
            total += rows
            if rows == 0 or (buffered and rows < self.page_size):
                log.debug(
                    "%s window %s: %d rows in %d pages", self._table_ref, window, total, pages
                )
                if pacer is not None and (pacer.slept or pacer.paused):
                    log.info(
                        "%s window %s: throttled %.1f s, paused %.1f s for the replica",
                        self._table_ref,
                        window,
                        pacer.slept,
                        pacer.paused,
                    )
                return
            if ties and last is not None:
                yield from self._rest_of_tie(cols, base, reader, last, tied)
            if pacer is not None:
                pacer.page_done(rows)
            reach(Checkpoint.SOURCE_BETWEEN_PAGES)

    def _partition_clause(
        self, cols: _Columns, router: ShardRouter, partition: Partition
    ) -> sa.ColumnElement[bool] | None:
        """The SQL condition keeping ``partition``'s rows, or ``None`` (read them all)."""
        if partition.count == 1:
            return None
        dialect = self.engine.dialect.name
        if not isinstance(router, DesRouter) or type(router).shard_index is not (
            DesRouter.shard_index
        ):
            self._no_pushdown(f"the router {router!r} is not a DesRouter")
            return None
        crc32 = dialect == "postgresql" and self._has_postgres_crc32(cols)
        shard = shard_expression(
            dialect, cols.uid, cols.uid.type, router.n_bits, postgres_crc32=crc32
        )
        if shard is None:
            if dialect != "postgresql" or crc32:  # a missing function was reported already
                self._no_pushdown(
                    f"{dialect} cannot compute the shard index of a {cols.uid.type} uid column"
                )
            return None
        return partition_clause(shard, partition)

    def _has_postgres_crc32(self, cols: _Columns) -> bool:
        """Whether ``deswm_crc32(bytea)`` is on the search path (looked up once)."""
        if self._postgres_crc32 is None:
            lookup = sa.select(
                sa.func.to_regprocedure(f"{POSTGRES_CRC32_NAME}(bytea)").is_not(None)
            )
            with (
                self._db_errors(f"looking up {POSTGRES_CRC32_NAME}()"),
                self._connection(cols) as conn,
            ):
                self._postgres_crc32 = bool(conn.execute(lookup).scalar())
            if not self._postgres_crc32:
                log.info(
                    "%s: PostgreSQL has no %s(bytea) function, so a text uid column is not "
                    "filtered by partition in SQL: each partition reads the whole window and "
                    "filters it in Python. Install it with `deswm source install-functions` "
                    "(docs/backends.md)",
                    self._table_ref,
                    POSTGRES_CRC32_NAME,
                )
        return self._postgres_crc32

    def _no_pushdown(self, why: str) -> None:
        if not self._told_no_pushdown:
            self._told_no_pushdown = True
            log.info("%s: partitions are filtered in Python, not in SQL: %s", self._table_ref, why)

    def install_functions(self) -> list[str]:
        """Create the SQL functions partition pushdown uses where the database lacks them.

        PostgreSQL: ``deswm_crc32(bytea)`` and its lookup table ``deswm_crc32_table()``
        (:data:`~deswm._sql.shardsql.POSTGRES_CRC32_DDL`, ``CREATE OR REPLACE``) in the
        first schema of the search path. Other databases need
        nothing. Returns the names of the functions created.
        """
        if self.engine.dialect.name != "postgresql":
            return []
        from deswm._sql.shardsql import POSTGRES_CRC32_DDL

        with self._db_errors(f"creating {POSTGRES_CRC32_NAME}()"), self.engine.begin() as conn:
            conn.exec_driver_sql(POSTGRES_CRC32_DDL)
        self._postgres_crc32 = None
        return [f"{POSTGRES_CRC32_TABLE}()", f"{POSTGRES_CRC32_NAME}(bytea)"]

    def _collation_may_tie(self, cols: _Columns) -> bool:
        """Whether distinct uids may compare equal in the database (MySQL/MariaDB text).

        Their usual collations fold case, and even MariaDB's ``utf8mb4_bin`` pads
        spaces (``'a' = 'a '``), so a strict ``uid > :uid`` after a page would skip the
        uids equal to its last one.
        """
        return self.engine.dialect.name in MYSQL_FAMILY and isinstance(cols.uid.type, sa.String)

    def _rest_of_tie(
        self,
        cols: _Columns,
        base: AnySelect,
        reader: _RowReader,
        last: tuple[object, object],
        tied: set[object],
    ) -> Iterator[SourceRecord]:
        """The rows equal to a page's last (created_at, uid) under the collation that
        were not yielded yet (one indexed lookup; the next page starts after them all)."""
        ts = self._bind_raw(cols, cols.created_at, last[0])
        uid = self._bind_raw(cols, cols.uid, last[1])
        query = base.where(cols.created_at == ts, cols.uid == uid)
        with contextlib.closing(self._page(cols, query)) as page:
            rest = [row for row in page if row[0] not in tied]
        for row in sorted(rest, key=lambda row: _uid_text(row[0])):
            tied.add(row[0])
            yield reader.record(row)

    @property
    def _buffered(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def _page(self, cols: _Columns, query: AnySelect) -> Generator[Sequence[Any], None, None]:
        # A transient failure (lost connection, deadlock) is retried until the first row
        # is handed out; a stream that breaks later raises (its rows were used already).
        with self._db_errors("reading a page of rows"):
            if self._buffered:
                # Fetch everything, release the connection, then yield: an open SQLite
                # read statement would block the watermark write of another connection.
                for attempt in transient_retries("reading a page of rows"):
                    with attempt, self._connection(cols) as conn:
                        try:
                            rows = conn.execute(query).fetchall()
                        except sa.exc.OperationalError as exc:
                            if "decode" not in str(exc.orig):
                                raise
                            rows = _fetch_keeping_undecodable_text(conn, query)
                yield from rows
                return
            with contextlib.ExitStack() as stack:
                for attempt in transient_retries("reading a page of rows"):
                    with attempt:
                        stack.close()  # the connection of a failed try
                        conn = stack.enter_context(self._connection(cols))
                        # One fetch per page: the page bounds memory already, and every
                        # fetch of a server-side cursor is a round trip (measured on
                        # PostgreSQL: 100,000 rows in fetches of 1,000 spent 0.22 s
                        # fetching, in one of 10,000 0.15 s).
                        streaming = conn.execution_options(
                            stream_results=True, yield_per=self.page_size
                        )
                        result = stack.enter_context(contextlib.closing(streaming.execute(query)))
                yield from result

    def _sample_uids(self, cols: _Columns, query: AnySelect, limit: int, action: str) -> list[str]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        query = self.filter_query(query).order_by(cols.uid).limit(limit)
        with self._db_errors(action), self._connection(cols) as conn:
            values = conn.execute(query).scalars().all()
        return ["<NULL>" if value is None else _uid_text(value) for value in values]

    @contextlib.contextmanager
    def _connection(self, cols: _Columns) -> Iterator[sa.Connection]:
        """A connection for one statement (or one streamed page), and nothing else.

        For MySQL ``TIMESTAMP`` columns the session time zone is set to UTC and put back
        afterwards; a connection left in doubt (an error, an abandoned stream) is
        invalidated instead of going back to the pool in UTC.
        """
        with self.engine.connect() as conn:
            if self._buffered:  # SQLite: the shard function of partition pushdown
                dbapi = conn.connection.dbapi_connection
                dbapi.create_function(  # type: ignore[union-attr]
                    SQLITE_FUNCTION, 2, sqlite_shard, deterministic=True
                )
            if cols.mode != "mysql_utc":
                yield conn
                return
            with utc_session(conn):
                yield conn

    def _db_errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        # Timeouts are typed by the engine's own limits (apply_limits), not here.
        return db_errors(
            action,
            self._table_ref,
            self.engine,
            SourceError,
            "Check that the database is reachable and the table readable",
            message="{action} failed for table {table} on {url}",
            catch=_DB_ERRORS,
            timeouts=False,
        )

    # --- internals: values --------------------------------------------------------------

    def _instant(self, cols: _Columns, raw: object, window: Window) -> datetime | None:
        """``raw`` as aware UTC, or None when it is not a value of the column's kind."""
        if cols.mode == "text":
            if not isinstance(raw, str) or not _SQLITE_TEXT.fullmatch(raw):
                return None
            try:
                raw = datetime.fromisoformat(raw)
            except ValueError:
                return None
        if not isinstance(raw, datetime):
            return None
        if raw.tzinfo is not None and raw.utcoffset() is not None:
            return raw.astimezone(UTC)
        if cols.mode in ("aware", "mysql_utc"):
            return raw.replace(tzinfo=UTC)
        try:
            first = raw.replace(tzinfo=self.timezone).astimezone(UTC)
            if first in window:
                return first
            second = raw.replace(tzinfo=self.timezone, fold=1).astimezone(UTC)
        except OverflowError:  # a wall time whose UTC instant is outside years 1-9999
            return None
        return second if second in window else first

    def _stat_instant(self, cols: _Columns, raw: object, window: Window) -> datetime:
        instant = self._instant(cols, raw, window)
        if instant is None:
            raise SourceError(
                f"table {self._table_ref} holds created_at {raw!r} in window {window}, "
                "which is not a timestamp deswm can read",
                hint="On SQLite use the text format YYYY-MM-DD HH:MM:SS[.ffffff]; "
                "SqlSourceProvider.malformed_created_at() lists such rows",
            )
        return instant


class _RowReader:
    """Turns the rows of one window into records, checking each (G12)."""

    __slots__ = ("_cols", "_end", "_fast", "_previous", "_provider", "_start", "_window")

    def __init__(self, provider: SqlSourceProvider, cols: _Columns, window: Window) -> None:
        self._provider = provider
        self._cols = cols
        self._window = window
        self._previous: tuple[datetime, object] | None = None
        self._start = window.start
        self._end = window.end
        # Rows that are plainly valid take a short path (the same checks, the same
        # records) for SQLite text read in UTC, the embedded default, and for aware
        # timestamps (timestamptz); anything unusual takes the full path below.
        self._fast: Literal["sqlite", "aware"] | None = (
            "sqlite"
            if cols.mode == "text" and provider.timezone is UTC
            else "aware"
            if cols.mode == "aware"
            else None
        )

    def record(self, row: Sequence[Any]) -> SourceRecord:
        raw_uid, raw_ts, raw_location = row[0], row[1], row[2]
        fast = self._fast
        if (
            fast is not None
            and type(raw_uid) is str
            and type(raw_location) is str
            and raw_uid
            and raw_location
            and raw_uid.isascii()
            and len(raw_uid) <= MAX_UID_BYTES
        ):
            instant: datetime | None = None
            if fast == "sqlite":
                if type(raw_ts) is str and _SQLITE_TEXT.fullmatch(raw_ts):
                    try:
                        instant = datetime.fromisoformat(raw_ts).replace(tzinfo=UTC)
                    except ValueError:  # e.g. February 30th: the full path names the row
                        instant = None
                    previous = self._previous
                    if (
                        instant is not None
                        and previous is not None
                        and instant == previous[0]
                        and raw_ts != previous[1]
                    ):
                        instant = None  # two spellings of one instant: the full path says so
            elif (
                type(raw_ts) is datetime
                and raw_ts.tzinfo is not None
                and raw_ts.utcoffset() is not None
            ):
                instant = raw_ts.astimezone(UTC)
            if instant is not None and self._start <= instant < self._end:
                self._previous = (instant, raw_ts)
                size = row[3] if self._cols.size is not None else None
                return SourceRecord(
                    raw_uid, instant, raw_location, None if size is None else int(size)
                )
        return self._record(row)

    def _record(self, row: Sequence[Any]) -> SourceRecord:
        raw_uid, raw_ts, raw_location = row[0], row[1], row[2]
        provider, cols = self._provider, self._cols
        instant = provider._instant(cols, raw_ts, self._window)
        if instant is None:
            self._bad(raw_uid, raw_ts, _bad_timestamp(cols, raw_ts, provider.created_at_column))
        if instant not in self._window:
            self._bad(
                raw_uid,
                raw_ts,
                f"created_at {raw_ts!r} reads as {instant.isoformat()}, outside the window "
                f"{self._window} that selected it",
            )
        if cols.mode == "text" and self._previous is not None:
            previous_instant, previous_raw = self._previous
            if instant == previous_instant and raw_ts != previous_raw:
                self._bad(
                    raw_uid,
                    raw_ts,
                    f"created_at is stored both as {previous_raw!r} and {raw_ts!r}, which "
                    "SQLite orders apart; store one format for every row",
                )
        self._previous = (instant, raw_ts)
        uid = self._uid(raw_uid, instant)
        location = self._location(raw_location, uid, instant)
        size = row[3] if cols.size is not None else None
        return SourceRecord(
            uid=uid,
            created_at=instant,
            location=location,
            size=None if size is None else int(size),
        )

    def _uid(self, raw: object, instant: datetime) -> str:
        if raw is None:
            self._bad(raw, instant, f"{self._provider.uid_column} is NULL")
        if isinstance(raw, bytes | bytearray | memoryview):
            data = bytes(raw)
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError:
                self._bad(data, instant, "uid is not valid UTF-8")
        uid = _uid_text(raw)
        if not uid:
            self._bad(raw, instant, "uid is empty")
        try:
            size = len(uid.encode("utf-8"))
        except UnicodeEncodeError:
            self._bad(uid, instant, "uid cannot be encoded as UTF-8")
        if size > MAX_UID_BYTES:
            self._bad(
                uid,
                instant,
                f"uid is {size:,} bytes in UTF-8; DES entry names hold at most {MAX_UID_BYTES:,}",
            )
        return uid

    def _location(self, raw: object, uid: str, instant: datetime) -> str:
        name = self._provider.location_column
        if raw is None:
            self._bad(uid, instant, f"{name} is NULL")
        if isinstance(raw, bytes | bytearray | memoryview):
            try:
                raw = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                self._bad(uid, instant, f"{name} is not valid UTF-8")
        location = str(raw)
        if not location:
            self._bad(uid, instant, f"{name} is empty")
        return location

    def _bad(self, uid: object, created_at: object, message: str) -> NoReturn:
        table = self._provider._table_ref
        raise BadRowError(f"{message} (table {table})", uid=_shorten(uid), created_at=created_at)


# --- helpers ------------------------------------------------------------------------------


def _column_name(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"must be a non-empty column name, got {value!r}", key=key)
    return value


def uid_text_of(raw: object) -> str | None:
    """The uid text the source makes of a raw column value, or ``None`` where it would
    name the row as bad (NULL, bytes that are not UTF-8)."""
    if raw is None:
        return None
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return _uid_text(raw)


def _uid_text(raw: object) -> str:
    if isinstance(raw, Decimal) and raw == raw.to_integral_value():
        return str(int(raw))
    return raw if isinstance(raw, str) else str(raw)


def _fetch_keeping_undecodable_text(conn: sa.Connection, query: AnySelect) -> list[Any]:
    """The page again, with text that is not UTF-8 returned as ``bytes``.

    SQLite stores whatever bytes it is given in a TEXT column, and ``sqlite3`` fails the
    whole fetch on one it cannot decode. Read the page again with a text factory that
    keeps such values as bytes, so the row checks name the offending row (G12). Only this
    slow path pays for a Python call per value.
    """
    dbapi = conn.connection.dbapi_connection
    previous = dbapi.text_factory  # type: ignore[union-attr]
    dbapi.text_factory = _text_or_bytes  # type: ignore[union-attr]
    try:
        return list(conn.execute(query).fetchall())
    finally:
        dbapi.text_factory = previous  # type: ignore[union-attr]


def _text_or_bytes(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _shorten(value: object) -> object:
    """A long uid, cut to a readable prefix for messages."""
    if isinstance(value, str) and len(value) > _SHOW_MAX:
        return f"{value[:_SHOW_MAX]}... ({len(value):,} characters)"
    if isinstance(value, bytes) and len(value) > _SHOW_MAX:
        return f"{value[:_SHOW_MAX]!r}... ({len(value):,} bytes)"
    return value


def _listing(names: Sequence[str], limit: int = 30) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(repr(name) for name in sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _bad_timestamp(cols: _Columns, raw: object, name: str) -> str:
    if cols.mode == "text":
        return (
            f"{name} {raw!r} is not a SQLite timestamp in the format "
            "YYYY-MM-DD HH:MM:SS[.ffffff]; other text sorts wrongly against the window bounds"
        )
    return f"{name} {raw!r} is not a timestamp"


_publish(globals())
