"""An in-memory :class:`~deswm.SourceProvider` for tests.

It keeps exactly the protocol's semantics (half-open windows, ``(created_at, uid)``
order, aware UTC, one-pass stats) so a test of the orchestrator proves what it would on a
database, in microseconds. State lives on the instance.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Collection, Iterable, Iterator
from datetime import datetime
from typing import NamedTuple

import attrs

from deswm._container import MAX_UID_BYTES
from deswm._errors import BadRowError
from deswm._model import LocationReference, PendingStats, SourceRecord, Window
from deswm._timeutil import require_utc

__all__ = ["MemorySourceProvider", "SourceCall"]


class SourceCall(NamedTuple):
    """One call made to a :class:`MemorySourceProvider`: ``("iter_records", window)``."""

    method: str
    window: Window


class MemorySourceProvider:
    """:class:`~deswm.SourceProvider` over a list of records.

    Args:
        records: the rows of the "table", in any order. Each is checked like the SQL
            provider checks a row (non-empty uid of at most 65,535 UTF-8 bytes,
            non-empty location; :class:`~deswm.BadRowError` otherwise) and its
            ``created_at`` must be aware (converted to UTC; a naive one raises
            :class:`~deswm.NaiveDatetimeError`).

    :attr:`calls` records every ``iter_records`` and ``pending_stats`` call.
    """

    def __init__(self, records: Iterable[SourceRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._records: list[SourceRecord] = []
        self._keys: list[tuple[datetime, str]] = []
        self.calls: list[SourceCall] = []
        self.add(*records)

    def __repr__(self) -> str:
        return f"MemorySourceProvider({len(self._records)} records)"

    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> tuple[SourceRecord, ...]:
        """Every record, in ``(created_at, uid)`` order."""
        return tuple(self._records)

    def add(self, *records: SourceRecord) -> None:
        """Insert rows (a late arrival, a replay test); order is kept."""
        checked = [_checked(record) for record in records]
        with self._lock:
            for record in checked:
                key = (record.created_at, record.uid)
                index = bisect.bisect_right(self._keys, key)
                self._keys.insert(index, key)
                self._records.insert(index, record)

    def iter_records(self, window: Window) -> Iterator[SourceRecord]:
        """Rows with ``start <= created_at < end``, ordered by ``(created_at, uid)``."""
        with self._lock:
            self.calls.append(SourceCall("iter_records", window))
            first, last = self._range(window)
            # A snapshot of the slice: adding rows later does not disturb an iteration.
            selected = self._records[first:last]
        return iter(selected)

    def pending_stats(self, window: Window) -> PendingStats:
        """Files, bytes (``None`` sizes count 0), oldest and newest in ``window``."""
        with self._lock:
            self.calls.append(SourceCall("pending_stats", window))
            first, last = self._range(window)
            selected = self._records[first:last]
        return PendingStats(
            window=window,
            files=len(selected),
            bytes=sum(record.size or 0 for record in selected),
            oldest=selected[0].created_at if selected else None,
            newest=selected[-1].created_at if selected else None,
        )

    def location_references(self, locations: Collection[str]) -> Iterator[LocationReference]:
        """Every row whose location is in ``locations`` (a scan: this is a test double)."""
        wanted = set(locations)
        with self._lock:
            found = [
                LocationReference(record.location, record.uid, record.created_at)
                for record in self._records
                if record.location in wanted
            ]
        return iter(found)

    def _range(self, window: Window) -> tuple[int, int]:
        if window.empty:
            return 0, 0
        # ("",) sorts before every uid, so the keys bracket whole created_at values.
        first = bisect.bisect_left(self._keys, (window.start, ""))
        last = bisect.bisect_left(self._keys, (window.end, ""))
        return first, last


def _checked(record: SourceRecord) -> SourceRecord:
    if not isinstance(record, SourceRecord):
        raise TypeError(f"expected a SourceRecord, got {type(record).__name__}")
    created_at = require_utc(record.created_at, f"created_at of uid {record.uid!r}")
    if not isinstance(record.uid, str) or not record.uid:
        raise BadRowError("uid must be a non-empty string", uid=record.uid, created_at=created_at)
    try:
        size = len(record.uid.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRowError(
            "uid cannot be encoded as UTF-8", uid=record.uid, created_at=created_at
        ) from None
    if size > MAX_UID_BYTES:
        raise BadRowError(
            f"uid is {size:,} bytes in UTF-8; DES entry names hold at most {MAX_UID_BYTES:,}",
            uid=record.uid[:80],
            created_at=created_at,
        )
    if not isinstance(record.location, str) or not record.location:
        raise BadRowError(
            "location must be a non-empty string", uid=record.uid, created_at=created_at
        )
    if record.size is not None and (isinstance(record.size, bool) or record.size < 0):
        raise BadRowError(
            f"size must be a non-negative integer or None, got {record.size!r}",
            uid=record.uid,
            created_at=created_at,
        )
    return attrs.evolve(record, created_at=created_at)
