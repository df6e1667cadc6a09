"""Frozen value types shared by every component.

They carry no behaviour beyond validation and naming, so a custom provider, a test and
the orchestrator all speak the same vocabulary. All datetimes are aware UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs

from deswm._codecs import Codec as Codec
from deswm.timeutil import format_day, format_utc

__all__ = [
    "DEFAULT_STAGE",
    "ArchivedEntry",
    "BucketResult",
    "Codec",
    "CyclePlan",
    "CycleResult",
    "FileFailure",
    "LocationReference",
    "Partition",
    "PendingStats",
    "PublishedShard",
    "RecordedFailure",
    "RetryResult",
    "ShardKey",
    "SourceRecord",
    "Watermark",
    "WatermarkChange",
    "WatermarkKey",
    "WatermarkMove",
    "Window",
]

DEFAULT_STAGE = "archived"
"""The stage whose watermark says "every row below it is packed and published"."""


def _is_aware_utc(_: object, attribute: attrs.Attribute[datetime], value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() != timedelta(0):
        raise ValueError(f"{attribute.name} must be an aware UTC datetime, got {value!r}")


@attrs.frozen
class SourceRecord:
    """One row of the source table: a file to archive.

    ``uid`` is the entry name in the shard (an integer uid arrives as its decimal
    string); ``created_at`` decides the day and so the shard; ``size`` is the size the
    table claims, used for stats only (the bytes read are what count).
    """

    uid: str
    created_at: datetime
    location: str
    size: int | None = None


@attrs.frozen(order=True)
class WatermarkKey:
    """Identifies one watermark: a pipeline, a stage of it, and one partition."""

    pipeline: str
    stage: str = DEFAULT_STAGE
    partition: int = 0

    def __str__(self) -> str:
        return f"{self.pipeline}/{self.stage}/{self.partition}"


@attrs.frozen
class Watermark:
    """A stored watermark: every row with ``created_at < position`` is done.

    ``version`` increases with every write; ``advance`` is a compare-and-set on it.
    """

    key: WatermarkKey
    position: datetime = attrs.field(validator=_is_aware_utc)
    version: int
    lag: timedelta | None = None
    partitions: int = 1
    updated_at: datetime | None = None
    updated_by: str | None = None

    def __repr__(self) -> str:
        return (
            f"Watermark({self.key}, position={format_utc(self.position)}, version={self.version})"
        )


@attrs.frozen
class WatermarkChange:
    """One manual change of a watermark, as kept in the history table."""

    key: WatermarkKey
    changed_at: datetime
    actor: str
    previous: datetime | None
    position: datetime | None
    reason: str


@attrs.frozen
class WatermarkMove:
    """A manual move of a watermark: where it was, what was asked and what was stored.

    ``requested`` may lie inside a bucket; the stored position is its bucket start
    (windows are whole buckets), and ``aligned`` says the two differ.
    """

    previous: Watermark | None
    requested: datetime
    watermark: Watermark

    @property
    def aligned(self) -> bool:
        return self.requested != self.watermark.position


@attrs.frozen
class Window:
    """The half-open interval ``[start, end)`` of ``created_at`` values."""

    start: datetime = attrs.field(validator=_is_aware_utc)
    end: datetime = attrs.field(validator=_is_aware_utc)

    def __attrs_post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"window end {self.end} is before its start {self.start}")

    @property
    def empty(self) -> bool:
        return self.start >= self.end

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def __contains__(self, instant: object) -> bool:
        return isinstance(instant, datetime) and self.start <= instant < self.end

    def __str__(self) -> str:
        return f"[{format_utc(self.start)}, {format_utc(self.end)})"


@attrs.frozen
class Partition:
    """Partition ``index`` of ``count``: it owns shard indexes with ``i % count == index``."""

    index: int = 0
    count: int = 1

    def __attrs_post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"partition {self.index} of {self.count} is invalid: need 0 <= index < count"
            )

    def owns(self, shard_index: int) -> bool:
        return shard_index % self.count == self.index


@attrs.frozen
class PendingStats:
    """What a window holds, from one aggregate statement."""

    window: Window
    files: int
    bytes: int
    oldest: datetime | None
    newest: datetime | None


@attrs.frozen(order=True)
class ShardKey:
    """Where a file lives: its UTC day bucket and shard index.

    The object of part ``n`` is ``{day}_{hex}_{n:04d}.des`` under the destination.
    """

    bucket: datetime = attrs.field(validator=_is_aware_utc)
    index: int
    hex: str

    @property
    def day(self) -> str:
        return format_day(self.bucket)

    @property
    def prefix(self) -> str:
        """Name prefix of the group's parts; the trailing ``_`` keeps ``5C`` from ``5C3``."""
        return f"{self.day}_{self.hex}_"

    def object_name(self, part: int = 0) -> str:
        if not 0 <= part <= 9999:
            raise ValueError(f"part number {part} does not fit the 4-digit DES name field")
        return f"{self.prefix}{part:04d}.des"


@attrs.frozen
class ArchivedEntry:
    """What the archive knows about one stored file (``Archive.stat``)."""

    uid: str
    shard: str
    part: int
    codec: Codec
    size: int
    stored_size: int
    sha256: str | None
    created_at: datetime | None
    big: bool = False


@attrs.frozen
class PublishedShard:
    """A shard object written by the packer."""

    name: str
    part: int
    entries: int
    size: int
    merged: bool = False


@attrs.frozen
class BucketResult:
    """What packing one day bucket produced."""

    bucket: datetime
    files: int
    bytes_in: int
    bytes_out: int
    kept: int
    shards: tuple[PublishedShard, ...] = ()


@attrs.frozen
class FileFailure:
    """A file that could not be archived, and why."""

    uid: str
    created_at: datetime
    location: str
    stage: str
    error_type: str
    message: str

    @classmethod
    def from_exception(cls, record: SourceRecord, stage: str, exc: BaseException) -> FileFailure:
        return cls(
            uid=record.uid,
            created_at=record.created_at,
            location=record.location,
            stage=stage,
            error_type=type(exc).__name__,
            message=str(exc),
        )


@attrs.frozen
class RecordedFailure:
    """A failed file kept in the error table (``on_error="record"``) until a retry works."""

    key: WatermarkKey
    failure: FileFailure
    attempts: int
    first_failure: datetime
    last_failure: datetime

    @property
    def record(self) -> SourceRecord:
        """The source row to read again."""
        return SourceRecord(self.failure.uid, self.failure.created_at, self.failure.location)


@attrs.frozen
class RetryResult:
    """What ``retry_errors()`` did."""

    key: WatermarkKey
    attempted: int
    archived: int
    failures: tuple[FileFailure, ...]
    shards_written: int
    duration: timedelta


@attrs.frozen
class CyclePlan:
    """What a cycle would do now: ``plan()`` and ``deswm stats`` (writes nothing)."""

    key: WatermarkKey
    watermark: datetime
    target: datetime
    window: Window
    pending: PendingStats
    initialised: bool
    before_start: PendingStats | None = None
    """Before the first run: the rows older than where the new watermark will start,
    which this pipeline never archives (one aggregate query); ``None`` once the
    watermark exists (where it started is not kept)."""

    @property
    def lag_behind(self) -> timedelta:
        """How far the watermark trails the target (zero when caught up)."""
        return max(self.target - self.watermark, timedelta(0))

    @property
    def rows_before_start(self) -> int | None:
        """How many rows lie before the new watermark's start (``None``: not known)."""
        return None if self.before_start is None else self.before_start.files

    @property
    def oldest_before_start(self) -> datetime | None:
        """The oldest ``created_at`` before the new watermark's start, if any."""
        return None if self.before_start is None else self.before_start.oldest


@attrs.frozen
class CycleResult:
    """What one ``run_cycle()`` did, with real counts."""

    key: WatermarkKey
    window: Window
    watermark_before: datetime
    watermark_after: datetime
    files: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    kept: int = 0
    shards_written: int = 0
    buckets_committed: int = 0
    failures: tuple[FileFailure, ...] = ()
    duration: timedelta = timedelta(0)
    stopped_early: bool = False

    @property
    def advanced(self) -> bool:
        return self.watermark_after > self.watermark_before

    def summary(self) -> str:
        return (
            f"{self.key}: window {self.window}, {self.files} files, "
            f"{self.bytes_in} bytes in, {self.bytes_out} bytes out, "
            f"{self.shards_written} shards, {self.buckets_committed} buckets committed, "
            f"{len(self.failures)} failures, watermark {format_utc(self.watermark_before)} -> "
            f"{format_utc(self.watermark_after)} in {self.duration.total_seconds():.2f}s"
        )


@attrs.frozen
class LocationReference:
    """A source row that references a file location (see ``location_references``).

    ``created_at`` is ``None`` when the stored value cannot be read as an instant (NULL,
    a number or bytes on SQLite, a year outside 0001-9999): such a row can never be
    verified in the archive, so it keeps its location from being purged.
    """

    location: str
    uid: str
    created_at: datetime | None
