"""The flag stage: back-fill a legacy ``archived`` column for systems that still read it.

Teams moving from a flag-per-row pipeline often have readers that still look at
``files.archived``. This job sets that column for rows that deswm has archived, in
rate-limited batches, behind its own watermark (stage ``flagged``) that never passes the
``archived`` one (the lowest over all partitions of the pipeline). It is the only part
of deswm that writes to the source table, and it is opt-in: the archive cycle itself
never writes there (G4).

Rows are only flagged where their bucket's manifest exists (:mod:`deswm._manifest`): each
batch first requires the manifest of every partition its rows belong to, so a day
committed without one stops the job with :class:`~deswm._errors.ManifestMissingError`
before that partition's rows of the day are flagged (with one partition: before any row
of the day), and the ``flagged`` watermark never passes it. A day whose source holds more
rows than its manifests counted (late rows, not archived) stops the job with
:class:`~deswm._errors.LateRowsError` before any row of that day is flagged. With
``verify="digest"`` (the default) equal counts are not trusted either: the day's rows are
streamed once and their digest compared with the manifests'; when it differs (rows were
deleted, or deleted while others arrived) every row must be in a published index, or the
day is refused the same way.

Rows listed in the error table (``on_error="record"``: their file failed and is not
archived) are never flagged: the flag says "archived" only of files that are. A later
``deswm errors retry`` archives them, but the ``flagged`` watermark has passed their day,
so they stay unflagged (the safe side for a reader of the flag) until the ``flagged``
watermark is moved back (``deswm watermark set``) and the job runs again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol

import attrs
import sqlalchemy as sa

from deswm import _publish
from deswm._defaults import FLAG_BATCH_SIZE, FLAG_COLUMN, FLAG_VALUE
from deswm._errors import ConfigError, LateRowsError, SourceError
from deswm._manifest import BucketManifest, ManifestStore
from deswm._model import DEFAULT_STAGE, Partition, SourceRecord, Watermark, WatermarkKey, Window
from deswm._protocols import ErrorStore, ShardRouter, SourceProvider, WatermarkStore
from deswm._reconcile import archived_entries, check_late_rows, is_archived
from deswm._routing import uid_text
from deswm._rowdigest import RowDigest
from deswm._sources import source_rows
from deswm._timeutil import format_day, format_utc

__all__ = ["FLAGGED_STAGE", "FlagJob", "FlagResult", "FlaggableSource"]

log = logging.getLogger("deswm.flagging")

FLAGGED_STAGE = "flagged"


class FlaggableSource(SourceProvider, Protocol):
    """What the flag stage needs from the source: the SQL table behind its rows.

    :class:`~deswm.SqlSourceProvider` is one; the flag stage updates the
    table through ``engine``, only for the uids :meth:`iter_records` gave (so a provider's
    filter applies) within ``window_clause`` of their day.
    """

    @property
    def engine(self) -> sa.Engine: ...

    @property
    def table(self) -> sa.Table: ...

    @property
    def uid_col(self) -> sa.Column[Any]: ...

    @property
    def redacted_url(self) -> str:
        """The database URL with its password masked, for messages."""
        ...

    def window_clause(self, window: Window) -> sa.ColumnElement[bool]:
        """``start <= created_at < end`` in the table's own terms."""
        ...


@attrs.frozen
class FlagResult:
    """What one flag run did."""

    key: WatermarkKey
    window: Window
    rows_updated: int
    batches: int
    buckets_committed: int
    duration: timedelta
    dry_run: bool = False
    rows_listed: int = 0
    """Rows left unflagged: listed in the error table, their files are not archived."""


class FlagJob:
    """Sets ``column = value`` on archived rows, day by day, never ahead of ``archived``.

    Args:
        store: the watermark store of the pipeline.
        source: the pipeline's source table, e.g. its
            :class:`~deswm.SqlSourceProvider` (its ``filter_query`` applies,
            so only the pipeline's own rows are flagged).
        router: for the day arithmetic.
        pipeline: the pipeline whose ``archived`` watermark bounds the work.
        initial: where a new ``flagged`` watermark starts.
        column: the legacy flag column of the source table.
        value: what to set it to.
        batch_size: rows per ``UPDATE``.
        max_rows_per_second: rate limit (``None``: as fast as the database goes).
        manifests: the manifests of the pipeline's archive (``config.build_flag_job``
            passes them); rows of a bucket without one are refused.
        error_store: the pipeline's error table; the rows it lists are not flagged.
        verify: ``"digest"`` (each day's rows are streamed once more and their digest
            compared with its manifests', so a late row hidden by as many deleted rows is
            found) or ``"counts"`` (one count query per day only).
    """

    def __init__(
        self,
        store: WatermarkStore,
        source: FlaggableSource,
        router: ShardRouter,
        *,
        pipeline: str,
        initial: datetime,
        column: str = FLAG_COLUMN,
        value: Any = FLAG_VALUE,
        batch_size: int = FLAG_BATCH_SIZE,
        max_rows_per_second: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        manifests: ManifestStore | None = None,
        error_store: ErrorStore | None = None,
        verify: Literal["digest", "counts"] = "digest",
    ) -> None:
        if verify not in ("digest", "counts"):
            raise ConfigError(f'must be "digest" or "counts", got {verify!r}', key="flag.verify")
        if batch_size < 1:
            raise ConfigError(f"must be at least 1, got {batch_size}", key="flag.batch_size")
        if max_rows_per_second is not None and max_rows_per_second <= 0:
            raise ConfigError(
                f"must be positive, got {max_rows_per_second}", key="flag.max_rows_per_second"
            )
        if manifests is None:
            raise ConfigError(
                "the flag stage needs the archive's manifests, to flag only rows of buckets "
                "whose commit is recorded",
                key="manifests",
                hint="Pass manifests=Archive(url).manifests (deswm._manifest); the config "
                "file's build_flag_job() does this",
            )
        self.manifests = manifests
        self.error_store = error_store
        self.verify = verify
        self._partitions = 1
        self._checked: set[tuple[str, Partition]] = set()
        self.store = store
        self.source = source
        self.router = router
        self.pipeline = pipeline
        self.key = WatermarkKey(pipeline, FLAGGED_STAGE, 0)
        self.initial = router.bucket_start(initial)
        self.column_name = column
        self.value = value
        self.batch_size = batch_size
        self.max_rows_per_second = max_rows_per_second
        self._sleep = sleep
        self._monotonic = monotonic

    def __repr__(self) -> str:
        return f"FlagJob({self.key}, column={self.column_name!r}, batch_size={self.batch_size})"

    def window(self) -> Window:
        """``[flagged, min over partitions of archived)``: what a run may flag now."""
        marks = [m for m in self.store.list(self.pipeline) if m.key.stage == DEFAULT_STAGE]
        flagged = self.store.get(self.key)
        start = flagged.position if flagged is not None else self.initial
        expected = max((m.partitions for m in marks), default=1)
        self._partitions = expected
        # Until every partition has a watermark, nothing is archived everywhere.
        complete = bool(marks) and len(marks) >= expected
        end = min(m.position for m in marks) if complete else start
        return Window(min(start, end), end)

    def run(
        self, *, dry_run: bool = False, progress: Callable[[int], None] | None = None
    ) -> FlagResult:
        """Flag what may be flagged; ``dry_run`` counts the rows without writing.

        ``progress`` is called with each batch's number of rows (e.g. a
        :class:`~deswm._rowprogress.RowProgress`).
        """
        started = time.monotonic()
        window = self.window()
        counts = {"rows": 0, "batches": 0, "buckets": 0, "listed": 0}
        if not window.empty:
            self._flag(window, counts, dry_run=dry_run, progress=progress)
        return FlagResult(
            key=self.key,
            window=window,
            rows_updated=counts["rows"],
            batches=counts["batches"],
            buckets_committed=counts["buckets"],
            duration=timedelta(seconds=time.monotonic() - started),
            dry_run=dry_run,
            rows_listed=counts["listed"],
        )

    # --- internals ----------------------------------------------------------------------

    def _column(self) -> sa.Column[Any]:
        table = self.source.table
        if self.column_name not in table.c:
            raise ConfigError(
                f"table {table.fullname!r} has no column {self.column_name!r}",
                key="flag.column",
                hint=f"columns: {', '.join(sorted(table.c.keys()))}",
            )
        return table.c[self.column_name]

    def _flag(
        self,
        window: Window,
        counts: dict[str, int],
        *,
        dry_run: bool,
        progress: Callable[[int], None] | None,
    ) -> None:
        column = self._column()
        watermark: Watermark | None = None
        if not dry_run:
            watermark = self.store.get(self.key) or self.store.initialize(self.key, window.start)
        listed = self._listed(window)
        with source_rows(self.source.iter_records(window)) as rows:
            record = next(rows, None)
            while record is not None:
                bucket = self.router.bucket_start(record.created_at)
                bucket_end = self.router.next_bucket(bucket)
                day = Window(bucket, bucket_end)
                # Late rows are not archived: flag nothing of their day (one count query,
                # then by default the day's digest).
                recorded = check_late_rows(self.source, self.manifests, self.router, bucket)
                if self.verify == "digest":
                    self._verify_day(day, recorded, listed)
                batch: list[SourceRecord] = []
                while record is not None and record.created_at < bucket_end:
                    if listed and (uid_text(record.uid), record.created_at) in listed:
                        counts["listed"] += 1  # its file failed: not archived, not flagged
                        record = next(rows, None)
                        continue
                    batch.append(record)
                    if len(batch) == self.batch_size:
                        self._update(column, day, batch, counts, dry_run=dry_run)
                        if progress is not None:
                            progress(len(batch))
                        batch = []
                    record = next(rows, None)
                if batch:
                    self._update(column, day, batch, counts, dry_run=dry_run)
                    if progress is not None:
                        progress(len(batch))
                counts["buckets"] += 1
                if watermark is not None:
                    end = (
                        window.end
                        if record is None
                        else self.router.bucket_start(record.created_at)
                    )
                    watermark = self.store.advance(watermark, end)
                    log.info("flagged %s day %s -> %s", self.key, bucket.date(), format_utc(end))
            if watermark is not None and watermark.position < window.end:
                self.store.advance(watermark, window.end)

    def _update(
        self,
        column: sa.Column[Any],
        day: Window,
        batch: Sequence[SourceRecord],
        counts: dict[str, int],
        *,
        dry_run: bool,
    ) -> None:
        self._require_manifests(day, batch)
        started = self._monotonic()
        table = self.source.table
        uids = list(_uid_values(self.source.uid_col, batch))
        counts["batches"] += 1
        if dry_run:
            counts["rows"] += len(batch)
            return
        statement = (
            sa.update(table)
            .where(
                self.source.uid_col.in_(uids),
                self.source.window_clause(day),
                sa.or_(column.is_(None), column != self.value),
            )
            .values({column: self.value})
        )
        try:
            with self.source.engine.begin() as conn:
                counts["rows"] += conn.execute(statement).rowcount
        except sa.exc.SQLAlchemyError as exc:
            raise SourceError(
                f"flagging {len(batch)} rows of {table.fullname!r} on {self.source.redacted_url} "
                f"failed: {type(exc).__name__}",
                hint="Check that this account may UPDATE the source table; the cause is "
                "chained. Rows flagged before stay flagged; rerun is safe",
            ) from exc
        if self.max_rows_per_second:
            spent = self._monotonic() - started
            wanted = len(batch) / self.max_rows_per_second
            if wanted > spent:
                self._sleep(wanted - spent)

    def _listed(self, window: Window) -> set[tuple[str, datetime]]:
        """``(uid, created_at)`` of the window's rows in the error table (any partition)."""
        if self.error_store is None:
            return set()
        return {
            (uid_text(entry.failure.uid), entry.failure.created_at)
            for entry in self.error_store.list()
            if entry.key.pipeline == self.pipeline
            and entry.key.stage == DEFAULT_STAGE
            and entry.failure.created_at in window
        }

    def _verify_day(
        self,
        day: Window,
        manifests: Sequence[BucketManifest],
        listed: set[tuple[str, datetime]],
    ) -> None:
        """Refuse the day if a row is neither archived nor listed, though the counts agree.

        The day's rows are streamed once and their digest compared with the sum of its
        ``manifests``' (one per partition, as :func:`check_late_rows` read them); only
        when it differs are the day's published indexes read, and each row looked up in
        them.
        """
        if not manifests:
            return  # no manifest: _require_manifests refuses the day's first batch
        name = format_day(day.start)
        expected = RowDigest.combined((m.rows, int(m.digest, 16)) for m in manifests)
        digest = RowDigest()
        with source_rows(self.source.iter_records(day)) as rows:
            for record in rows:
                digest.add(uid_text(record.uid), record.created_at)
        if (digest.count, digest.hexdigest) == (expected.count, expected.hexdigest):
            return
        archived = archived_entries(self.manifests, self.router, day.start, Partition())
        count = manifests[0].partition.count
        with source_rows(self.source.iter_records(day)) as rows:
            for record in rows:
                uid = uid_text(record.uid)
                if is_archived(archived, uid, record.created_at):
                    continue
                if (uid, record.created_at) in listed:
                    continue
                # A partition without a manifest is refused as such, as the flag pass would.
                self._require_manifests(day, (record,))
                index = self.router.shard_index(uid) % count
                raise LateRowsError(
                    name,
                    f"{index}/{count}",
                    source_rows=digest.count,
                    manifest_rows=expected.count,
                    late=(uid, format_utc(record.created_at)),
                )
        log.info(
            "%s day %s: %d row(s) against %d in its manifests, all archived or listed "
            "(rows were deleted since the commit)",
            self.key,
            name,
            digest.count,
            expected.count,
        )

    def _require_manifests(self, day: Window, batch: Sequence[SourceRecord]) -> None:
        """Refuse the batch unless every partition its rows belong to has the day's manifest."""
        name = format_day(day.start)
        count = self._partitions
        for record in batch:
            index = 0 if count == 1 else self.router.shard_index(uid_text(record.uid)) % count
            needed = (name, Partition(index, count))
            if needed not in self._checked:
                self.manifests.require(*needed)
                self._checked.add(needed)


def _uid_values(column: sa.Column[Any], batch: Sequence[SourceRecord]) -> Iterator[Any]:
    """uids as the column's Python type (a numeric column gets numbers back)."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        python_type = str
    convert = python_type if python_type in (int, Decimal) else None
    for record in batch:
        yield convert(record.uid) if convert else record.uid


_publish(globals())
