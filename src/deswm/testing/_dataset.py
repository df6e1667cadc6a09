"""A drawn set of source rows with the bytes of their files.

:func:`deswm.testing.datasets` draws these; a test then loads
:attr:`Dataset.records` into its own table (or a :class:`MemorySourceProvider`) and serves
:attr:`Dataset.contents` from its own reader (or a :class:`MemoryFileReader`). Keeping rows
and bytes together is what lets a check say "this row must read back as these bytes".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path

import attrs

from deswm._model import SourceRecord
from deswm.testing._readers import MemoryFileReader
from deswm.testing._sources import MemorySourceProvider

__all__ = ["Dataset"]


@attrs.frozen
class Dataset:
    """Rows of a source table and the bytes of the file each one names.

    ``records`` are in the order they were drawn (not sorted); each ``size`` is the
    length of its file. ``contents`` maps every location to its bytes; two rows may
    share a location only if they share the bytes.
    """

    records: tuple[SourceRecord, ...]
    contents: Mapping[str, bytes]

    def __attrs_post_init__(self) -> None:
        missing = [r.location for r in self.records if r.location not in self.contents]
        if missing:
            raise ValueError(f"no contents for location {missing[0]!r}")

    @classmethod
    def from_files(
        cls,
        files: Mapping[str, bytes],
        *,
        start: datetime,
        every: timedelta = timedelta(hours=1),
        uid: Callable[[str], str] | None = None,
    ) -> Dataset:
        """Rows for fixed files: created ``every`` apart from ``start``, in ``files`` order.

        Each row's uid is its location unless ``uid(location)`` says otherwise; its size
        is the file's length. For example-based tests next to the drawn ones.
        """
        records = tuple(
            SourceRecord(
                uid(location) if uid else location,
                start + number * every,
                location,
                len(data),
            )
            for number, (location, data) in enumerate(files.items())
        )
        return cls(records, dict(files))

    def __len__(self) -> int:
        return len(self.records)

    def reader(self, *, max_workers: int = 4) -> MemoryFileReader:
        """A :class:`MemoryFileReader` serving :attr:`contents` (a fresh one each call)."""
        return MemoryFileReader(self.contents, max_workers=max_workers)

    def source(self) -> MemorySourceProvider:
        """A :class:`MemorySourceProvider` over :attr:`records` (a fresh one each call)."""
        return MemorySourceProvider(self.records)

    def write_files(self, root: str | os.PathLike[str]) -> dict[str, Path]:
        """Write every file under ``root`` (locations as relative paths); return the paths.

        For tests of a reader on real files, e.g. ``FsspecFileReader(root=root)``.
        """
        base = Path(root)
        written: dict[str, Path] = {}
        for location, data in self.contents.items():
            relative = Path(location)
            if relative.is_absolute() or ".." in relative.parts:
                raise ValueError(f"location {location!r} is not a path inside {str(base)!r}")
            path = base / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written[location] = path
        return written
