"""Any fsspec filesystem (GCS, Azure, HTTP, ...) through its public API.

Version pinning is as good as ``info()``: the token is compared before each read. A
publish streams through ``open("wb")``, which commits on close (and is discarded on an
error). :meth:`FsspecStore.create` and :meth:`FsspecStore.replace` check, then write:
correct for one writer, but not a compare-and-set against others
(``atomic_conditional_writes`` is ``False``), so the watermark store refuses them.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from deswm._errors import ObjectChangedError
from deswm._objectstore.base import ErrorScope, ObjectInfo, PublishBatch, WriteFn
from deswm._objectstore.local import content_token

__all__ = ["FsspecStore", "info_token", "remove", "write_or_discard"]


def remove(fs: Any, path: str) -> None:
    """Remove the object at ``path`` (a full path on ``fs``); a missing one is no error."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def write_or_discard(f: Any, write: WriteFn) -> None:
    """Write through a remote file that commits on close; on error discard it instead.

    fsspec files commit in ``close()`` (also from ``__del__``), so after ``discard()`` the
    file is marked closed: nothing partial can become visible later.
    """
    try:
        write(f)
    except BaseException as exc:
        try:
            f.discard()
        except Exception as abort_exc:  # report both: the upload may need manual abort
            exc.add_note(f"aborting the upload of {f.path} also failed: {abort_exc!r}")
        finally:
            f.closed = True
        raise
    try:
        f.close()
    except BaseException as exc:
        with contextlib.suppress(Exception):  # best effort: close already failed loudly
            f.discard()
        exc.add_note(f"the upload of {f.path} was not completed")
        raise


def info_token(info: Mapping[str, Any]) -> str:
    """A version token from an fsspec ``info()``/``ls()`` dict (ETag, generation, mtime, ...).

    Times are normalised to POSIX seconds: some filesystems report a ``datetime`` from
    ``info()`` and a float from ``ls()`` for the same object.
    """
    for key in ("ETag", "etag", "generation", "version_id", "VersionId", "md5Hash"):
        value = info.get(key)
        if value:
            return f"{key}={value}"
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value:
            stamp = value.timestamp() if isinstance(value, datetime) else float(value)
            return f"size={info.get('size')};time={stamp!r}"
    return f"size={info.get('size')}"


class FsspecStore:
    """An fsspec filesystem as an :class:`~deswm._objectstore.base.ObjectStore`."""

    kind = "other"
    atomic_conditional_writes = False

    def __init__(self, url: str, fs: Any, root: str, *, block_size: int) -> None:
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/")
        self.block_size = block_size
        self._lock = threading.Lock()
        """Orders this instance's check-then-write; other writers are not excluded."""

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    # --- reading -----------------------------------------------------------------------

    def walk(self, folder: str) -> list[str]:
        self.fs.invalidate_cache(self.root)
        try:
            found = self.fs.find(self._path(folder.rstrip("/")))
        except FileNotFoundError:
            return []
        cut = len(self.root) + 1
        return [str(path)[cut:] for path in found]

    def list(self, prefix: str) -> list[ObjectInfo]:
        self.fs.invalidate_cache(self.root)  # a cached listing could hide a new part
        try:
            infos = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        out: list[ObjectInfo] = []
        for info in infos:
            if info.get("type") != "file":
                continue
            name = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(prefix):
                out.append(ObjectInfo(name, int(info["size"]), info_token(info)))
        return out

    def stat(self, name: str) -> ObjectInfo | None:
        self.fs.invalidate_cache(self._path(name))
        try:
            info = self.fs.info(self._path(name))
        except FileNotFoundError:
            return None
        return ObjectInfo(name, int(info["size"]), info_token(info))

    def get_range(
        self, name: str, start: int, end: int, version: str | None
    ) -> tuple[bytes, ObjectInfo]:
        current = self.stat(name)
        if current is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", name)
        if version is not None and current.version != version:
            raise ObjectChangedError(name, "the object changed since it was listed")
        end = min(end, current.size)
        data = b"" if end <= start else bytes(self.fs.cat_file(self._path(name), start, end))
        return data, current

    def get_tail(self, name: str, length: int) -> tuple[bytes, ObjectInfo]:
        current = self.stat(name)
        if current is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", name)
        return self.get_range(name, max(current.size - length, 0), current.size, current.version)

    def read(self, name: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self._read(name)

    def _read(self, name: str) -> tuple[bytes, str] | None:
        try:
            data = bytes(self.fs.cat_file(self._path(name)))
        except FileNotFoundError:
            return None
        return data, content_token(data)

    # --- writing -----------------------------------------------------------------------

    def create(self, name: str, data: bytes) -> str | None:
        with self._lock:
            if self._read(name) is not None:
                return None
            self._put(name, data)
        return content_token(data)

    def replace(self, name: str, data: bytes, token: str) -> str | None:
        with self._lock:
            current = self._read(name)
            if current is None or current[1] != token:
                return None
            self._put(name, data)
        return content_token(data)

    def _put(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(name), data)

    def publish(self, name: str, write: WriteFn, *, sync: bool) -> None:
        f = self.fs.open(self._path(name), "wb", block_size=self.block_size)
        write_or_discard(f, write)

    def delete(self, name: str, *, sync: bool) -> None:
        remove(self.fs, self._path(name))

    def sync(self) -> None:
        pass  # remote filesystems commit on close

    def batch(self, threads: int, window: int, scope: ErrorScope) -> PublishBatch | None:
        return None  # every write is complete when it returns: nothing to batch

    def cleanup_temp(self, folder: str, prefix: str, older_than: timedelta) -> int:
        return 0  # writes through fsspec never leave temp objects of ours
