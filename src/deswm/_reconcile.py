"""Late rows: find the rows that reached committed buckets after their commit, and archive them.

A committed bucket's manifest records the count and digest of the rows the window query
returned (:mod:`deswm._manifest`). A **late row** appears below the watermark afterwards
(a long transaction, a back-dated insert, a restored backup): no cycle reads that window
again. :class:`ReconcileJob` finds them without a lookup per row:

1. one aggregate query per range counts the source's rows per day for the partition
   (:func:`deswm._sources.bucket_counts`), compared with each manifest's ``rows.count``;
2. a day whose count differs (or every day, unless ``counts_only``) is streamed once and
   its :class:`~deswm._rowdigest.RowDigest` compared with the manifest's;
3. a day whose digest differs is compared with its published indexes: source rows not
   archived (and not listed in the error table) are late, archived entries no longer in
   the source are reported as deleted (they stay archived, G3).

``repair=True`` merges the late rows into the day's published shards through the
orchestrator's one merge path (:meth:`~deswm.WatermarkOrchestrator.merge_bucket`, the
one ``errors retry`` uses), then rewrites the manifest: the count and digest of the
source's current rows, the parts as they are now (each part not written by the repair
read and hashed once: a repair a crash cut short may have rewritten one at its old
size). No watermark moves. Merges lay groups out as a clean run would, so the repaired
day is byte-identical to a clean run over the current rows (G2), as long as no row was
deleted (those entries stay, G3).

Memory: the counts hold one integer per day; a changed day holds the uid and instant of
its archived entries, and the records of its late rows, while it is compared and
repaired (not their bytes: those go through the packer's spill, G9).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from deswm import _publish
from deswm._checkpoints import Checkpoint, reach
from deswm._errors import ConfigError, CycleError, LateRowsError
from deswm._manifest import BucketManifest, ManifestStore
from deswm._model import FileFailure, Partition, SourceRecord, WatermarkKey, Window
from deswm._routing import uid_text
from deswm._rowdigest import RowDigest
from deswm._sources import bucket_counts, owned_records
from deswm._timeutil import format_day, format_utc, require_utc

if TYPE_CHECKING:
    from deswm._orchestrator import WatermarkOrchestrator
    from deswm._protocols import ShardRouter, SourceProvider

__all__ = [
    "ReconcileBucket",
    "ReconcileJob",
    "ReconcileReport",
    "archived_entries",
    "check_late_rows",
    "is_archived",
]

log = logging.getLogger("deswm.reconcile")

Key = tuple[str, datetime]


@attrs.frozen
class ReconcileBucket:
    """One committed day of one partition, as the source holds it now against its manifest."""

    bucket: datetime
    partition: Partition
    manifest_rows: int | None
    """``rows.count`` of the manifest; ``None`` when the partition has source rows of the
    day but no manifest (it had none then, or the day predates manifests)."""
    source_rows: int
    """The source's current rows of the day that the partition owns."""
    digest_matches: bool | None = None
    """Whether the current rows' digest is the manifest's; ``None``: not computed (the
    counts matched and ``counts_only`` was asked, or the day has no manifest)."""
    late: tuple[Key, ...] = ()
    """``(uid, created_at)`` of source rows that are not archived (late rows)."""
    deleted: tuple[Key, ...] = ()
    """``(uid, created_at)`` of archived entries no longer in the source (kept, G3)."""
    repaired: bool = False
    """Whether ``repair`` merged the late rows and rewrote the manifest."""
    listed: int = 0
    """Late rows whose files failed during the repair and were listed in the error table."""

    @property
    def day(self) -> str:
        return format_day(self.bucket)

    @property
    def matches(self) -> bool:
        """The source still holds exactly the rows the manifest recorded."""
        return (
            self.manifest_rows is not None
            and self.manifest_rows == self.source_rows
            and self.digest_matches is not False
        )

    @property
    def ok(self) -> bool:
        """Nothing left to do: it matches, the repair brought it up to date, or it has no
        manifest but no late row either (a day from before manifests)."""
        return self.matches or self.repaired or (self.manifest_rows is None and not self.late)


@attrs.frozen
class ReconcileReport:
    """What one reconcile run found (and repaired), day by day."""

    key: WatermarkKey
    window: Window
    buckets: tuple[ReconcileBucket, ...]
    """Every day checked, in order."""
    duration: timedelta
    counts_only: bool = False
    repair: bool = False

    @property
    def changed(self) -> tuple[ReconcileBucket, ...]:
        """The days whose source rows are not what their manifest recorded."""
        return tuple(bucket for bucket in self.buckets if not bucket.matches)

    @property
    def late_rows(self) -> int:
        return sum(len(bucket.late) for bucket in self.buckets)

    @property
    def deleted_rows(self) -> int:
        return sum(len(bucket.deleted) for bucket in self.buckets)

    @property
    def ok(self) -> bool:
        """Every day matches its manifest, or was repaired."""
        return all(bucket.ok for bucket in self.buckets)


class ReconcileJob:
    """Compares committed days with the source's current rows; repairs late rows.

    Args:
        orchestrator: the pipeline's orchestrator for one partition: its source, router,
            watermark (only days below it are checked), error store (listed rows are
            not late) and packer and reader (the repair merges through it).
        manifests: the manifests of the archive (default: the orchestrator's, those
            beside the packer's shards).
    """

    def __init__(
        self, orchestrator: WatermarkOrchestrator, manifests: ManifestStore | None = None
    ) -> None:
        if manifests is None:
            found = orchestrator.manifests
            if not isinstance(found, ManifestStore):
                raise ConfigError(
                    f"{orchestrator.packer!r} keeps no bucket manifests, so there is nothing "
                    "to reconcile the source with",
                    key="manifests",
                    hint="Use a DesPacker, or pass manifests=ManifestStore(store, router)",
                )
            manifests = found
        self.orchestrator = orchestrator
        self.manifests = manifests
        self.source: SourceProvider = orchestrator.source
        self.router: ShardRouter = orchestrator.router
        self.partition: Partition = orchestrator.partition
        self.key: WatermarkKey = orchestrator.key

    def __repr__(self) -> str:
        return f"ReconcileJob({self.key}, {self.manifests!r})"

    # --- the range ---------------------------------------------------------------------

    def window(self, since: datetime | None = None, until: datetime | None = None) -> Window:
        """The committed days to check: ``since``'s day through ``until``'s day, both
        included, never at or past the watermark. Without ``since``: from the
        watermark's initial position, every committed day (a day that had no rows at its
        commit has no manifest, and a late row may land there all the same)."""
        if since is not None:
            require_utc(since, "since")
        if until is not None:
            require_utc(until, "until")
        if since is not None and until is not None and until < since:
            raise ConfigError(
                f"{format_utc(until)} is before since={format_utc(since)}",
                key="until",
                hint="Pass the first day as since and the last day as until (both included)",
            )
        start = self.router.bucket_start(since or self.orchestrator.initial_position())
        watermark = self.orchestrator.store.get(self.key)
        if watermark is None:  # nothing committed yet
            return Window(start, start)
        end = watermark.position
        if until is not None:
            end = min(end, self.router.next_bucket(self.router.bucket_start(until)))
        return Window(min(start, end), end)

    # --- running ----------------------------------------------------------------------

    def run(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        counts_only: bool = False,
        repair: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> ReconcileReport:
        """Check (and with ``repair`` fix) every committed day of the range.

        ``progress`` is called with the number of rows streamed, day by day (e.g. a
        :class:`~deswm._rowprogress.RowProgress`). Raises
        :class:`~deswm._errors.CycleError` when ``repair`` meets files that cannot be read
        and ``on_error="stop"`` (nothing of that day is published or rewritten; days
        repaired before stay repaired).
        """
        started = time.monotonic()
        window = self.window(since, until)
        checked: list[ReconcileBucket] = []
        if not window.empty:
            counts = bucket_counts(self.source, window, self.router, self.partition)
            listed = self._listed(window)
            for bucket in self._days(window):
                manifest = self.manifests.read(format_day(bucket), self.partition)
                found = counts.get(bucket, 0)
                if manifest is None:
                    if not found:
                        continue
                    # The partition had no rows that day when it was committed (or the day
                    # predates manifests): every row not archived is late.
                    manifest = BucketManifest(
                        format_day(bucket), self.partition, self.key.pipeline, 0,
                        RowDigest().hexdigest, 0, (),
                    )  # fmt: skip
                    result, late, digest = self._compare(bucket, manifest, listed, progress)
                    result = attrs.evolve(result, manifest_rows=None)
                else:
                    result, late, digest = self._check(
                        bucket, manifest, found, listed, counts_only, progress
                    )
                if repair and not result.matches:
                    result = self._repair(bucket, manifest, result, late, digest, listed)
                if not result.matches:
                    log.warning(
                        "%s day %s: %d source row(s), manifest %d; %d late, %d deleted%s",
                        self.key,
                        result.day,
                        result.source_rows,
                        manifest.rows,
                        len(result.late),
                        len(result.deleted),
                        " (repaired)" if result.repaired else "",
                    )
                checked.append(result)
        return ReconcileReport(
            key=self.key,
            window=window,
            buckets=tuple(checked),
            duration=timedelta(seconds=time.monotonic() - started),
            counts_only=counts_only,
            repair=repair,
        )

    def _days(self, window: Window) -> Iterator[datetime]:
        day = self.router.bucket_start(window.start)
        while day < window.end:
            yield day
            day = self.router.next_bucket(day)

    def _listed(self, window: Window) -> set[Key]:
        """Rows of the range listed in the error table: not archived, but not late."""
        store = self.orchestrator.error_store
        if store is None:
            return set()
        return {
            (uid_text(entry.failure.uid), entry.failure.created_at)
            for entry in store.list(self.key)
            if entry.failure.created_at in window
        }

    def _check(
        self,
        bucket: datetime,
        manifest: BucketManifest,
        found: int,
        listed: set[Key],
        counts_only: bool,
        progress: Callable[[int], None] | None,
    ) -> tuple[ReconcileBucket, list[SourceRecord], RowDigest]:
        """The day against its manifest; the late records and the current rows' digest
        (both empty when the day matches)."""
        if found == manifest.rows:
            if counts_only:
                result = ReconcileBucket(bucket, self.partition, manifest.rows, found)
                return result, [], RowDigest()
            digest = RowDigest()
            for record in self._rows(bucket):
                digest.add(uid_text(record.uid), record.created_at)
            if progress is not None:
                progress(digest.count)
            if digest.count == manifest.rows and digest.hexdigest == manifest.digest:
                result = ReconcileBucket(bucket, self.partition, manifest.rows, digest.count, True)
                return result, [], digest
        return self._compare(bucket, manifest, listed, progress)

    def _rows(self, bucket: datetime) -> Iterator[SourceRecord]:
        window = Window(bucket, self.router.next_bucket(bucket))
        return owned_records(self.source, window, self.router, self.partition)

    def _compare(
        self,
        bucket: datetime,
        manifest: BucketManifest,
        listed: set[Key],
        progress: Callable[[int], None] | None,
    ) -> tuple[ReconcileBucket, list[SourceRecord], RowDigest]:
        """Stream the day once against its published entries: the late records (to
        repair), the result, and the digest of the current rows."""
        archived = self._archived(bucket)
        digest = RowDigest()
        late: list[SourceRecord] = []
        for record in self._rows(bucket):
            uid = uid_text(record.uid)
            digest.add(uid, record.created_at)
            stored = archived.pop(uid, _MISSING)
            if stored is _MISSING or not _same(stored, record.created_at):
                if (uid, record.created_at) not in listed:
                    late.append(record)
                if stored is not _MISSING:  # another entry of the uid (G14): keep it listed
                    archived[uid] = stored
        if progress is not None:
            progress(digest.count)
        deleted = tuple(
            sorted((uid, at) for uid, at in archived.items() if isinstance(at, datetime))
        )
        result = ReconcileBucket(
            bucket,
            self.partition,
            manifest.rows,
            digest.count,
            digest.count == manifest.rows and digest.hexdigest == manifest.digest,
            tuple((uid_text(r.uid), r.created_at) for r in late),
            deleted,
        )
        return result, late, digest

    def _archived(self, bucket: datetime) -> dict[str, datetime | None]:
        return archived_entries(self.manifests, self.router, bucket, self.partition)

    def _repair(
        self,
        bucket: datetime,
        manifest: BucketManifest,
        result: ReconcileBucket,
        late: Sequence[SourceRecord],
        digest: RowDigest,
        listed: set[Key],
    ) -> ReconcileBucket:
        """Merge the day's late rows into its shards, then record the day again."""
        orchestrator = self.orchestrator
        stop = orchestrator.on_error == "stop" or orchestrator.error_store is None
        # Every group of the day is laid out again, so a repair a crash interrupted
        # between two parts is finished even when its rows are all published by now.
        _done, failed, shards = orchestrator.merge_bucket(
            bucket, late, revisit=self._groups(bucket), all_or_nothing=stop
        )
        if failed:
            if stop:
                raise CycleError(failed, bucket=format_utc(bucket), reason="reconcile --repair")
            assert orchestrator.error_store is not None
            orchestrator.error_store.record(self.key, failed)
        reach(Checkpoint.RECONCILE_AFTER_PUBLISH)
        now_listed = self._listed_in(bucket, listed, failed)
        # Parts not written just now are read and hashed: a repair a crash cut short may
        # have rewritten one at the same size, so the old manifest's hash is not trusted.
        self.manifests.record(
            bucket, self.partition, manifest.pipeline, digest, now_listed, shards, rehash=True
        )
        reach(Checkpoint.RECONCILE_AFTER_MANIFEST)
        log.info(
            "%s day %s: merged %d late row(s), %d listed; manifest rewritten",
            self.key,
            result.day,
            len(late) - len(failed),
            len(failed),
        )
        return attrs.evolve(result, repaired=True, listed=len(failed))

    def _groups(self, bucket: datetime) -> list[int]:
        """The partition's group indexes of the day that have published parts."""
        width = len(self.router.group(bucket, 0).hex)
        return sorted(
            {
                int(part.hex, 16)
                for part in self.manifests.store.list_day(format_day(bucket))
                if len(part.hex) == width and self.partition.owns(int(part.hex, 16))
            }
        )

    def _listed_in(self, bucket: datetime, listed: set[Key], failed: Sequence[FileFailure]) -> int:
        end = self.router.next_bucket(bucket)
        keys = {key for key in listed if bucket <= key[1] < end}
        keys.update((uid_text(f.uid), f.created_at) for f in failed)
        return len(keys)


_MISSING: Any = object()


def _same(stored: datetime | None, wanted: datetime) -> bool:
    """Whether an entry's stored ``created_at`` is the row's (none recorded: other writers)."""
    return stored is None or stored == wanted


def archived_entries(
    manifests: ManifestStore, router: ShardRouter, bucket: datetime, partition: Partition
) -> dict[str, datetime | None]:
    """uid -> ``created_at`` of every entry in ``partition``'s published groups of the day
    (read from the parts' indexes; ``None`` where a writer recorded no instant)."""
    store = manifests.store
    width = len(router.group(bucket, 0).hex)
    entries: dict[str, datetime | None] = {}
    for part in store.list_day(format_day(bucket)):
        if len(part.hex) != width or not partition.owns(int(part.hex, 16)):
            continue
        for entry in store.read_index(part).entries:
            entries.setdefault(entry.uid, entry.created_at)
    return entries


def is_archived(entries: dict[str, datetime | None], uid: str, created_at: datetime) -> bool:
    """Whether ``entries`` (:func:`archived_entries`) hold the row ``(uid, created_at)``."""
    stored = entries.get(uid, _MISSING)
    return stored is not _MISSING and _same(stored, created_at)


def check_late_rows(
    source: SourceProvider,
    manifests: ManifestStore,
    router: ShardRouter,
    bucket: datetime,
    partition: Partition | None = None,
    manifest: BucketManifest | None = None,
) -> list[BucketManifest]:
    """Raise :class:`~deswm._errors.LateRowsError` when the day holds more source rows than
    its manifest counted: one count query (the purge and the flag stage call it before
    touching a day). Return the manifests it compared, so a caller does not read them again.

    With ``partition``: its rows against its manifest (``manifest`` when the caller read
    it already, so it is not read twice). Without: every row of the day
    against the sum over the partitions that have a manifest (one query), and only when
    that finds more, each partition on its own, to name it. More rows than recorded
    means rows that are not archived; a late row hidden by as many deleted rows only the
    digest finds (``deswm reconcile``, and the flag stage's digest pass).
    """
    day = format_day(bucket)
    window = Window(bucket, router.next_bucket(bucket))
    if partition is None:
        found = manifests.partitions(day)
        if not found:
            return []  # no manifest at all: the caller's ManifestMissingError says what to do
        count = max((p.count for p in found), default=1)
        read = {p.index: manifests.require(day, p) for p in found if p.count == count}
        rows = sum(bucket_counts(source, window, router, Partition()).values())
        if rows > sum(m.rows for m in read.values()):
            for index in range(count):
                part = Partition(index, count)
                check_late_rows(source, manifests, router, bucket, part, read.get(index))
        return list(read.values())
    if manifest is None:
        manifest = manifests.read(day, partition)
    recorded = 0 if manifest is None else manifest.rows  # no manifest: no rows that day
    rows = sum(bucket_counts(source, window, router, partition).values())
    if rows > recorded:
        raise LateRowsError(
            day,
            f"{partition.index}/{partition.count}",
            source_rows=rows,
            manifest_rows=recorded,
        )
    return [] if manifest is None else [manifest]


_publish(globals())
