"""Source providers, and how deswm reads any source's rows."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from deswm._model import Partition, SourceRecord, Window

if TYPE_CHECKING:
    from deswm._protocols import ShardRouter, SourceProvider

__all__ = ["bucket_counts", "owned_records", "source_rows"]


@contextlib.contextmanager
def source_rows(rows: Iterable[SourceRecord]) -> Iterator[Iterator[SourceRecord]]:
    """Iterate a source's rows; end its stream when the block ends, error or not.

    A streaming source holds a connection, a snapshot and a lock on the production table
    while its iterator is open. Left to the garbage collector, a failed job keeps all
    three for as long as anything holds the error's traceback.
    """
    iterator = iter(rows)
    try:
        yield iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def owned_records(
    source: SourceProvider, window: Window, router: ShardRouter, partition: Partition
) -> Iterator[SourceRecord]:
    """The rows of ``window`` that ``partition`` owns: what its cycle archives.

    Narrowed in SQL where the source can (``iter_partition_records``), and always
    checked here with :meth:`~deswm._model.Partition.owns`, like the cycle does.
    """
    from deswm._protocols import PartitionedSource
    from deswm._routing import uid_text

    if partition.count > 1 and isinstance(source, PartitionedSource):
        rows = source.iter_partition_records(window, router, partition)
    else:
        rows = source.iter_records(window)
    with source_rows(rows) as records:
        for record in records:
            if partition.count == 1 or partition.owns(router.shard_index(uid_text(record.uid))):
                yield record


def bucket_counts(
    source: SourceProvider, window: Window, router: ShardRouter, partition: Partition
) -> dict[datetime, int]:
    """Rows per bucket start of ``window`` that ``partition`` owns (empty buckets left out).

    One aggregate query where the source counts itself
    (:class:`~deswm._protocols.BucketCounter`), else one stream of the window's rows.
    """
    from deswm._protocols import BucketCounter

    if isinstance(source, BucketCounter):
        counted = source.bucket_counts(window, router, partition)
        if counted is not None:
            return {bucket: count for bucket, count in counted.items() if count}
    counts: dict[datetime, int] = {}
    bucket: datetime | None = None
    end: datetime | None = None
    for record in owned_records(source, window, router, partition):
        if end is None or bucket is None or not bucket <= record.created_at < end:
            bucket = router.bucket_start(record.created_at)
            end = router.next_bucket(bucket)
        assert bucket is not None
        counts[bucket] = counts.get(bucket, 0) + 1
    return counts
