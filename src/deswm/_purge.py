"""The purge stage: delete source files, only after they are archived and verified (G8).

A purge has its own watermark (stage ``purged``) and never passes the ``archived`` one:
it walks the rows of ``[purged, archived)`` day by day, checks each file's entry in the
published shards, deletes the source file, and commits ``purged`` past a day only when
every file of that day was handled. A file whose entry is missing, unverifiable or
different from the source is never deleted, nor is one outside the reader's declared
roots (checked again right before each delete: a row can change after it was archived).

Several rows may reference one location (G15). A location is deleted only when every
row that references it, whatever its ``created_at``, lies below the archived watermark
and is verified in the archive (the rows of the batch being purged count as verified);
otherwise the file is kept and counted in ``kept_shared``, and the purge of the last
such row deletes it. The references are looked up in batches
(:meth:`~deswm._protocols.SourceProvider.location_references`), once before the files
of a batch are verified and again right before they are deleted.

A day is only purged when its manifest exists (:mod:`deswm._manifest`): a day committed
without one (an archive built before manifests, or by a custom packer) stops the purge
with :class:`~deswm._errors.ManifestMissingError` before any of its files is touched, and
a day whose source holds more rows than its manifest counted (late rows, not archived)
with :class:`~deswm._errors.LateRowsError` (one count query per day).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Literal

import attrs

from deswm import _publish
from deswm._errors import (
    ConfigError,
    CorruptShardError,
    DeswmError,
    FileMissingError,
    FileReadError,
    LocationOutsideRootError,
    NotArchivedError,
    ShardError,
)
from deswm._lookups import batch_lookup
from deswm._manifest import ManifestStore
from deswm._model import (
    DEFAULT_STAGE,
    FileFailure,
    LocationReference,
    Partition,
    SourceRecord,
    Watermark,
    WatermarkKey,
    Window,
)
from deswm._protocols import (
    ArchiveLookup,
    ErrorStore,
    FileReader,
    ShardRouter,
    SourceProvider,
    WatermarkStore,
)
from deswm._readers import FsspecFileReader
from deswm._reconcile import check_late_rows
from deswm._sources import source_rows
from deswm._timeutil import format_day, format_utc

__all__ = ["PURGED_STAGE", "PurgeError", "PurgeJob", "PurgeResult"]

log = logging.getLogger("deswm.purge")

PURGED_STAGE = "purged"
Verify = Literal["content", "index"]
_BATCH = 500  # rows verified, checked for other references and deleted together


class PurgeError(DeswmError):
    """Files of a day could not be verified in the archive, so the purge stopped there."""

    def __init__(self, failures: tuple[FileFailure, ...], *, bucket: datetime) -> None:
        self.failures = failures
        self.bucket = bucket
        shown = "; ".join(f"{f.uid!r}: {f.message}" for f in failures[:10])
        more = f" and {len(failures) - 10} more" if len(failures) > 10 else ""
        super().__init__(
            f"{len(failures)} file(s) of {bucket.date()} were not deleted: {shown}{more}",
            hint="Their source files are kept. Replay the day (deswm watermark adjust) or "
            "run deswm verify to find out why the archive lacks them",
        )


@attrs.frozen
class PurgeResult:
    """What one purge run did."""

    key: WatermarkKey
    window: Window
    deleted: int
    already_gone: int
    kept_listed: int
    buckets_committed: int
    duration: timedelta
    dry_run: bool = False
    kept_shared: int = 0
    """Verified files kept because another row not yet verified references them (G15)."""


class PurgeJob:
    """Deletes the source files of archived days, verified, never ahead of ``archived``.

    Args:
        store, source, reader, router: as for the orchestrator (same pipeline).
        archive: the read side of the destination (:class:`deswm.Archive`).
        pipeline, partition: whose files to purge.
        initial: where a new ``purged`` watermark starts.
        verify: ``"content"`` (default) reads the archived copy (checksum verified)
            and deletes the source only if its bytes are identical; ``"index"`` only
            requires the entry to be in a published shard with a checksum.
        error_store: files listed there (``on_error="record"``) are kept, not deleted.
        max_buckets: commit at most this many days per run.
        manifests: where the days' manifests are; by default the destination of
            ``archive`` (an :class:`~deswm._archive.Archive`). A day without its manifest
            is refused (:class:`~deswm._errors.ManifestMissingError`).

    Raises:
        ConfigError: ``reader`` is an :class:`~deswm.FsspecFileReader` without
            ``root`` or ``allowed_roots``: deleting needs a declared owner, or any
            absolute location in the table could be deleted. (A custom reader's
            ``delete`` is responsible for its own containment.)
    """

    def __init__(
        self,
        store: WatermarkStore,
        source: SourceProvider,
        reader: FileReader,
        archive: ArchiveLookup,
        router: ShardRouter,
        *,
        pipeline: str,
        initial: datetime,
        partition: Partition | None = None,
        verify: Verify = "content",
        error_store: ErrorStore | None = None,
        max_buckets: int | None = None,
        manifests: ManifestStore | None = None,
    ) -> None:
        if verify not in ("content", "index"):
            raise ConfigError(f'must be "content" or "index", got {verify!r}', key="--verify")
        if isinstance(reader, FsspecFileReader) and not reader.roots:
            raise ConfigError(
                "is not set, nor files.allowed_roots: the purge deletes source files and "
                "needs to know which folders it owns, or any absolute file_location in the "
                "table could be deleted",
                key="files.root",
                hint="Set files.root (FsspecFileReader(root=...)) to the folder or URL the "
                "files live in, or files.allowed_roots = [...] when the table holds "
                "absolute locations in several folders",
            )
        if not callable(getattr(source, "location_references", None)):
            raise ConfigError(
                f"{type(source).__name__} has no location_references(); the purge needs it "
                "to keep files that other rows still reference (G15)",
                key="source",
                hint="Implement SourceProvider.location_references() (see deswm._protocols)",
            )
        if manifests is None:
            manifests = _manifests_of(archive, router)
        self.manifests = manifests
        self.store = store
        self.source = source
        self.reader = reader
        self.archive = archive
        self.router = router
        self.partition = partition or Partition()
        self.archived_key = WatermarkKey(pipeline, DEFAULT_STAGE, self.partition.index)
        self.key = WatermarkKey(pipeline, PURGED_STAGE, self.partition.index)
        self.initial = router.bucket_start(initial)
        self.verify = verify
        self.error_store = error_store
        self.max_buckets = max_buckets
        self._progress: Callable[[int], None] | None = None
        self._reported = 0
        self.lookup = batch_lookup(archive)
        """Answers the lookups of one run (a new one per run: its day listings age)."""

    def __repr__(self) -> str:
        return f"PurgeJob({self.key}, verify={self.verify!r})"

    def window(self) -> Window:
        """``[purged, archived)``: what a run may delete now (empty if nothing)."""
        archived = self.store.get(self.archived_key)
        purged = self.store.get(self.key)
        start = purged.position if purged is not None else self.initial
        end = archived.position if archived is not None else start
        return Window(min(start, end), end)

    def run(
        self, *, dry_run: bool = False, progress: Callable[[int], None] | None = None
    ) -> PurgeResult:
        """Delete what may be deleted; ``dry_run`` verifies and counts but deletes nothing.

        ``progress`` is called with the number of rows handled, batch by batch (e.g. a
        :class:`~deswm._rowprogress.RowProgress`).
        """
        started = time.monotonic()
        window = self.window()
        counts = {"deleted": 0, "gone": 0, "listed": 0, "buckets": 0, "shared": 0}
        if not window.empty:
            self.lookup = batch_lookup(self.archive)
            self._progress, self._reported = progress, 0
            try:
                self._purge(window, counts, dry_run=dry_run)
            finally:
                self._progress = None
        return PurgeResult(
            key=self.key,
            window=window,
            deleted=counts["deleted"],
            already_gone=counts["gone"],
            kept_listed=counts["listed"],
            buckets_committed=counts["buckets"],
            duration=timedelta(seconds=time.monotonic() - started),
            dry_run=dry_run,
            kept_shared=counts["shared"],
        )

    def _purge(self, window: Window, counts: dict[str, int], *, dry_run: bool) -> None:
        listed = self._listed()
        watermark: Watermark | None = None
        if not dry_run:
            watermark = self.store.get(self.key) or self.store.initialize(
                self.key, window.start, partitions=self.partition.count
            )
        rows = self._owned(window)
        record = next(rows, None)
        while record is not None:
            if self.max_buckets is not None and counts["buckets"] >= self.max_buckets:
                return
            bucket = self.router.bucket_start(record.created_at)
            bucket_end = self.router.next_bucket(bucket)
            manifest = self.manifests.require(format_day(bucket), self.partition)
            # Rows that arrived after the commit are not archived: refuse the whole day.
            check_late_rows(
                self.source, self.manifests, self.router, bucket, self.partition, manifest
            )
            failures: list[FileFailure] = []
            batch: list[SourceRecord] = []
            while record is not None and record.created_at < bucket_end:
                if (record.uid, record.created_at) in listed:
                    counts["listed"] += 1
                else:
                    batch.append(record)
                    if len(batch) >= _BATCH:
                        self._purge_batch(batch, window.end, listed, failures, counts, dry_run)
                        batch = []
                        self._report(counts)
                record = next(rows, None)
            if batch:
                self._purge_batch(batch, window.end, listed, failures, counts, dry_run)
            self._report(counts)
            if failures:
                raise PurgeError(tuple(failures), bucket=bucket)
            counts["buckets"] += 1
            if watermark is not None:
                end = window.end if record is None else self.router.bucket_start(record.created_at)
                watermark = self.store.advance(watermark, end)
                log.info("purged %s day %s -> %s", self.key, bucket.date(), format_utc(end))
        if watermark is not None and watermark.position < window.end:
            self.store.advance(watermark, window.end)

    def _purge_batch(
        self,
        batch: Sequence[SourceRecord],
        archived: datetime,
        listed: set[tuple[str, datetime]],
        failures: list[FileFailure],
        counts: dict[str, int],
        dry_run: bool,
    ) -> None:
        """Verify a batch of one day's rows and delete the files no other row still needs."""
        mine = {(record.uid, record.created_at) for record in batch}
        # First look: a file another row still needs is kept without reading it.
        shared = self._shared(batch, mine, archived, listed)
        candidates: list[SourceRecord] = []
        for record in batch:
            try:
                self._check_contained(record.location)
            except LocationOutsideRootError as exc:
                failures.append(FileFailure.from_exception(record, "purge", exc))
                continue
            if record.location in shared:
                self._keep_shared(record, shared[record.location], counts)
                continue
            candidates.append(record)
        verified: list[SourceRecord] = []
        for record, reason in zip(candidates, self._unsafe_many(candidates), strict=True):
            if reason == "gone":
                counts["gone"] += 1
            elif reason is not None:
                failures.append(
                    FileFailure(
                        record.uid,
                        record.created_at,
                        record.location,
                        "purge",
                        "PurgeError",
                        reason,
                    )
                )
            else:
                verified.append(record)
        # Look again right before deleting: rows may have been added meanwhile, and a
        # row of this batch that failed verification no longer counts as verified.
        mine = {(record.uid, record.created_at) for record in verified}
        shared = self._shared(verified, mine, archived, listed)
        deleted: set[str] = set()
        for record in verified:
            if record.location in shared:
                self._keep_shared(record, shared[record.location], counts)
            elif record.location in deleted:
                counts["gone"] += 1
            else:
                if not dry_run:
                    try:
                        # checks containment once more, atomically
                        self.reader.delete(record.location)
                    except LocationOutsideRootError as exc:
                        failures.append(FileFailure.from_exception(record, "purge", exc))
                        continue
                deleted.add(record.location)
                counts["deleted"] += 1

    def _report(self, counts: dict[str, int]) -> None:
        """Tell ``progress`` how many rows were handled since the last report."""
        handled = counts["deleted"] + counts["gone"] + counts["listed"] + counts["shared"]
        if self._progress is not None and handled > self._reported:
            self._progress(handled - self._reported)
        self._reported = handled

    def _keep_shared(self, record: SourceRecord, why: str, counts: dict[str, int]) -> None:
        counts["shared"] += 1
        log.info("kept %s of uid %r: %s", record.location, record.uid, why)

    def _shared(
        self,
        records: Sequence[SourceRecord],
        mine: set[tuple[str, datetime]],
        archived: datetime,
        listed: set[tuple[str, datetime]],
    ) -> dict[str, str]:
        """The locations of ``records`` that another row still needs, with the reason (G15).

        A row of ``mine`` (this batch, verified) does not count. Any other row counts
        unless its ``created_at`` is below the archived watermark, it is not listed in the
        error table, and its entry verifies in the archive.
        """
        if not records:
            return {}
        needed: dict[str, str] = {}
        references = self.source.location_references({r.location for r in records})
        for ref in references:
            if ref.location in needed or (
                ref.created_at is not None and (ref.uid, ref.created_at) in mine
            ):
                continue
            why = self._still_needs(ref, archived, listed)
            if why is not None:
                needed[ref.location] = f"row uid={ref.uid!r} {why}"
        return needed

    def _still_needs(
        self, ref: LocationReference, archived: datetime, listed: set[tuple[str, datetime]]
    ) -> str | None:
        """Why the row ``ref`` still needs its file, or ``None`` when it is archived."""
        if ref.created_at is None:
            return "has a created_at that cannot be read, so it is never archived"
        at = format_utc(ref.created_at)
        if ref.created_at >= archived:
            return (
                f"created_at={at} is not archived yet (archived watermark {format_utc(archived)})"
            )
        if (ref.uid, ref.created_at) in listed:
            return f"created_at={at} is listed in the error table"
        try:
            entry = self.archive.stat(ref.uid, ref.created_at)
            if entry.sha256 is None:
                return f"created_at={at} has no checksum in {entry.shard}"
            if entry.created_at is not None and entry.created_at != ref.created_at:
                return (
                    f"created_at={at} is not what {entry.shard} holds for the uid "
                    f"({format_utc(entry.created_at)})"
                )
            if self.verify == "content":
                self.archive.get(ref.uid, ref.created_at)
        except ShardError as exc:
            return f"created_at={at} does not verify in the archive: {exc.message}"
        return None

    def _check_contained(self, location: str) -> None:
        if isinstance(self.reader, FsspecFileReader):
            self.reader.check_location(location)

    def _unsafe_many(self, records: Sequence[SourceRecord]) -> list[str | None]:
        """Why each file must not be deleted, ``"gone"``, or ``None`` (delete it).

        The entries are looked up together (one listing per day, one index read per
        part) and, for ``verify="content"``, the archived copies read together.
        """
        keys = [(record.uid, record.created_at) for record in records]
        reasons: list[str | None] = []
        for found in self.lookup.stat_many(keys):
            if isinstance(found, NotArchivedError):
                reasons.append("not in the archive")
            elif isinstance(found, ShardError):
                raise found
            elif found.sha256 is None:
                reasons.append(f"its entry in {found.shard} has no checksum to verify")
            else:
                reasons.append(None)
        if self.verify == "index":
            return reasons
        wanted = [position for position, reason in enumerate(reasons) if reason is None]

        def compare(index: int, archived: bytes | ShardError) -> None:
            reasons[wanted[index]] = self._differs(records[wanted[index]], archived)

        self.lookup.read_each([keys[position] for position in wanted], compare)
        return reasons

    def _differs(self, record: SourceRecord, archived: bytes | ShardError) -> str | None:
        """Why the source file may not go given its archived copy, ``"gone"`` or ``None``."""
        if isinstance(archived, (NotArchivedError, CorruptShardError)):
            return f"the archived copy does not verify: {archived.message}"
        if isinstance(archived, ShardError):
            raise archived
        try:
            current = self.reader.read(record.location)
        except FileMissingError:
            return "gone"
        except FileReadError as exc:
            return f"cannot read the source file to compare: {exc.message}"
        if current != archived:
            return "the source file differs from its archived copy (changed after archiving?)"
        return None

    def _listed(self) -> set[tuple[str, datetime]]:
        if self.error_store is None:
            return set()
        return {
            (entry.failure.uid, entry.failure.created_at)
            for entry in self.error_store.list(self.archived_key)
        }

    def _owned(self, window: Window) -> Iterator[SourceRecord]:
        with source_rows(self.source.iter_records(window)) as records:
            for record in records:
                if self.partition.count == 1 or self.partition.owns(
                    self.router.shard_index(record.uid)
                ):
                    yield record


def _manifests_of(archive: ArchiveLookup, router: ShardRouter) -> ManifestStore:
    """The manifests beside ``archive``'s shards; a lookup without a store must name them."""
    from deswm._archive import Archive

    if isinstance(archive, Archive):
        return ManifestStore(archive.store, router)
    raise ConfigError(
        f"{type(archive).__name__} is not an Archive, so the purge cannot find the days' manifests",
        key="manifests",
        hint="Pass manifests=ManifestStore(shard_store, router) (deswm._manifest)",
    )


_publish(globals())
