"""MemorySourceProvider keeps the SourceProvider contract, and checks rows like SQL does."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest

from deswm._errors import BadRowError, NaiveDatetimeError
from deswm._model import SourceRecord, Window
from deswm.testing._contracts.source import MakeSource, SourceProviderContract
from deswm.testing._sources import MemorySourceProvider, SourceCall

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)


class TestMemorySourceContract(SourceProviderContract):
    @pytest.fixture
    def make_source(self) -> MakeSource:
        def make(
            records: Sequence[SourceRecord], *, page_size: int | None = None
        ) -> MemorySourceProvider:
            return MemorySourceProvider(records)

        return make


def test_converts_created_at_to_utc() -> None:
    warsaw = timezone(timedelta(hours=2))
    source = MemorySourceProvider([SourceRecord("a", datetime(2024, 5, 1, 1, tzinfo=warsaw), "/a")])
    (record,) = source.iter_records(Window(T0 - DAY, T0 + DAY))
    assert record.created_at == datetime(2024, 4, 30, 23, tzinfo=UTC)
    assert record.created_at.tzinfo is UTC


def test_rejects_naive_created_at() -> None:
    with pytest.raises(NaiveDatetimeError):
        MemorySourceProvider([SourceRecord("a", datetime(2024, 5, 1), "/a")])


@pytest.mark.parametrize(
    ("uid", "location", "size", "message"),
    [
        ("", "/a", None, "uid must be a non-empty string"),
        ("x" * 65_536, "/a", None, "65,536 bytes"),
        ("\udc80", "/a", None, "cannot be encoded as UTF-8"),
        ("a", "", None, "location must be a non-empty string"),
        ("a", "/a", -1, "size must be a non-negative"),
    ],
)
def test_rejects_bad_rows(uid: str, location: str, size: int | None, message: str) -> None:
    with pytest.raises(BadRowError, match=message) as caught:
        MemorySourceProvider([SourceRecord(uid, T0, location, size)])
    assert caught.value.created_at == T0


def test_uid_of_exactly_65535_bytes_is_accepted() -> None:
    uid = "ż" * 32_767 + "a"  # 65,535 bytes in UTF-8
    source = MemorySourceProvider([SourceRecord(uid, T0, "/a")])
    assert [r.uid for r in source.iter_records(Window(T0, T0 + DAY))] == [uid]


def test_add_keeps_order_and_records_calls() -> None:
    source = MemorySourceProvider([SourceRecord("b", T0, "/b")])
    window = Window(T0, T0 + DAY)
    iterator = source.iter_records(window)
    source.add(SourceRecord("a", T0, "/a"), SourceRecord("c", T0 - DAY, "/c"))
    assert [r.uid for r in iterator] == ["b"], "an iteration is a snapshot"
    assert [r.uid for r in source.iter_records(window)] == ["a", "b"]
    assert [r.uid for r in source.records] == ["c", "a", "b"]
    assert len(source) == 3
    source.pending_stats(window)
    assert source.calls == [
        SourceCall("iter_records", window),
        SourceCall("iter_records", window),
        SourceCall("pending_stats", window),
    ]
    assert repr(source) == "MemorySourceProvider(3 records)"


def test_duplicate_rows_are_kept() -> None:
    row = SourceRecord("a", T0, "/a", 1)
    source = MemorySourceProvider([row, row])
    assert list(source.iter_records(Window(T0, T0 + DAY))) == [row, row]
    assert source.pending_stats(Window(T0, T0 + DAY)).bytes == 2
