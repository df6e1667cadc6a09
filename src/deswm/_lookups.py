"""Many archive lookups at once, for ``verify`` and ``purge``.

An :class:`~deswm._archive.Archive` answers them with one listing per day and one index
read per part (:class:`~deswm._archive.ArchiveBatch`); any other
:class:`~deswm._protocols.ArchiveLookup` is asked row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from deswm._errors import ShardError
from deswm._model import ArchivedEntry
from deswm._protocols import ArchiveLookup

__all__ = ["BatchLookup", "batch_lookup"]

Key = tuple[str, datetime]


class BatchLookup(Protocol):
    def stat_many(self, keys: Sequence[Key]) -> Sequence[ArchivedEntry | ShardError]: ...

    def read_each(
        self, keys: Sequence[Key], use: Callable[[int, bytes | ShardError], None]
    ) -> None: ...


def batch_lookup(archive: ArchiveLookup) -> BatchLookup:
    """The archive's own batch lookup when it has one, else a row-by-row one."""
    make = getattr(archive, "batch", None)
    if callable(make):
        batch: BatchLookup = make()
        return batch
    return _RowByRow(archive)


class _RowByRow:
    def __init__(self, archive: ArchiveLookup) -> None:
        self._archive = archive

    def stat_many(self, keys: Sequence[Key]) -> list[ArchivedEntry | ShardError]:
        found: list[ArchivedEntry | ShardError] = []
        for uid, created_at in keys:
            try:
                found.append(self._archive.stat(uid, created_at))
            except ShardError as exc:
                found.append(exc)
        return found

    def read_each(
        self, keys: Sequence[Key], use: Callable[[int, bytes | ShardError], None]
    ) -> None:
        for position, (uid, created_at) in enumerate(keys):
            try:
                data = self._archive.get(uid, created_at)
            except ShardError as exc:
                use(position, exc)
            else:
                use(position, data)
