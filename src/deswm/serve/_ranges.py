"""HTTP ``Range`` and ``If-None-Match`` as the retrieval service understands them.

One byte range per request (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``), RFC 9110
section 14: a header that is not a valid ``bytes`` range set is ignored (the whole file
is sent), a request for several ranges is answered with the whole file (allowed by the
RFC, and it keeps responses simple for clients), and a valid single range that starts
at or past the end (or a suffix of 0 bytes) is unsatisfiable: 416.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

__all__ = ["ByteRange", "Unsatisfiable", "etag_matches", "parse_range", "quote_etag"]

_RANGE: Final = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_MAX_DIGITS: Final = 20
"""Longer numbers than this are not sizes (and would be slow to convert)."""


@attrs.frozen
class ByteRange:
    """Bytes ``[start, end)`` of a file of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.size}"


class Unsatisfiable(Exception):
    """A valid range that selects no byte of the file (answered with 416)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"no byte of the {size}-byte file is in the requested range")
        self.size = size


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range of ``header`` within a file of ``size`` bytes; ``None``: whole file.

    Raises :class:`Unsatisfiable` for a range that starts past the end or asks for an
    empty suffix.
    """
    if header is None or "," in header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if len(first) > _MAX_DIGITS or len(last) > _MAX_DIGITS or not (first or last):
        return None
    if not first:  # bytes=-n: the last n bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable(size)
        return ByteRange(max(size - suffix, 0), size, size)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored like any other malformed header
    if start >= size:
        raise Unsatisfiable(size)
    end = size if not last else min(int(last) + 1, size)
    return ByteRange(start, end, size)


def quote_etag(sha256: str) -> str:
    """The strong ETag of a file: its sha256, quoted."""
    return f'"{sha256}"'


def etag_matches(header: str | None, etag: str | None) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, RFC 9110)."""
    if header is None or etag is None:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))
