"""``source_rows``: a source's stream ends with the block that reads it, error or not."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from deswm._model import SourceRecord
from deswm._sources import source_rows

ROWS = [SourceRecord(f"u{i}", datetime(2024, 5, 1, i, tzinfo=UTC), f"f{i}") for i in range(3)]


class _Stream:
    def __init__(self) -> None:
        self.open = False

    def rows(self) -> Iterator[SourceRecord]:
        self.open = True
        try:
            yield from ROWS
        finally:
            self.open = False


def _read_and_fail(stream: _Stream) -> None:
    with source_rows(stream.rows()) as rows:
        for _ in rows:
            assert stream.open
            raise RuntimeError("the job failed")


def test_the_stream_is_closed_when_the_reader_fails_midway_even_if_the_traceback_is_kept() -> None:
    stream = _Stream()
    gc.disable()
    try:
        with pytest.raises(RuntimeError) as kept:
            _read_and_fail(stream)
        assert kept.value.__traceback__ is not None
        assert not stream.open
    finally:
        gc.enable()


def test_plain_iterables_need_no_close() -> None:
    with source_rows(ROWS) as rows:
        assert list(rows) == ROWS
