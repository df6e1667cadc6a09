"""Object I/O shared by the packer (write side) and the archive (read side).

:class:`ShardStore` opens a destination (a local folder or any fsspec URL, or takes an
:class:`~deswm._objectstore.ObjectStore`) and offers the few operations both sides need,
each with one clear consistency rule (the per-backend mechanics live in
:mod:`deswm._objectstore`):

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
errors naming the object (:class:`~deswm.PackError` for writes,
:class:`~deswm.ShardError` for reads); nothing is swallowed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Final

from deswm._container import (
    FOOTER_SIZE,
    HEADER_SIZE,
    IndexEntry,
    PartInfo,
    ShardIndex,
    day_prefix,
    parse_footer,
    parse_header,
    parse_index,
    parse_part_name,
)
from deswm._container import part_info as _part_info
from deswm._errors import (
    ConfigError,
    CorruptShardError,
    DeswmError,
    ObjectChangedError,
    PackError,
    ShardError,
)
from deswm._model import ShardKey
from deswm._objectstore import (
    UPLOAD_BLOCK_SIZE,
    ObjectStore,
    PublishBatch,
    WriteFn,
    open_store,
)
from deswm._objectstore.local import LocalStore, StagedObject
from deswm._redact import redact

log = logging.getLogger("deswm.shardio")

__all__ = [
    "BIG_FILES",
    "TAIL_SIZE",
    "PartInfo",
    "ShardStore",
    "StagedObject",
    "WriteFn",
    "describe",
    "parse_part_name",
    "shard_store",
]

TAIL_SIZE: Final = 64 * 1024
"""Bytes read from the end of a shard to get its footer and, usually, its whole index."""

BIG_FILES: Final = "_bigFiles"
"""Folder beside the shards holding big files by the sha256 of their bytes."""

_HASH_CHUNK: Final = 8 * 2**20
"""Largest read while hashing an existing content-addressed object."""

_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


# --- the store --------------------------------------------------------------------------


class ShardStore:
    """A DES destination: shard objects and ``_bigFiles/`` under one root.

    Args:
        url: a local path or an fsspec URL (``s3://bucket/prefix``, ``memory://x``).
        storage_options: passed to ``fsspec.core.url_to_fs`` (credentials, endpoint).
        block_size: multipart block size of remote publishes (memory held per upload).
        store: an :class:`~deswm._objectstore.ObjectStore` to use instead of opening
            ``url`` (then ``url`` and ``storage_options`` are not given).
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        *,
        block_size: int = UPLOAD_BLOCK_SIZE,
        store: ObjectStore | None = None,
    ) -> None:
        if store is None:
            if url is None:
                raise ConfigError("give a destination URL or a store", key="archive.url")
            store = open_store(url, storage_options, key="archive.url", block_size=block_size)
        self.backend: ObjectStore = store
        self.url: str = store.url
        self.fs: Any = store.fs
        self.root: str = store.root
        self.kind: str = store.kind
        self._batches = threading.local()

    def __repr__(self) -> str:
        return f"ShardStore({redact(self.url)!r}, kind={self.kind})"

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the per-thread batch state (a lane process gets its own)."""
        state = self.__dict__.copy()
        del state["_batches"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._batches = threading.local()

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
        """Wrap filesystem errors into :class:`~deswm.PackError` naming the object."""
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
        return sorted(
            (p for p in self._list(day_prefix(day)) if p.day == day), key=lambda p: p.name
        )

    def _list(self, prefix: str) -> Iterator[PartInfo]:
        with self._reading("list", prefix + "*"):
            listed = self.backend.list(prefix)
        for found in listed:
            info = _part_info(found.name, found.size, found.version)
            if info is not None:
                yield info

    def current(self, name: str) -> PartInfo | None:
        """The part as it is now (a ``stat``/HEAD), or ``None`` if it does not exist."""
        with self._reading("stat", name):
            found = self.backend.stat(name)
        return None if found is None else _part_info(name, found.size, found.version)

    # --- reading -----------------------------------------------------------------------

    def probe(self, name: str) -> tuple[PartInfo, ShardIndex] | None:
        """Read a part's index without a listing; ``None`` when the object does not exist.

        The tail read tells the size and version, so no HEAD or listing is needed.
        """
        if parse_part_name(name) is None:
            raise ValueError(f"{name!r} is not a shard object name")
        try:
            with self._reading("read", name):
                tail, found = self.backend.get_tail(name, TAIL_SIZE)
        except FileNotFoundError:
            return None
        part = _part_info(name, found.size, found.version)
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
                data, found = self.backend.get_range(part.name, start, end, part.version)
        except FileNotFoundError as exc:
            raise ObjectChangedError(part.name, "the object was deleted") from exc
        if found.size != part.size or found.version != part.version:
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
                data, found = self.backend.get_range(name, 0, entry.size, None)
        except FileNotFoundError as exc:
            raise CorruptShardError(
                shard, None, f"entry {entry.uid!r}: big file {name} is missing"
            ) from exc
        if found.size != entry.size or len(data) != entry.size:
            raise CorruptShardError(
                name,
                None,
                f"big file has {found.size} bytes, entry {entry.uid!r} says {entry.size}",
            )
        return data

    # --- other objects (manifests) -------------------------------------------------------

    def read_object(self, name: str) -> bytes | None:
        """The whole object ``name`` (a small one, e.g. a manifest), or ``None``."""
        with self._reading("read", name):
            found = self.backend.read(name)
        return None if found is None else found[0]

    def walk(self, folder: str) -> list[str]:
        """Names of every object below ``folder``."""
        with self._reading("list", folder + "/"):
            return self.backend.walk(folder)

    def modified(self, name: str) -> datetime | None:
        """When ``name`` was last written, or ``None`` (missing, or the store does not say)."""
        backend = self.backend
        try:
            with self._reading("stat", name):
                if isinstance(backend, LocalStore):
                    path = os.path.join(backend.root, *name.split("/"))
                    return datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
                bucket = getattr(backend, "bucket", None)
                if bucket is not None:  # S3: the bucket and key prefix, not the root
                    path = f"{bucket}/{getattr(backend, 'key_prefix', '')}{name}"
                else:
                    path = f"{self.root.rstrip('/')}/{name}"
                info = self.fs.info(path)
        except FileNotFoundError:
            return None
        return _modified_time(info)

    def sha256(self, part: PartInfo) -> str:
        """The sha256 of a listed part's bytes, read in chunks pinned to its version."""
        return self._digest(part.name, part.size, part.version)

    # --- writing -----------------------------------------------------------------------

    def publish(self, name: str, write: WriteFn, *, sync: bool = True) -> None:
        """Atomically create or replace ``name`` with what ``write`` writes (G11).

        Readers see the old object or the whole new one, never a part. With
        ``sync=False`` a local rename is made durable only by the next :meth:`sync`
        (one folder fsync for many objects); the object is complete either way.
        """
        batch: PublishBatch | None = getattr(self._batches, "active", None)
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
        batch = (
            None
            if threads <= 0 or getattr(self._batches, "active", None) is not None
            else self.backend.batch(threads, window, self._batch_scope)
        )
        if batch is None:
            yield
            return
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
        if not isinstance(self.backend, LocalStore):
            raise ValueError(f"staged writes need a local destination, not {self.kind}")
        return StagedObject(self.backend, self._batch_scope, name, write)

    def _batch_scope(self, action: str, name: str) -> contextlib.AbstractContextManager[None]:
        """How a batch's steps wrap their failures: as :meth:`publish` and :meth:`delete`."""
        return self._writing(action, name, _PUBLISH_HINT if action == "publish" else None)

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
            if self.backend.create(name, data) is not None:
                return True
            found = self.backend.stat(name)
        if found is None:
            raise PackError(f"{self._where(name)} was reported present but does not exist")
        size, version = found.size, found.version
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
                    data, _ = self.backend.get_range(name, position, end, version)
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
        batch: PublishBatch | None = getattr(self._batches, "active", None)
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


def _modified_time(info: Mapping[str, Any]) -> datetime | None:
    """The modification time in an fsspec ``info()`` answer, or ``None``."""
    for key in ("LastModified", "mtime", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(float(value), UTC)
    return None


def _write_all(fp: IO[bytes], data: bytes) -> None:
    fp.write(data)


def shard_store(
    url: str | os.PathLike[str] | None,
    storage_options: Mapping[str, Any] | None = None,
    store: ObjectStore | None = None,
) -> ShardStore:
    """The destination of a packer or an archive: ``store`` if given, else ``url`` opened.

    One function, so both sides accept and check the same things.
    """
    if store is None:
        if not isinstance(url, str | os.PathLike) or not os.fspath(url):
            raise ConfigError(f"must be a path or URL, got {url!r}", key="archive.url")
        return ShardStore(url, storage_options)
    if url is not None or storage_options is not None:
        raise ConfigError(
            "give either a URL (with storage_options) or a store, not both",
            key="archive.url",
        )
    return ShardStore(store=store)


def describe(kind: str, store: ShardStore, router: object, **settings: object) -> str:
    """``Kind('url', router=..., name=value, ...)`` with the URL's secrets masked: the
    repr of the packer and of the archive."""
    extra = "".join(f", {name}={value!r}" for name, value in settings.items())
    return f"{kind}({redact(store.url)!r}, router={router!r}{extra})"
