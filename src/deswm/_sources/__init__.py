"""Source providers, and how deswm reads any source's rows."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from deswm._model import SourceRecord


@contextlib.contextmanager
def source_rows(rows: Iterable[SourceRecord]) -> Iterator[Iterator[SourceRecord]]:
    """Iterate a source's rows; end its stream when the block ends, error or not.

    A streaming source holds a connection, a snapshot and a lock on the production table
    while its iterator is open. Left to the garbage collector, a failed job keeps all
    three for as long as anything holds the error's traceback.
    """
    iterator = iter(rows)
    try:
        yield iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
