"""An in-memory :class:`~deswm.FileReader` for tests.

It is a :class:`~deswm.FileReaderBase`, so ``read_many`` runs the same bounded
thread pool as the real reader. State lives on the instance; every call is recorded as a
:class:`ReaderCall` named tuple for assertions.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import NamedTuple

from deswm._errors import FileMissingError
from deswm._readers import FileReaderBase

__all__ = ["MemoryFileReader", "ReaderCall"]


class ReaderCall(NamedTuple):
    """One call made to a :class:`MemoryFileReader`: ``("read", "a/b.txt")``."""

    method: str
    location: str


class MemoryFileReader(FileReaderBase):
    """:class:`~deswm.FileReader` over a dict of ``location -> bytes``.

    Args:
        files: the initial files (copied; the reader never changes the caller's dict).
        errors: exceptions to raise when reading a location, to inject failures
            (a :class:`~deswm.FileReadError` is yielded by ``read_many``; any
            other exception ends it, as with a real reader).
        max_workers, read_ahead: as for :class:`~deswm.FileReaderBase`.
    """

    def __init__(
        self,
        files: Mapping[str, bytes | bytearray | memoryview] | None = None,
        *,
        errors: Mapping[str, BaseException] | None = None,
        max_workers: int = 4,
        read_ahead: int | None = None,
    ) -> None:
        super().__init__(max_workers=max_workers, read_ahead=read_ahead)
        self._lock = threading.Lock()
        self._files: dict[str, bytes] = {}
        for location, data in (files or {}).items():
            self._files[location] = _checked(location, data)
        self.errors: dict[str, BaseException] = dict(errors or {})
        self.calls: list[ReaderCall] = []

    def __repr__(self) -> str:
        return f"MemoryFileReader({len(self._files)} files)"

    @property
    def files(self) -> dict[str, bytes]:
        """A copy of the current files."""
        with self._lock:
            return dict(self._files)

    def put(self, location: str, data: bytes | bytearray | memoryview) -> None:
        """Create or replace a file."""
        checked = _checked(location, data)
        with self._lock:
            self._files[location] = checked

    def read(self, location: str) -> bytes:
        """The bytes at ``location``; raises the injected error or FileMissingError."""
        with self._lock:
            self.calls.append(ReaderCall("read", location))
            error = self.errors.get(location)
            data = self._files.get(location)
        if error is not None:
            raise error
        if data is None:
            raise FileMissingError(location)
        return data

    def delete(self, location: str) -> None:
        """Remove ``location``; a missing file is not an error."""
        with self._lock:
            self.calls.append(ReaderCall("delete", location))
            self._files.pop(location, None)

    def calls_of(self, method: str) -> list[str]:
        """The locations passed to ``method`` so far, in call order."""
        with self._lock:
            return [call.location for call in self.calls if call.method == method]


def _checked(location: str, data: bytes | bytearray | memoryview) -> bytes:
    if not isinstance(location, str) or not location:
        raise TypeError(f"a location must be a non-empty str, got {location!r}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"the data of {location!r} must be bytes, got {type(data).__name__}")
    return bytes(data)
