"""UTC normalisation and day arithmetic.

Every instant inside deswm is an aware ``datetime`` in UTC (G10). Values enter through
three doors, each with one rule:

* from the API: naive datetimes are rejected (:class:`~deswm.NaiveDatetimeError`);
* from a database: naive values are read in the configured source timezone;
* from text (config files, the CLI): ISO 8601; text without an offset is UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from deswm._errors import ConfigError, NaiveDatetimeError

__all__ = [
    "UTC",
    "as_utc",
    "floor_day",
    "format_day",
    "format_utc",
    "format_wall",
    "parse_day",
    "parse_timestamp",
    "parse_timezone",
    "require_utc",
]


def require_utc(value: datetime, what: str) -> datetime:
    """Return ``value`` converted to UTC; reject naive datetimes (API input)."""
    if not isinstance(value, datetime):
        raise ConfigError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise NaiveDatetimeError(what, value)
    return value.astimezone(UTC)


def as_utc(value: datetime, assume: tzinfo = UTC) -> datetime:
    """Return ``value`` in UTC, reading a naive value in ``assume`` (database input)."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        value = value.replace(tzinfo=assume)
    return value.astimezone(UTC)


def floor_day(value: datetime) -> datetime:
    """UTC midnight at or before ``value`` (an aware datetime)."""
    value = value.astimezone(UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def format_utc(value: datetime) -> str:
    """Fixed-width ISO 8601 UTC, ``2024-05-17T10:00:00.000000Z``.

    Fixed width makes the strings sort like the instants they name, which the packer
    relies on when it orders entries by the ``created_at`` in their metadata. The year
    always has four digits (``0999-...``): ``strftime("%Y")`` does not pad on Linux.
    """
    v = value.astimezone(UTC)
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T"
        f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}Z"
    )


def format_day(value: datetime) -> str:
    """The ``YYYYMMDD`` day of ``value`` as it stands (no zone conversion), four-digit year.

    The one formatter of day names (shard objects, folders): ``strftime("%Y%m%d")``
    writes year 999 as ``9990601``, a name no reader parses back.
    """
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


def format_wall(value: datetime, *, micros: bool | None = None) -> str:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]`` of ``value`` as it stands, four-digit year.

    The text form SQLite stores timestamps in, so text order is time order. ``micros``
    None writes the fraction only when it is not zero.
    """
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )
    if micros or (micros is None and value.microsecond):
        text += f".{value.microsecond:06d}"
    return text


def parse_day(text: str, what: str) -> datetime:
    """The UTC midnight of a ``YYYYMMDD`` day name (exactly eight digits, year 0001-9999)."""
    if not (isinstance(text, str) and len(text) == 8 and text.isascii() and text.isdigit()):
        raise ConfigError(f"{text!r} is not a day in YYYYMMDD form", key=what)
    try:
        return datetime(int(text[:4]), int(text[4:6]), int(text[6:]), tzinfo=UTC)
    except ValueError:
        raise ConfigError(f"{text!r} is not a day in YYYYMMDD form", key=what) from None


def parse_timestamp(text: str | date | datetime, what: str) -> datetime:
    """Parse an ISO 8601 date or timestamp from a config file or the command line.

    A value without an offset (``2024-05-01`` or ``2024-05-01T12:00``) is taken as UTC:
    operators type dates, and the watermark is defined in UTC.
    """
    if isinstance(text, datetime):
        return as_utc(text)
    if isinstance(text, date):
        return datetime(text.year, text.month, text.day, tzinfo=UTC)
    raw = str(text).strip()
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError(
            f"{raw!r} is not an ISO 8601 date or timestamp",
            key=what,
            hint="Use e.g. 2024-05-01 or 2024-05-01T00:00:00Z",
        ) from None
    return as_utc(parsed)


def parse_timezone(name: str, what: str) -> tzinfo:
    """Resolve an IANA zone name (``Europe/Warsaw``) or ``UTC``."""
    if name.upper() in {"UTC", "Z"}:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown timezone {name!r}",
            key=what,
            hint="Use an IANA name such as UTC or Europe/Warsaw",
        ) from None
