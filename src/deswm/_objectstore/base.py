"""The one seam between deswm and object storage: :class:`ObjectStore`.

Every implementation (``local``, ``s3``, ``memory``, generic ``fsspec``) offers the same
operations on names relative to its root (``20240517_39_0000.des``,
``_bigFiles/<sha256>``, ``watermarks/p/archived/0.json``), so the packer, the archive and
the object-store watermark share one way of talking to storage instead of three.

Two tokens name what an object holds:

* ``ObjectInfo.version`` changes whenever the object is replaced and is cheap to get from a
  listing or a stat (local: ``mtime_ns:inode:size``; S3: the ETag; other filesystems: what
  ``info()`` reports). Ranged reads are pinned to it.
* the *etag* names the exact content (S3: the ETag; elsewhere: the sha256 of the bytes).
  :meth:`ObjectStore.read` returns it and :meth:`ObjectStore.replace` compares it, so a
  compare-and-set cannot be fooled by a reused inode or a coarse clock.

Failures surface as ``OSError`` (``FileNotFoundError`` for a missing object) or
:class:`~deswm.ObjectChangedError`; the callers wrap them into their own deswm
errors naming the object (see :mod:`deswm._objectstore.errors` for the one error map).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import IO, Any, Protocol

import attrs

__all__ = ["ErrorScope", "ObjectInfo", "ObjectStore", "PublishBatch", "WriteFn"]

WriteFn = Callable[[IO[bytes]], None]
"""Writes a whole object into the binary file it is given (and nothing else)."""

ErrorScope = Callable[[str, str], AbstractContextManager[None]]
"""``scope(action, name)``: the caller's context that wraps a failure naming the object."""


@attrs.frozen
class ObjectInfo:
    """One object: its name relative to the root, its size and its version token."""

    name: str
    size: int
    version: str


class PublishBatch(Protocol):
    """Publishes and deletes whose fsyncs are issued together (local disks only)."""

    def publish(self, name: str, write: WriteFn) -> None:
        """Write ``name``'s temp file now; fsync and rename it at the next flush."""

    def delete(self, name: str) -> None:
        """Queue a delete, done in call order with the renames."""

    def finish(self) -> None:
        """Complete every queued step in call order (also after an error in the caller)."""


class ObjectStore(Protocol):
    """Objects under one root; see the module docs for names, tokens and errors.

    ``kind`` is ``"local"``, ``"s3"``, ``"memory"`` or ``"other"``; ``fs`` and ``root``
    are the fsspec filesystem and the root path on it (for tools). ``url`` is the URL
    as given (it may hold secrets: show it only through :func:`deswm._redact.redact`).
    ``atomic_conditional_writes`` says whether :meth:`create` and :meth:`replace` are
    atomic against other writers (a compare-and-set), not merely checked first.
    """

    url: str
    kind: str
    fs: Any
    root: str
    atomic_conditional_writes: bool

    def walk(self, folder: str) -> list[str]:
        """Names of every object below ``folder`` (recursively; local hidden ones skipped)."""
        ...

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects directly under the root whose names start with ``prefix``.

        A missing root or bucket lists nothing (nothing was published yet).
        """
        ...

    def stat(self, name: str) -> ObjectInfo | None:
        """The object as it is now (a ``stat``/HEAD), or ``None`` if it does not exist."""
        ...

    def get_range(
        self, name: str, start: int, end: int, version: str | None
    ) -> tuple[bytes, ObjectInfo]:
        """Bytes ``[start, end)`` (fewer past the end) and the object they came from.

        With ``version``, raises :class:`~deswm.ObjectChangedError` unless the
        bytes come from that version (S3: ``IfMatch`` on the ranged GET).
        """
        ...

    def get_tail(self, name: str, length: int) -> tuple[bytes, ObjectInfo]:
        """The last ``length`` bytes (the whole object when it is smaller): one read."""
        ...

    def read(self, name: str) -> tuple[bytes, str] | None:
        """The whole object and its etag, or ``None`` when the object does not exist."""
        ...

    def create(self, name: str, data: bytes) -> str | None:
        """Create ``name`` unless it exists (``If-None-Match: *``): the new etag, or
        ``None`` when an object is already there. Durable when it returns."""
        ...

    def replace(self, name: str, data: bytes, token: str) -> str | None:
        """Replace ``name`` if its etag is still ``token`` (``If-Match``): the new etag, or
        ``None`` when it changed or is gone. Durable when it returns."""
        ...

    def publish(self, name: str, write: WriteFn, *, sync: bool) -> None:
        """Atomically create or replace ``name`` with what ``write`` writes (G11).

        Readers see the old object or the whole new one. With ``sync=False`` a local
        rename is made durable only by the next :meth:`sync`.
        """
        ...

    def delete(self, name: str, *, sync: bool) -> None:
        """Remove ``name``; a missing object is not an error."""
        ...

    def sync(self) -> None:
        """Make earlier ``sync=False`` publishes and deletes durable."""
        ...

    def batch(self, threads: int, window: int, scope: ErrorScope) -> PublishBatch | None:
        """A batch whose fsyncs run together on ``threads`` threads, every ``window``
        objects; ``None`` where each write is durable when it returns anyway."""
        ...

    def cleanup_temp(self, folder: str, prefix: str, older_than: timedelta) -> int:
        """Remove crashed writers' temp files for names starting with ``prefix``."""
        ...
