"""One lane of the packing engine: its share of a bucket's rows in, its published groups out.

The coordinator (:class:`deswm._orchestrator.WatermarkOrchestrator`) routes every row of a
bucket to lane ``shard_index(uid) % lanes``, so each shard group of the bucket belongs to
exactly one lane and each object keeps exactly one writer (G7). A lane gets the rows'
metadata, never file bytes, in a :class:`LaneJob`: as a :class:`LaneBatch` (parallel lists;
past ``[run] lane_batch_rows`` rows in a JSON-lines spill file) once the bucket is routed,
or, on this machine, as a :class:`~deswm._lane_stream.LaneStream` it reads while the
coordinator routes the bucket. It reads the files with the reader, adds them to its own
bucket writer with the same kept/failure/duplicate rules as the in-process path, publishes
its groups and returns a :class:`LaneOutcome`. The coordinator merges the outcomes and
commits (or refuses) the bucket.

:func:`pack_lane` is a plain module-level function of picklable arguments, so it runs on
any ``concurrent.futures`` executor: threads, a process pool or a Dask cluster.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import IO, Any, Final, Literal, TextIO

import attrs
import zstandard

from deswm._checkpoints import Checkpoint, reach
from deswm._errors import (
    DeswmError,
    DuplicateUidError,
    FileMissingError,
    FileReadError,
    LaneError,
)
from deswm._lane_stream import DECODE, ENCODE, EPOCH, MICROSECOND, LaneStream
from deswm._model import BucketResult, FileFailure, PublishedShard, SourceRecord
from deswm._protocols import FileReader, Packer
from deswm._routing import uid_text
from deswm._rowdigest import RowDigest

__all__ = ["LaneBatch", "LaneJob", "LaneOutcome", "LaneRows", "merge_results", "pack_lane"]

_SPILL_BUFFER: Final = 256 * 1024

log = logging.getLogger("deswm.engine")


class LaneBatch:
    """One lane's rows of one bucket: the first ``limit`` in parallel lists (no object per
    row), the rest in a JSON-lines spill file, so the coordinator holds at most ``limit``
    rows per lane however big the bucket (G9). ``limit`` 0: every row stays in memory.

    The spill file (``deswm-rows-*.jsonl`` in ``folder``, the system temp folder by
    default) holds plain data, one ``[uid, micros, location, size]`` array per line
    (ASCII-escaped JSON, so any string, lone surrogates and newlines included, round-trips).
    :meth:`records` gives the memory rows, then the spilled ones: the order of :meth:`add`.
    :meth:`discard` removes the file; the lane calls it when it is done, the coordinator
    when it abandons or settles the bucket (both may: it is idempotent).

    Pickled (a lane in another process), the batch carries its memory rows and the spill
    file's path, which the lane reads on the same machine; after :meth:`seal` with
    ``portable=True`` it carries the spilled rows inline instead, for executors whose
    lanes may run where this machine's files are not visible (Dask, a given executor).
    """

    __slots__ = (
        "_file",
        "_packed",
        "_portable",
        "folder",
        "limit",
        "locations",
        "micros",
        "path",
        "sizes",
        "spilled",
        "uids",
    )

    def __init__(self, limit: int = 0, folder: str | None = None) -> None:
        self.uids: list[str] = []
        self.micros: list[int] = []
        """``created_at`` in microseconds since the epoch (exact for aware UTC datetimes)."""
        self.locations: list[str] = []
        self.sizes: list[int | None] = []
        self.limit = limit
        self.folder = folder
        self.path: str | None = None
        """The spill file, once a row went past ``limit``."""
        self.spilled = 0
        self._file: TextIO | None = None
        self._portable = False
        self._packed: bytes | None = None
        """The spill file's lines, zstd-compressed, in a copy pickled with ``portable``."""

    def __repr__(self) -> str:
        return f"LaneBatch(rows={len(self)}, in_memory={self.in_memory}, spilled={self.spilled})"

    def add(self, record: SourceRecord) -> None:
        micros = (record.created_at - EPOCH) // MICROSECOND
        if not self.limit or len(self.uids) < self.limit:
            self.uids.append(record.uid)
            self.micros.append(micros)
            self.locations.append(record.location)
            self.sizes.append(record.size)
            return
        out = self._file
        if out is None:
            out = self._file = self._open_spill()
        out.write(ENCODE([record.uid, micros, record.location, record.size]))
        out.write("\n")
        self.spilled += 1

    def _open_spill(self) -> TextIO:
        fd, self.path = tempfile.mkstemp(prefix="deswm-rows-", suffix=".jsonl", dir=self.folder)
        # ASCII only (json escapes the rest), so no encoding can fail on odd strings;
        # closed by seal() or discard().
        return open(fd, "w", encoding="ascii", newline="\n", buffering=_SPILL_BUFFER)

    def __len__(self) -> int:
        return len(self.uids) + self.spilled

    @property
    def portable(self) -> bool:
        """Sealed for lanes that may run elsewhere (see :meth:`seal`)."""
        return self._portable

    @property
    def in_memory(self) -> int:
        """Rows held in memory (at most ``limit`` when it is set)."""
        return len(self.uids)

    def seal(self, *, portable: bool = False) -> None:
        """No more rows: flush and close the spill file (before the batch is dispatched).

        ``portable``: a pickled copy carries the spilled rows inline, not the file's path.
        """
        self._portable = portable
        if self._file is not None:
            self._file.close()
            self._file = None

    def release(self) -> None:
        """A lane is done with the rows: remove the spill file, unless the batch is
        portable (its lane may be run again in the coordinator's process)."""
        if not self._portable:
            self.discard()

    def discard(self) -> None:
        """Close and remove the spill file, if any (idempotent; the memory rows stay)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        path, self.path = self.path, None
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # the other side (lane or coordinator) removed it first
            except OSError as exc:
                log.warning("cannot remove the spill file %s: %s", path, exc)

    def records(self) -> Iterator[SourceRecord]:
        """The rows again, in the order they were added."""
        rows = zip(self.uids, self.micros, self.locations, self.sizes, strict=True)
        for uid, micros, location, size in itertools.chain(rows, self._spilled_rows()):
            yield SourceRecord(uid, EPOCH + timedelta(microseconds=micros), location, size)

    def _spilled_rows(self) -> Iterator[tuple[str, int, str, int | None]]:
        if not self.spilled:
            return
        self.seal(portable=self._portable)
        with self._spill_lines() as spill:
            for line in spill:
                uid, micros, location, size = DECODE(line)
                yield uid, micros, location, size

    def _spill_lines(self) -> IO[str]:
        """The spilled rows' lines: from the travelling copy, or from the file."""
        if self._packed is not None:
            raw = zstandard.ZstdDecompressor().stream_reader(self._packed)
            return io.TextIOWrapper(
                io.BufferedReader(raw, _SPILL_BUFFER), encoding="ascii", newline="\n"
            )
        if self.path is None:
            raise LookupError(f"the {self.spilled} spilled row(s) of this batch were discarded")
        return open(self.path, encoding="ascii", newline="\n", buffering=_SPILL_BUFFER)

    def __getstate__(self) -> dict[str, Any]:
        if self._file is not None:
            raise RuntimeError("a LaneBatch is sealed before it is sent to a lane")
        state = {name: getattr(self, name) for name in self.__slots__ if name != "_file"}
        if self._portable and self.spilled and self.path is not None:
            # The rows travel with the job (the lane may not see this machine's files), as
            # the file's lines compressed: a fraction of their size as Python lists, and
            # the lane streams them back one at a time.
            with open(self.path, "rb") as spill:
                packed = io.BytesIO()
                zstandard.ZstdCompressor(level=1).copy_stream(spill, packed)
            state.update(path=None, _packed=packed.getvalue())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._file = None
        for name, value in state.items():
            setattr(self, name, value)


LaneRows = LaneBatch | LaneStream
"""A lane's rows of one bucket: a whole batch, or a stream still being routed."""


@attrs.frozen
class LaneJob:
    """What a lane needs: the components (pickled with the job) and its rows."""

    bucket: datetime
    lane: int
    lanes: int
    reader: FileReader
    packer: Packer
    on_error: Literal["stop", "record"]
    rows: LaneRows
    """A whole batch, or a stream the coordinator is still writing (lanes on this
    machine)."""
    audit: bool = False
    """Also return the ``(uid, created_at)`` of the rows archived or kept (an audit log)."""
    digest: bool = False
    """Also return the row digest of every row of the job (a bucket manifest's rows): the
    lanes share this per-row work, which would otherwise bound the coordinator."""


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
    digest: tuple[int, int] | None = None
    """:attr:`RowDigest.state` of all the job's rows, when the job asked."""


def pack_lane(job: LaneJob) -> LaneOutcome:
    """Pack and publish one lane's share of a bucket (the rules of the in-process path).

    Under ``on_error="stop"`` a failed file aborts the lane (it publishes nothing); under
    ``"record"`` the lane publishes its good files and the coordinator judges the ratio
    over the whole bucket. An unexpected exception becomes a picklable
    :class:`~deswm._errors.LaneError`; a :class:`~deswm._errors.DeswmError` passes as is.
    A batch's spill file is removed when the lane ends, however it ends; a portable
    batch's file is left to the coordinator (an executor such as an in-process Dask
    worker may run the job again without a copy of it), as is a stream's.
    """
    try:
        return _pack(job)
    except DeswmError:
        raise
    except Exception as exc:
        raise LaneError(
            job.bucket.date().isoformat(), job.lane, job.lanes, f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        job.rows.release()  # the spill file of its rows, whatever the outcome


def _pack(job: LaneJob) -> LaneOutcome:
    failures: list[FileFailure] = []
    seen = kept = files = size = 0
    archived: list[tuple[str, datetime]] | None = [] if job.audit else None
    digest = RowDigest() if job.digest else None
    records = job.rows.records() if digest is None else _digested(job.rows.records(), digest)
    with job.packer.open_bucket(job.bucket) as writer:
        results = job.reader.read_many(records)
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
        job.lane,
        result,
        tuple(failures),
        kept,
        seen,
        files,
        size,
        tuple(archived or ()),
        None if digest is None else digest.state,
    )


def _digested(records: Iterator[SourceRecord], digest: RowDigest) -> Iterator[SourceRecord]:
    """``records``, each added to ``digest`` on its way to the reader."""
    add = digest.add
    for record in records:
        add(uid_text(record.uid), record.created_at)
        yield record


def merge_results(bucket: datetime, parts: list[BucketResult]) -> BucketResult:
    """One bucket's result from its lanes' parts; shards in name order, as one writer
    publishing every group would list them."""
    return BucketResult(
        bucket=bucket,
        files=sum(p.files for p in parts),
        bytes_in=sum(p.bytes_in for p in parts),
        bytes_out=sum(p.bytes_out for p in parts),
        kept=sum(p.kept for p in parts),
        shards=_in_name_order(s for part in parts for s in part.shards),
        unchanged=sum(p.unchanged for p in parts),
        replaced=sum(p.replaced for p in parts),
        shards_unchanged=sum(p.shards_unchanged for p in parts),
        checked=_in_name_order(s for part in parts for s in part.checked),
    )


def _in_name_order(shards: Iterable[PublishedShard]) -> tuple[PublishedShard, ...]:
    return tuple(sorted(shards, key=lambda s: (s.name, s.part)))
