"""fsspec's memory filesystem: one dict per process, so one process-wide lock makes its
conditional writes atomic and a publish is one assignment."""

from __future__ import annotations

import io
import threading
from typing import Final

from deswm._objectstore.base import WriteFn
from deswm._objectstore.fsspec import FsspecStore

__all__ = ["MemoryStore"]

_MEMORY_LOCK: Final = threading.Lock()
"""The memory filesystem is one dict per process: one lock orders every write to it."""


class MemoryStore(FsspecStore):
    """``memory://`` as an :class:`~deswm._objectstore.base.ObjectStore`."""

    kind = "memory"
    atomic_conditional_writes = True

    def __init__(self, url: str, fs: object, root: str, *, block_size: int = 0) -> None:
        super().__init__(url, fs, root, block_size=block_size)
        self._lock = _MEMORY_LOCK

    def publish(self, name: str, write: WriteFn, *, sync: bool) -> None:
        buffer = io.BytesIO()
        write(buffer)
        self.fs.pipe_file(self._path(name), buffer.getvalue())  # one assignment: atomic
