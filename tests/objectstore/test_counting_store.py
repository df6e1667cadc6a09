"""``count_reads``: every read-side call of a store is counted, writes pass uncounted."""

from __future__ import annotations

from pathlib import Path

from deswm._objectstore import ObjectStore, open_store
from deswm._objectstore.counting import count_reads


class Holder:
    def __init__(self, backend: ObjectStore) -> None:
        self.backend = backend


def test_reads_are_counted_and_answered(tmp_path: Path) -> None:
    holder = Holder(open_store(tmp_path / "root", key="test.url"))
    holder.backend.create("a.bin", b"0123456789")
    first: list[str] = []
    second: list[str] = []
    count_reads(holder, first.append)
    count_reads(holder, second.append)  # a second count sees every call too
    store = holder.backend

    assert store.get_range("a.bin", 2, 5, None)[0] == b"234"
    assert store.get_tail("a.bin", 3)[0] == b"789"
    found = store.stat("a.bin")
    assert found is not None and found.size == 10
    assert [info.name for info in store.list("a")] == ["a.bin"]
    assert store.create("b.bin", b"x") is not None  # a write: not counted
    assert store.read("b.bin") is not None  # whole-object reads are the watermark's
    assert store.kind == "local"

    assert first == second == ["get_range", "get_tail", "stat", "list"]
