"""Object I/O shared by the packer (write side) and the archive (read side).

:class:`ShardStore` opens a destination (a local folder or any fsspec URL) and offers the
few operations both sides need, each with one clear consistency rule:

* **listing** a group (``{day}_{hex}_``) or a day keeps only names matching
  ``{day}_{hex}_{NNNN}.des``: temp files and anything else are ignored. Every listed part
  carries a *version token* (local: ``mtime_ns:inode:size``; S3: the ETag; other
  filesystems: what ``info()`` reports);
* **reads are pinned to a version**: a ranged read of a listed part fails with
  :class:`ObjectChangedError` when the object is no longer that version (local: the
  ``fstat`` of the descriptor the bytes come from; S3: ``IfMatch`` on the ranged GET), so
  an index and the payload bytes it points to always come from the same object;
* **publishing is atomic** (G11): local writes go to a hidden temp file in the target
  folder, are fsynced, renamed over the target and the folder is fsynced; S3 writes are a
  single PUT or a multipart upload completed on close and aborted on error; the memory
  filesystem gets the whole object in one assignment;
* **create-only** objects (``_bigFiles/<sha256>``) are created with ``os.link`` from a
  temp file (local) or an ``IfNoneMatch`` PUT (S3); an existing one is stream-hashed and
  replaced atomically only when its bytes do not match its name (a repair, G16).

Reading an index costs one ranged read of the tail (footer and, usually, the whole
index), one more only when the index is larger than the tail, and one 8-byte read of the
header when the object is larger than the tail (objects up to the tail size are read
whole, header included). Errors of the underlying filesystem are wrapped into deswm
errors naming the object (:class:`~deswm.errors.PackError` for writes,
:class:`~deswm.errors.ShardError` for reads); nothing is swallowed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import IO, Any, Final, Protocol

import fsspec
import fsspec.asyn
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from deswm._checkpoints import reach
from deswm._redact import redact
from deswm.container import (
    FOOTER_SIZE,
    HEADER_SIZE,
    IndexEntry,
    PartInfo,
    ShardIndex,
    parse_footer,
    parse_header,
    parse_index,
    parse_part_name,
)
from deswm.container import part_info as _part_info
from deswm.errors import (
    ConfigError,
    CorruptShardError,
    DeswmError,
    ObjectChangedError,
    PackError,
    ShardError,
)
from deswm.model import ShardKey

log = logging.getLogger("deswm.shardio")

__all__ = [
    "BIG_FILES",
    "TAIL_SIZE",
    "PartInfo",
    "ShardStore",
    "StagedObject",
    "WriteFn",
    "parse_part_name",
]

TAIL_SIZE: Final = 64 * 1024
"""Bytes read from the end of a shard to get its footer and, usually, its whole index."""

BIG_FILES: Final = "_bigFiles"
"""Folder beside the shards holding big files by the sha256 of their bytes."""

_WRITE_BUFFER: Final = 256 * 1024
"""Buffer of a local publish; several publishes run at once, so it is kept small."""

_HASH_CHUNK: Final = 8 * 2**20
"""Largest read while hashing an existing content-addressed object."""

UPLOAD_BLOCK_SIZE: Final = 16 * 2**20
"""Multipart block size for remote publishes: the most a publish holds in memory."""

_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")

WriteFn = Callable[[IO[bytes]], None]
"""Writes a whole object into the binary file it is given (and nothing else)."""


# --- backends ---------------------------------------------------------------------------


class _Backend(Protocol):
    """The primitive operations, one implementation per kind of filesystem.

    ``name`` is always relative to the destination root (``20240517_39_0000.des``,
    ``_bigFiles/<sha256>``). Failures surface as ``OSError`` (``FileNotFoundError`` for a
    missing object) or :class:`ObjectChangedError`; :class:`ShardStore` wraps them.
    """

    def list(self, prefix: str) -> list[tuple[str, int, str]]: ...

    def stat(self, name: str) -> tuple[int, str] | None: ...

    def read(
        self, name: str, start: int, end: int, version: str | None
    ) -> tuple[bytes, int, str]: ...

    def read_tail(self, name: str, length: int) -> tuple[bytes, int, str]: ...

    def publish(self, name: str, write: WriteFn, *, sync: bool) -> None: ...

    def create_only(self, name: str, data: bytes) -> bool: ...

    def delete(self, name: str, *, sync: bool) -> None: ...

    def sync(self) -> None: ...

    def cleanup_temp(self, folder: str, prefix: str, older_than: timedelta) -> int: ...


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


def _fsync_dir(folder: str) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened elsewhere
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(name: str) -> str:
    folder, _, base = name.rpartition("/")
    temp = f".{base}.{secrets.token_hex(6)}.tmp"
    return f"{folder}/{temp}" if folder else temp


class _LocalBackend:
    """A local folder: POSIX calls directly, so fsync and rename semantics are exact."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.unsynced: set[str] = set()
        """Folders with renames or unlinks not yet made durable by a folder fsync."""

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    def list(self, prefix: str) -> list[tuple[str, int, str]]:
        out: list[tuple[str, int, str]] = []
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
                    out.append((entry.name, st.st_size, _local_token(st)))
        return out

    def stat(self, name: str) -> tuple[int, str] | None:
        try:
            st = os.stat(self._path(name))
        except FileNotFoundError:
            return None
        return st.st_size, _local_token(st)

    def read(self, name: str, start: int, end: int, version: str | None) -> tuple[bytes, int, str]:
        with open(self._path(name), "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            token = _local_token(st)
            if version is not None and token != version:
                raise ObjectChangedError(name, "the file was replaced since it was listed")
            # Never past the end: ``end`` may come from an untrusted size field, and
            # os.pread allocates the length it is asked for.
            length = max(min(end, st.st_size) - start, 0)
            return _pread(f.fileno(), length, start), st.st_size, token

    def read_tail(self, name: str, length: int) -> tuple[bytes, int, str]:
        with open(self._path(name), "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            start = max(st.st_size - length, 0)
            return _pread(f.fileno(), st.st_size - start, start), st.st_size, _local_token(st)

    def _create_temp(self, temp: str, folder: str) -> int:
        """Create ``temp`` exclusively, creating ``folder`` first only when it is missing
        (one ``mkdir`` per object would take the folder's lock once more)."""
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)

    def publish(self, name: str, write: WriteFn, *, sync: bool) -> None:
        path = self._path(name)
        folder = os.path.dirname(path)
        temp = self._path(_temp_name(name))
        fd = self._create_temp(temp, folder)
        try:
            with os.fdopen(fd, "wb", buffering=_WRITE_BUFFER) as f:
                write(f)
                f.flush()
                reach("shardio.publish.after_write")
                os.fsync(f.fileno())  # the bytes are durable before the name points at them
            reach("shardio.publish.after_fsync")
            os.replace(temp, path)
            reach("shardio.publish.after_rename")
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
            reach("shardio.publish.after_write")
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        return fd, temp, path, folder

    def _synced(self, folder: str, sync: bool) -> None:
        if sync:
            _fsync_dir(folder)
            self.unsynced.discard(folder)
        else:
            self.unsynced.add(folder)

    def sync(self) -> None:
        while self.unsynced:
            folder = next(iter(self.unsynced))
            _fsync_dir(folder)
            self.unsynced.discard(folder)

    def create_only(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        temp = self._path(_temp_name(name))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            reach("shardio.create_only.after_fsync")
            try:
                os.link(temp, path)  # atomic, and never replaces an existing file
            except FileExistsError:
                return False
            reach("shardio.create_only.after_link")
            _fsync_dir(folder)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def delete(self, name: str, *, sync: bool) -> None:
        path = self._path(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            self._synced(os.path.dirname(path), sync)

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


def _is_precondition_failed(exc: BaseException) -> bool:
    """Whether an s3fs error is an HTTP 412 (a failed ``IfMatch``)."""
    for candidate in (exc, exc.__cause__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "412") or status == 412:
                return True
    return False


def _is_invalid_range(exc: BaseException) -> bool:
    for candidate in (exc, exc.__cause__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("InvalidRange", "416") or status == 416:
                return True
    return False


def _total_size(response: Mapping[str, Any]) -> int:
    content_range = response.get("ContentRange")
    if content_range and "/" in content_range:
        return int(str(content_range).rsplit("/", 1)[1])
    return int(response.get("ContentLength", 0))


class _S3Backend:
    """S3 through s3fs's client: ranged GETs with ``IfMatch``, prefix listings, MPU.

    s3fs's ``cat_file`` would send a HEAD before a full GET and ``info`` may answer from a
    directory cache, so reads, HEADs and listings go to the client directly.
    """

    def __init__(self, fs: Any, root: str, block_size: int) -> None:
        self.fs = fs
        self.root = root
        self.block_size = block_size
        bucket, key, _ = fs.split_path(root)
        self.bucket: str = bucket
        self.key_prefix: str = f"{key.strip('/')}/" if key.strip("/") else ""

    def _key(self, name: str) -> str:
        return self.key_prefix + name

    def list(self, prefix: str) -> list[tuple[str, int, str]]:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self._key(prefix),
            "Delimiter": "/",
        }
        out: list[tuple[str, int, str]] = []
        while True:
            try:
                page = self.fs.call_s3("list_objects_v2", **kwargs)
            except FileNotFoundError:  # no such bucket: nothing published yet
                return out
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(self.key_prefix) :]
                out.append((name, int(item["Size"]), str(item["ETag"])))
            if not page.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def stat(self, name: str) -> tuple[int, str] | None:
        try:
            head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self._key(name))
        except FileNotFoundError:
            return None
        return int(head["ContentLength"]), str(head["ETag"])

    async def _get(self, name: str, byte_range: str, if_match: str | None) -> tuple[bytes, Any]:
        """One ranged GET, body included (s3fs's own readers would add a HEAD)."""
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(name),
            "Range": byte_range,
        }
        if if_match is not None:
            kwargs["IfMatch"] = if_match  # S3 answers 412 if the object was replaced
        response = await self.fs._call_s3("get_object", **kwargs)
        body = response["Body"]
        try:
            data = await body.read()
        finally:
            body.close()
        return bytes(data), response

    def _run_get(self, name: str, byte_range: str, if_match: str | None) -> tuple[bytes, Any]:
        try:
            result: tuple[bytes, Any] = fsspec.asyn.sync(
                self.fs.loop, self._get, name, byte_range, if_match
            )
        except OSError as exc:
            if if_match is not None and _is_precondition_failed(exc):
                raise ObjectChangedError(name, "the object's ETag changed") from exc
            raise
        return result

    def read(self, name: str, start: int, end: int, version: str | None) -> tuple[bytes, int, str]:
        if end <= start:
            current = self.stat(name)
            if current is None:
                raise FileNotFoundError(errno.ENOENT, "no such object", name)
            if version is not None and current[1] != version:
                raise ObjectChangedError(name, "the object's ETag changed")
            return b"", current[0], current[1]
        data, response = self._run_get(name, f"bytes={start}-{end - 1}", version)
        return data, _total_size(response), str(response.get("ETag", ""))

    def read_tail(self, name: str, length: int) -> tuple[bytes, int, str]:
        try:
            data, response = self._run_get(name, f"bytes=-{length}", None)
        except OSError as exc:
            if not _is_invalid_range(exc):  # S3 answers 416 for a suffix of an empty object
                raise
            current = self.stat(name)
            if current is None:
                raise FileNotFoundError(errno.ENOENT, "no such object", name) from exc
            return b"", current[0], current[1]
        return data, _total_size(response), str(response.get("ETag", ""))

    def publish(self, name: str, write: WriteFn, *, sync: bool) -> None:
        f = self.fs.open(f"{self.root}/{name}", "wb", block_size=self.block_size)
        _write_or_discard(f, write)  # durable once the PUT or the completion returns

    def create_only(self, name: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(f"{self.root}/{name}", data, mode="create")
        except FileExistsError:
            return False
        return True

    def delete(self, name: str, *, sync: bool) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self._key(name))

    def sync(self) -> None:
        pass  # every S3 write is durable when it returns

    def cleanup_temp(self, folder: str, prefix: str, older_than: timedelta) -> int:
        return 0  # S3 uploads leave no temp objects: an aborted upload is never visible


def _write_or_discard(f: Any, write: WriteFn) -> None:
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


def _info_token(info: Mapping[str, Any]) -> str:
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


class _FsspecBackend:
    """Any other fsspec filesystem (memory, GCS, Azure, ...), through its public API.

    Version pinning is as good as ``info()``: the token is compared before each read.
    On the memory filesystem a publish is one dict assignment, so it is atomic; on
    remote filesystems a publish streams through ``open("wb")``, which commits on close.
    """

    def __init__(self, fs: Any, root: str, *, memory: bool, block_size: int) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.memory = memory
        self.block_size = block_size

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def list(self, prefix: str) -> list[tuple[str, int, str]]:
        self.fs.invalidate_cache(self.root)  # a cached listing could hide a new part
        try:
            infos = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        out: list[tuple[str, int, str]] = []
        for info in infos:
            if info.get("type") != "file":
                continue
            name = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(prefix):
                out.append((name, int(info["size"]), _info_token(info)))
        return out

    def stat(self, name: str) -> tuple[int, str] | None:
        self.fs.invalidate_cache(self._path(name))
        try:
            info = self.fs.info(self._path(name))
        except FileNotFoundError:
            return None
        return int(info["size"]), _info_token(info)

    def read(self, name: str, start: int, end: int, version: str | None) -> tuple[bytes, int, str]:
        current = self.stat(name)
        if current is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", name)
        size, token = current
        if version is not None and token != version:
            raise ObjectChangedError(name, "the object changed since it was listed")
        end = min(end, size)
        data = b"" if end <= start else bytes(self.fs.cat_file(self._path(name), start, end))
        return data, size, token

    def read_tail(self, name: str, length: int) -> tuple[bytes, int, str]:
        current = self.stat(name)
        if current is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", name)
        size, token = current
        return self.read(name, max(size - length, 0), size, token)

    def publish(self, name: str, write: WriteFn, *, sync: bool) -> None:
        if self.memory:
            import io

            buffer = io.BytesIO()
            write(buffer)
            self.fs.pipe_file(self._path(name), buffer.getvalue())
            return
        f = self.fs.open(self._path(name), "wb", block_size=self.block_size)
        _write_or_discard(f, write)

    def create_only(self, name: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._path(name), data, mode="create")
        except FileExistsError:
            return False
        return True

    def delete(self, name: str, *, sync: bool) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(name))

    def sync(self) -> None:
        pass  # remote filesystems commit on close; memory needs nothing

    def cleanup_temp(self, folder: str, prefix: str, older_than: timedelta) -> int:
        return 0  # writes through fsspec never leave temp objects of ours


# --- the store --------------------------------------------------------------------------


class ShardStore:
    """A DES destination: shard objects and ``_bigFiles/`` under one root.

    Args:
        url: a local path or an fsspec URL (``s3://bucket/prefix``, ``memory://x``).
        storage_options: passed to ``fsspec.core.url_to_fs`` (credentials, endpoint).
        block_size: multipart block size of remote publishes (memory held per upload).
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        *,
        block_size: int = UPLOAD_BLOCK_SIZE,
    ) -> None:
        self.url = os.fspath(url)
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **dict(storage_options or {}))
        except (ImportError, ValueError, TypeError, OSError) as exc:
            raise ConfigError(
                f"cannot open destination {redact(self.url)}: {exc}",
                key="archive.url",
                hint="Check the URL and storage_options (install s3fs for s3:// URLs)",
            ) from exc
        self.fs: Any = fs
        self.root: str = str(root).rstrip("/") or str(root)
        self._batches = threading.local()
        self.backend: _Backend
        if isinstance(fs, LocalFileSystem):
            self.kind = "local"
            self.backend = _LocalBackend(self.root)
        elif hasattr(fs, "_call_s3") and "s3" in _protocols(fs):
            self.kind = "s3"
            self.backend = _S3Backend(fs, self.root, block_size)
        else:
            self.kind = "memory" if isinstance(fs, MemoryFileSystem) else "other"
            self.backend = _FsspecBackend(
                fs, self.root, memory=self.kind == "memory", block_size=block_size
            )

    def __repr__(self) -> str:
        return f"ShardStore({redact(self.url)!r}, kind={self.kind})"

    @contextlib.contextmanager
    def _reading(self, action: str, name: str) -> Iterator[None]:
        """Wrap filesystem errors into :class:`ShardError` naming the object.

        ``FileNotFoundError`` passes through: each caller gives "missing" its own meaning.
        """
        try:
            yield
        except (DeswmError, FileNotFoundError):
            raise
        except Exception as exc:
            raise ShardError(f"cannot {action} {self._where(name)}: {exc}") from exc

    @contextlib.contextmanager
    def _writing(self, action: str, name: str, hint: str | None = None) -> Iterator[None]:
        """Wrap filesystem errors into :class:`~deswm.errors.PackError` naming the object."""
        try:
            yield
        except DeswmError:
            raise
        except Exception as exc:
            raise PackError(f"cannot {action} {self._where(name)}: {exc}", hint=hint) from exc

    # --- listing -----------------------------------------------------------------------

    def list_parts(self, key: ShardKey) -> list[PartInfo]:
        """The published parts of one group, by part number (temp files ignored)."""
        parts = [p for p in self._list(key.prefix) if p.hex == key.hex and p.day == key.day]
        return sorted(parts, key=lambda p: p.part)

    def list_day(self, day: str) -> list[PartInfo]:
        """Every published part of a ``YYYYMMDD`` day, by name."""
        return sorted((p for p in self._list(f"{day}_") if p.day == day), key=lambda p: p.name)

    def _list(self, prefix: str) -> Iterator[PartInfo]:
        with self._reading("list", prefix + "*"):
            listed = self.backend.list(prefix)
        for name, size, version in listed:
            info = _part_info(name, size, version)
            if info is not None:
                yield info

    def current(self, name: str) -> PartInfo | None:
        """The part as it is now (a ``stat``/HEAD), or ``None`` if it does not exist."""
        with self._reading("stat", name):
            found = self.backend.stat(name)
        return None if found is None else _part_info(name, *found)

    # --- reading -----------------------------------------------------------------------

    def probe(self, name: str) -> tuple[PartInfo, ShardIndex] | None:
        """Read a part's index without a listing; ``None`` when the object does not exist.

        The tail read tells the size and version, so no HEAD or listing is needed.
        """
        if parse_part_name(name) is None:
            raise ValueError(f"{name!r} is not a shard object name")
        try:
            with self._reading("read", name):
                tail, size, version = self.backend.read_tail(name, TAIL_SIZE)
        except FileNotFoundError:
            return None
        part = _part_info(name, size, version)
        assert part is not None
        return part, self._index_from_tail(part, tail)

    def read_index(self, part: PartInfo) -> ShardIndex:
        """Parse and validate a listed part's index, pinned to ``part.version``."""
        length = min(part.size, TAIL_SIZE)
        tail = self.read_range(part, part.size - length, part.size)
        return self._index_from_tail(part, tail)

    def _index_from_tail(self, part: PartInfo, tail: bytes) -> ShardIndex:
        name, size = part.name, part.size
        tail_start = size - len(tail)
        if tail_start == 0:  # the whole object: check the header first, it names bad input
            version = parse_header(tail[:HEADER_SIZE], name=name)
            index_start, _ = parse_footer(tail, size=size, name=name)
        else:  # a big object: footer first, so a non-shard costs no header read
            index_start, _ = parse_footer(tail, size=size, name=name)
            version = parse_header(self.read_range(part, 0, HEADER_SIZE), name=name)
        index_end = size - FOOTER_SIZE
        if index_start >= tail_start:
            buf = memoryview(tail)[index_start - tail_start : index_end - tail_start]
        else:
            buf = memoryview(self.read_range(part, index_start, index_end))
        entries = parse_index(buf, name=name, version=version, index_start=index_start)
        return ShardIndex(name, version, size, index_start, entries)

    def read_range(self, part: PartInfo, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``part``, failing if it is no longer that version."""
        try:
            with self._reading("read", part.name):
                data, size, version = self.backend.read(part.name, start, end, part.version)
        except FileNotFoundError as exc:
            raise ObjectChangedError(part.name, "the object was deleted") from exc
        if size != part.size or version != part.version:
            raise ObjectChangedError(part.name, "the object changed since it was listed")
        if len(data) != end - start:
            raise CorruptShardError(
                part.name, start, f"read {len(data)} of {end - start} bytes at {start}..{end}"
            )
        return data

    def read_stored(self, part: PartInfo, entry: IndexEntry) -> bytes:
        """An inline entry's stored (compressed) bytes: one ranged read."""
        return self.read_range(part, entry.offset, entry.offset + entry.length)

    def big_name(self, entry: IndexEntry, *, shard: str) -> str:
        """The object of a big-file entry; rejects a hash that is not 64 hex digits."""
        digest = entry.big_sha256 or ""
        if not _SHA256_HEX.match(digest):
            raise CorruptShardError(
                shard, None, f"entry {entry.uid!r} names big file {digest!r}, not a sha256"
            )
        return f"{BIG_FILES}/{digest}"

    def read_big(self, entry: IndexEntry, *, shard: str) -> bytes:
        """The raw bytes of a big-file entry (size checked here, hash by the caller)."""
        name = self.big_name(entry, shard=shard)
        try:
            with self._reading("read", name):
                data, size, _ = self.backend.read(name, 0, entry.size, None)
        except FileNotFoundError as exc:
            raise CorruptShardError(
                shard, None, f"entry {entry.uid!r}: big file {name} is missing"
            ) from exc
        if size != entry.size or len(data) != entry.size:
            raise CorruptShardError(
                name, None, f"big file has {size} bytes, entry {entry.uid!r} says {entry.size}"
            )
        return data

    # --- writing -----------------------------------------------------------------------

    def publish(self, name: str, write: WriteFn, *, sync: bool = True) -> None:
        """Atomically create or replace ``name`` with what ``write`` writes (G11).

        Readers see the old object or the whole new one, never a part. With
        ``sync=False`` a local rename is made durable only by the next :meth:`sync`
        (one folder fsync for many objects); the object is complete either way.
        """
        batch: _Batch | None = getattr(self._batches, "active", None)
        if batch is not None:
            batch.publish(name, write)
            return
        with self._writing("publish", name, _PUBLISH_HINT):
            self.backend.publish(name, write, sync=sync)

    @contextlib.contextmanager
    def batch(self, *, threads: int = 8, window: int = 128) -> Iterator[None]:
        """Publish the local objects of this block with their fsyncs issued together.

        Inside the block (on this thread), :meth:`publish` writes the object's temp file
        and returns; :meth:`delete` is queued. When ``window`` objects wait, and when the
        block ends, the waiting temp files are fsynced together on ``threads`` threads
        (a file system completes concurrent fsyncs in one journal commit), then renamed,
        and the deletes done, all in call order. Every object is still written, fsynced
        and renamed on its own (G11), and in the order of the calls, so a group's parts
        become visible in number order. Leaving the block, also by an exception,
        finishes every object published before it (as one by one publishes would have
        left them); if a step fails, the objects before it are finished, the ones after
        it are discarded, and the first error is raised. Elsewhere than on local disk,
        and with ``threads=0``, the block changes nothing.
        """
        if (
            threads <= 0
            or not isinstance(self.backend, _LocalBackend)
            or getattr(self._batches, "active", None) is not None
        ):
            yield
            return
        batch = _Batch(self, threads, window)
        self._batches.active = batch
        try:
            yield
        except BaseException as exc:
            self._batches.active = None
            try:
                batch.finish()
            except BaseException as finishing:
                exc.add_note(
                    f"finishing the objects written before this error failed too: {finishing!r}"
                )
            raise
        self._batches.active = None
        batch.finish()

    def stage(self, name: str, write: WriteFn) -> StagedObject:
        """Write ``name`` to a temp file in its folder, to be finished by the caller.

        Local destinations only (``kind == "local"``). The returned object is not yet
        durable or visible: :meth:`StagedObject.fsync` then :meth:`StagedObject.commit`
        (a rename, made durable by the next :meth:`sync`) publish it, exactly the steps
        of :meth:`publish` (G11) split so that many objects can be fsynced at once;
        :meth:`StagedObject.discard` removes it.
        """
        if not isinstance(self.backend, _LocalBackend):
            raise ValueError(f"staged writes need a local destination, not {self.kind}")
        with self._writing("publish", name, _PUBLISH_HINT):
            fd, temp, path, folder = self.backend.stage(name, write)
        return StagedObject(self, self.backend, name, fd, temp, path, folder)

    def sync(self) -> None:
        """Make earlier ``sync=False`` publishes and deletes durable (a folder fsync)."""
        with self._writing("sync", ""):
            self.backend.sync()

    def create_only(self, name: str, data: bytes, *, sha256_hex: str) -> bool:
        """Create content-addressed ``name`` unless a copy that verifies is there (G16).

        ``sha256_hex`` is the digest of ``data`` (the name's own hash). An existing object
        is stream-hashed (bounded memory); if its size or digest is wrong it is damaged,
        and it is replaced atomically with ``data``, which can only repair it. Returns
        ``True`` when bytes were written (created or repaired), ``False`` when a copy
        that verifies was already there.
        """
        with self._writing("create", name, _CREATE_HINT):
            if self.backend.create_only(name, data):
                return True
            found = self.backend.stat(name)
        if found is None:
            raise PackError(f"{self._where(name)} was reported present but does not exist")
        size, version = found
        if size == len(data) and self._digest(name, size, version) == sha256_hex:
            return False
        log.warning(
            "%s does not verify (%d bytes, expected %d with sha256 %s); rewriting it",
            self._where(name),
            size,
            len(data),
            sha256_hex,
        )
        with self._writing("repair", name, _CREATE_HINT):
            self.backend.publish(name, lambda fp: _write_all(fp, data), sync=True)
        return True

    def _digest(self, name: str, size: int, version: str) -> str:
        """The sha256 of an object's bytes, read in chunks pinned to ``version``."""
        digest = hashlib.sha256()
        position = 0
        while position < size:
            end = min(position + _HASH_CHUNK, size)
            try:
                with self._reading("read", name):
                    data, _, _ = self.backend.read(name, position, end, version)
            except (FileNotFoundError, ObjectChangedError) as exc:
                raise PackError(
                    f"{self._where(name)} changed while it was being verified: {exc}",
                    hint="Another writer is repairing it; run the bucket again",
                ) from exc
            if len(data) != end - position:
                break  # shorter than listed: a digest of what is there cannot match
            digest.update(data)
            position = end
        return digest.hexdigest()

    def delete(self, name: str, *, sync: bool = True) -> None:
        """Remove an object; a missing object is not an error."""
        batch: _Batch | None = getattr(self._batches, "active", None)
        if batch is not None:
            batch.delete(name)
            return
        with self._writing("delete", name):
            self.backend.delete(name, sync=sync)

    def cleanup_temp(
        self, prefix: str = "", *, folder: str = "", older_than: timedelta = timedelta(hours=1)
    ) -> int:
        """Remove leftover local temp files of crashed writers; return how many.

        Only temps for names starting with ``prefix`` in ``folder`` (relative to the
        root) and older than ``older_than`` go, so a writer still running is not hurt.
        Remote destinations never hold temp objects, so this returns 0 there.
        """
        with self._writing("clean temp files in", folder):
            return self.backend.cleanup_temp(folder, prefix, older_than)

    def _where(self, name: str) -> str:
        return f"{redact(self.url).rstrip('/')}/{name}"


_PUBLISH_HINT: Final = "Nothing partial is visible; the bucket can be retried"
_CREATE_HINT: Final = (
    "Nothing partial is visible (the object is written to a temp name first); free space "
    "or fix access to the destination and run again"
)


class StagedObject:
    """A local object written to its temp file: fsync it, then commit (rename) it.

    Thread-safe in the way the packer uses it: :meth:`fsync` may run on any thread,
    :meth:`commit` and :meth:`discard` on the thread that staged it.
    """

    __slots__ = ("_backend", "_fd", "_folder", "_path", "_store", "_temp", "name")

    def __init__(
        self,
        store: ShardStore,
        backend: _LocalBackend,
        name: str,
        fd: int,
        temp: str,
        path: str,
        folder: str,
    ) -> None:
        self._store = store
        self._backend = backend
        self.name = name
        self._fd = fd
        self._temp = temp
        self._path = path
        self._folder = folder

    def fsync(self) -> None:
        """Make the temp file's bytes durable (before any name points at them)."""
        with self._store._writing("publish", self.name, _PUBLISH_HINT):
            os.fsync(self._fd)
        reach("shardio.publish.after_fsync")

    def commit(self) -> None:
        """Rename the fsynced temp file over the object (durable at the next sync)."""
        with self._store._writing("publish", self.name, _PUBLISH_HINT):
            self._close()
            os.replace(self._temp, self._path)
            reach("shardio.publish.after_rename")
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


class _Batch:
    """The objects and deletes of a :meth:`ShardStore.batch` block, in call order.

    The caller's thread writes each object's temp file (a file system creates files
    fastest while no fsync is running). When ``window`` objects are written, and when
    the block ends, their fsyncs run together on the pool and the caller's thread then
    renames and deletes, in call order.
    """

    def __init__(self, store: ShardStore, threads: int, window: int) -> None:
        self._store = store
        self._threads = threads
        self._window = max(window, 1)
        self._steps: list[StagedObject | str] = []
        self._staged = 0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def publish(self, name: str, write: WriteFn) -> None:
        self._steps.append(self._store.stage(name, write))  # a failure leaves no temp file
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
                    with self._store._writing("delete", step):
                        self._store.backend.delete(step, sync=False)
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


def _write_all(fp: IO[bytes], data: bytes) -> None:
    fp.write(data)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
