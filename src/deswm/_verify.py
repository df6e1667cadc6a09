"""Check that every source row below the watermark can be read back from the archive."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from deswm import _publish
from deswm._errors import CorruptShardError, NotArchivedError, ShardError, UnverifiedEntryError
from deswm._humanize import Displayed, human_count, human_time
from deswm._lookups import BatchLookup, batch_lookup
from deswm._model import SourceRecord, Window
from deswm._protocols import ArchiveLookup, SourceProvider
from deswm._sources import source_rows

__all__ = ["ArchiveLookup", "VerifyReport", "verify_window"]


@attrs.frozen
class VerifyReport(Displayed):
    """Rows checked, and those missing from or corrupt in the archive (first 100 each).

    ``unverified`` (deep only) are entries of other DES writers that decoded to their
    declared size but carry no checksum: reported apart, not counted as corrupt.
    """

    window: Window
    checked: int
    missing: tuple[SourceRecord, ...]
    corrupt: tuple[tuple[SourceRecord, str], ...]
    missing_count: int
    corrupt_count: int
    unverified: tuple[SourceRecord, ...] = ()
    unverified_count: int = 0

    @property
    def ok(self) -> bool:
        return self.missing_count == 0 and self.corrupt_count == 0

    def _display(self) -> tuple[str, list[tuple[str, object]]]:
        rows: list[tuple[str, object]] = [
            ("window", self.window),
            ("result", "ok" if self.ok else "FAILED"),
            ("checked", f"{human_count(self.checked)} rows"),
            ("missing", human_count(self.missing_count)),
            ("corrupt", human_count(self.corrupt_count)),
        ]
        if self.unverified_count:
            rows.append(("unverified", f"{human_count(self.unverified_count)} (no checksum)"))
        rows += [
            ("missing row", f"{r.uid!r} created_at={human_time(r.created_at)} ({r.location})")
            for r in self.missing
        ]
        rows += [("corrupt row", f"{r.uid!r}: {reason}") for r, reason in self.corrupt]
        return "verify report", rows


_CHUNK = 5000
"""Rows looked up together: the day listings and indexes are reused across chunks."""


def verify_window(
    source: SourceProvider,
    archive: ArchiveLookup,
    window: Window,
    *,
    deep: bool = False,
    owns: Callable[[SourceRecord], bool] | None = None,
    keep: int = 100,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Look every row of ``window`` up in the archive.

    The default checks the shard indexes; ``deep`` reads every file back and verifies
    its checksum (entries without one are decoded, size-checked and counted as
    ``unverified``). A uid archived with another ``created_at`` is another file: the
    row counts as missing (G14). On an :class:`~deswm._archive.Archive` the requests grow
    with the shards, not the rows: each day is listed once and each part's index read
    once (deep: adjacent payloads read together); see :class:`~deswm._archive.ArchiveBatch`.
    ``progress`` is called with the number of rows each time a chunk is checked.
    """
    tally = _Tally(keep)
    lookup = batch_lookup(archive)
    chunk: list[SourceRecord] = []
    with source_rows(source.iter_records(window)) as records:
        for record in records:
            if owns is not None and not owns(record):
                continue
            chunk.append(record)
            if len(chunk) >= _CHUNK:
                _check(lookup, chunk, deep, tally, progress)
                chunk = []
    if chunk:
        _check(lookup, chunk, deep, tally, progress)
    return VerifyReport(
        window=window,
        checked=tally.checked,
        missing=tuple(tally.missing),
        corrupt=tuple(tally.corrupt),
        missing_count=tally.missing_count,
        corrupt_count=tally.corrupt_count,
        unverified=tuple(tally.unverified),
        unverified_count=tally.unverified_count,
    )


class _Tally:
    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.checked = self.missing_count = self.corrupt_count = self.unverified_count = 0
        self.missing: list[SourceRecord] = []
        self.corrupt: list[tuple[SourceRecord, str]] = []
        self.unverified: list[SourceRecord] = []

    def add(self, record: SourceRecord, outcome: object) -> None:
        """Count one row; ``outcome`` is its entry or bytes, or the lookup's error."""
        self.checked += 1
        if isinstance(outcome, NotArchivedError):
            self.missing_count += 1
            if len(self.missing) < self.keep:
                self.missing.append(record)
        elif isinstance(outcome, UnverifiedEntryError):
            self.unverified_count += 1
            if len(self.unverified) < self.keep:
                self.unverified.append(record)
        elif isinstance(outcome, CorruptShardError):
            self.corrupt_count += 1
            if len(self.corrupt) < self.keep:
                self.corrupt.append((record, str(outcome)))
        elif isinstance(outcome, Exception):
            raise outcome  # a group rewritten again and again: not an answer about the row


def _check(
    lookup: BatchLookup,
    chunk: list[SourceRecord],
    deep: bool,
    tally: _Tally,
    progress: Callable[[int], None] | None,
) -> None:
    keys = [(record.uid, record.created_at) for record in chunk]
    if deep:
        outcomes: list[object] = [None] * len(chunk)

        def seen(position: int, result: bytes | ShardError) -> None:
            outcomes[position] = result if isinstance(result, ShardError) else None

        lookup.read_each(keys, seen)
    else:
        outcomes = list(lookup.stat_many(keys))
    for record, outcome in zip(chunk, outcomes, strict=True):
        tally.add(record, outcome)
    if progress is not None:
        progress(len(chunk))


_publish(globals())
