"""Fault injection for any deswm component: make chosen calls misbehave.

Two tools, for the two places things go wrong:

* :func:`inject` wraps a component (store, source, reader, router, packer, or your own
  subclass of one) in a proxy that delegates everything and, on chosen calls of chosen
  methods, raises, loses an acknowledgement, corrupts, delays, drops, reports a file
  missing or cuts a stream short. A packer's bucket writers are wrapped too, so ``add``
  or ``publish`` faults count across buckets, and ``read_many`` faults count items, not
  calls. Every call of a faulted method is recorded as a :class:`FaultCall`.
* :func:`at_checkpoint` acts at a named point *inside* deswm's write path (between
  publish and commit, after an fsync, between two pages of rows, ...; see
  :class:`Checkpoint`), where no method boundary exists to wrap.

Both restore everything when they are done with, so one test cannot leak a fault into
the next. Example::

    store = inject(SqlWatermarkStore(url), advance=fail_after(1))  # commit lost its ack
    reader = inject(FsspecFileReader(), read_many=missing_on(3))  # 3rd file is gone
    with at_checkpoint("bucket.after_publish", InjectedFault("crash"), on=1):
        orchestrator.run_cycle()
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Literal, NamedTuple, TypeVar

import attrs

from deswm import _checkpoints
from deswm._checkpoints import Checkpoint
from deswm._errors import DeswmError, FileMissingError

__all__ = [
    "Action",
    "Checkpoint",
    "CheckpointAction",
    "CheckpointHit",
    "Fault",
    "FaultCall",
    "FaultyComponent",
    "InjectedFault",
    "at_checkpoint",
    "corrupt_on",
    "delay_on",
    "drop_on",
    "fail_after",
    "fail_mid_stream",
    "fail_on",
    "inject",
    "missing_on",
]

T = TypeVar("T")

Action = Literal["raise", "raise_after", "corrupt", "delay", "drop", "missing", "cut"]
"""What a :class:`Fault` does on the calls it hits."""


class InjectedFault(DeswmError):
    """The default error a fault raises; a test can tell it from real failures.

    It is a :class:`~deswm.DeswmError`, so code that handles deswm's errors (the
    orchestrator's callers, ``run_forever``) treats it like a real failure.
    """


def _default_error() -> BaseException:
    return InjectedFault("injected fault")


class FaultCall(NamedTuple):
    """One call through a faulty proxy: method name, its call number (1-based), fault hit."""

    method: str
    number: int
    faulted: bool


@attrs.frozen
class Fault:
    """What to do on which calls of one method.

    ``on`` holds 1-based call numbers (``None``: every call); for ``read_many`` they
    number the items it yields. ``action`` is one of:

    * ``"raise"``: raise ``error()`` instead of calling;
    * ``"raise_after"``: call, then raise (the work is done, the caller sees a failure:
      a lost acknowledgement);
    * ``"corrupt"``: flip the first byte of a ``bytes`` result (of the item's bytes for
      ``read_many``);
    * ``"delay"``: sleep ``seconds``, then call;
    * ``"drop"``: skip the call and return ``drop_value`` (a lost write; for
      ``read_many`` the item vanishes, which breaks the reader contract on purpose);
    * ``"missing"``: behave as if the file were gone: ``read`` raises and ``read_many``
      yields :class:`~deswm.FileMissingError` for the location;
    * ``"cut"``: call, and end the returned stream with ``error()`` after ``after``
      items (a connection lost mid-stream).
    """

    on: frozenset[int] | None
    action: Action
    error: Callable[[], BaseException] = _default_error
    seconds: float = 0.0
    drop_value: Any = None
    after: int = 0


def _factory(
    error: BaseException | Callable[[], BaseException] | None,
) -> Callable[[], BaseException]:
    if error is None:
        return _default_error
    if isinstance(error, BaseException):
        return lambda: error
    return error


def fail_on(*calls: int, error: BaseException | Callable[[], BaseException] | None = None) -> Fault:
    """Raise on these call numbers (every call if none are given)."""
    return Fault(frozenset(calls) or None, "raise", error=_factory(error))


def fail_after(
    *calls: int, error: BaseException | Callable[[], BaseException] | None = None
) -> Fault:
    """Perform these calls, then raise: the work is done but the caller sees an error."""
    return Fault(frozenset(calls) or None, "raise_after", error=_factory(error))


def corrupt_on(*calls: int) -> Fault:
    """Return corrupted bytes on these calls (for ``read_many``: these items)."""
    return Fault(frozenset(calls) or None, "corrupt")


def delay_on(*calls: int, seconds: float) -> Fault:
    """Sleep before these calls."""
    return Fault(frozenset(calls) or None, "delay", seconds=seconds)


def drop_on(*calls: int, returning: Any = None) -> Fault:
    """Do not perform these calls; return ``returning`` instead (a lost write)."""
    return Fault(frozenset(calls) or None, "drop", drop_value=returning)


def missing_on(*calls: int) -> Fault:
    """Report the file of these reads (``read_many``: these items) as missing.

    The file is back on the next call: a file that was briefly moved, or a replica that
    lagged. The orchestrator must then refuse to commit its bucket (or record it).
    """
    return Fault(frozenset(calls) or None, "missing")


def fail_mid_stream(
    after: int,
    *calls: int,
    error: BaseException | Callable[[], BaseException] | None = None,
) -> Fault:
    """Let these calls' streams yield ``after`` items, then raise (every call if none given).

    For methods that return iterators, such as ``SourceProvider.iter_records``: the
    database connection that dies between two rows.
    """
    if after < 0:
        raise ValueError(f"after must be >= 0, got {after}")
    return Fault(frozenset(calls) or None, "cut", error=_factory(error), after=after)


def _flip(data: bytes) -> bytes:
    if not data:
        return b"\x00"
    return bytes([data[0] ^ 0xFF]) + data[1:]


def _cut(stream: Iterable[T], fault: Fault) -> Iterator[T]:
    iterator = iter(stream)
    try:
        for _ in range(fault.after):
            try:
                item = next(iterator)
            except StopIteration:
                return
            yield item
        raise fault.error()
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


class FaultyComponent:
    """A proxy that delegates to ``target`` and applies :class:`Fault` plans by method.

    Made by :func:`inject`. ``calls`` lists every call of a faulted method (shared with
    the proxies of the bucket writers it hands out); ``target`` is the real component.
    Protocol checks (``isinstance(proxy, WatermarkStore)``) see the target's methods.
    """

    def __init__(
        self, target: Any, faults: dict[str, Fault], *, shared: FaultyComponent | None = None
    ) -> None:
        self._target = target
        self._faults = faults
        self._lock: threading.Lock = shared._lock if shared else threading.Lock()
        self._counts: dict[str, int] = shared._counts if shared else {}
        self.calls: list[FaultCall] = shared.calls if shared else []

    def __repr__(self) -> str:
        return f"inject({self._target!r}, {sorted(self._faults)})"

    @property
    def target(self) -> Any:
        return self._target

    def calls_of(self, method: str) -> list[FaultCall]:
        """The recorded calls of one method."""
        with self._lock:
            return [call for call in self.calls if call.method == method]

    def _next(self, method: str) -> bool:
        fault = self._faults.get(method)
        with self._lock:
            number = self._counts.get(method, 0) + 1
            self._counts[method] = number
            hit = fault is not None and (fault.on is None or number in fault.on)
            self.calls.append(FaultCall(method, number, hit))
        return hit

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_target", "_faults", "_lock", "_counts", "calls"):
            raise AttributeError(name)
        if name == "route_is_composed" and "route" in self._faults:
            return False  # a faulted route() must be called: no fast path around it
        value = getattr(self._target, name)
        if not callable(value):
            return value
        if name == "open_bucket":
            return self._wrap_open_bucket(value)
        if name not in self._faults:
            return value
        if name == "read_many":
            return self._wrap_read_many(value)
        return self._wrap(name, value)

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        fault = self._faults[name]

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self._next(name):
                return method(*args, **kwargs)
            if fault.action == "raise":
                raise fault.error()
            if fault.action == "missing":
                raise FileMissingError(str(args[0]) if args else "<unknown location>")
            if fault.action == "drop":
                return fault.drop_value
            if fault.action == "delay":
                time.sleep(fault.seconds)
            result = method(*args, **kwargs)
            if fault.action == "raise_after":
                raise fault.error()
            if fault.action == "corrupt" and isinstance(result, bytes):
                return _flip(result)
            if fault.action == "cut":
                return _cut(result, fault)
            return result

        return call

    def _wrap_read_many(self, method: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        fault = self._faults["read_many"]

        def read_many(records: Iterable[Any]) -> Iterator[Any]:
            inner = method(records)
            try:
                for record, data in inner:
                    if not self._next("read_many"):
                        yield record, data
                        continue
                    if fault.action in ("raise", "cut"):
                        raise fault.error()
                    if fault.action == "drop":
                        continue
                    if fault.action == "delay":
                        time.sleep(fault.seconds)
                    elif fault.action == "corrupt" and isinstance(data, bytes):
                        data = _flip(data)
                    elif fault.action == "missing":
                        data = FileMissingError(record.location)
                    yield record, data
                    if fault.action == "raise_after":
                        raise fault.error()
            finally:
                close = getattr(inner, "close", None)
                if close is not None:
                    close()

        return read_many

    def _wrap_open_bucket(self, method: Callable[..., Any]) -> Callable[..., Any]:
        opener = self._wrap("open_bucket", method) if "open_bucket" in self._faults else method

        def open_bucket(*args: Any, **kwargs: Any) -> Any:
            return _FaultyWriter(opener(*args, **kwargs), self._faults, shared=self)

        return open_bucket


class _FaultyWriter(FaultyComponent):
    """A bucket writer proxy; the context manager protocol must be on the class."""

    def __enter__(self) -> _FaultyWriter:
        self._target.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._target.__exit__(exc_type, exc, tb)


_WRITER_METHODS = frozenset({"add", "archived", "publish", "abort"})
"""Methods of the bucket writers a packer hands out, which a packer proxy faults too."""


def inject(target: T, **faults: Fault) -> T:
    """Wrap ``target`` so the named methods misbehave as planned; typed as the target.

    The proxy records every call to a faulted method in ``proxy.calls``. Faults named
    after a bucket writer method (``add``, ``publish``, ...) apply to the writers of a
    packer. A misspelt method raises ``AttributeError`` at once. A fault on
    ``read`` does not affect ``read_many`` (the reader calls its own ``read``): fault
    ``read_many`` items to disturb a cycle.
    """
    writer_methods = _WRITER_METHODS if hasattr(target, "open_bucket") else frozenset()
    unknown = sorted(
        name
        for name in faults
        if name not in writer_methods and not callable(getattr(target, name, None))
    )
    if unknown:
        raise AttributeError(f"{type(target).__name__} has no method {unknown[0]!r} to fault")
    return FaultyComponent(target, dict(faults))  # type: ignore[return-value]


# --- checkpoints ----------------------------------------------------------------------------


class CheckpointHit(NamedTuple):
    """One time a checkpoint was reached inside :func:`at_checkpoint`.

    ``hit`` numbers the hits since the block was entered (1-based); ``acted`` says
    whether the action ran on this hit.
    """

    name: str
    hit: int
    acted: bool


CheckpointAction = BaseException | type[BaseException] | Callable[[str, int], object] | None
"""An exception (instance or class) to raise, a ``callback(name, count)``, or nothing."""


class _Handler:
    def __init__(self, name: str, action: CheckpointAction, on: frozenset[int] | None) -> None:
        self.name = name
        self.action = action
        self.on = on
        self.hits: list[CheckpointHit] = []
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            count = len(self.hits) + 1
            acted = self.action is not None and (self.on is None or count in self.on)
            self.hits.append(CheckpointHit(self.name, count, acted))
        if not acted:
            return
        action = self.action
        if isinstance(action, BaseException):
            raise action
        if isinstance(action, type):
            error: BaseException = action(f"injected at checkpoint {self.name} (hit {count})")
            raise error
        if action is not None:
            action(self.name, count)


_registry = threading.Lock()
_chains: dict[str, list[_Handler]] = {}
_displaced: dict[str, Callable[[str, int], None] | None] = {}


def _dispatch(name: str, count: int) -> None:
    with _registry:
        chain = list(_chains.get(name, ()))
        displaced = _displaced.get(name)
    if displaced is not None:
        displaced(name, count)
    for handler in chain:
        handler()


def _attach(handler: _Handler) -> None:
    with _registry:
        chain = _chains.setdefault(handler.name, [])
        if not chain:
            _displaced[handler.name] = _checkpoints.installed(handler.name)
            _checkpoints.install(handler.name, _dispatch)
        chain.append(handler)


def _detach(handler: _Handler) -> None:
    with _registry:
        chain = _chains.get(handler.name, [])
        if handler in chain:
            chain.remove(handler)
        if chain:
            return
        _chains.pop(handler.name, None)
        displaced = _displaced.pop(handler.name, None)
        if displaced is None:
            _checkpoints.uninstall(handler.name)
        else:
            _checkpoints.install(handler.name, displaced)


@contextlib.contextmanager
def at_checkpoint(
    name: Checkpoint | str,
    action: CheckpointAction = None,
    *,
    on: int | Iterable[int] | None = None,
) -> Iterator[list[CheckpointHit]]:
    """Raise, or run a callback, when deswm reaches checkpoint ``name`` in this block.

    Args:
        name: a :class:`Checkpoint` (``Checkpoint.BUCKET_AFTER_PUBLISH``, ...), or its
            value as a string (``"bucket.after_publish"``); an unknown name raises
            ``ValueError`` listing the known ones.
        action: an exception instance or class to raise (a class gets a message naming
            the checkpoint), a ``callback(name, count)``, or ``None`` to only count.
        on: the hits to act on, 1-based and counted from entering the block (``None``:
            every hit).

    Yields the list of :class:`CheckpointHit` so far, for assertions such as "the
    cycle committed twice". Blocks nest, for the same or different names; each counts
    its own hits. The previous hook of the checkpoint is restored on exit, however the
    block ends. An exception raised here travels through deswm like a real failure at
    that point: an ``OSError`` inside the packer's publish reaches the caller as a
    :class:`~deswm.PackError`, a :class:`~deswm.DeswmError` (such as
    :class:`InjectedFault`) as itself.
    """
    if name not in _checkpoints.POINTS:
        raise ValueError(f"unknown checkpoint {name!r}; known: {', '.join(_checkpoints.POINTS)}")
    name = Checkpoint(name)
    calls = None if on is None else frozenset([on] if isinstance(on, int) else on)
    handler = _Handler(name, action, calls)
    _attach(handler)
    try:
        yield handler.hits
    finally:
        _detach(handler)
