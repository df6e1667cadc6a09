"""A lane's rows handed over while the coordinator still routes them (lanes on this machine).

With a :class:`~deswm._lanes.LaneBatch` a lane starts once its whole share of a bucket is
routed: on a bucket of 100,000 rows its cores idle for the second or so the coordinator
needs to stream them. A :class:`LaneStream` is dispatched with the bucket's first row for
the lane and appends the rows to a file in frames of ``chunk`` rows; the lane reads the
frames as they land, so reading files starts while the source is still being streamed.

Only for lanes that see this machine's files (threads and processes): lanes of Dask or a
given executor get whole batches. A file never blocks the writer (a pipe would, when the
lane's job waits behind another bucket's in the executor's queue), so the coordinator
cannot deadlock on a lane, whatever the number of workers.

The file, ``deswm-rows-<pid>@<host>-*.stream`` in the spill folder, holds plain data: frames of a
4-byte little-endian length and an ASCII JSON ``[uids, micros, locations, sizes]``
(the columns of ``chunk`` rows). Length 0 ends the rows (:meth:`LaneStream.seal`);
``0xFFFFFFFF`` says the coordinator abandoned the bucket (:meth:`LaneStream.discard`
before ``seal``), as does the file's removal. A lane that finds neither waits for more,
and gives up when the coordinator's process is gone, so a killed coordinator leaves no
lane waiting behind it. The coordinator removes the file once the bucket settles or is
abandoned; the lane never does. Files of a coordinator that was killed are removed by
:func:`remove_orphans` when a coordinator on the same host next starts its lanes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from deswm._errors import PackError
from deswm._model import SourceRecord

__all__ = [
    "DECODE",
    "ENCODE",
    "EPOCH",
    "MICROSECOND",
    "STREAM_CHUNK",
    "LaneStream",
    "StreamAbandoned",
    "remove_orphans",
]

STREAM_CHUNK: Final = 1024
"""Rows per frame (fewer when ``[run] lane_batch_rows`` is lower): what the coordinator
holds per lane, and how soon a lane gets its first rows."""

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND: Final = timedelta(microseconds=1)
"""``created_at`` travels to lanes as ``(created_at - EPOCH) // MICROSECOND`` (exact)."""
_LENGTH: Final = struct.Struct("<I")
_END: Final = 0
_ABANDONED: Final = 0xFFFFFFFF
ENCODE: Final = json.JSONEncoder(separators=(",", ":")).encode
DECODE: Final = json.JSONDecoder().decode
"""Rows' plain-data files (streams, and batches' spill files) are ASCII JSON."""
_FIRST_WAIT: Final = 0.0002
_LONGEST_WAIT: Final = 0.005
"""Seconds a lane sleeps between looks at a stream that has no new frame yet."""

log = logging.getLogger("deswm.engine")


class StreamAbandoned(Exception):
    """The coordinator abandoned the bucket (or its process is gone): publish nothing."""


class LaneStream:
    """One lane's rows of one bucket, written by the coordinator while the lane reads them.

    The coordinator calls :meth:`add` per row, :meth:`seal` at the bucket's end (or
    :meth:`discard` to abandon it), and :meth:`discard` once the bucket settled. The lane
    calls :meth:`records` only. A pickled copy carries the path and the coordinator's
    process id, never the rows.
    """

    __slots__ = (
        "_fd",
        "_locations",
        "_micros",
        "_removed",
        "_sizes",
        "_uids",
        "chunk",
        "owner",
        "path",
        "rows",
        "sealed",
    )

    def __init__(self, folder: str | None = None, chunk: int = STREAM_CHUNK) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk!r}")
        try:
            fd, self.path = tempfile.mkstemp(prefix=_prefix(), suffix=".stream", dir=folder)
        except OSError as exc:
            raise _error("creating", folder, exc) from exc
        self._fd: int | None = fd
        self.chunk = chunk
        self.owner = os.getpid()
        """The coordinator's process: a lane stops waiting when it is gone."""
        self.rows = 0
        """Rows added (the coordinator's count; a lane counts what it reads)."""
        self.sealed = False
        self._removed = False
        self._uids: list[str] = []
        self._micros: list[int] = []
        self._locations: list[str] = []
        self._sizes: list[int | None] = []

    def __repr__(self) -> str:
        return f"LaneStream(rows={self.rows}, sealed={self.sealed}, path={self.path!r})"

    def __len__(self) -> int:
        return self.rows

    @property
    def in_memory(self) -> int:
        """Rows routed and not yet written to the file (fewer than ``chunk``)."""
        return len(self._uids)

    @property
    def portable(self) -> bool:
        return False

    # --- the coordinator's side ---------------------------------------------------------

    def add(self, record: SourceRecord) -> None:
        if self.sealed:
            raise RuntimeError(f"{self!r} is sealed or discarded: no more rows")
        self._uids.append(record.uid)
        self._micros.append((record.created_at - EPOCH) // MICROSECOND)
        self._locations.append(record.location)
        self._sizes.append(record.size)
        self.rows += 1
        if len(self._uids) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if not self._uids:
            return
        payload = ENCODE([self._uids, self._micros, self._locations, self._sizes]).encode("ascii")
        self._uids, self._micros, self._locations, self._sizes = [], [], [], []
        self._write(_LENGTH.pack(len(payload)) + payload)

    def _write(self, data: bytes) -> None:
        try:
            self._write_all(data)
        except OSError as exc:
            raise _error("writing", os.path.dirname(self.path), exc) from exc

    def _write_all(self, data: bytes) -> None:
        if self._fd is None:
            raise RuntimeError(f"{self!r} is sealed or discarded: no more rows")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def seal(self) -> None:
        """No more rows: write the rest and the end mark, close the file."""
        if self.sealed:
            return
        self._flush()
        self._write(_LENGTH.pack(_END))
        self._close()
        self.sealed = True

    def discard(self) -> None:
        """Remove the file (idempotent). Before :meth:`seal` this abandons the bucket: the
        lane reading it stops without publishing."""
        if not self.sealed and self._fd is not None:
            try:
                self._write_all(_LENGTH.pack(_ABANDONED))
            except OSError as exc:  # the removal below says it as well
                log.debug("cannot mark %s abandoned: %s", self.path, exc)
        self._close()
        if self._removed:
            return
        self._removed = True
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the spill file %s: %s", self.path, exc)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __getstate__(self) -> dict[str, Any]:
        # Only what never changes: the executor may pickle the job on its own thread
        # while the coordinator is still adding rows.
        return {"path": self.path, "owner": self.owner, "chunk": self.chunk}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.owner = state["owner"]
        self.chunk = state["chunk"]
        self._fd = None
        self.rows = 0
        self.sealed = True  # a lane's copy writes nothing
        self._removed = True  # and removes nothing: the coordinator does
        self._uids, self._micros, self._locations, self._sizes = [], [], [], []

    # --- the lane's side ----------------------------------------------------------------

    def release(self) -> None:
        """A lane is done with the rows: nothing to do, the coordinator owns the file."""

    def records(self) -> Iterator[SourceRecord]:
        """The rows in the order they were added, as they arrive; raises
        :class:`StreamAbandoned` if the coordinator abandons the bucket or is gone."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise StreamAbandoned(f"{self.path} was removed before the lane began") from None
        try:
            yield from self._frames(fd)
        finally:
            os.close(fd)

    def _frames(self, fd: int) -> Iterator[SourceRecord]:
        offset = 0
        parent = os.getppid()
        wait = _FIRST_WAIT
        while True:
            head = os.pread(fd, _LENGTH.size, offset)
            if len(head) == _LENGTH.size:
                (length,) = _LENGTH.unpack(head)
                if length == _END:
                    return
                if length == _ABANDONED:
                    raise StreamAbandoned(f"the coordinator abandoned {self.path}")
                payload = os.pread(fd, length, offset + _LENGTH.size)
                if len(payload) == length:
                    offset += _LENGTH.size + length
                    wait = _FIRST_WAIT
                    uids, micros, locations, sizes = DECODE(payload.decode("ascii"))
                    for uid, instant, location, size in zip(
                        uids, micros, locations, sizes, strict=True
                    ):
                        yield SourceRecord(
                            uid, EPOCH + timedelta(microseconds=instant), location, size
                        )
                    continue
            # Not a whole frame yet: the coordinator is routing (or has gone away).
            if os.fstat(fd).st_nlink == 0:
                raise StreamAbandoned(f"the coordinator removed {self.path}")
            if not _alive(self.owner, parent):
                raise StreamAbandoned(f"the coordinator (process {self.owner}) is gone")
            time.sleep(wait)
            wait = min(wait * 2, _LONGEST_WAIT)


def _prefix() -> str:
    """``deswm-rows-<pid>@<host>-``: whose file it is, for :func:`remove_orphans`."""
    return f"deswm-rows-{os.getpid()}@{socket.gethostname()}-"


_NAME: Final = re.compile(r"deswm-rows-(?P<pid>\d+)@(?P<host>.+)-[^-]+\.stream")


def remove_orphans(folder: str | None = None) -> int:
    """Remove the stream files of coordinators on this host that are gone (killed before
    they could), in ``folder`` (default: the system temp folder); return how many.

    A file of a live process, of another host (a shared folder) or of a process id
    now reused is left alone.
    """
    directory = folder or tempfile.gettempdir()
    host = socket.gethostname()
    removed = 0
    try:
        entries = os.scandir(directory)
    except OSError:
        return 0
    with entries:
        for entry in entries:
            match = _NAME.fullmatch(entry.name)
            if match is None or match["host"] != host or _exists(int(match["pid"])):
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue  # another coordinator removed it first
            except OSError as exc:
                log.warning("cannot remove the orphaned stream file %s: %s", entry.path, exc)
                continue
            removed += 1
    if removed:
        log.info("removed %d stream file(s) of coordinators that are gone", removed)
    return removed


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _error(action: str, folder: str | None, exc: OSError) -> PackError:
    """A failure of the rows' file, naming its folder (the bucket is not committed)."""
    return PackError(
        f"{action} the rows' stream file in {folder or tempfile.gettempdir()} failed: {exc}",
        hint="Free space there, or point archive.spill_dir at a folder with room; the "
        "watermark did not move, so the next run packs this bucket again",
    )


def _alive(owner: int, parent: int) -> bool:
    """Whether the coordinator's process still runs (``parent``: this lane's parent when
    it began reading; a lane process whose parent was the coordinator is re-parented
    when the coordinator dies, which also covers a coordinator not yet reaped)."""
    if owner == os.getpid():
        return True  # a lane on a thread of the coordinator
    if parent == owner:
        return os.getppid() == owner
    return _exists(owner)
