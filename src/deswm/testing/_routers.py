"""A :class:`~deswm.ShardRouter` that records the calls made to another one.

Routing must be pure and computed, never looked up (G6), and the orchestrator must compute
its target once per cycle (G5). Wrapping the real router in a :class:`RecordingRouter`
lets a test see exactly what was asked of it, without changing a single answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from deswm._model import ShardKey
from deswm._protocols import ShardRouter
from deswm._routing import DesRouter

__all__ = ["RecordingRouter", "RouterCall"]

_T = TypeVar("_T")


class RouterCall(NamedTuple):
    """One call made through a :class:`RecordingRouter`.

    ``result`` is what the wrapped router returned, or the exception it raised (the
    exception is raised again to the caller).
    """

    method: str
    args: tuple[object, ...]
    result: object


class RecordingRouter:
    """:class:`~deswm.ShardRouter` delegating to ``router``, recording each call.

    Args:
        router: the router whose answers are used; ``DesRouter(8)`` by default.

    Calls are kept in :attr:`calls` as :class:`RouterCall` named tuples (thread-safe).
    Reading :attr:`shard_count` is not recorded. Only the protocol is offered (reach
    ``DesRouter.n_bits`` through :attr:`router`), so type checkers hold the recorder to
    it. It pickles as its wrapped router plus an empty record, to cross processes.
    """

    def __init__(self, router: ShardRouter | None = None) -> None:
        self._router: ShardRouter = router if router is not None else DesRouter(8)
        self._lock = threading.Lock()
        self.calls: list[RouterCall] = []

    def __repr__(self) -> str:
        return f"RecordingRouter({self._router!r}, {len(self.calls)} calls)"

    def __getstate__(self) -> dict[str, Any]:
        return {"router": self._router}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._router = state["router"]
        self._lock = threading.Lock()
        self.calls = []

    @property
    def router(self) -> ShardRouter:
        """The wrapped router."""
        return self._router

    def calls_of(self, method: str) -> list[RouterCall]:
        """The recorded calls of one method, in call order."""
        with self._lock:
            return [call for call in self.calls if call.method == method]

    def clear(self) -> None:
        """Forget the recorded calls (e.g. between two cycles of one test)."""
        with self._lock:
            self.calls.clear()

    # --- ShardRouter -------------------------------------------------------------------

    @property
    def shard_count(self) -> int:
        return self._router.shard_count

    def shard_index(self, uid: str | int) -> int:
        return self._call("shard_index", (uid,), lambda: self._router.shard_index(uid))

    def route(self, uid: str | int, created_at: datetime) -> ShardKey:
        return self._call("route", (uid, created_at), lambda: self._router.route(uid, created_at))

    def group(self, bucket: datetime, index: int) -> ShardKey:
        return self._call("group", (bucket, index), lambda: self._router.group(bucket, index))

    def bucket_start(self, instant: datetime) -> datetime:
        return self._call("bucket_start", (instant,), lambda: self._router.bucket_start(instant))

    def next_bucket(self, bucket: datetime) -> datetime:
        return self._call("next_bucket", (bucket,), lambda: self._router.next_bucket(bucket))

    def _call(self, method: str, args: tuple[object, ...], run: Callable[[], _T]) -> _T:
        try:
            result = run()
        except Exception as exc:
            self._record(RouterCall(method, args, exc))
            raise
        self._record(RouterCall(method, args, result))
        return result

    def _record(self, call: RouterCall) -> None:
        with self._lock:
            self.calls.append(call)
