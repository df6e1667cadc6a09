"""An in-memory :class:`~deswm.WatermarkStore` for tests.

It keeps the SQL store's semantics (versions, compare-and-set conflicts, history of
manual changes) so a test of the orchestrator proves the same thing it would prove on a
database, in microseconds. State lives on the instance: two stores never share it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import attrs

from deswm._defaults import default_actor
from deswm._errors import WatermarkConflict
from deswm._model import Watermark, WatermarkChange, WatermarkKey
from deswm._stores._base import WatermarkStoreBase
from deswm._timeutil import require_utc

__all__ = ["MemoryWatermarkStore"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MemoryWatermarkStore(WatermarkStoreBase):
    """:class:`~deswm.WatermarkStore` in a dict, safe to share between threads.

    Args:
        actor: recorded as ``updated_by`` and in the history; default ``user@host``.
        clock: gives ``updated_at`` and ``changed_at`` (inject one for stable values).

    :attr:`writes` counts successful writes, so a test can check "exactly one
    watermark write per committed bucket" (G4) without a database.
    """

    def __init__(
        self,
        *,
        actor: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._actor = default_actor() if actor is None else actor
        self._clock = clock
        self._lock = threading.Lock()
        self._rows: dict[WatermarkKey, Watermark] = {}
        self._changes: list[WatermarkChange] = []
        self._writes = 0

    @property
    def actor(self) -> str:
        return self._actor

    @property
    def writes(self) -> int:
        """How many writes succeeded (initialise inserts, advances, sets)."""
        with self._lock:
            return self._writes

    def __repr__(self) -> str:
        # No lock: a repr must never block, e.g. in a debugger stopped inside a write.
        return f"MemoryWatermarkStore({len(self._rows)} watermarks, {self._writes} writes)"

    def _get_watermark(self, key: WatermarkKey) -> Watermark | None:
        with self._lock:
            return self._rows.get(key)

    def _initialize_watermark(
        self, key: WatermarkKey, position: datetime, lag: timedelta | None, partitions: int
    ) -> Watermark:
        with self._lock:
            existing = self._rows.get(key)
            if existing is not None:
                return existing
            created = Watermark(
                key=key,
                position=position,
                version=1,
                lag=lag,
                partitions=partitions,
                updated_at=self._now(),
                updated_by=self._actor,
            )
            self._rows[key] = created
            self._writes += 1
            return created

    def _advance_watermark(self, current: Watermark, position: datetime) -> Watermark:
        with self._lock:
            stored = self._rows.get(current.key)
            if stored is None or stored.version != current.version:
                raise WatermarkConflict(
                    current.key,
                    current.version,
                    "missing" if stored is None else stored.version,
                )
            updated = attrs.evolve(
                stored,
                position=position,
                version=stored.version + 1,
                updated_at=self._now(),
                updated_by=self._actor,
            )
            self._rows[current.key] = updated
            self._writes += 1
            return updated

    def _set_watermark(self, key: WatermarkKey, position: datetime, reason: str) -> Watermark:
        with self._lock:
            now = self._now()
            stored = self._rows.get(key)
            if stored is None:
                written = Watermark(
                    key=key, position=position, version=1, updated_at=now, updated_by=self._actor
                )
            else:
                written = attrs.evolve(
                    stored,
                    position=position,
                    version=stored.version + 1,
                    updated_at=now,
                    updated_by=self._actor,
                )
            self._rows[key] = written
            self._changes.append(
                WatermarkChange(
                    key=key,
                    changed_at=now,
                    actor=self._actor,
                    previous=None if stored is None else stored.position,
                    position=position,
                    reason=reason,
                )
            )
            self._writes += 1
            return written

    def list(self, pipeline: str | None = None) -> Sequence[Watermark]:
        """Every stored watermark, or one pipeline's, ordered by key."""
        with self._lock:
            rows = [
                w for w in self._rows.values() if pipeline is None or w.key.pipeline == pipeline
            ]
        return sorted(rows, key=lambda w: w.key)

    def _list_history(self, key: WatermarkKey | None, limit: int) -> Sequence[WatermarkChange]:
        with self._lock:
            newest_first = [c for c in reversed(self._changes) if key is None or c.key == key]
        return newest_first[:limit]

    def _now(self) -> datetime:
        return require_utc(self._clock(), "the store clock's time")
