"""Counting an object store's read-side calls: the service's backend-request metric and
the retrieval benchmark's requests per file both come from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

from deswm._objectstore.base import ObjectStore

__all__ = ["READ_OPS", "CountingStore", "count_reads"]

READ_OPS: Final = frozenset({"get_range", "get_tail", "stat", "list"})
"""The calls that are backend requests when reading an archive (a ranged GET, the index
tail read, a HEAD, a listing)."""


class CountingStore:
    """Forwards everything to the wrapped store, calling ``count(op)`` before each call
    named in :data:`READ_OPS` (writes pass uncounted). For readers: a writer's
    ``isinstance`` check of its backend (``ShardStore.stage``) sees the wrapper."""

    def __init__(self, store: ObjectStore, count: Callable[[str], None]) -> None:
        self._store = store
        self._count = count

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name not in READ_OPS or not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._count(name)
            return attribute(*args, **kwargs)

        return counted


class _HoldsStore(Protocol):
    backend: ObjectStore


def count_reads(holder: _HoldsStore, count: Callable[[str], None]) -> None:
    """Count the read-side calls of ``holder.backend`` (an archive's ``ShardStore``) from now
    on; wrapping it again adds a second count (each counts every call)."""
    holder.backend = CountingStore(holder.backend, count)
