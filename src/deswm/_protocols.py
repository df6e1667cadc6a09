"""The five seams of deswm, as ``typing.Protocol`` classes.

The orchestrator depends on these and nothing else, so any of the reference
implementations can be swapped for a subclass or a from-scratch implementation. The
docstring of each method is its contract; :mod:`deswm.testing` ships contract test
suites that check an implementation against it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from deswm import _publish
from deswm._errors import FileReadError
from deswm._model import (
    ArchivedEntry,
    BucketResult,
    FileFailure,
    LocationReference,
    Partition,
    PendingStats,
    RecordedFailure,
    ShardKey,
    SourceRecord,
    Watermark,
    WatermarkChange,
    WatermarkKey,
    Window,
)

__all__ = [
    "ArchiveLookup",
    "AuditLog",
    "BucketCounter",
    "BucketWriter",
    "ErrorStore",
    "FileReader",
    "ManifestRecorder",
    "Packer",
    "PartitionedSource",
    "ReadResult",
    "ShardRouter",
    "SourceProvider",
    "TransactionGuard",
    "WatermarkStore",
]

if TYPE_CHECKING:
    from deswm._manifest import BucketManifest
    from deswm._model import Partition, PublishedShard
    from deswm._rowdigest import RowDigest

ReadResult = tuple[SourceRecord, "bytes | FileReadError"]
"""A record with its bytes, or the error that reading it raised."""


class ArchiveLookup(Protocol):
    """What verification and the purge need from the read side (:class:`deswm.Archive`)."""

    def stat(self, uid: str, created_at: datetime) -> ArchivedEntry:
        """The entry of ``uid``; :class:`~deswm.NotArchivedError` when absent."""
        ...

    def get(self, uid: str, created_at: datetime) -> bytes:
        """The verified bytes of ``uid``."""
        ...


@runtime_checkable
class WatermarkStore(Protocol):
    """Keeps one position per (pipeline, stage, partition) with compare-and-set writes."""

    def get(self, key: WatermarkKey) -> Watermark | None:
        """The stored watermark, or ``None`` if it was never initialised."""
        ...

    def initialize(
        self,
        key: WatermarkKey,
        position: datetime,
        *,
        lag: timedelta | None = None,
        partitions: int = 1,
    ) -> Watermark:
        """Create the watermark at ``position`` if absent and return the stored one.

        Idempotent and race-safe: when two runners initialise at once, both get the row
        that won; an existing watermark is never changed.
        """
        ...

    def advance(self, current: Watermark, position: datetime) -> Watermark:
        """Move the watermark forward to ``position`` if nobody changed it since ``current``.

        A compare-and-set on ``current.version``: raises
        :class:`~deswm.WatermarkConflict` when the stored version differs, and
        :class:`~deswm.WatermarkError` when ``position < current.position``
        (advance never moves backwards). An equal position returns ``current``
        unchanged without writing. On a conflict, ``WatermarkConflict.actual`` is the
        stored version, or ``"missing"`` when no watermark exists. Returns the new
        watermark (version + 1).
        """
        ...

    def set(self, key: WatermarkKey, position: datetime, *, reason: str) -> Watermark:
        """Manually set the position (any direction) and append a history record.

        Creates the watermark if absent. Moving it back makes the next cycle replay, which
        is safe (packing is idempotent).
        """
        ...

    def list(self, pipeline: str | None = None) -> Sequence[Watermark]:
        """Every stored watermark, or those of one pipeline, ordered by key."""
        ...

    def history(
        self, key: WatermarkKey | None = None, *, limit: int = 100
    ) -> Sequence[WatermarkChange]:
        """Manual changes, newest first."""
        ...


@runtime_checkable
class SourceProvider(Protocol):
    """Reads the rows of the source table; never writes to it."""

    def iter_records(self, window: Window) -> Iterator[SourceRecord]:
        """Rows with ``window.start <= created_at < window.end``, ordered by (created_at, uid).

        ``created_at`` of every record is aware UTC. Memory must stay bounded however
        many rows the window holds. A row that cannot be archived raises
        :class:`~deswm.BadRowError` naming it.
        """
        ...

    def pending_stats(self, window: Window) -> PendingStats:
        """Files, bytes, oldest and newest ``created_at`` in ``window``, in one query."""
        ...

    def location_references(self, locations: Collection[str]) -> Iterator[LocationReference]:
        """Every row whose location is one of ``locations``, whatever its ``created_at``.

        The purge stage asks this right before it deletes files (G15): a location is
        deleted only when every row that references it is archived and verified. Rows
        the provider would not archive (filtered out) still count: they still need the
        file. ``created_at`` is aware UTC, or ``None`` when the stored value cannot be
        read as an instant. Any order; answered in batches (a database implementation
        runs one ``IN (...)`` query per batch of locations, never one per location).
        """
        ...


@runtime_checkable
class PartitionedSource(Protocol):
    """An optional capability of a :class:`SourceProvider`: read one partition's rows.

    A partition runner asks a source that has it for the rows of its partition instead
    of the whole window (:class:`~deswm._sources.sql.SqlSourceProvider` filters in SQL),
    so K partitions need not read the window K times. Checked with ``isinstance``; a
    source without it is read with :meth:`SourceProvider.iter_records`.
    """

    def iter_partition_records(
        self, window: Window, router: ShardRouter, partition: Partition
    ) -> Iterator[SourceRecord]:
        """:meth:`SourceProvider.iter_records` of ``window``, less rows ``partition`` does
        not own (``partition.owns(router.shard_index(uid))`` is false).

        At least every owned row, in the same order and with the same checks. Returning
        rows of other partitions too is allowed (the orchestrator filters every row
        again): a source may skip only what it can place with certainty.
        """
        ...


@runtime_checkable
class BucketCounter(Protocol):
    """An optional capability of a :class:`SourceProvider`: count a range's rows per bucket.

    A reconcile (:mod:`deswm._reconcile`) compares these counts with the manifests; a
    source without it is streamed once instead (:func:`deswm._sources.bucket_counts`).
    """

    def bucket_counts(
        self, window: Window, router: ShardRouter, partition: Partition
    ) -> Mapping[datetime, int] | None:
        """Rows of ``window`` per bucket start (buckets without rows may be left out),
        counting the rows ``partition`` owns, exactly the rows
        :meth:`SourceProvider.iter_records` gives; ``None`` when the source cannot
        count that partition's rows itself (the caller streams them)."""
        ...


@runtime_checkable
class TransactionGuard(Protocol):
    """Where the source's oldest open transaction began (``[watermark] lag_guard``).

    Not one of the five core seams: the orchestrator keeps its target at or before the
    bucket of that instant, so rows an open transaction commits later (with a
    ``created_at`` at or after its start) are never below a committed watermark.
    :class:`~deswm._sources.sql.SqlTransactionProbe` reads it from PostgreSQL and
    MariaDB/MySQL.
    """

    def oldest_open_transaction(self) -> datetime | None:
        """The aware UTC start of the oldest open transaction, or ``None`` if none is open."""
        ...


@runtime_checkable
class FileReader(Protocol):
    """Gets the bytes of a file location (and deletes it, for the purge stage)."""

    def read(self, location: str) -> bytes:
        """All bytes at ``location``; a zero-byte file gives ``b""``.

        Raises :class:`~deswm.FileMissingError` when it does not exist and
        :class:`~deswm.FileReadError` for any other failure to read it.
        """
        ...

    def read_many(self, records: Iterable[SourceRecord]) -> Iterator[ReadResult]:
        """Read every record's file, yielding results in input order.

        Implementations may read ahead concurrently but must bound how far ahead.
        Failures are yielded as :class:`~deswm.FileReadError` values, not raised,
        so one bad file does not end the stream.
        """
        ...

    def delete(self, location: str) -> None:
        """Delete the file at ``location``; a missing file is not an error."""
        ...


@runtime_checkable
class ShardRouter(Protocol):
    """Pure routing ``(uid, created_at) -> ShardKey`` and the bucket arithmetic.

    **Buckets are UTC days.** The DES2 object names embed the day
    (``{YYYYMMDD}_{HEX}_{NNNN}.des``, docs/format.md), so a router chooses the shard index
    of a file within its day and nothing else: :meth:`bucket_start` returns the UTC
    midnight at or before an instant and :meth:`next_bucket` the following midnight.
    They are part of the protocol so that callers never do day arithmetic of their own,
    not to let a router choose another bucket length: the orchestrator and
    :class:`~deswm.DesPacker` refuse such a router with
    :class:`~deswm.ConfigError` (key ``router``,
    :func:`deswm._routing.require_day_buckets`).

    ``route(uid, t)`` is ``group(bucket_start(t), shard_index(uid))``. A router whose
    ``route`` is exactly that and has no other effect may say so with the optional class
    attribute ``route_is_composed = True`` (not a protocol member): the packer then routes
    the files of a bucket by :meth:`shard_index` alone, with one :meth:`group` call per
    group, instead of one :meth:`route` call per file. Routers that observe or disturb
    calls (recorders, fault injectors) leave it unset. :class:`~deswm.DesRouter`
    sets it.
    """

    @property
    def shard_count(self) -> int:
        """How many shard indexes exist per bucket."""
        ...

    def shard_index(self, uid: str | int) -> int:
        """The shard index of ``uid``, the same in every process and Python version."""
        ...

    def route(self, uid: str | int, created_at: datetime) -> ShardKey:
        """The bucket and shard of a file; ``created_at`` must be aware."""
        ...

    def group(self, bucket: datetime, index: int) -> ShardKey:
        """The key of shard ``index`` in ``bucket`` (a bucket start)."""
        ...

    def bucket_start(self, instant: datetime) -> datetime:
        """The start of the bucket holding ``instant``: its UTC midnight."""
        ...

    def next_bucket(self, bucket: datetime) -> datetime:
        """The start of the bucket after the one starting at ``bucket``: the next UTC
        midnight."""
        ...


@runtime_checkable
class BucketWriter(Protocol):
    """Collects one bucket's files and publishes its shards, or nothing."""

    @property
    def bucket(self) -> datetime:
        """The start of the bucket this writer packs."""
        ...

    def add(self, record: SourceRecord, data: bytes) -> None:
        """Add one file; records arrive in (created_at, uid) order within the bucket."""
        ...

    def archived(self, record: SourceRecord) -> ArchivedEntry | None:
        """The already published entry of ``record`` (same uid and day, with a checksum).

        Lets the orchestrator accept a source file that is gone because an earlier cycle
        archived it (and the purge stage deleted it).
        """
        ...

    def publish(self) -> BucketResult:
        """Durably publish every shard of the bucket, merged with what is already there.

        When this returns, every added file and every entry that was already published
        for the bucket can be read back. On error nothing partial is visible.
        """
        ...

    def abort(self) -> None:
        """Discard what was added; publish nothing. Safe to call more than once."""
        ...

    def __enter__(self) -> BucketWriter: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Abort unless :meth:`publish` completed."""
        ...


@runtime_checkable
class Packer(Protocol):
    """Turns buckets of files into published, deterministic shard objects."""

    def open_bucket(self, bucket: datetime) -> BucketWriter:
        """A writer for the bucket starting at ``bucket``."""
        ...


@runtime_checkable
class ErrorStore(Protocol):
    """The error table of ``on_error="record"``: failed files that did not stop the cycle.

    Not one of the five core seams: only needed when failures are recorded instead of
    stopping the cycle. Rows are keyed by (watermark key, uid, created_at).
    """

    def record(self, key: WatermarkKey, failures: Sequence[FileFailure]) -> None:
        """Add failures, or for known ones count another attempt and update the error.

        Must be durable when it returns: the watermark moves past these files next.
        """
        ...

    def list(
        self, key: WatermarkKey | None = None, *, limit: int | None = None
    ) -> Sequence[RecordedFailure]:
        """Recorded failures (of one watermark key, or all), oldest ``created_at`` first."""
        ...

    def resolve(self, key: WatermarkKey, records: Sequence[SourceRecord]) -> int:
        """Remove the rows of files that are archived now; return how many were removed."""
        ...


class ManifestRecorder(Protocol):
    """Where each committed bucket's manifest goes (:class:`deswm._manifest.ManifestStore`).

    Not one of the five core seams: the orchestrator records a bucket's manifest after its
    shards are published and before the watermark passes it.
    """

    def record(
        self,
        bucket: datetime,
        partition: Partition,
        pipeline: str,
        rows: RowDigest,
        listed: int,
        written: Sequence[PublishedShard] = (),
    ) -> BucketManifest:
        """Write the manifest of a just published bucket (nothing if it is unchanged)."""
        ...

    def refresh(
        self,
        bucket: datetime,
        partition: Partition,
        written: Sequence[PublishedShard],
        archived: int,
    ) -> BucketManifest | None:
        """Bring a committed bucket's manifest up to date after a retry archived files."""
        ...


class AuditLog(Protocol):
    """Where each committed bucket's archived rows are also recorded (an audit table)."""

    def record(
        self,
        manifest: BucketManifest,
        rows: Sequence[tuple[str, datetime]],
        archived_at: datetime,
    ) -> None:
        """Append the bucket's archived ``(uid, created_at)`` rows; durable on return."""
        ...


_publish(globals())
