"""Sizes, durations, instants and counts for people: the CLI's text and the ``__str__``s.

JSON output never goes through here (it keeps exact numbers and fixed-width timestamps);
only text a person reads does, so ``1.1 MiB`` and ``2 h 5 min`` replace ``1153434 bytes``
and ``7500.0 s``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

__all__ = [
    "Displayed",
    "html_table",
    "human_bytes",
    "human_count",
    "human_duration",
    "human_time",
    "text_block",
]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(count: int) -> str:
    """``532 B``, ``1.1 MiB``: binary units, one decimal above bytes."""
    if count < 1024:
        return f"{count} B"
    size = float(count)
    for unit in _UNITS[1:]:
        size /= 1024
        if size < 1024 or unit == _UNITS[-1]:
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def human_count(count: int) -> str:
    """``1,234,567``: thousands separated, so big counts read at a glance."""
    return f"{count:,}"


def human_duration(value: timedelta | float) -> str:
    """``0.42 s``, ``12 s``, ``3 min 4 s``, ``2 h 5 min``, ``3 days 4 h``.

    Two units at most: the second one is dropped when it is zero, and a duration is
    rounded down to its smaller unit (an ETA of ``2 h 5 min`` is not ``2 h 5 min 59 s``).
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        return "-" + human_duration(-seconds)
    if seconds < 10:
        return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        unit = "day" if days == 1 else "days"
        return f"{days} {unit}" + (f" {hours} h" if hours else "")
    if hours:
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    if minutes:
        return f"{minutes} min" + (f" {secs} s" if secs else "")
    return f"{secs} s"


def human_time(value: datetime | None) -> str:
    """``2024-05-17T10:00:00Z``; microseconds only when there are some; ``-`` for ``None``."""
    if value is None:
        return "-"
    v = value.astimezone(UTC)
    text = f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    if v.microsecond:
        text += f".{v.microsecond:06d}"
    return text + "Z"


def html_table(title: str, rows: Iterable[tuple[str, object]]) -> str:
    """A two-column HTML table for notebooks; every label and value is escaped."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
        f"<td style='text-align:left'>{html.escape(str(value))}</td></tr>"
        for label, value in rows
    )
    return f"<table><caption>{html.escape(title)}</caption>{body}</table>"


def text_block(title: str, rows: Iterable[tuple[str, object]]) -> str:
    """``title`` and aligned ``label: value`` lines, the text twin of :func:`html_table`."""
    rows = list(rows)
    width = max((len(label) for label, _ in rows), default=0) + 1
    lines = [title] + [f"  {label + ':':<{width}} {value}" for label, value in rows]
    return "\n".join(lines)


class Displayed:
    """Mixin: ``__str__`` and a notebook ``_repr_html_`` from one ``_display()``.

    ``__repr__`` stays what attrs makes (exact, for debugging); these two are for people.
    """

    __slots__ = ()

    def _display(self) -> tuple[str, list[tuple[str, object]]]:
        raise NotImplementedError

    def __str__(self) -> str:
        return text_block(*self._display())

    def _repr_html_(self) -> str:
        return html_table(*self._display())
