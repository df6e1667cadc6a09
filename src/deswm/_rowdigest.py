"""The row digest of a bucket manifest: count and order-independent digest of a set of
``(uid, created_at)`` rows (the layout is in ``docs/format.md``, "Bucket manifests").

The sum, modulo ``2**256``, of ``sha256(uid "\\0" format_utc(created_at))`` read as
big-endian integers: independent of the rows' order, so the same aggregate can be computed
from the source later and compared; unlike an XOR it does not cancel a row seen twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

from deswm._timeutil import format_utc

__all__ = ["DIGEST_METHOD", "RowDigest", "instant_text", "row_hash"]

DIGEST_METHOD: Final = "sum256-sha256-uid-nul-created_at"
"""How a manifest's ``rows.digest`` is computed; a change needs a new manifest version."""

_MODULUS: Final = 2**256
_sha256 = hashlib.sha256


def instant_text(created_at: datetime) -> str:
    """``format_utc(created_at)``; for an instant in :data:`datetime.UTC` through the C
    ``isoformat`` (a third of the cost: the digest pays it for every row of every cycle)."""
    if created_at.tzinfo is UTC:
        return created_at.isoformat(timespec="microseconds")[:-6] + "Z"
    return format_utc(created_at)


def row_hash(uid: str, created_at: datetime) -> int:
    """The digest term of one row: ``sha256(uid "\\0" format_utc(created_at))`` as an int."""
    text = uid + "\0" + instant_text(created_at)
    return int.from_bytes(_sha256(text.encode("utf-8", "surrogatepass")).digest(), "big")


class RowDigest:
    """Count and order-independent digest of a set of ``(uid, created_at)`` rows."""

    __slots__ = ("_total", "count")

    def __init__(self) -> None:
        self.count = 0
        self._total = 0

    def add(self, uid: str, created_at: datetime) -> None:
        self.count += 1
        self._total += row_hash(uid, created_at)

    @classmethod
    def known(cls, count: int, hexdigest: str) -> RowDigest:
        """A digest recorded earlier (a manifest's rows), to carry it over unchanged."""
        digest = cls()
        digest.count = count
        digest._total = int(hexdigest, 16)
        return digest

    @classmethod
    def combined(cls, parts: Iterable[tuple[int, int]]) -> RowDigest:
        """The digest of the union of disjoint row sets, from each one's :attr:`state`
        (the lanes of a bucket each digest their own rows)."""
        digest = cls()
        for count, total in parts:
            digest.count += count
            digest._total += total
        return digest

    @property
    def state(self) -> tuple[int, int]:
        """``(count, sum)``: plain data that crosses a process boundary."""
        return self.count, self._total

    @classmethod
    def of(cls, rows: Iterable[tuple[str, datetime]]) -> RowDigest:
        digest = cls()
        for uid, created_at in rows:
            digest.add(uid, created_at)
        return digest

    @property
    def hexdigest(self) -> str:
        """The sum modulo ``2**256`` as 64 lowercase hex digits."""
        return f"{self._total % _MODULUS:064x}"
