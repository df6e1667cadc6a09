"""A local (or NFS) folder: POSIX calls directly, so fsync and rename semantics are exact.

* **publish** writes a hidden temp file in the target folder, fsyncs it, renames it over
  the target, then fsyncs the folder (with ``sync=False`` the folder fsync waits for
  :meth:`LocalStore.sync`, one per folder for many objects);
* **create** links a complete, fsynced temp file into place with ``os.link``, which never
  replaces an existing file;
* **replace** holds an exclusive ``flock`` on a lock file beside the object
  (``.{name}.lock``, never deleted: deleting it would let two processes lock two
  different files) across read-compare-write. ``flock`` locks belong to an open file, so
  they exclude threads as well as processes, and the kernel drops them when a process
  dies: a crash leaves no stale lock;
* a **batch** writes each object's temp file on the caller's thread and fsyncs many at
  once on a pool (a file system completes concurrent fsyncs in one journal commit), then
  renames them in call order (:class:`LocalBatch`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat as stat_module
import time
from collections.abc import Iterator
from datetime import timedelta
from types import ModuleType
from typing import Any, Final

from deswm._checkpoints import Checkpoint, reach
from deswm._errors import ObjectChangedError
from deswm._objectstore.base import ErrorScope, ObjectInfo, WriteFn

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LocalBatch", "LocalStore", "StagedObject", "content_token", "fsync_dir"]

_WRITE_BUFFER: Final = 256 * 1024
"""Buffer of a local publish; several publishes run at once, so it is kept small."""

_LOCK_TIMEOUT: Final = 60.0
_TEMP_NAME: Final = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")


def content_token(data: bytes) -> str:
    """The etag of bytes where storage has none: their sha256."""
    return hashlib.sha256(data).hexdigest()


def fsync_dir(folder: str) -> None:
    """Make the renames, links and unlinks in ``folder`` durable."""
    if os.name != "posix":  # pragma: no cover - directories cannot be opened elsewhere
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _local_token(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}:{st.st_ino}:{st.st_size}"


def _pread(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _temp_name(name: str) -> str:
    folder, _, base = name.rpartition("/")
    temp = f".{base}.{secrets.token_hex(6)}.tmp"
    return f"{folder}/{temp}" if folder else temp


class LocalStore:
    """A local folder as an :class:`~deswm._objectstore.base.ObjectStore`."""

    kind = "local"

    def __init__(self, url: str, fs: Any, root: str, *, block_size: int = 0) -> None:
        self.url = url
        self.fs = fs
        self.root = root
        self.atomic_conditional_writes = fcntl is not None
        self.unsynced: set[str] = set()
        """Folders with renames or unlinks not yet made durable by a folder fsync."""

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    # --- reading -----------------------------------------------------------------------

    def walk(self, folder: str) -> list[str]:
        start = self._path(folder.rstrip("/"))
        names: list[str] = []
        for directory, dirs, files in os.walk(start):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            relative = os.path.relpath(directory, self.root).replace(os.sep, "/")
            names.extend(f"{relative}/{file}" for file in files if not file.startswith("."))
        return names

    def list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        try:
            entries = os.scandir(self.root)
        except FileNotFoundError:
            return out
        with entries:
            for entry in entries:
                if not entry.name.startswith(prefix):
                    continue
                try:
                    st = entry.stat(follow_symlinks=True)
                except FileNotFoundError:  # replaced or removed while listing
                    continue
                if stat_module.S_ISREG(st.st_mode):
                    out.append(ObjectInfo(entry.name, st.st_size, _local_token(st)))
        return out

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(name))
        except FileNotFoundError:
            return None
        return ObjectInfo(name, st.st_size, _local_token(st))

    def get_range(
        self, name: str, start: int, end: int, version: str | None
    ) -> tuple[bytes, ObjectInfo]:
        with open(self._path(name), "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            token = _local_token(st)
            if version is not None and token != version:
                raise ObjectChangedError(name, "the file was replaced since it was listed")
            # Never past the end: ``end`` may come from an untrusted size field, and
            # os.pread allocates the length it is asked for.
            length = max(min(end, st.st_size) - start, 0)
            return _pread(f.fileno(), length, start), ObjectInfo(name, st.st_size, token)

    def get_tail(self, name: str, length: int) -> tuple[bytes, ObjectInfo]:
        with open(self._path(name), "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            start = max(st.st_size - length, 0)
            data = _pread(f.fileno(), st.st_size - start, start)
            return data, ObjectInfo(name, st.st_size, _local_token(st))

    def read(self, name: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(name), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return data, content_token(data)

    # --- conditional writes ----------------------------------------------------------

    def _create_temp(self, temp: str, folder: str) -> int:
        """Create ``temp`` exclusively, creating ``folder`` first only when it is missing
        (one ``mkdir`` per object would take the folder's lock once more)."""
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)

    def _write_temp(self, name: str, data: bytes) -> str:
        """A complete, fsynced temp file beside ``name`` holding ``data``."""
        temp = self._path(_temp_name(name))
        fd = self._create_temp(temp, os.path.dirname(temp))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        return temp

    def create(self, name: str, data: bytes) -> str | None:
        path = self._path(name)
        temp = self._write_temp(name, data)
        try:
            reach(Checkpoint.SHARDIO_CREATE_ONLY_AFTER_FSYNC)
            try:
                os.link(temp, path)  # atomic, and never replaces an existing file
            except FileExistsError:
                return None
            reach(Checkpoint.SHARDIO_CREATE_ONLY_AFTER_LINK)
            fsync_dir(os.path.dirname(path))
            return content_token(data)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def replace(self, name: str, data: bytes, token: str) -> str | None:
        path = self._path(name)
        if not os.path.isdir(os.path.dirname(path)):
            return None  # no folder, no object (and nowhere for the lock file)
        with self._locked(path):
            current = self.read(name)
            if current is None or current[1] != token:
                return None
            temp = self._write_temp(name, data)
            try:
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
            fsync_dir(os.path.dirname(path))
        return content_token(data)

    @contextlib.contextmanager
    def _locked(self, path: str) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``.{name}.lock`` beside ``path``."""
        if fcntl is None:  # pragma: no cover - Windows
            raise OSError(errno.ENOTSUP, "compare-and-set needs POSIX file locks (fcntl)", path)
        folder, base = os.path.split(path)
        lock_path = os.path.join(folder, f".{base}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            deadline = time.monotonic() + _LOCK_TIMEOUT
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            errno.ETIMEDOUT,
                            f"another process held the lock for {_LOCK_TIMEOUT:.0f}s",
                            lock_path,
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # --- durable publish -------------------------------------------------------------

    def publish(self, name: str, write: WriteFn, *, sync: bool) -> None:
        path = self._path(name)
        folder = os.path.dirname(path)
        temp = self._path(_temp_name(name))
        fd = self._create_temp(temp, folder)
        try:
            with os.fdopen(fd, "wb", buffering=_WRITE_BUFFER) as f:
                write(f)
                f.flush()
                reach(Checkpoint.SHARDIO_PUBLISH_AFTER_WRITE)
                os.fsync(f.fileno())  # the bytes are durable before the name points at them
            reach(Checkpoint.SHARDIO_PUBLISH_AFTER_FSYNC)
            os.replace(temp, path)
            reach(Checkpoint.SHARDIO_PUBLISH_AFTER_RENAME)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        self._synced(folder, sync)

    def stage(self, name: str, write: WriteFn) -> tuple[int, str, str, str]:
        """Write ``name``'s temp file and keep it open, not yet fsynced or renamed:
        ``(fd, temp, path, folder)``."""
        path = self._path(name)
        folder = os.path.dirname(path)
        temp = self._path(_temp_name(name))
        fd = self._create_temp(temp, folder)
        try:
            with os.fdopen(fd, "wb", buffering=_WRITE_BUFFER, closefd=False) as f:
                write(f)
            reach(Checkpoint.SHARDIO_PUBLISH_AFTER_WRITE)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        return fd, temp, path, folder

    def _synced(self, folder: str, sync: bool) -> None:
        if sync:
            fsync_dir(folder)
            self.unsynced.discard(folder)
        else:
            self.unsynced.add(folder)

    def sync(self) -> None:
        while self.unsynced:
            folder = next(iter(self.unsynced))
            fsync_dir(folder)
            self.unsynced.discard(folder)

    def delete(self, name: str, *, sync: bool) -> None:
        path = self._path(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            self._synced(os.path.dirname(path), sync)

    def batch(self, threads: int, window: int, scope: ErrorScope) -> LocalBatch | None:
        return LocalBatch(self, threads, window, scope)

    def cleanup_temp(self, folder: str, prefix: str, older_than: timedelta) -> int:
        directory = self._path(folder) if folder else self.root
        cutoff = time.time() - older_than.total_seconds()
        removed = 0
        try:
            entries = os.scandir(directory)
        except FileNotFoundError:
            return 0
        with entries:
            for entry in entries:
                match = _TEMP_NAME.match(entry.name)
                if match is None or not match.group("name").startswith(prefix):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:  # another process cleaned it first
                    continue
        return removed


class StagedObject:
    """A local object written to its temp file: fsync it, then commit (rename) it.

    Thread-safe in the way the packer uses it: :meth:`fsync` may run on any thread,
    :meth:`commit` and :meth:`discard` on the thread that staged it. Failures are
    raised inside ``scope("publish", name)``, the caller's error wrapping.
    """

    __slots__ = ("_backend", "_fd", "_folder", "_path", "_scope", "_temp", "name")

    def __init__(self, backend: LocalStore, scope: ErrorScope, name: str, write: WriteFn) -> None:
        self._backend = backend
        self._scope = scope
        self.name = name
        with scope("publish", name):
            self._fd, self._temp, self._path, self._folder = backend.stage(name, write)

    def fsync(self) -> None:
        """Make the temp file's bytes durable (before any name points at them)."""
        with self._scope("publish", self.name):
            os.fsync(self._fd)
        reach(Checkpoint.SHARDIO_PUBLISH_AFTER_FSYNC)

    def commit(self) -> None:
        """Rename the fsynced temp file over the object (durable at the next sync)."""
        with self._scope("publish", self.name):
            self._close()
            os.replace(self._temp, self._path)
            reach(Checkpoint.SHARDIO_PUBLISH_AFTER_RENAME)
        self._backend.unsynced.add(self._folder)

    def discard(self) -> None:
        """Remove the temp file (the object is left as it was)."""
        self._close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class LocalBatch:
    """The objects and deletes of a batch, in call order.

    The caller's thread writes each object's temp file (a file system creates files
    fastest while no fsync is running). When ``window`` objects are written, and when
    the batch finishes, their fsyncs run together on the pool and the caller's thread
    then renames and deletes, in call order. If a step fails, the steps before it are
    finished, the ones after it discarded, and the error raised.
    """

    def __init__(self, backend: LocalStore, threads: int, window: int, scope: ErrorScope) -> None:
        self._backend = backend
        self._scope = scope
        self._threads = threads
        self._window = max(window, 1)
        self._steps: list[StagedObject | str] = []
        self._staged = 0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def publish(self, name: str, write: WriteFn) -> None:
        # A failure leaves no temp file.
        self._steps.append(StagedObject(self._backend, self._scope, name, write))
        self._staged += 1
        if self._staged >= self._window:
            self._flush()

    def delete(self, name: str) -> None:
        self._steps.append(name)

    def finish(self) -> None:
        """Complete every step, in order (also after an error in the caller)."""
        try:
            self._flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _flush(self) -> None:
        steps, self._steps, self._staged = self._steps, [], 0
        staged = [step for step in steps if isinstance(step, StagedObject)]
        failed: dict[int, BaseException] = {}
        if len(staged) > 1:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._threads, thread_name_prefix="deswm-fsync"
                )
            futures = [(item, self._pool.submit(item.fsync)) for item in staged]
            for item, future in futures:
                error = future.exception()
                if error is not None:
                    failed[id(item)] = error
        elif staged:
            try:
                staged[0].fsync()
            except BaseException as exc:
                failed[id(staged[0])] = exc
        for position, step in enumerate(steps):
            try:
                if isinstance(step, str):
                    with self._scope("delete", step):
                        self._backend.delete(step, sync=False)
                    continue
                error = failed.get(id(step))
                if error is not None:
                    raise error
                step.commit()
            except BaseException:
                for rest in steps[position:]:
                    if isinstance(rest, StagedObject):
                        rest.discard()
                raise
