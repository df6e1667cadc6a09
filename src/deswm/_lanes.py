"""One lane of the packing engine: its share of a bucket's rows in, its published groups out.

The coordinator (:class:`deswm._orchestrator.WatermarkOrchestrator`) routes every row of a
bucket to lane ``shard_index(uid) % lanes``, so each shard group of the bucket belongs to
exactly one lane and each object keeps exactly one writer (G7). A lane gets the rows'
metadata as a compact :class:`LaneJob` (parallel lists, never file bytes), reads the files
with the reader, adds them to its own bucket writer with the same kept/failure/duplicate
rules as the in-process path, publishes its groups and returns a :class:`LaneOutcome`.
The coordinator merges the outcomes and commits (or refuses) the bucket.

:func:`pack_lane` is a plain module-level function of picklable arguments, so it runs on
any ``concurrent.futures`` executor: threads, a process pool or a Dask cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import attrs

from deswm._checkpoints import Checkpoint, reach
from deswm._errors import (
    DeswmError,
    DuplicateUidError,
    FileMissingError,
    FileReadError,
    LaneError,
)
from deswm._model import BucketResult, FileFailure, SourceRecord
from deswm._protocols import FileReader, Packer
from deswm._routing import uid_text

__all__ = ["LaneBatch", "LaneJob", "LaneOutcome", "merge_results", "pack_lane"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


@attrs.define(slots=True)
class LaneBatch:
    """One lane's rows of one bucket as parallel lists (no object per row)."""

    uids: list[str] = attrs.Factory(list)
    micros: list[int] = attrs.Factory(list)
    """``created_at`` in microseconds since the epoch (exact for aware UTC datetimes)."""
    locations: list[str] = attrs.Factory(list)
    sizes: list[int | None] = attrs.Factory(list)

    def add(self, record: SourceRecord) -> None:
        self.uids.append(record.uid)
        self.micros.append((record.created_at - _EPOCH) // _MICROSECOND)
        self.locations.append(record.location)
        self.sizes.append(record.size)

    def __len__(self) -> int:
        return len(self.uids)

    def records(self) -> Iterator[SourceRecord]:
        """The rows again, in the order they were added."""
        for uid, micros, location, size in zip(
            self.uids, self.micros, self.locations, self.sizes, strict=True
        ):
            yield SourceRecord(uid, _EPOCH + timedelta(microseconds=micros), location, size)


@attrs.frozen
class LaneJob:
    """What a lane needs: the components (pickled with the job) and its rows."""

    bucket: datetime
    lane: int
    lanes: int
    reader: FileReader
    packer: Packer
    on_error: Literal["stop", "record"]
    rows: LaneBatch
    audit: bool = False
    """Also return the ``(uid, created_at)`` of the rows archived or kept (an audit log)."""


@attrs.frozen
class LaneOutcome:
    """A lane's part of a bucket: what it published, or ``None`` if it aborted."""

    lane: int
    result: BucketResult | None
    failures: tuple[FileFailure, ...]
    kept: int
    """Rows whose file is gone but whose entry is published (archived before)."""
    seen: int
    files: int
    bytes_in: int
    archived: tuple[tuple[str, datetime], ...] = ()
    """``(uid, created_at)`` of the rows archived or kept, when the job asked (audit)."""


def pack_lane(job: LaneJob) -> LaneOutcome:
    """Pack and publish one lane's share of a bucket (the rules of the in-process path).

    Under ``on_error="stop"`` a failed file aborts the lane (it publishes nothing); under
    ``"record"`` the lane publishes its good files and the coordinator judges the ratio
    over the whole bucket. An unexpected exception becomes a picklable
    :class:`~deswm._errors.LaneError`; a :class:`~deswm._errors.DeswmError` passes as is.
    """
    try:
        return _pack(job)
    except DeswmError:
        raise
    except Exception as exc:
        raise LaneError(
            job.bucket.date().isoformat(), job.lane, job.lanes, f"{type(exc).__name__}: {exc}"
        ) from exc


def _pack(job: LaneJob) -> LaneOutcome:
    failures: list[FileFailure] = []
    seen = kept = files = size = 0
    archived: list[tuple[str, datetime]] | None = [] if job.audit else None
    with job.packer.open_bucket(job.bucket) as writer:
        results = job.reader.read_many(job.rows.records())
        try:
            for record, data in results:
                seen += 1
                if isinstance(data, FileReadError):
                    if isinstance(data, FileMissingError) and writer.archived(record) is not None:
                        kept += 1
                        if archived is not None:
                            archived.append((uid_text(record.uid), record.created_at))
                    else:
                        failures.append(FileFailure.from_exception(record, "read", data))
                    continue
                try:
                    writer.add(record, data)
                except DuplicateUidError as exc:
                    if job.on_error == "stop":
                        raise
                    failures.append(FileFailure.from_exception(record, "pack", exc))
                    continue
                files += 1
                size += len(data)
                if archived is not None:
                    archived.append((uid_text(record.uid), record.created_at))
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # a reader's generator shuts its read threads down
        if failures and job.on_error == "stop":
            writer.abort()
            return LaneOutcome(job.lane, None, tuple(failures), kept, seen, files, size)
        reach(Checkpoint.LANE_BEFORE_PUBLISH)
        result = writer.publish()
        reach(Checkpoint.LANE_AFTER_PUBLISH)
    return LaneOutcome(
        job.lane, result, tuple(failures), kept, seen, files, size, tuple(archived or ())
    )


def merge_results(bucket: datetime, parts: list[BucketResult]) -> BucketResult:
    """One bucket's result from its lanes' parts; shards in name order, as one writer
    publishing every group would list them."""
    shards = sorted((s for part in parts for s in part.shards), key=lambda s: (s.name, s.part))
    return BucketResult(
        bucket=bucket,
        files=sum(p.files for p in parts),
        bytes_in=sum(p.bytes_in for p in parts),
        bytes_out=sum(p.bytes_out for p in parts),
        kept=sum(p.kept for p in parts),
        shards=tuple(shards),
        unchanged=sum(p.unchanged for p in parts),
        replaced=sum(p.replaced for p in parts),
        shards_unchanged=sum(p.shards_unchanged for p in parts),
    )
