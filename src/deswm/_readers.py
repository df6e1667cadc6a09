"""File readers: the bytes behind a ``file_location``.

:class:`FileReaderBase` turns a ``read()`` into a bounded, ordered, concurrent
``read_many()``, so an in-house blob store needs only ``read`` and ``delete``.
:class:`FsspecFileReader` reads local paths with plain ``open()`` and every other
location through fsspec (``s3://``, ``memory://``, ...), retrying only transient errors.
"""

from __future__ import annotations

import abc
import errno
import inspect
import logging
import os
import random
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, TypeVar

import fsspec

from deswm import _publish
from deswm._contain import (
    NotRegular,
    Outside,
    Roots,
    delete_local,
    open_local,
    read_native,
    read_relative,
)
from deswm._errors import ConfigError, FileMissingError, FileReadError, LocationOutsideRootError
from deswm._model import SourceRecord
from deswm._objectstore.errors import is_transient
from deswm._objectstore.fsspec import remove
from deswm._objectstore.registry import filesystem, is_local_protocol
from deswm._protocols import ReadResult
from deswm._redact import redact, scrub, secret_values

__all__ = ["FileReaderBase", "FsspecFileReader"]

log = logging.getLogger("deswm.readers")  # a stable logger name (docs/operations.md)

_T = TypeVar("_T")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_READ_FLAGS: Final = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_CHUNK: Final = 2**20
"""Read size after a short first read (a file that grew, a FIFO)."""


class FileReaderBase(abc.ABC):
    """A :class:`~deswm.FileReader` built on two primitives: ``read`` and ``delete``.

    ``read_many`` reads with a pool of ``max_workers`` threads, keeps at most
    ``read_ahead`` results in flight (default ``2 * max_workers``, so memory stays bounded
    by that many files), and yields results in input order. A
    :class:`~deswm.FileReadError` is yielded as a value; any other exception is a
    bug or a systematic failure and is raised. Closing the iterator early cancels what
    was queued and does not wait for reads in progress.

    Slow reads (object stores, cold disks) go one per task, so all ``max_workers``
    threads wait on I/O at once; faster ones go in batches of up to ``read_ahead // 2``
    files, about a millisecond of reading each. Reads that take only microseconds (a
    local file in the page cache) are done in the consuming thread itself, in order,
    until they slow down again: a hand-off to a thread would cost more than the read.
    The next ``read_many`` of the same reader starts where the last one ended, so a
    process reading batch after batch (a packing lane, bucket after bucket) does not
    learn again each time that its reads are fast.

    Args:
        max_workers: reader threads (I/O bound: more than the CPU count is fine).
        read_ahead: results in flight at most; at least ``1``.
    """

    def __init__(self, *, max_workers: int = 8, read_ahead: int | None = None) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(
                f"must be a positive integer, got {max_workers!r}", key="reader.max_workers"
            )
        if read_ahead is None:
            read_ahead = 2 * max_workers
        if isinstance(read_ahead, bool) or not isinstance(read_ahead, int) or read_ahead < 1:
            raise ConfigError(
                f"must be a positive integer, got {read_ahead!r}", key="reader.read_ahead"
            )
        self.max_workers = max_workers
        self.read_ahead = read_ahead

    _reads_inline = False
    """Whether the last ``read_many`` ended reading in the consumer's thread."""

    @abc.abstractmethod
    def read(self, location: str) -> bytes:
        """All bytes at ``location``; ``b""`` for a zero-byte file.

        Raise :class:`~deswm.FileMissingError` when it does not exist and
        :class:`~deswm.FileReadError` for any other failure to read it.
        """

    @abc.abstractmethod
    def delete(self, location: str) -> None:
        """Delete the file at ``location``; a missing file is not an error."""

    def read_many(self, records: Iterable[SourceRecord]) -> Generator[ReadResult, None, None]:
        """Read every record's file concurrently, yielding ``(record, bytes | error)`` in order.

        Returns a generator: ``close()`` it to stop early (the pool is shut down).
        """
        return self._read_many(iter(records))

    def _read_many(self, records: Iterator[SourceRecord]) -> Generator[ReadResult, None, None]:
        pool = ThreadPoolExecutor(
            max_workers=self.max_workers, thread_name_prefix=f"deswm-{type(self).__name__}"
        )
        pending: deque[tuple[list[SourceRecord], Future[list[bytes | BaseException]]]] = deque()
        held = 0  # files submitted and not yet yielded (the batch being yielded included)
        pace = _Pace(max(1, self.read_ahead // 2), inline=self._reads_inline)
        batch: list[SourceRecord] = []
        finished = False
        read = self.read
        clock = time.perf_counter
        try:
            for record in records:
                if pace.inline:
                    # Reads are fast (a warm page cache): read here, in order, after
                    # whatever is still queued; a hand-off would cost more than the read.
                    if pending or batch:
                        while pending:
                            yield from _outcomes(*pending.popleft())
                        held = 0
                        for queued in batch:
                            yield self._read_inline(queued, pace)
                        batch = []
                    started = clock()
                    try:
                        data: bytes | FileReadError = read(record.location)
                    except FileReadError as exc:
                        data = exc
                    pace.observe_inline(clock() - started)
                    yield record, data
                    continue
                batch.append(record)
                if len(batch) < pace.batch_size():
                    continue
                while pending and held + len(batch) > self.read_ahead:
                    done, future = pending.popleft()
                    yield from _outcomes(done, future)
                    held -= len(done)
                pending.append((batch, pool.submit(self._read_batch, batch, pace)))
                held += len(batch)
                batch = []
            if batch:
                pending.append((batch, pool.submit(self._read_batch, batch, pace)))
            while pending:
                yield from _outcomes(*pending.popleft())
            finished = True
        finally:
            # Abandoned (closed early, or an error): cancel what has not started and do
            # not wait for reads in progress; their results are discarded.
            pool.shutdown(wait=finished, cancel_futures=True)
            self._reads_inline = pace.inline

    def _read_inline(self, record: SourceRecord, pace: _Pace) -> ReadResult:
        started = time.perf_counter()
        try:
            data = self.read(record.location)
        except FileReadError as exc:
            return record, exc
        finally:
            pace.observe_inline(time.perf_counter() - started)
        return record, data

    def _read_batch(self, batch: list[SourceRecord], pace: _Pace) -> list[bytes | BaseException]:
        """Read a batch in order; stop at the first error that is not a ``FileReadError``."""
        out: list[bytes | BaseException] = []
        clock = time.perf_counter
        started = clock()
        for record in batch:
            try:
                out.append(self.read(record.location))
            except FileReadError as exc:
                out.append(exc)
            except BaseException as exc:
                out.append(exc)  # raised when its record's turn comes
                break
        pace.observe(clock() - started, len(out))
        return out


class _Pace:
    """How files are read: in the consumer's thread, or in batches on the pool.

    Reads start on the pool (or inline, where the reader's last ``read_many`` ended), in
    batches of about ``_BATCH_SECONDS`` of reading (at most ``limit`` files; one file per
    task while reads are slow). Once the median time per
    read of a window of ``_WINDOW`` reads is under ``_INLINE_SECONDS`` (a local file in
    the page cache takes a few microseconds), reads move to the consumer's thread, where
    a hand-off cannot cost more than the read; a window whose median is over twice that
    moves them back to the pool. Medians, not means: a read that waited for the GIL
    must not look like slow storage. The reader threads update the estimates without a
    lock (a lost update only makes one estimate slightly stale).
    """

    _BATCH_SECONDS: Final = 0.001
    _INLINE_SECONDS: Final = 0.00005
    _WINDOW: Final = 32

    def __init__(self, limit: int, *, inline: bool = False) -> None:
        self._limit = limit
        self._size = 1
        self._samples: list[float] = []
        self.inline = inline

    def batch_size(self) -> int:
        return self._size

    def observe(self, seconds: float, reads: int) -> None:
        """A batch of ``reads`` on the pool took ``seconds``."""
        if reads <= 0:
            return
        per_read = seconds / reads
        self._size = (
            self._limit
            if per_read <= 0
            else max(1, min(self._limit, int(self._BATCH_SECONDS / per_read)))
        )
        median = self._window([per_read] * min(reads, self._WINDOW))
        if median is not None and median < self._INLINE_SECONDS:
            self.inline = True

    def observe_inline(self, seconds: float) -> None:
        """One read in the consumer's thread took ``seconds``."""
        window = self._samples
        window.append(seconds)
        if len(window) >= self._WINDOW:
            self._samples = []
            if sorted(window)[len(window) // 2] > 2 * self._INLINE_SECONDS:
                self.inline = False

    def _window(self, samples: list[float]) -> float | None:
        """Add samples; when a window is full, return its median and start a new one."""
        window = self._samples
        window.extend(samples)
        if len(window) < self._WINDOW:
            return None
        self._samples = []
        return sorted(window)[len(window) // 2]


def _outcomes(
    batch: list[SourceRecord], future: Future[list[bytes | BaseException]]
) -> Iterator[ReadResult]:
    for record, outcome in zip(batch, future.result(), strict=False):
        if isinstance(outcome, BaseException) and not isinstance(outcome, FileReadError):
            raise outcome
        yield record, outcome


class FsspecFileReader(FileReaderBase):
    """Reads local files and any fsspec URL; the reference :class:`FileReader`.

    Locations:

    * an absolute local path or a ``file://`` URL is read with ``open()`` (no fsspec);
    * a relative path is joined to ``root`` (a local folder or any URL);
    * any other URL (``s3://``, ``memory://``, ``gs://``, ...) goes through one cached
      fsspec filesystem per protocol.

    Containment: with ``root`` or ``allowed_roots``, every location must resolve strictly
    inside one of them, or it raises :class:`~deswm.LocationOutsideRootError` and
    is never read, archived or deleted. ``..`` climbing out, an absolute path or
    ``file://`` URL elsewhere, a symlink whose target leaves the root (checked on the
    file actually opened), another scheme, bucket or prefix (compared component by
    component), a leading ``~``, NUL bytes and backslashes are all outside. The table
    is data: a row must not turn the reader into an arbitrary read, nor the purge into
    an arbitrary delete. Without either, absolute locations are read wherever they point
    (and :class:`~deswm.PurgeJob` refuses such a reader).

    Args:
        root: where relative locations live; without it a relative location fails.
        allowed_roots: further folders or URLs that absolute locations may be in (for
            tables that store absolute locations across several roots).
        storage_options: options for the fsspec filesystems: a dict keyed by protocol
            (``{"s3": {...}, "gs": {...}}``), or one flat dict used for the protocol of
            ``root`` (when ``root`` is a URL) or else for every non-local protocol.
        max_workers, read_ahead: concurrency of :meth:`read_many`.
        retries: extra attempts after a transient failure (connection reset, timeout,
            HTTP 5xx, throttling). Missing files, 403 and permission errors fail at once.
        retry_backoff: the first delay in seconds; it doubles with every retry (with
            jitter, so throttled readers do not retry in lockstep).

    Credentials in ``storage_options`` never appear in reprs, logs or error messages;
    userinfo and signed query parameters are masked in the locations errors show.
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] | None = None,
        allowed_roots: Iterable[str | os.PathLike[str]] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        max_workers: int = 8,
        read_ahead: int | None = None,
        retries: int = 3,
        retry_backoff: float = 0.2,
    ) -> None:
        super().__init__(max_workers=max_workers, read_ahead=read_ahead)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(
                f"must be a non-negative integer, got {retries!r}", key="reader.retries"
            )
        if not isinstance(retry_backoff, int | float) or retry_backoff < 0:
            raise ConfigError(
                f"must be a non-negative number of seconds, got {retry_backoff!r}",
                key="reader.retry_backoff",
            )
        self.retries = retries
        self.retry_backoff = float(retry_backoff)
        self.root = None if root is None else _normalise_root(os.fspath(root))
        self.allowed_roots = _allowed_roots(allowed_roots)
        declared = ((self.root,) if self.root is not None else ()) + self.allowed_roots
        self._roots = Roots(declared, allowed_from=len(declared) - len(self.allowed_roots))
        self._local_prefix = (
            None
            if self.root is None or _URL.match(self.root)
            else self.root
            if self.root.endswith("/")
            else self.root + "/"
        )
        self._options = _split_options(storage_options, declared[0] if declared else None)
        self._secrets = secret_values(storage_options, min_length=4)
        self._filesystems: dict[str, Any] = {}
        self._cat_options: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._shown_roots = tuple(self._show(r) for r in declared)

    def __getstate__(self) -> dict[str, Any]:
        """The settings without the lock, the open root folders and the filesystems (a
        lane process opens its own)."""
        state = self.__dict__.copy()
        del state["_lock"], state["_roots"]
        state["_filesystems"] = {}
        state["_cat_options"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        declared = ((self.root,) if self.root is not None else ()) + self.allowed_roots
        self._roots = Roots(declared, allowed_from=len(declared) - len(self.allowed_roots))

    def __repr__(self) -> str:
        protocols = sorted(self._options.per_protocol)
        allowed = f"allowed_roots={list(self._shown_roots[1 if self.root else 0 :])}, "
        return (
            f"{type(self).__name__}(root={self._show(self.root) if self.root else None!r}, "
            f"{allowed if self.allowed_roots else ''}"
            f"storage_options_for={protocols}, max_workers={self.max_workers}, "
            f"retries={self.retries})"
        )

    @property
    def roots(self) -> tuple[str, ...]:
        """``root`` and ``allowed_roots``: where this reader reads and deletes.

        Empty when neither is set: then absolute locations are read wherever they point,
        and the purge refuses to run (deleting needs a declared owner).
        """
        return ((self.root,) if self.root is not None else ()) + self.allowed_roots

    # --- FileReader ---------------------------------------------------------------------

    def read(self, location: str) -> bytes:
        """All bytes at ``location``, retrying transient failures."""
        if self._local_prefix is not None and type(location) is str:
            # Relative to a local root (the common table): one call into the C helper.
            data = read_relative(location, self._roots)
            if data is not None:
                return data
        protocol, path = self._resolve(location)
        if protocol is None:
            return self._with_retries("read", location, _read_local, path, self._roots or None)
        fs = self._filesystem(protocol, location)
        options = self._cat_options[protocol]
        return self._with_retries("read", location, _read_remote, fs, path, options)

    def delete(self, location: str) -> None:
        """Delete the file at ``location``; a missing file is not an error.

        A local directory is refused (:class:`~deswm.FileReadError`); object
        stores have no directories, so there a "folder" is simply not a file to delete.
        With roots, containment is checked again right before the delete, which removes
        the resolved file (symlinks followed) and only if it is inside a root:
        :class:`~deswm.LocationOutsideRootError` otherwise.
        """
        protocol, path = self._resolve(location)
        if protocol is None:
            self._with_retries("delete", location, _delete_local, path, self._roots or None)
        else:
            fs = self._filesystem(protocol, location)
            self._with_retries("delete", location, remove, fs, path)

    def check_location(self, location: str) -> None:
        """Raise :class:`~deswm.LocationOutsideRootError` if ``location`` is outside.

        No I/O but resolving symlinks of a local path; :meth:`read` and :meth:`delete`
        check again on the file itself. Without roots there is nothing to check.
        """
        if not self._roots:
            return
        protocol, path = self._resolve(location)
        if protocol is None:
            real = os.path.realpath(path)
            if not self._roots.holds_real(real):
                reason = f"resolves to {real} (through a symlink), outside the root"
                raise self._outside(location, Outside(reason))

    # --- internals ----------------------------------------------------------------------

    def _resolve(self, location: str) -> tuple[str | None, str]:
        """``(None, local path)`` or ``(protocol, URL)`` for ``location``.

        With roots, a location that is not inside one raises
        :class:`~deswm.LocationOutsideRootError` here, before any I/O.
        """
        if not self._roots:
            return self._resolve_anywhere(location)
        if not isinstance(location, str) or not location:
            raise FileReadError(
                "is not a file location (empty or not a string)", location=repr(location)
            )
        try:
            self._roots.check_text(location)
            protocol, path = self._resolve_anywhere(location)
            if protocol is None:
                return None, self._roots.local_path(path)
            return protocol, self._roots.url(protocol, path)
        except Outside as exc:
            raise self._outside(location, exc) from None

    def _outside(self, location: str, exc: Outside) -> LocationOutsideRootError:
        return LocationOutsideRootError(
            self._show(location), self._scrub(exc.reason), roots=self._shown_roots
        )

    def _resolve_anywhere(self, location: str) -> tuple[str | None, str]:
        if type(location) is str and location and "://" not in location and os.sep == "/":
            # The common case, without regular expressions: a local path, absolute or
            # relative to a local root (exactly what the general rules below give).
            if location[0] == "/":
                return None, location
            if self._local_prefix is not None:
                return None, self._local_prefix + location
        if not isinstance(location, str) or not location:
            raise FileReadError(
                "is not a file location (empty or not a string)", location=repr(location)
            )
        if not _URL.match(location) and not os.path.isabs(location):
            if self.root is None:
                raise FileReadError(
                    "is a relative location and the reader has no root",
                    location=self._show(location),
                    hint="Pass FsspecFileReader(root=...) (a folder or URL) or store "
                    "absolute locations",
                )
            location = _join(self.root, location)
        match = _URL.match(location)
        if match is None:
            return None, location
        protocol = match.group(0)[:-3].lower()
        if is_local_protocol(protocol):
            return None, _local_path(location)
        return protocol, location

    def _filesystem(self, protocol: str, location: str) -> Any:
        with self._lock:
            fs = self._filesystems.get(protocol)
            if fs is None:
                try:
                    fs = filesystem(protocol, self._options.for_protocol(protocol), key="reader")
                except ValueError as exc:
                    raise FileReadError(
                        f"no fsspec filesystem knows the protocol {protocol!r}",
                        location=self._show(location),
                    ) from exc
                self._cat_options[protocol] = _cat_options(fs, self._options.for_protocol(protocol))
                self._filesystems[protocol] = fs
            return fs

    def _with_retries(
        self, action: str, location: str, attempt: Callable[..., _T], *args: Any
    ) -> _T:
        """``attempt(*args)``, retried on transient failures, its errors typed.

        The arguments are passed rather than bound in a closure: this runs once per file.
        """
        for tries in range(self.retries + 1):
            try:
                return attempt(*args)
            except Outside as exc:
                raise self._outside(location, exc) from None
            except NotRegular:
                raise FileReadError(
                    "is not a regular file (a FIFO, device or socket)",
                    location=self._show(location),
                    hint="file_location must name a regular file",
                ) from None
            except _Directory as exc:
                raise FileReadError(
                    "is a directory, not a file",
                    location=self._show(location),
                    hint="file_location must name a file",
                ) from exc.__cause__
            except FileNotFoundError as exc:
                raise FileMissingError(self._show(location)) from exc
            except PermissionError as exc:
                raise FileReadError(
                    f"permission denied ({action})",
                    location=self._show(location),
                    hint="Grant the archiving process read access (and delete access for "
                    "the purge stage), or check the storage credentials",
                ) from exc
            except Exception as exc:
                if tries < self.retries and is_transient(exc):
                    delay = self.retry_backoff * 2**tries * (0.5 + random.random() / 2)
                    log.warning(
                        "%s %s failed (%s), retry %d of %d in %.2fs",
                        action,
                        self._show(location),
                        self._describe(exc),
                        tries + 1,
                        self.retries,
                        delay,
                    )
                    time.sleep(delay)
                    continue
                attempts = f" after {tries + 1} attempts" if tries else ""
                raise FileReadError(
                    f"could not {action}{attempts}: {self._describe(exc)}",
                    location=self._show(location),
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _describe(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {self._scrub(str(exc))}"

    def _scrub(self, text: str) -> str:
        return redact(scrub(text, self._secrets))

    def _show(self, location: str) -> str:
        return self._scrub(location)


class _Directory(Exception):
    """Internal: the location is a directory (raised from the read primitives)."""


def _read_local(path: str, roots: Roots | None = None) -> bytes:
    """The bytes at ``path``; with ``roots``, only of a regular file verified inside them.

    Through the C helper where it is built (:func:`~deswm._contain.read_native`: these
    system calls in one call); otherwise in Python: one ``open``, one ``fstat`` and, for
    a file that does not change while it is read, one ``read`` of its size plus one byte
    (a short read is the end of a regular file), then ``close``: no file object, and none
    of the ``lseek``, ``ioctl`` and second ``fstat`` that ``open(...).read()`` adds.
    """
    try:
        data = read_native(path, roots)
        if data is not None:
            return data
        fd = os.open(path, _READ_FLAGS) if roots is None else open_local(path, roots)
    except IsADirectoryError as exc:
        raise _Directory from exc
    except NotADirectoryError as exc:  # a parent is a file: nothing exists there
        raise FileNotFoundError(errno.ENOENT, "no such file", path) from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise _Directory from IsADirectoryError(errno.EISDIR, "is a directory", path)
        size = info.st_size
        data = os.read(fd, size + 1)
        if len(data) == size:
            return data
        # It changed size meanwhile, or is not a plain file (a FIFO, /proc): read on to
        # the end, as a file object's read() would.
        parts = [data]
        while True:
            chunk = os.read(fd, max(size, _CHUNK))
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
    except IsADirectoryError as exc:
        raise _Directory from exc
    finally:
        os.close(fd)


def _cat_options(fs: Any, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``fs.cat_file`` of whole files.

    s3fs reads a whole object with ``max_concurrency > 1`` (its default is 10) by asking
    for its size first: a HEAD before every GET, twice the requests for the small files
    deswm archives. The reader already reads many files at once, so one GET per file;
    a ``max_concurrency`` in the storage options still wins.
    """
    try:
        parameters = inspect.signature(fs.cat_file).parameters
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return {}
    if "max_concurrency" in parameters and "max_concurrency" not in storage_options:
        return {"max_concurrency": 1}
    return {}


def _read_remote(fs: Any, path: str, options: Mapping[str, Any]) -> bytes:
    try:
        data = fs.cat_file(path, **options)
    except IsADirectoryError as exc:
        raise _Directory from exc
    except FileNotFoundError:
        # Object stores report a "folder" as missing; say what it is instead.
        if _is_dir(fs, path):
            raise _Directory from None
        raise
    return bytes(data)


def _is_dir(fs: Any, path: str) -> bool:
    """Whether ``path`` is a directory; a failing probe only costs the better message."""
    try:
        return bool(fs.isdir(path))
    except Exception as exc:
        log.debug("isdir probe of a missing location failed: %s", type(exc).__name__)
        return False


def _delete_local(path: str, roots: Roots | None = None) -> None:
    if roots is not None:
        try:
            delete_local(path, roots)
        except IsADirectoryError as exc:
            raise _Directory from exc
        return
    try:
        os.remove(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except IsADirectoryError as exc:
        raise _Directory from exc
    except PermissionError:
        if os.path.isdir(path):  # macOS and some filesystems say EPERM for a directory
            raise _Directory from None
        raise


class _Options:
    """Storage options per protocol."""

    def __init__(self, per_protocol: dict[str, dict[str, Any]], default: dict[str, Any]) -> None:
        self.per_protocol = per_protocol
        self.default = default

    def for_protocol(self, protocol: str) -> dict[str, Any]:
        return dict(self.per_protocol.get(protocol, self.default))


def _split_options(options: Mapping[str, Any] | None, root: str | None) -> _Options:
    if options is None:
        return _Options({}, {})
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"must be a mapping, got {type(options).__name__}", key="reader.storage_options"
        )
    known = set(fsspec.available_protocols()) | set(fsspec.registry)
    if options and all(k in known and isinstance(v, Mapping) for k, v in options.items()):
        return _Options({k: dict(v) for k, v in options.items()}, {})
    root_match = _URL.match(root) if root else None
    if root_match is not None:
        return _Options({root_match.group(0)[:-3].lower(): dict(options)}, {})
    return _Options({}, dict(options))


def _allowed_roots(roots: Iterable[str | os.PathLike[str]] | None) -> tuple[str, ...]:
    if roots is None:
        return ()
    if isinstance(roots, str | bytes | os.PathLike) or not isinstance(roots, Iterable):
        raise ConfigError(
            f"must be a list of folders or URLs, got {type(roots).__name__}",
            key="reader.allowed_roots",
        )
    out = []
    for root in roots:
        if not isinstance(root, str | os.PathLike) or not os.fspath(root):
            raise ConfigError(
                f"must be a list of folders or URLs, got the item {root!r}",
                key="reader.allowed_roots",
            )
        out.append(_normalise_root(os.fspath(root)))
    return tuple(out)


def _normalise_root(root: str) -> str:
    if _URL.match(root):
        protocol = root.split("://", 1)[0].lower()
        return _local_path(root) if is_local_protocol(protocol) else root
    return os.path.abspath(root)


def _local_path(url: str) -> str:
    path = url.split("://", 1)[1]
    if path.startswith("localhost/"):
        path = path[len("localhost") :]
    return path


def _join(root: str, relative: str) -> str:
    if _URL.match(root):
        return f"{root.rstrip('/')}/{relative.lstrip('/')}"
    return os.path.join(root, relative)


_publish(globals())
