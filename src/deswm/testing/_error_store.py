"""An in-memory :class:`~deswm.ErrorStore` for tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from deswm._model import FileFailure, RecordedFailure, SourceRecord, WatermarkKey
from deswm._timeutil import require_utc

__all__ = ["MemoryErrorStore"]

_Row = tuple[WatermarkKey, datetime, str]


class MemoryErrorStore:
    """Keeps recorded failures in a dict on the instance, with the SQL store's semantics."""

    def __init__(self, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._lock = threading.Lock()
        self._rows: dict[_Row, RecordedFailure] = {}
        self._clock = clock

    def __repr__(self) -> str:
        return f"MemoryErrorStore({len(self._rows)} failures)"

    def record(self, key: WatermarkKey, failures: Sequence[FileFailure]) -> None:
        now = self._clock()
        with self._lock:
            for failure in failures:
                row = (key, require_utc(failure.created_at, "failure.created_at"), failure.uid)
                known = self._rows.get(row)
                self._rows[row] = RecordedFailure(
                    key=key,
                    failure=failure,
                    attempts=1 if known is None else known.attempts + 1,
                    first_failure=now if known is None else known.first_failure,
                    last_failure=now,
                )

    def list(
        self, key: WatermarkKey | None = None, *, limit: int | None = None
    ) -> list[RecordedFailure]:
        with self._lock:
            rows = sorted(
                (r for r in self._rows.items() if key is None or r[0][0] == key),
                key=lambda item: (item[0][0], item[0][1], item[0][2]),
            )
        found = [value for _, value in rows]
        return found if limit is None else found[:limit]

    def resolve(self, key: WatermarkKey, records: Sequence[SourceRecord]) -> int:
        removed = 0
        with self._lock:
            for record in records:
                row = (key, require_utc(record.created_at, "record.created_at"), record.uid)
                if self._rows.pop(row, None) is not None:
                    removed += 1
        return removed

    def count(self, key: WatermarkKey | None = None) -> int:
        return len(self.list(key))
