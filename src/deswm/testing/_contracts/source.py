"""The contract of :class:`~deswm.SourceProvider`, as a reusable test class.

Every clause of the protocol's docstrings is a test here: half-open windows, order by
``(created_at, uid)`` with ties, aware UTC with microseconds (G10), paging that neither
drops nor repeats a row, and one-query pending stats. Subclass it in a ``Test*`` class
and provide a ``make_source`` fixture that returns a factory: given a list of
:class:`~deswm.SourceRecord` (and optionally a ``page_size``), it returns a provider
over exactly those rows::

    from deswm.testing import SourceProviderContract

    class TestMySource(SourceProviderContract):
        @pytest.fixture
        def make_source(self, engine):
            def make(records, *, page_size=None):
                load_rows(engine, records)  # your table, your columns
                return MySource(engine, page_size=page_size or 10_000)
            return make

The factory is called at most once per test. Records use uids of lowercase ASCII
letters and digits of equal length, so their order is the same under every collation.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from types import EllipsisType
from typing import Protocol

import attrs
import pytest

from deswm._model import Partition, SourceRecord, Window
from deswm._protocols import PartitionedSource, SourceProvider
from deswm._routing import DesRouter

__all__ = ["MakeSource", "SourceProviderContract"]

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)
US = timedelta(microseconds=1)


class MakeSource(Protocol):
    """Builds a provider over exactly ``records``; ``page_size`` where it has one."""

    def __call__(
        self, records: Sequence[SourceRecord], *, page_size: int | None = None
    ) -> SourceProvider: ...


def _record(n: int, created_at: datetime, size: EllipsisType | int | None = ...) -> SourceRecord:
    """Row ``n``: uid ``u00000n``, size ``n`` unless given."""
    return SourceRecord(
        uid=f"u{n:06d}",
        created_at=created_at,
        location=f"/data/{n:06d}.bin",
        size=n if isinstance(size, EllipsisType) else size,
    )


def _sorted(records: Sequence[SourceRecord]) -> list[SourceRecord]:
    return sorted(records, key=lambda r: (r.created_at, r.uid))


def _shuffled(records: Sequence[SourceRecord], seed: int = 7) -> list[SourceRecord]:
    mixed = list(records)
    random.Random(seed).shuffle(mixed)
    return mixed


def _read(source: SourceProvider, window: Window) -> list[SourceRecord]:
    return list(source.iter_records(window))


def _close(iterator: Iterator[SourceRecord]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


class SourceProviderContract:
    """Tests every clause of the :class:`~deswm.SourceProvider` protocol.

    Subclasses override the ``make_source`` fixture. ``small_page_size`` is the page
    size the paging tests ask for (providers without pages ignore it).
    """

    small_page_size: int = 7

    @pytest.fixture
    def make_source(self) -> MakeSource:
        """A factory of providers; every subclass must override this fixture."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the `make_source` fixture to return a "
            "factory: make_source(records, *, page_size=None) -> SourceProvider"
        )

    def test_satisfies_the_protocol(self, make_source: MakeSource) -> None:
        assert isinstance(make_source([]), SourceProvider)

    # --- windows ------------------------------------------------------------------

    def test_window_is_half_open(self, make_source: MakeSource) -> None:
        end = T0 + DAY
        rows = [
            _record(1, T0 - US),
            _record(2, T0),
            _record(3, T0 + timedelta(hours=12)),
            _record(4, end - US),
            _record(5, end),
        ]
        source = make_source(_shuffled(rows))
        assert _read(source, Window(T0, end)) == rows[1:4], "start included, end excluded"
        assert _read(source, Window(T0 - DAY, T0)) == rows[:1]
        assert _read(source, Window(end, end + DAY)) == rows[4:]

    def test_consecutive_windows_cover_every_row_once(self, make_source: MakeSource) -> None:
        rows = []
        for day in range(3):
            midnight = T0 + day * DAY
            for n, offset in enumerate((timedelta(0), US, timedelta(hours=6), DAY - US)):
                rows.append(_record(day * 10 + n, midnight + offset))
        source = make_source(_shuffled(rows))
        seen = [
            r
            for day in range(-1, 4)
            for r in _read(source, Window(T0 + day * DAY, T0 + (day + 1) * DAY))
        ]
        assert seen == _sorted(rows)

    def test_empty_windows(self, make_source: MakeSource) -> None:
        source = make_source([_record(1, T0), _record(2, T0 + DAY)])
        assert _read(source, Window(T0 + US, T0 + DAY)) == []
        assert _read(source, Window(T0, T0)) == []
        stats = source.pending_stats(Window(T0 + US, T0 + DAY))
        assert (stats.files, stats.bytes, stats.oldest, stats.newest) == (0, 0, None, None)
        empty = source.pending_stats(Window(T0, T0))
        assert (empty.files, empty.bytes, empty.oldest, empty.newest) == (0, 0, None, None)

    def test_empty_source(self, make_source: MakeSource) -> None:
        source = make_source([])
        assert _read(source, Window(T0, T0 + DAY)) == []
        assert source.pending_stats(Window(T0, T0 + DAY)).files == 0

    # --- order and values ---------------------------------------------------------

    def test_orders_by_created_at_then_uid(self, make_source: MakeSource) -> None:
        tie = T0 + timedelta(hours=1)
        rows = [_record(n, tie) for n in (5, 3, 9, 1)]
        rows += [_record(n, T0 + timedelta(minutes=n)) for n in (70, 20, 40)]
        rows += [_record(n, tie + US) for n in (8, 2)]
        source = make_source(_shuffled(rows))
        got = _read(source, Window(T0, T0 + DAY))
        assert [r.uid for r in got] == [r.uid for r in _sorted(rows)]

    def test_keeps_microseconds_and_fields(self, make_source: MakeSource) -> None:
        rows = [
            _record(1, T0 + timedelta(seconds=1, microseconds=1), size=0),
            _record(2, T0 + timedelta(hours=3, microseconds=123_456), size=None),
            _record(3, T0 + timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999)),
        ]
        rows[1] = SourceRecord(rows[1].uid, rows[1].created_at, "s3://bucket/a b/ż.bin")
        source = make_source(rows)
        got = _read(source, Window(T0, T0 + DAY))
        assert got == rows
        assert [r.created_at.microsecond for r in got] == [1, 123_456, 999_999]
        assert got[1].size is None
        assert got[0].size == 0

    def test_created_at_is_aware_utc(self, make_source: MakeSource) -> None:
        source = make_source([_record(n, T0 + n * timedelta(hours=5)) for n in range(5)])
        window = Window(T0, T0 + DAY)
        got = _read(source, window)
        assert len(got) == 5
        for record in got:
            assert record.created_at.tzinfo is not None, f"{record} is naive"
            assert record.created_at.utcoffset() == timedelta(0), f"{record} is not UTC"
            assert isinstance(record.uid, str)
        stats = source.pending_stats(window)
        for instant in (stats.oldest, stats.newest):
            assert instant is not None
            assert instant.utcoffset() == timedelta(0)

    def test_unicode_uid(self, make_source: MakeSource) -> None:
        rows = [
            SourceRecord("zażółć-gęślą-jaźń", T0 + timedelta(hours=1), "/data/pl.txt", 3),
            SourceRecord("文件-😀", T0 + timedelta(hours=2), "/data/cjk.txt", 4),
        ]
        assert _read(make_source(rows), Window(T0, T0 + DAY)) == rows

    # --- paging -------------------------------------------------------------------

    def test_many_rows_across_pages(self, make_source: MakeSource) -> None:
        # Ten rows share each created_at, so ties straddle every page boundary.
        rows = [_record(n, T0 + timedelta(seconds=n // 10, microseconds=n % 3)) for n in range(157)]
        source = make_source(_shuffled(rows), page_size=self.small_page_size)
        got = _read(source, Window(T0, T0 + DAY))
        assert len(got) == len(rows), "rows lost or repeated across pages"
        assert got == _sorted(rows)

    def test_page_size_one_with_ties(self, make_source: MakeSource) -> None:
        rows = [_record(n, T0 + timedelta(hours=n // 4)) for n in range(12)]
        source = make_source(_shuffled(rows), page_size=1)
        assert _read(source, Window(T0, T0 + DAY)) == _sorted(rows)

    def test_partial_iteration_then_again(self, make_source: MakeSource) -> None:
        rows = [_record(n, T0 + n * timedelta(minutes=1)) for n in range(40)]
        source = make_source(rows, page_size=self.small_page_size)
        window = Window(T0, T0 + DAY)
        iterator = source.iter_records(window)
        first = [next(iterator) for _ in range(10)]
        _close(iterator)
        assert first == rows[:10]
        assert _read(source, window) == rows
        assert source.pending_stats(window).files == 40

    def test_interleaved_iterations(self, make_source: MakeSource) -> None:
        rows = [_record(n, T0 + n * timedelta(minutes=7)) for n in range(30)]
        source = make_source(rows, page_size=self.small_page_size)
        window = Window(T0, T0 + DAY)
        pairs = list(zip(source.iter_records(window), source.iter_records(window), strict=True))
        assert [a for a, _ in pairs] == [b for _, b in pairs] == rows

    # --- stats --------------------------------------------------------------------

    def test_partition_reads_hold_every_owned_row_in_order(self, make_source: MakeSource) -> None:
        """The optional :class:`~deswm._protocols.PartitionedSource` capability: at least
        every owned row, in window order, and no row outside the window."""
        rows = [_record(n, T0 + n * timedelta(minutes=7)) for n in range(60)]
        rows += [
            attrs.evolve(_record(n, T0 + n * timedelta(minutes=5, seconds=1)), uid=str(1000 + n))
            for n in range(60, 120)
        ]
        source = make_source(_shuffled(rows), page_size=self.small_page_size)
        if not isinstance(source, PartitionedSource):
            pytest.skip("the source has no partition filter (optional)")
        window = Window(T0, T0 + DAY)
        everything = _read(source, window)
        router = DesRouter(8)
        for index in range(3):
            partition = Partition(index, 3)
            got = list(source.iter_partition_records(window, router, partition))
            owned = [r for r in everything if partition.owns(router.shard_index(r.uid))]
            assert [r for r in got if partition.owns(router.shard_index(r.uid))] == owned
            assert got == [r for r in everything if r in got], "window order, no extra row"

    def test_pending_stats(self, make_source: MakeSource) -> None:
        inside = [
            _record(1, T0 + timedelta(microseconds=5), size=100),
            _record(2, T0 + timedelta(hours=2), size=None),
            _record(3, T0 + timedelta(hours=2), size=23),
            _record(4, T0 + DAY - US, size=7),
        ]
        outside = [_record(5, T0 - US, size=1000), _record(6, T0 + DAY, size=1000)]
        source = make_source(_shuffled(inside + outside))
        window = Window(T0, T0 + DAY)
        stats = source.pending_stats(window)
        assert stats.window == window
        assert stats.files == 4
        assert stats.bytes == 130
        assert stats.oldest == T0 + timedelta(microseconds=5)
        assert stats.newest == T0 + DAY - US

    def test_pending_stats_agrees_with_iteration(self, make_source: MakeSource) -> None:
        rows = [_record(n, T0 + n * timedelta(hours=3), size=n * 11) for n in range(20)]
        source = make_source(_shuffled(rows))
        for day in range(4):
            window = Window(T0 + day * DAY, T0 + (day + 1) * DAY)
            got = _read(source, window)
            stats = source.pending_stats(window)
            assert stats.files == len(got)
            assert stats.bytes == sum(r.size or 0 for r in got)
            assert stats.oldest == (got[0].created_at if got else None)
            assert stats.newest == (got[-1].created_at if got else None)

    # --- location references (G15) --------------------------------------------------

    def test_location_references_finds_every_row_of_a_location(
        self, make_source: MakeSource
    ) -> None:
        shared = "/data/shared.bin"
        rows = [
            _record(1, T0 - 30 * DAY),
            attrs.evolve(_record(2, T0), location=shared),
            attrs.evolve(_record(3, T0 + 20 * DAY), location=shared),
            attrs.evolve(_record(4, T0 + 20 * DAY + US), location="/data/other.bin"),
            _record(5, T0 + DAY),
        ]
        source = make_source(_shuffled(rows))
        found = sorted(
            source.location_references([shared, rows[0].location, "/data/none.bin"]),
            key=lambda ref: ref.uid,
        )
        assert [(ref.location, ref.uid, ref.created_at) for ref in found] == [
            (rows[0].location, "u000001", T0 - 30 * DAY),
            (shared, "u000002", T0),
            (shared, "u000003", T0 + 20 * DAY),
        ]
        assert list(source.location_references([])) == []

    def test_location_references_of_many_locations(self, make_source: MakeSource) -> None:
        rows = [_record(n, T0 + n * timedelta(minutes=7)) for n in range(1_200)]
        source = make_source(_shuffled(rows))
        asked = [r.location for r in rows[::2]] + [f"/missing/{n}" for n in range(300)]
        found = list(source.location_references(asked))
        assert sorted(ref.uid for ref in found) == [r.uid for r in rows[::2]]
        for ref in found:
            assert ref.created_at is not None
            assert ref.created_at.utcoffset() == timedelta(0)
