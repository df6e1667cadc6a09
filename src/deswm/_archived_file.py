"""The file object :meth:`deswm.Archive.open` returns: ranges read on demand.

A :class:`RangeSource` knows how to read bytes ``[start, end)`` of one archived file
(a ranged read of a shard, of a ``_bigFiles/`` object, or a slice of bytes already
decoded in memory). :class:`_RangeReader` turns it into a seekable raw file; the public
:class:`ArchivedFile` buffers it, so small reads (``readline``) do not each cost a
backend request, while a large ``read(n)`` goes to the backend as one request.

Verification: a file read in order from its first byte to its last is hashed as it
goes, and the read that reaches the end raises :class:`~deswm.CorruptShardError`
when the sha256 does not match (the caller has then seen unverified bytes: a stream
must treat that error as "discard what you got"). Bytes read out of order are pinned
to the object version the index named (shards) or read from a content-addressed
object (big files), but they cannot be hash-checked without reading the whole file.
"""

from __future__ import annotations

import hashlib
import io
from typing import Final, Protocol

from deswm import _publish
from deswm._errors import CorruptShardError
from deswm._model import ArchivedEntry

__all__ = ["ArchivedFile", "BytesSource", "RangeSource"]

READ_BUFFER: Final = 1024 * 1024
"""Buffer of :class:`ArchivedFile`: reads smaller than this are served from it."""


class RangeSource(Protocol):
    """Reads bytes of one archived file; ``end`` is at most the file's size."""

    def read(self, start: int, end: int) -> bytes: ...


class BytesSource:
    """An archived file already in memory (small or compressed entries, verified)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def read(self, start: int, end: int) -> bytes:
        return bytes(self._data[start:end])


class _RangeReader(io.RawIOBase):
    """A seekable, read-only raw file over a :class:`RangeSource`."""

    def __init__(
        self, source: RangeSource, size: int, *, sha256: str | None, name: str, uid: str
    ) -> None:
        super().__init__()
        self._source = source
        self._size = size
        self._position = 0
        self._expected = sha256
        self._hash = hashlib.sha256() if sha256 is not None else None
        self._hashed = 0
        self._where = name
        self._uid = uid

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence!r})")
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self._read(len(buffer))
        view = memoryview(buffer).cast("B")
        view[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        return self._read(size)

    def readall(self) -> bytes:
        return self._read(max(self._size - self._position, 0))

    def _read(self, size: int) -> bytes:
        self._checkClosed()
        start = min(self._position, self._size)
        end = min(start + size, self._size)
        if end <= start:
            return b""
        data = self._source.read(start, end)
        if len(data) != end - start:
            raise CorruptShardError(
                self._where, None, f"{self._uid!r}: read {len(data)} of {end - start} bytes"
            )
        self._position = end
        self._verify(start, data)
        return data

    def _verify(self, start: int, data: bytes) -> None:
        """Hash bytes that continue the verified prefix; check the digest at the end."""
        if self._hash is None or not start <= self._hashed < start + len(data):
            return
        self._hash.update(memoryview(data)[self._hashed - start :])
        self._hashed = start + len(data)
        if self._hashed == self._size:
            digest, self._hash = self._hash.hexdigest(), None
            if digest != self._expected:
                raise CorruptShardError(
                    self._where, None, f"{self._uid!r}: sha256 mismatch (expected {self._expected})"
                )


class ArchivedFile(io.BufferedReader):
    """A read-only, seekable binary file of one archived entry (``Archive.open``).

    ``entry`` tells what the archive holds (size, sha256, codec, shard); ``len(f)`` is
    not defined, use ``f.entry.size``. Close it (or use ``with``) when done.
    """

    def __init__(self, raw: _RangeReader, entry: ArchivedEntry) -> None:
        # A small file needs no 1 MiB buffer (it would be allocated for every open).
        super().__init__(raw, buffer_size=min(READ_BUFFER, max(entry.size, io.DEFAULT_BUFFER_SIZE)))
        self._entry = entry

    @property
    def entry(self) -> ArchivedEntry:
        return self._entry

    @property
    def size(self) -> int:
        return self._entry.size

    def __repr__(self) -> str:
        return f"<ArchivedFile {self._entry.uid!r} in {self._entry.shard} ({self._entry.size} B)>"


def archived_file(
    source: RangeSource, entry: ArchivedEntry, *, sha256: str | None, name: str
) -> ArchivedFile:
    """Wrap ``source`` as the file of ``entry`` (``sha256``: what a full read must match)."""
    raw = _RangeReader(source, entry.size, sha256=sha256, name=name, uid=entry.uid)
    return ArchivedFile(raw, entry)


_publish(globals())
