"""The endpoints of the retrieval service and how errors become HTTP answers.

Every archive call runs on a worker thread (a pool of ``threads``; a plain executor
costs about a third of the CPU of ``anyio.to_thread`` per hop under load), so a slow
backend read never blocks the event loop. Bodies above 1 MiB are streamed from
:meth:`Archive.open`, one 1 MiB chunk (one backend request) read at a time, so
serving a 1 GB file holds about two chunks per download in memory (one read, one being
sent).

Errors are JSON ``{"error": ..., "hint": ...}``: 400 for a bad uid or ``created_at``,
404 naming the shard looked in, 416 for an unsatisfiable range, 502 when archived
bytes fail verification, 503 when the storage backend fails (with ``Retry-After``).
Messages are redacted (:func:`deswm._redact.redact`), storage failures are only
described to the client by kind, and no traceback is ever logged or sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mimetypes
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from deswm._archive import Archive
from deswm._archived_file import ArchivedFile
from deswm._container import MAX_UID_BYTES
from deswm._errors import (
    ConfigError,
    CorruptShardError,
    DeswmError,
    NotArchivedError,
    ShardError,
    UnverifiedEntryError,
)
from deswm._model import ArchivedEntry
from deswm._redact import redact
from deswm._timeutil import format_utc
from deswm.serve._metrics import ServeMetrics
from deswm.serve._ranges import ByteRange, Unsatisfiable, etag_matches, parse_range, quote_etag

__all__ = ["Service", "build_routes"]

log = logging.getLogger("deswm.serve")

CHUNK: Final = 1024 * 1024
"""Bytes read from the archive per streamed chunk (one ranged GET on S3; with the chunk
the connection is still sending, what one download holds in memory), and the largest
body read at once and sent whole."""

_CREATED_AT_HINT: Final = (
    "pass ?created_at=2024-05-17T10:00:00Z (an ISO 8601 instant with Z or an offset)"
)
_OFFSET_AS_SPACE: Final = re.compile(r" (\d{2}(?::?\d{2})?)$")
"""A ``+hh:mm`` offset whose ``+`` a query string decoded as a space."""

T = TypeVar("T")


class _BadRequest(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class _StreamAborted(Exception):
    """A streamed body failed after its headers were sent: the connection is cut."""


def _error(status: int, message: str, hint: str | None, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message, "hint": hint, **extra}, status, headers=headers)


def _uid(request: Request) -> str:
    uid = str(request.path_params["uid"])
    try:
        encoded = uid.encode("utf-8")
    except UnicodeEncodeError:
        raise _BadRequest(
            "the uid is not valid UTF-8", "percent-encode the uid's UTF-8 bytes"
        ) from None
    if not uid or len(encoded) > MAX_UID_BYTES:
        raise _BadRequest(
            f"a uid has 1 to {MAX_UID_BYTES} UTF-8 bytes, this one has {len(encoded)}",
            "check the uid",
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uid):
        raise _BadRequest("the uid holds control characters", "check the uid")
    return uid


def _created_at(request: Request) -> datetime:
    raw = request.query_params.get("created_at")
    if raw is None or not raw.strip():
        raise _BadRequest("created_at is required", _CREATED_AT_HINT)
    text = raw.strip()
    if " " in text and "T" in text.upper():
        text = _OFFSET_AS_SPACE.sub(r"+\1", text)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _BadRequest(
            f"created_at {raw[:64]!r} is not an ISO 8601 timestamp", _CREATED_AT_HINT
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise _BadRequest(
            f"created_at {raw[:64]!r} has no UTC offset: the instant is ambiguous",
            "add Z or an offset such as +00:00 (encode + as %2B in a query string)",
        )
    return value.astimezone(UTC)


def _file_headers(entry: ArchivedEntry, uid: str) -> dict[str, str]:
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Type": mimetypes.guess_type(uid)[0] or "application/octet-stream",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if entry.sha256 is not None:
        headers["ETag"] = quote_etag(entry.sha256)
    return headers


def _stat_json(entry: ArchivedEntry) -> dict[str, Any]:
    return {
        "uid": entry.uid,
        "object": entry.shard,
        "part": entry.part,
        "size": entry.size,
        "stored_size": entry.stored_size,
        "codec": entry.codec,
        "checksum": entry.sha256,
        "created_at": None if entry.created_at is None else format_utc(entry.created_at),
        "big": entry.big,
    }


class _Stream(StreamingResponse):
    """A streamed body whose failure cuts the connection instead of raising into uvicorn."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Already logged; the client sees a body shorter than its Content-Length.
        with contextlib.suppress(_StreamAborted):
            await super().__call__(scope, receive, send)


class Service:
    """The endpoints, over one shared :class:`Archive` (and its index cache)."""

    def __init__(self, archive: Archive, metrics: ServeMetrics, *, threads: int) -> None:
        self.archive = archive
        self.metrics = metrics
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="deswm-serve")

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        # A cancelled request (client gone) stops waiting; the read finishes unobserved.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(func, *args))

    def close(self) -> None:
        """Stop the worker threads (after the reads in flight)."""
        self._threads.shutdown(wait=True)

    # --- files -------------------------------------------------------------------------

    async def file(self, request: Request) -> Response:
        uid, created_at = _uid(request), _created_at(request)
        if request.method == "HEAD" or "if-none-match" in request.headers:
            entry = await self._run(self.archive.stat, uid, created_at)
            headers = _file_headers(entry, uid)
            if etag_matches(request.headers.get("if-none-match"), headers.get("ETag")):
                return Response(status_code=304, headers=_not_modified(headers))
            if request.method == "HEAD":
                headers["Content-Length"] = str(entry.size)
                return Response(status_code=200, headers=headers)
        range_header = _range_header(request)
        opened = await self._run(_open, self.archive, uid, created_at, range_header)
        if isinstance(opened, _Whole):
            return Response(opened.data, status_code=opened.status, headers=opened.headers)
        f, wanted, status, headers = opened
        return _Stream(self._stream(f, wanted, request), status_code=status, headers=headers)

    async def _stream(
        self, f: ArchivedFile, wanted: ByteRange, request: Request
    ) -> AsyncIterator[bytes]:
        # The raw file: each read is one range read into a fresh bytes object, with no
        # copy into (and no 1 MiB buffer of) the buffered ArchivedFile.
        raw = f.raw
        try:
            await self._run(raw.seek, wanted.start)
            remaining = wanted.length
            while remaining > 0:
                chunk = await self._run(raw.read, min(CHUNK, remaining))
                if not chunk:
                    raise CorruptShardError(f.entry.shard, None, f"{f.entry.uid!r} ended early")
                remaining -= len(chunk)
                yield chunk
        except DeswmError as exc:
            log.error(
                "%s %s: aborted after the headers were sent: %s: %s",
                request.method,
                request.url.path,
                type(exc).__name__,
                redact(str(exc)),
            )
            raise _StreamAborted from None
        finally:
            f.close()

    async def stat(self, request: Request) -> Response:
        uid, created_at = _uid(request), _created_at(request)
        entry = await self._run(self.archive.stat, uid, created_at)
        return JSONResponse(_stat_json(entry))

    # --- operations --------------------------------------------------------------------

    async def metrics_page(self, request: Request) -> Response:
        body = await self._run(generate_latest, self.metrics.registry)
        return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        await self._run(_probe_root, self.archive)
        return JSONResponse({"status": "ready"})


def _not_modified(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in ("ETag", "Accept-Ranges")}


def _range_header(request: Request) -> tuple[str, str | None] | None:
    header = request.headers.get("range")
    return None if header is None else (header, request.headers.get("if-range"))


@attrs.frozen
class _Whole:
    """A response body read at once (at most ``CHUNK`` bytes)."""

    data: bytes
    status: int
    headers: dict[str, str]


def _open(
    archive: Archive, uid: str, created_at: datetime, range_header: tuple[str, str | None] | None
) -> _Whole | tuple[ArchivedFile, ByteRange, int, dict[str, str]]:
    """Open the file and, when the answer is small, read it (one worker-thread hop)."""
    f = archive.open(uid, created_at)
    try:
        headers = _file_headers(f.entry, uid)
        wanted = _range(range_header, f.entry.size, headers.get("ETag"))
        status = 200 if wanted is None else 206
        if wanted is None:
            wanted = ByteRange(0, f.entry.size, f.entry.size)
        else:
            headers["Content-Range"] = wanted.content_range
        headers["Content-Length"] = str(wanted.length)
        if wanted.length > CHUNK:
            return f, wanted, status, headers
        data = _read_at(f, wanted.start, wanted.length)
    except BaseException:
        f.close()
        raise
    f.close()
    return _Whole(data, status, headers)


def _range(
    range_header: tuple[str, str | None] | None, size: int, etag: str | None
) -> ByteRange | None:
    if range_header is None:
        return None
    header, if_range = range_header
    if if_range is not None and if_range.strip() != etag:
        return None  # If-Range names another version: the whole file
    return parse_range(header, size)


def _read_at(f: ArchivedFile, start: int, length: int) -> bytes:
    f.seek(start)
    return f.read(length)


def _probe_root(archive: Archive) -> None:
    """One cheap request proving the archive root is reachable (``/readyz``)."""
    store = archive.store
    target = store.root.split("/", 1)[0] if store.kind == "s3" else store.root
    try:
        store.fs.invalidate_cache(target)
        found = bool(store.fs.exists(target))
    except Exception as exc:
        raise ShardError(f"cannot reach the archive root {redact(store.url)}: {exc}") from exc
    if not found:
        raise ShardError(f"the archive root {redact(store.url)} does not exist")


def _guard(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Map errors to JSON answers; log each one as a redacted line (no traceback)."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except _BadRequest as exc:
            return _error(400, str(exc), exc.hint)
        except Unsatisfiable as exc:
            response = _error(416, str(exc), "ask for a range within the file's size")
            response.headers["Content-Range"] = f"bytes */{exc.size}"
            return response
        except NotArchivedError as exc:
            shard = _shard_name(request)
            return _error(
                404,
                redact(exc.message),
                exc.hint,
                shard=shard,
                looked_in=list(exc.looked_in),
            )
        except ConfigError as exc:
            return _error(400, redact(exc.message), exc.hint)
        except UnverifiedEntryError as exc:
            _log_failure(request, 502, exc)
            return _error(502, redact(exc.message), "the entry has no checksum to verify it by")
        except CorruptShardError as exc:
            _log_failure(request, 502, exc)
            return _error(502, redact(exc.message), "the archived bytes failed verification")
        except ShardError as exc:
            _log_failure(request, 503, exc)
            return _error(
                503, "the archive storage failed", "retry later; the service log has the cause"
            )
        except Exception as exc:
            _log_failure(request, 500, exc)
            return _error(500, "internal error", "the service log has the cause")

    return guarded


def _shard_name(request: Request) -> str | None:
    """The first part of the group a request routes to (what a 404 names)."""
    try:
        uid, created_at = _uid(request), _created_at(request)
    except _BadRequest:
        return None
    archive: Archive = request.app.state.archive
    return archive.router.route(uid, created_at).object_name(0)


def _log_failure(request: Request, status: int, exc: BaseException) -> None:
    log.error(
        "%s %s -> %d: %s: %s",
        request.method,
        request.url.path,
        status,
        type(exc).__name__,
        redact(str(exc)),
    )


def build_routes(service: Service) -> list[Route]:
    return [
        Route("/files/{uid:path}/stat", _guard(service.stat), methods=["GET"]),
        Route("/files/{uid:path}", _guard(service.file), methods=["GET", "HEAD"]),
        Route("/metrics", _guard(service.metrics_page), methods=["GET"]),
        Route("/healthz", _guard(service.healthz), methods=["GET"]),
        Route("/readyz", _guard(service.readyz), methods=["GET"]),
    ]
