"""What a bucket writer holds while it collects files, kept small (G9).

* :class:`Encoder` hashes and compresses payloads, inline or in a few threads, with
  bounded work in flight and results in submission order;
* :class:`Spill` keeps each group's stored payloads and compact entry records in memory
  up to a threshold, then appends them to one spill file (one descriptor however many
  groups exist; records form a per-group chain in the file, so a group costs constant
  memory);
* :class:`Fingerprints` remembers every uid in ~16 to 27 bytes for duplicate detection.

A record is ``RECORD`` (created_at in µs, raw size, stored length, location, flags,
sha256 digest, uid length) followed by the UTF-8 uid.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import struct
import tempfile
import threading
import weakref
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Final, Generic, NamedTuple, TypeVar

from deswm._codecs import CODEC_IDS, CODEC_MASK, CODEC_NAMES
from deswm._container import Compressor, PartInfo, ShardIndex
from deswm._errors import PackError
from deswm._model import Codec, ShardKey

__all__ = [
    "BIG",
    "CODEC_IDS",
    "CODEC_MASK",
    "CODEC_NAMES",
    "RECORD",
    "SPILLED",
    "Encoded",
    "Encoder",
    "Fingerprints",
    "Group",
    "Spill",
    "iter_records",
]

_MIB: Final = 2**20

SPILLED: Final = 0x40
BIG: Final = 0x80
if CODEC_MASK & (SPILLED | BIG):  # pragma: no cover - a registry change would need new flags
    raise ImportError(f"codec ids need bits {CODEC_MASK:#x}, which overlap the record flags")

RECORD: Final = struct.Struct("<qQQQB32sH")
"""created_at (µs since the epoch), raw size, stored length, location of the stored bytes,
flags (codec id | ``SPILLED`` | ``BIG``), sha256 digest, uid length; the uid follows."""
_pack_record: Final = RECORD.pack
_RECORD_SIZE: Final = RECORD.size
_LOC: Final = struct.Struct("<Q")
_LENGTH_AT: Final = 16
_LOC_AT: Final = 24
_FLAGS_AT: Final = 32
_UID_LEN: Final = struct.Struct("<H")
_UID_LEN_AT: Final = 65
_IOV_MAX: Final = 1024
_CHUNK: Final = struct.Struct("<QQ")
"""Header of a spilled record chunk: the group's previous chunk link, length."""

T = TypeVar("T")


_sha256: Final = hashlib.sha256


class Encoded(NamedTuple):
    codec: Codec
    stored: bytes
    digest: bytes


class Encoder(Generic[T]):
    """sha256 and compression of payloads, inline or with a small thread pool.

    With workers, the caller's thread hashes each payload as it is submitted and the
    threads compress batches, each batch in one call into zstd (see
    :meth:`~deswm._container.Compressor.compress_many`). That split keeps the GIL quiet:
    a worker takes it once per batch instead of twice per payload, so the caller (which
    runs the Python of the whole pipeline) is not kept waiting for it. At most
    ``2 * workers`` batches are in flight, and results come back in submission order.
    Each thread has its own compressor.
    """

    _BATCH_ITEMS: Final = 128
    _BATCH_BYTES: Final = 2 * _MIB

    def __init__(self, codec: Codec, level: int, workers: int) -> None:
        self._codec = codec
        self._level = level
        self._local = threading.local()
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="deswm-pack")
            if workers > 0
            else None
        )
        self._inline = Compressor(codec, level) if workers <= 0 else None
        self._limit = 2 * workers
        self._tags: list[T] = []
        self._payloads: list[bytes] = []
        self._digests: list[bytes] = []
        self._batch_bytes = 0
        self._inflight: deque[
            tuple[list[T], list[bytes], concurrent.futures.Future[list[tuple[Codec, bytes]]]]
        ] = deque()

    def _compress_all(self, payloads: Sequence[bytes]) -> list[tuple[Codec, bytes]]:
        compressor: Compressor | None = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = Compressor(self._codec, self._level)
        return compressor.compress_many(payloads)

    def submit(self, tag: T, data: bytes) -> Sequence[tuple[T, Encoded]]:
        """Queue one payload; return the results that are due, oldest first (most calls:
        none, an empty tuple)."""
        digest = _sha256(data).digest()
        if self._inline is not None:
            codec, stored = self._inline.compress(data)
            return ((tag, Encoded(codec, stored, digest)),)
        tags = self._tags
        tags.append(tag)
        self._payloads.append(data)
        self._digests.append(digest)
        self._batch_bytes += len(data)
        if len(tags) < self._BATCH_ITEMS and self._batch_bytes < self._BATCH_BYTES:
            return ()
        self._send()
        ready: list[tuple[T, Encoded]] = []
        while len(self._inflight) > self._limit:
            ready.extend(self._collect())
        return ready

    def drain(self) -> list[tuple[T, Encoded]]:
        """Every result still pending, in submission order."""
        if self._tags:
            self._send()
        ready: list[tuple[T, Encoded]] = []
        while self._inflight:
            ready.extend(self._collect())
        return ready

    def _send(self) -> None:
        assert self._pool is not None
        future = self._pool.submit(self._compress_all, self._payloads)
        self._inflight.append((self._tags, self._digests, future))
        self._tags = []
        self._payloads = []
        self._digests = []
        self._batch_bytes = 0

    def _collect(self) -> list[tuple[T, Encoded]]:
        tags, digests, future = self._inflight.popleft()
        # tuple.__new__ is what Encoded(...) runs, minus a Python-level call per payload.
        make = tuple.__new__
        return [
            (tag, make(Encoded, (codec, stored, digest)))
            for tag, digest, (codec, stored) in zip(tags, digests, future.result(), strict=True)
        ]

    def close(self) -> None:
        """Stop the threads; pending work is dropped."""
        self._tags = []
        self._payloads = []
        self._digests = []
        for _, _, future in self._inflight:
            future.cancel()
        self._inflight.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class Group:
    """One touched group: its entry records not yet spilled, and where its spilled records
    start.

    Spilled records form a chain of chunks in the spill file (each chunk header points at
    the previous one), so a group costs a constant amount of memory however many entries
    it has.
    """

    __slots__ = ("key", "last_chunk", "published", "records")

    def __init__(self, key: ShardKey) -> None:
        self.key = key
        self.records = bytearray()
        self.last_chunk = 0
        """1 + the spill offset of the group's newest record chunk (0: none yet)."""
        self.published: tuple[tuple[PartInfo, ShardIndex], ...] | None = None
        """The group's published parts and their indexes, ascending (``None``: not read
        yet); new rows are checked against them (G14)."""


_PAGE_SIZE: Final = _MIB
"""Payloads in memory are copied into pages of this size (bigger ones get their own)."""
_PAGE_SHIFT: Final = 32


class _PagePool:
    """Pages handed from one bucket writer to the next.

    Fresh memory costs a page fault per 4 KiB on first touch (about 0.5 ms per MiB
    measured here), so a process packing bucket after bucket keeps up to ``limit``
    pages of its last bucket for the next one instead of returning them to the OS.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        if size == _PAGE_SIZE:
            with self._lock:
                if self._free:
                    return self._free.pop()
        return bytearray(size)

    def give(self, pages: list[bytearray]) -> None:
        with self._lock:
            for page in pages:
                if len(page) == _PAGE_SIZE and len(self._free) < self._limit:
                    self._free.append(page)


_POOL: Final = _PagePool(64)


class Spill:
    """Group payloads and records in memory up to a threshold, then in one spill file.

    In memory, payloads are copied back to back into shared pages of ``_PAGE_SIZE``
    bytes: one ``memcpy`` per payload, no reallocation, and the caller's buffer (often
    allocated by a reader or encoder thread) is freed at once. A record's ``loc`` is then
    ``page << 32 | offset``; once spilled, it is an absolute offset in the spill file
    (flag ``SPILLED``). When the bytes held in memory pass the threshold, every group's
    payloads and records are appended to the file, group by group, so each group's
    payloads stay together. One file per bucket writer keeps open descriptors at one
    however many groups exist; it lives in a private temp directory removed by
    :meth:`close` (or, for a writer dropped without ``abort()``, when it is garbage
    collected).
    """

    def __init__(self, threshold: int, parent: str | None) -> None:
        self._threshold = threshold
        self._parent = parent
        self._dir: str | None = None
        self._fd = -1
        self._size = 0
        self._buffered = 0
        self._pages: list[bytearray] = []
        self._used = 0  # bytes used in the last page
        self._dirty: dict[int, Group] = {}
        self._finalizer: weakref.finalize[[int, str], Spill] | None = None

    @property
    def spilled_bytes(self) -> int:
        return self._size

    def add(
        self,
        group: Group,
        micros: int,
        size: int,
        flags: int,
        digest: bytes,
        encoded_uid: bytes,
        stored: bytes,
    ) -> None:
        """Append one entry: its stored bytes (``b""`` for a big file) and its record,
        packed once, straight into the group's record buffer."""
        length = len(stored)
        pages = self._pages
        used = self._used
        if not pages or used + length > len(pages[-1]):
            pages.append(_POOL.take(max(_PAGE_SIZE, length)))
            used = 0
        pages[-1][used : used + length] = stored
        self._used = used + length
        loc = (len(pages) - 1) << _PAGE_SHIFT | used
        records = group.records
        records += _pack_record(micros, size, length, loc, flags, digest, len(encoded_uid))
        records += encoded_uid
        self._buffered += length + _RECORD_SIZE + len(encoded_uid)
        self._dirty[id(group)] = group
        if self._buffered > self._threshold:
            self._flush()

    def read(self, group: Group, flags: int, loc: int, length: int) -> bytes:
        if not flags & SPILLED:
            offset = loc & _PAGE_MASK
            return bytes(self._pages[loc >> _PAGE_SHIFT][offset : offset + length])
        return self._pread(length, loc)

    def view(self, group: Group, flags: int, loc: int, length: int) -> bytes | memoryview:
        """:meth:`read`, without copying bytes held in memory (valid until the writer
        closes; for writing them straight to a file)."""
        if not flags & SPILLED:
            offset = loc & _PAGE_MASK
            return memoryview(self._pages[loc >> _PAGE_SHIFT])[offset : offset + length]
        return self._pread(length, loc)

    def span(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the spill file from ``offset`` (adjacent spilled payloads)."""
        return self._pread(length, offset)

    def _pread(self, length: int, offset: int) -> bytes:
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise self._error("reading", exc) from exc
        if len(data) != length:
            raise PackError(f"spill file returned {len(data)} of {length} bytes at {offset}")
        return data

    def records(self, group: Group) -> bytes:
        """Every record of the group, oldest first (spilled chunks, then memory)."""
        chunks: list[bytes] = []
        link = group.last_chunk
        while link:
            at = link - 1
            link, length = _CHUNK.unpack(self._pread(_CHUNK.size, at))
            chunks.append(self._pread(length, at + _CHUNK.size))
        return b"".join(reversed(chunks)) + bytes(group.records)

    def release(self, group: Group) -> None:
        """Forget a published group's records (its payload pages go with the writer)."""
        self._buffered -= len(group.records)
        group.records = bytearray()
        self._dirty.pop(id(group), None)

    def _flush(self) -> None:
        try:
            self._flush_to_file()
        except OSError as exc:
            raise self._error("writing", exc) from exc

    def _error(self, action: str, exc: OSError) -> PackError:
        """A spill file error, naming the folder (the writer is unusable afterwards)."""
        folder = self._dir or self._parent or tempfile.gettempdir()
        return PackError(
            f"{action} the spill file in {folder} failed: {exc}",
            hint="Free space there, or point archive.spill_dir at a folder with room "
            "(archive.spill_threshold sets how much a bucket keeps in memory first); "
            "the watermark did not move, so the next run packs this bucket again",
        )

    def _flush_to_file(self) -> None:
        if self._fd < 0:
            self._dir = tempfile.mkdtemp(prefix="deswm-spill-", dir=self._parent)
            path = os.path.join(self._dir, "spill.bin")
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            self._finalizer = weakref.finalize(self, _discard, self._fd, self._dir)
        # Everything goes out with writev from where it lies (pages, record buffers):
        # no big intermediate buffer, which would fragment the heap flush after flush.
        parts: list[bytes | bytearray | memoryview] = []
        end = self._size
        for group in self._dirty.values():
            end = self._move_payloads(group.records, parts, end)
            header = _CHUNK.pack(group.last_chunk, len(group.records))
            parts.append(header)
            parts.append(group.records)
            group.last_chunk = end + 1
            end += len(header) + len(group.records)
            group.records = bytearray()
        self._write(parts)
        if self._size != end:  # pragma: no cover - _write raises on a short write
            raise PackError(f"spill file is {self._size} bytes, expected {end}")
        self._dirty.clear()
        _POOL.give(self._pages)
        self._pages = []
        self._used = 0
        self._buffered = 0

    def _move_payloads(
        self, records: bytearray, parts: list[bytes | bytearray | memoryview], end: int
    ) -> int:
        """Queue the payloads of in-memory records for the spill file (which will have
        ``end`` bytes when the first is written), point the records at them, and return
        the file's size after them."""
        pages = self._pages
        with memoryview(records) as view:
            position = 0
            while position < len(view):
                flags = view[position + _FLAGS_AT]
                if not flags & (BIG | SPILLED):
                    (loc,) = _LOC.unpack_from(view, position + _LOC_AT)
                    (length,) = _LOC.unpack_from(view, position + _LENGTH_AT)
                    _LOC.pack_into(view, position + _LOC_AT, end)
                    view[position + _FLAGS_AT] = flags | SPILLED
                    offset = loc & _PAGE_MASK
                    parts.append(memoryview(pages[loc >> _PAGE_SHIFT])[offset : offset + length])
                    end += length
                (uid_len,) = _UID_LEN.unpack_from(view, position + _UID_LEN_AT)
                position += RECORD.size + uid_len
        return end

    def _write(self, parts: list[bytes | bytearray | memoryview]) -> None:
        """Append ``parts`` to the spill file, in order (``writev``, up to 1,024 at a time)."""
        for first in range(0, len(parts), _IOV_MAX):
            batch = parts[first : first + _IOV_MAX]
            expected = sum(map(len, batch))
            written = os.writev(self._fd, batch)
            self._size += written
            if written == expected:
                continue
            rest = memoryview(b"".join(batch))[written:]  # a short write: finish by hand
            while rest:
                count = os.write(self._fd, rest)
                rest = rest[count:]
                self._size += count

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir is not None:
            shutil.rmtree(self._dir)
            self._dir = None
        self._dirty.clear()
        _POOL.give(self._pages)
        self._pages = []
        self._used = 0
        self._buffered = 0


_PAGE_MASK: Final = (1 << _PAGE_SHIFT) - 1


def _discard(fd: int, folder: str) -> None:
    """Last-resort cleanup of a spill file nobody closed (runs from the garbage collector)."""
    with contextlib.suppress(OSError):
        os.close(fd)
    shutil.rmtree(folder, ignore_errors=True)


_MASK64: Final = 2**64 - 1


class Fingerprints:
    """A set of 64-bit uid fingerprints in one flat array (open addressing).

    About 16 to 27 bytes per uid instead of ~100 for a ``set`` of strings. A hit is only a
    hint: the caller confirms it against the group's records, so a collision can never
    reject a uid.
    """

    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * 1024))
        self._count = 0

    @staticmethod
    def of(encoded_uid: bytes) -> int:
        """The uid's 64-bit fingerprint: Python's own hash of the bytes (SipHash, keyed
        per process unless ``PYTHONHASHSEED`` fixes the key), enough for a set that
        lives in one writer; a collision only costs a confirming look at the records."""
        return (hash(encoded_uid) & _MASK64) or 1  # 0 marks an empty slot

    def add(self, fingerprint: int) -> bool:
        """Insert; ``False`` when the fingerprint was already there."""
        slots = self._slots
        mask = len(slots) - 1
        i = fingerprint & mask
        while slots[i]:
            if slots[i] == fingerprint:
                return False
            i = (i + 1) & mask
        slots[i] = fingerprint
        self._count += 1
        if self._count * 5 > len(slots) * 3:  # keep the load under 60 %
            self._grow()
        return True

    def __len__(self) -> int:
        return self._count

    def _grow(self) -> None:
        old = self._slots
        slots = self._slots = array("Q", bytes(16 * len(old)))
        mask = len(slots) - 1
        for fingerprint in old:
            if fingerprint:
                i = fingerprint & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = fingerprint


def iter_records(records: bytes) -> Iterator[tuple[int, int, int, int, int, bytes, str]]:
    view = memoryview(records)
    position = 0
    while position < len(view):
        micros, size, length, loc, flags, digest, uid_len = RECORD.unpack_from(view, position)
        position += RECORD.size
        uid = bytes(view[position : position + uid_len]).decode("utf-8")
        position += uid_len
        yield micros, size, length, loc, flags, digest, uid
