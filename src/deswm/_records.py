"""Archive entries, watermark history and other value types as rows, for notebooks.

:func:`to_records` turns any iterable of deswm value types (``Archive.entries()``,
``store.history()``, ``store.list()``, ``error_store.list()``, ...) into a list of flat
dicts; :func:`to_pandas` into a ``pandas.DataFrame`` (``pip install 'deswm[pandas]'``;
pandas is never a core dependency of deswm). Nested value types are flattened with a dotted prefix
(``key.pipeline``), an index entry's JSON meta is decoded into ``meta``, and datetimes
stay aware UTC ``datetime`` objects.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import attrs

from deswm import _publish
from deswm._container import IndexEntry
from deswm._errors import ConfigError

__all__ = ["to_pandas", "to_records"]


def _flatten(value: Any, prefix: str, row: dict[str, Any]) -> None:
    for field in attrs.fields(type(value)):
        item = getattr(value, field.name)
        name = f"{prefix}{field.name}"
        if attrs.has(type(item)) and not isinstance(item, type):
            _flatten(item, f"{name}.", row)
        else:
            row[name] = item


def _record(value: Any) -> dict[str, Any]:
    if not attrs.has(type(value)):
        raise TypeError(f"to_records() takes deswm value types, got {type(value).__name__}")
    row: dict[str, Any] = {}
    _flatten(value, "", row)
    if isinstance(value, IndexEntry):
        row["meta"] = value.meta_dict if value.meta_valid else None
        row["big"] = value.big
        row["sha256"] = value.sha256
        row["created_at"] = value.created_at
    return row


def to_records(values: Iterable[Any]) -> list[dict[str, Any]]:
    """One flat dict per value (an index entry's ``meta`` decoded; ``None`` if damaged)."""
    return [_record(value) for value in values]


def to_pandas(values: Iterable[Any]) -> Any:
    """A ``pandas.DataFrame`` of :func:`to_records` (needs pandas)."""
    try:
        pandas = importlib.import_module("pandas")
    except ImportError:
        raise ConfigError(
            "to_pandas() needs pandas, which deswm does not install",
            hint="pip install 'deswm[pandas]' (or use to_records() for a list of dicts)",
        ) from None
    return pandas.DataFrame.from_records(to_records(values))


_publish(globals())
