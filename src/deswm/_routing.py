"""DES-compatible routing of ``(uid, created_at)`` to a shard object.

Routing is a pure function (G6): the shard of a file is computed, never looked up, so
any process on any machine finds the same object. It never uses the built-in
``hash()``, which differs per process.

Rules (the DES rules, see docs/format.md):

* an ``int`` uid becomes its decimal string; a ``str`` uid is used as is;
* a uid of ASCII digits only routes by ``int(uid) % 2**n_bits`` (so ``"007"`` and
  ``"7"`` share a shard); any other uid by ``zlib.crc32(uid.encode("utf-8")) & mask``;
* the shard hex is uppercase and zero-padded to ``ceil(n_bits / 4)`` digits. For
  n_bits 4, 8, 12 and 16 this is exactly the original DES name; for other widths the
  original used ``n_bits // 4`` digits and so mixed widths, which deswm does not copy;
* the bucket is the UTC day of ``created_at`` (an aware datetime in another zone is
  converted first). Every router's buckets are UTC days, because the object names embed
  the day: :func:`require_day_buckets` is how the orchestrator and the packer refuse a
  router that would bucket otherwise.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from deswm import _publish
from deswm._defaults import N_BITS
from deswm._errors import ConfigError, SourceError
from deswm._model import ShardKey
from deswm._protocols import ShardRouter
from deswm._timeutil import floor_day, format_day, format_utc, parse_day, require_utc

__all__ = ["DesRouter"]

_DAY = timedelta(days=1)
_ZERO = timedelta(0)
_PROBE = datetime(2024, 5, 17, 12, 34, 56, 789012, tzinfo=UTC)
"""An instant inside a day, away from midnight: where :func:`require_day_buckets` looks."""
LAST_BUCKET = datetime(9999, 12, 31, tzinfo=UTC)
"""The last day ``datetime`` can name: its end (year 10000) cannot be expressed."""


def _is_ascii_digits(uid: str) -> bool:
    # str.isdigit() is true for "²" and other non-ASCII digits; DES only counts 0-9.
    return uid.isascii() and uid.isdigit()


class DesRouter:
    """Routes files to ``{YYYYMMDD}_{HEX}_{NNNN}.des`` objects by UTC day and shard.

    Args:
        n_bits: shard index width, 4 to 16; ``2**n_bits`` shards per day.
    """

    __slots__ = ("_hex_width", "_mask", "n_bits")

    route_is_composed: ClassVar[bool] = True
    """``route`` is ``group(bucket_start(t), shard_index(uid))`` and nothing more: the
    packer may route by :meth:`shard_index` alone (see :class:`~deswm.ShardRouter`).
    A subclass that overrides :meth:`route` must set it to ``False``."""

    def __init__(self, n_bits: int = N_BITS) -> None:
        if isinstance(n_bits, bool) or not isinstance(n_bits, int) or not 4 <= n_bits <= 16:
            raise ConfigError(
                f"must be an integer from 4 to 16, got {n_bits!r}",
                key="archive.n_bits",
                hint="8 (256 shards per day) suits most tables; use 4, 8, 12 or 16 to "
                "share the archive with the original DES tools",
            )
        self.n_bits = n_bits
        self._mask = (1 << n_bits) - 1
        self._hex_width = -(-n_bits // 4)

    def __repr__(self) -> str:
        return f"DesRouter(n_bits={self.n_bits})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DesRouter) and other.n_bits == self.n_bits

    def __hash__(self) -> int:
        return hash((DesRouter, self.n_bits))

    @property
    def shard_count(self) -> int:
        return self._mask + 1

    def shard_index(self, uid: str | int) -> int:
        text = uid_text(uid)
        if _is_ascii_digits(text):
            # 10**n is a multiple of 2**n, so the last n_bits digits decide the modulo;
            # this also keeps very long digit uids clear of int()'s digit limit.
            return int(text[-self.n_bits :]) & self._mask
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"uid {text!r} is not valid Unicode (a lone surrogate); DES names are UTF-8"
            ) from None
        return zlib.crc32(encoded) & self._mask

    def shard_hex(self, index: int) -> str:
        return format(index, "X").zfill(self._hex_width)

    def route(self, uid: str | int, created_at: datetime) -> ShardKey:
        bucket = floor_day(require_utc(created_at, "created_at"))
        return self.group(bucket, self.shard_index(uid))

    def group(self, bucket: datetime, index: int) -> ShardKey:
        if not 0 <= index <= self._mask:
            raise ValueError(f"shard index {index} is outside 0..{self._mask}")
        return ShardKey(bucket=bucket, index=index, hex=self.shard_hex(index))

    def bucket_start(self, instant: datetime) -> datetime:
        return floor_day(require_utc(instant, "instant"))

    def next_bucket(self, bucket: datetime) -> datetime:
        bucket = require_utc(bucket, "bucket")
        if bucket != floor_day(bucket):
            raise ValueError(f"{bucket} is not a bucket start (UTC midnight)")
        if bucket >= LAST_BUCKET:
            raise SourceError(
                f"bucket {format_day(bucket)} has no end: the next day is after year 9999, "
                "which no datetime (and so no window) can hold",
                hint="Rows created on 9999-12-31 cannot be archived; exclude them in "
                "SqlSourceProvider.filter_query() (SqlSourceProvider.unplaceable_created_at() "
                "lists them)",
            )
        return bucket + _DAY

    def bucket_of_day(self, day: str) -> datetime:
        """The bucket start of a ``YYYYMMDD`` day string."""
        return parse_day(day, "day")


def uid_text(uid: str | int) -> str:
    """The entry name of a uid: an ``int`` becomes its decimal string."""
    if isinstance(uid, bool):
        raise TypeError("a uid cannot be a bool")
    if isinstance(uid, int):
        return str(uid)
    if isinstance(uid, str):
        return uid
    raise TypeError(f"a uid must be str or int, got {type(uid).__name__}")


def require_day_buckets(router: ShardRouter) -> None:
    """Refuse a router whose buckets are not UTC days, with :class:`ConfigError`.

    The DES2 object names embed the UTC day (``{YYYYMMDD}_{HEX}_{NNNN}.des``), so a
    bucket of another length would name objects after a day its files do not belong to.
    One probe instant is asked: its bucket must start at its UTC midnight and end at the
    next one. That catches a router built for another bucket length or another zone's
    days; :class:`~deswm.testing.ShardRouterContract` checks every
    instant a test can reach.
    """
    day = floor_day(_PROBE)
    start = router.bucket_start(_PROBE)
    if start == day and start.utcoffset() == _ZERO:
        end = router.next_bucket(start)
        if end == day + _DAY and end.utcoffset() == _ZERO:
            return
        found = f"next_bucket({format_utc(day)}) is {end.isoformat()}"
    else:
        found = f"bucket_start({format_utc(_PROBE)}) is {start.isoformat()}"
    raise ConfigError(
        f"{router!r} does not bucket by UTC day: {found}",
        key="router",
        hint="Buckets are UTC days because the shard object names embed the day "
        "({YYYYMMDD}_{HEX}_{NNNN}.des); a router chooses the shard index within a day only",
    )


_publish(globals())
