"""MemoryFileReader keeps the FileReader contract; FileReaderBase's pool behaves."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from deswm._errors import ConfigError, FileMissingError, FileReadError
from deswm._model import SourceRecord
from deswm._readers import FileReaderBase
from deswm.testing._contracts.reader import FileReaderContract, MakeReader
from deswm.testing._readers import MemoryFileReader, ReaderCall

T0 = datetime(2024, 5, 1, tzinfo=UTC)


class TestMemoryReaderContract(FileReaderContract):
    @pytest.fixture
    def make_reader(self) -> MakeReader:
        def make(files: Mapping[str, bytes]) -> tuple[MemoryFileReader, dict[str, str]]:
            locations = {name: f"mem/{name}" for name in files}
            reader = MemoryFileReader({locations[n]: data for n, data in files.items()})
            return reader, locations

        return make


def _records(*locations: str) -> list[SourceRecord]:
    return [SourceRecord(f"u{n}", T0, location) for n, location in enumerate(locations)]


def test_records_calls_and_keeps_state_per_instance() -> None:
    files = {"a": b"1"}
    one = MemoryFileReader(files)
    two = MemoryFileReader(files)
    one.delete("a")
    assert two.read("a") == b"1", "readers share no state"
    assert files == {"a": b"1"}, "the caller's dict is not changed"
    with pytest.raises(FileMissingError):
        one.read("a")
    one.put("b", bytearray(b"2"))
    assert one.read("b") == b"2"
    assert one.calls == [
        ReaderCall("delete", "a"),
        ReaderCall("read", "a"),
        ReaderCall("read", "b"),
    ]
    assert one.calls_of("read") == ["a", "b"]
    assert one.files == {"b": b"2"}
    assert repr(one) == "MemoryFileReader(1 files)"


def test_injected_errors() -> None:
    failure = FileReadError("permission denied", location="b")
    reader = MemoryFileReader({"a": b"1", "b": b"2"}, errors={"b": failure})
    results = list(reader.read_many(_records("a", "b", "a")))
    assert [outcome for _, outcome in results] == [b"1", failure, b"1"]


def test_other_exceptions_end_read_many() -> None:
    reader = MemoryFileReader({"a": b"1"}, errors={"b": RuntimeError("bug in a reader")})
    results = reader.read_many(_records("a", "b", "a"))
    assert next(results)[1] == b"1"
    with pytest.raises(RuntimeError, match="bug in a reader"):
        next(results)


def test_rejects_non_bytes() -> None:
    with pytest.raises(TypeError, match="must be bytes"):
        MemoryFileReader({"a": "text"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_workers": 0}, "reader.max_workers"),
        ({"max_workers": True}, "reader.max_workers"),
        ({"read_ahead": 0}, "reader.read_ahead"),
    ],
)
def test_validates_pool_settings(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MemoryFileReader({}, **kwargs)
    assert caught.value.key == key


class _SlowReader(FileReaderBase):
    """Counts concurrent and started reads; each read waits for ``release``."""

    def __init__(self, *, max_workers: int, read_ahead: int | None = None) -> None:
        super().__init__(max_workers=max_workers, read_ahead=read_ahead)
        self.release = threading.Event()
        self.started: list[str] = []
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def read(self, location: str) -> bytes:
        with self._lock:
            self.started.append(location)
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if not self.release.wait(timeout=10):
                raise TimeoutError("test reader was never released")
            return location.encode()
        finally:
            with self._lock:
                self.active -= 1

    def delete(self, location: str) -> None:
        raise NotImplementedError


def test_read_ahead_is_bounded_and_reads_are_concurrent() -> None:
    reader = _SlowReader(max_workers=3, read_ahead=5)
    results = reader.read_many(_records(*(f"l{n}" for n in range(50))))
    threading.Timer(0.2, reader.release.set).start()
    first = next(results)
    assert first[1] == b"l0"
    # While the consumer holds the first result, at most read_ahead are in flight.
    assert len(reader.started) <= 5
    rest = [data for _, data in results]
    assert rest == [f"l{n}".encode() for n in range(1, 50)]
    assert 1 < reader.peak <= 3


def test_closing_early_does_not_wait_for_reads_in_progress() -> None:
    reader = _SlowReader(max_workers=2, read_ahead=4)
    results = reader.read_many(_records(*(f"l{n}" for n in range(100))))
    thread_count = threading.active_count()
    reader_thread = threading.Thread(target=lambda: next(results, None))
    reader_thread.start()
    time.sleep(0.1)  # reads l0 and l1 are blocked; l2 and l3 are queued
    reader.release.set()
    reader_thread.join(timeout=5)
    started = time.monotonic()
    results.close()
    assert time.monotonic() - started < 1.0
    assert len(reader.started) <= 4 + 1
    assert threading.active_count() <= thread_count + 2


def test_generator_close_while_reads_block() -> None:
    reader = _SlowReader(max_workers=2, read_ahead=2)
    results = reader.read_many(_records("a", "b", "c", "d"))
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.append(next(results)))
    consumer.start()
    time.sleep(0.05)
    reader.release.set()
    consumer.join(timeout=5)
    assert len(got) == 1
    assert got[0][1] == b"a"  # type: ignore[index]
    started = time.monotonic()
    results.close()
    assert time.monotonic() - started < 1.0
