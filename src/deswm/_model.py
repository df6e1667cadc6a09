"""Frozen value types shared by every component.

They carry no behaviour beyond validation and naming, so a custom provider, a test and
the orchestrator all speak the same vocabulary. All datetimes are aware UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final, Literal

import attrs

from deswm import _publish
from deswm._codecs import Codec as Codec
from deswm._container import group_prefix, part_name
from deswm._humanize import (
    Displayed,
    human_bytes,
    human_count,
    human_duration,
    human_time,
)
from deswm._timeutil import format_day, format_utc

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
    "StopReason",
    "Watermark",
    "WatermarkChange",
    "WatermarkKey",
    "WatermarkMove",
    "Window",
]

DEFAULT_STAGE = "archived"
"""The stage whose watermark says "every row below it is packed and published"."""

StopReason = Literal["finished", "requested", "signal", "cancelled", "max-buckets", "run-time"]
"""Why a cycle ended without error: ``"finished"`` the whole window is done; otherwise it
stopped at a bucket boundary with the rest left for the next cycle: ``request_stop()``,
SIGTERM/SIGINT, ``arun_cycle()`` cancelled, ``max_buckets`` or ``run_time`` reached."""

STOP_REASON_TEXT: Final[dict[str, str]] = {
    "finished": "window finished",
    "requested": "stop requested",
    "signal": "signal received",
    "cancelled": "cancelled",
    "max-buckets": "max-buckets reached",
    "run-time": "run-time reached",
}
"""How the exit summary words each :data:`StopReason` (``stopped: run-time reached``)."""


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
    ``lag`` is the configured *delay* stored with it (how far behind now its target
    stays), not how far it is behind: that is :attr:`CyclePlan.behind`.
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
class WatermarkChange(Displayed):
    """One manual change of a watermark, as kept in the history table."""

    key: WatermarkKey
    changed_at: datetime
    actor: str
    previous: datetime | None
    position: datetime | None
    reason: str

    def _display(self) -> tuple[str, list[tuple[str, object]]]:
        return f"watermark change of {self.key}", [
            ("changed at", human_time(self.changed_at)),
            ("by", self.actor),
            ("from", human_time(self.previous)),
            ("to", human_time(self.position)),
            ("reason", self.reason),
        ]


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
        return f"[{human_time(self.start)}, {human_time(self.end)})"


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
class PendingStats(Displayed):
    """What a window holds, from one aggregate statement."""

    window: Window
    files: int
    bytes: int
    oldest: datetime | None
    newest: datetime | None

    def _display(self) -> tuple[str, list[tuple[str, object]]]:
        return f"pending in {self.window}", [
            ("files", human_count(self.files)),
            ("bytes", human_bytes(self.bytes)),
            ("oldest", human_time(self.oldest)),
            ("newest", human_time(self.newest)),
        ]


@attrs.frozen(order=True)
class ShardKey:
    """Where a file lives: its UTC day bucket and shard index.

    The object of part ``n`` is ``{day}_{hex}_{n:04d}.des`` under the destination
    (:func:`deswm._container.part_name`); the bucket is a UTC day because the name
    embeds it.
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
        return group_prefix(self.day, self.hex)

    def object_name(self, part: int = 0) -> str:
        return part_name(self.day, self.hex, part)


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
    sha256: str | None = None
    """The sha256 of the object's bytes, computed while they were written (manifests)."""


@attrs.frozen
class BucketResult:
    """What packing one day bucket produced."""

    bucket: datetime
    files: int
    bytes_in: int
    bytes_out: int
    kept: int
    shards: tuple[PublishedShard, ...] = ()
    unchanged: int = 0
    """Files already published byte for byte (a replay): their parts were left as they were."""
    replaced: int = 0
    """Files that replaced the published entry of the same uid in a rewritten part."""
    shards_unchanged: int = 0
    """Parts of touched groups left as they were (nothing new for them, or identical)."""
    checked: tuple[PublishedShard, ...] = ()
    """Parts left as they were after their bytes were compared with the replay's and found
    equal, with the sha256 of those bytes: a manifest takes it rather than trusting its
    previous one (a replay a crash cut short may have rewritten such a part)."""


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
class CyclePlan(Displayed):
    """What a cycle would do now: ``plan()`` and ``deswm stats`` (writes nothing).

    Two durations are kept apart: the *delay* is configured (the target stays that far
    behind now, ``target = bucket_start(now - delay)``); :attr:`behind` is the backlog
    (how far the watermark trails the target).
    """

    key: WatermarkKey
    watermark: datetime
    target: datetime
    window: Window
    pending: PendingStats
    initialised: bool
    delay: timedelta | None = None
    """The configured delay the target was computed with (``None``: not given)."""
    before_start: PendingStats | None = None
    """Before the first run: the rows older than where the new watermark will start,
    which this pipeline never archives (one aggregate query); ``None`` once the
    watermark exists (where it started is not kept)."""
    held_by: datetime | None = None
    """With ``lag_guard``: the start of the open transaction that held the target before
    ``bucket_start(now - delay)``; ``None`` when nothing held it back."""

    @property
    def behind(self) -> timedelta:
        """How far the watermark trails the target: the backlog (zero when caught up)."""
        return max(self.target - self.watermark, timedelta(0))

    def _display(self) -> tuple[str, list[tuple[str, object]]]:
        state = "" if self.initialised else " (not initialised yet: the first run starts here)"
        rows: list[tuple[str, object]] = [
            ("watermark", human_time(self.watermark) + state),
            ("target", human_time(self.target)),
            ("delay", "-" if self.delay is None else human_duration(self.delay)),
            *(
                [("held back", f"by a transaction open since {human_time(self.held_by)}")]
                if self.held_by is not None
                else []
            ),
            ("behind", human_duration(self.behind) if self.behind else "caught up"),
            ("window", self.window),
            (
                "pending",
                f"{human_count(self.pending.files)} files, {human_bytes(self.pending.bytes)}",
            ),
        ]
        if self.pending.oldest:
            newest = self.pending.newest or self.pending.oldest
            rows.append(
                ("oldest/newest", f"{human_time(self.pending.oldest)} / {human_time(newest)}")
            )
        return f"plan for {self.key}", rows

    @property
    def rows_before_start(self) -> int | None:
        """How many rows lie before the new watermark's start (``None``: not known)."""
        return None if self.before_start is None else self.before_start.files

    @property
    def oldest_before_start(self) -> datetime | None:
        """The oldest ``created_at`` before the new watermark's start, if any."""
        return None if self.before_start is None else self.before_start.oldest


@attrs.frozen
class CycleResult(Displayed):
    """What one ``run_cycle()`` did, with real counts.

    ``files`` counts every file read and handed to the packer; of them, ``unchanged``
    were already published byte for byte (a replay writes nothing for them) and
    ``replaced`` took the place of the same entry in a rewritten part; the rest are new.
    ``kept`` rows had no file any more but an archived entry. ``shards_written`` parts
    were written (``shards_merged`` of them merged with entries published before), and
    ``shards_unchanged`` parts of the touched groups were left as they were.
    """

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
    stopped: StopReason = "finished"
    """Why the cycle ended; anything but ``"finished"`` left buckets for the next one."""
    unchanged: int = 0
    replaced: int = 0
    shards_merged: int = 0
    shards_unchanged: int = 0

    @property
    def advanced(self) -> bool:
        return self.watermark_after > self.watermark_before

    @property
    def stopped_early(self) -> bool:
        """Whether the cycle stopped at a bucket boundary before the end of its window."""
        return self.stopped != "finished"

    @property
    def new(self) -> int:
        """Files that were not in the archive before this cycle."""
        return self.files - self.unchanged - self.replaced

    def _files_text(self) -> str:
        text = f"{human_count(self.files)} read ({human_bytes(self.bytes_in)})"
        if self.files:
            text += (
                f": {human_count(self.new)} new, {human_count(self.replaced)} rewritten, "
                f"{human_count(self.unchanged)} unchanged"
            )
        return text

    def _shards_text(self) -> str:
        text = f"{human_count(self.shards_written)} written ({human_bytes(self.bytes_out)}"
        text += f", {human_count(self.shards_merged)} merged with earlier entries)"
        return text + f", {human_count(self.shards_unchanged)} unchanged"

    def summary(self) -> str:
        """One line for a log: what was read, what was written, where the watermark is."""
        replay = ", nothing changed (already archived)" if self._replay else ""
        return (
            f"{self.key}: window {self.window}, files {self._files_text()}; "
            f"shards {self._shards_text()}{replay}; {human_count(self.buckets_committed)} "
            f"buckets committed, {human_count(len(self.failures))} failures; watermark "
            f"{human_time(self.watermark_before)} -> {human_time(self.watermark_after)} in "
            f"{human_duration(self.duration)}"
            f"; stopped: {STOP_REASON_TEXT[self.stopped]}"
        )

    def log_fields(self) -> dict[str, object]:
        """The stable keys of the ``cycle_finished`` log event (``--log-format json``)."""
        return {
            "event": "cycle_finished",
            "pipeline": self.key.pipeline,
            "partition": self.key.partition,
            "window": str(self.window),
            "files": self.files,
            "unchanged": self.unchanged,
            "replaced": self.replaced,
            "bytes": self.bytes_in,
            "bytes_out": self.bytes_out,
            "shards": self.shards_written,
            "buckets": self.buckets_committed,
            "failures": len(self.failures),
            "watermark": format_utc(self.watermark_after),
            "duration": round(self.duration.total_seconds(), 6),
            "stopped": self.stopped,
        }

    @property
    def _replay(self) -> bool:
        return self.files > 0 and self.unchanged == self.files and self.shards_written == 0

    def _display(self) -> tuple[str, list[tuple[str, object]]]:
        rows: list[tuple[str, object]] = [
            ("window", self.window),
            ("files", self._files_text()),
        ]
        if self.kept:
            rows.append(("kept", f"{human_count(self.kept)} (file gone, archived before)"))
        rows.append(("shards", self._shards_text()))
        if self._replay:
            rows.append(("replay", "nothing changed: every file was already archived"))
        rows += [
            ("buckets", f"{human_count(self.buckets_committed)} committed"),
            ("failures", human_count(len(self.failures))),
            (
                "watermark",
                f"{human_time(self.watermark_before)} -> {human_time(self.watermark_after)}",
            ),
            ("duration", human_duration(self.duration)),
        ]
        rows.append(("stopped", STOP_REASON_TEXT[self.stopped]))
        return f"cycle of {self.key}", rows


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


_publish(globals())
