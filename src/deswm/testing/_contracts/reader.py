"""The contract of :class:`~deswm.FileReader`, as a reusable test class.

Every clause of the protocol's docstrings is a test here: exact bytes (a zero-byte file
included), :class:`~deswm.FileMissingError` for a missing file, ``read_many`` in
input order with failures as values and a bounded read-ahead, and an idempotent
``delete``. Subclass it in a ``Test*`` class and provide a ``make_reader`` fixture that
returns a factory: given a mapping of relative name to bytes, it stores those files and
returns ``(reader, locations)``, where ``locations`` maps each name to the location
string the reader reads it by::

    from deswm.testing import FileReaderContract

    class TestMyReader(FileReaderContract):
        @pytest.fixture
        def make_reader(self, tmp_path):
            def make(files):
                for name, data in files.items():
                    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
                    (tmp_path / name).write_bytes(data)
                reader = MyReader()
                return reader, {name: str(tmp_path / name) for name in files}
            return make

Names may contain ``/`` (a sub-folder), spaces and non-ASCII letters. The factory is
called at most once per test. A missing file is made by deleting one with the reader.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Protocol

import pytest

from deswm._errors import FileMissingError, FileReadError
from deswm._model import SourceRecord
from deswm._protocols import FileReader

__all__ = ["FileReaderContract", "MakeReader"]

_WHEN = datetime(2024, 5, 1, tzinfo=UTC)


class MakeReader(Protocol):
    """Stores ``files`` and returns a reader and the location of each name."""

    def __call__(self, files: Mapping[str, bytes]) -> tuple[FileReader, Mapping[str, str]]: ...


def _records(locations: Mapping[str, str], names: list[str]) -> list[SourceRecord]:
    return [SourceRecord(uid=name, created_at=_WHEN, location=locations[name]) for name in names]


def _payload(n: int) -> bytes:
    return random.Random(n).randbytes(n % 97 + 1)


class FileReaderContract:
    """Tests every clause of the :class:`~deswm.FileReader` protocol.

    Subclasses override the ``make_reader`` fixture. ``many`` sizes the ``read_many``
    tests (keep it small for slow stores).
    """

    many: int = 30

    @pytest.fixture
    def make_reader(self) -> MakeReader:
        """A factory of readers; every subclass must override this fixture."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the `make_reader` fixture to return a "
            "factory: make_reader(files) -> (reader, locations)"
        )

    def test_satisfies_the_protocol(self, make_reader: MakeReader) -> None:
        reader, _ = make_reader({"a.bin": b"a"})
        assert isinstance(reader, FileReader)

    # --- read ---------------------------------------------------------------------

    def test_bytes_round_trip(self, make_reader: MakeReader) -> None:
        files = {
            "empty.bin": b"",
            "all-bytes.bin": bytes(range(256)) * 3,
            "sub/dir/nested.json": b'{"a": 1}\n',
            "with space ż.txt": "zażółć\n".encode(),
            "big.bin": random.Random(1).randbytes(300_000),
        }
        reader, locations = make_reader(files)
        for name, data in files.items():
            got = reader.read(locations[name])
            assert isinstance(got, bytes), f"{name}: read returned {type(got).__name__}"
            assert got == data, f"{name}: bytes differ"
        assert reader.read(locations["empty.bin"]) == b""

    def test_missing_file_raises_file_missing(self, make_reader: MakeReader) -> None:
        reader, locations = make_reader({"kept.bin": b"1", "gone.bin": b"2"})
        reader.delete(locations["gone.bin"])
        with pytest.raises(FileMissingError) as caught:
            reader.read(locations["gone.bin"])
        assert caught.value.location == locations["gone.bin"]
        assert isinstance(caught.value, FileReadError)
        assert reader.read(locations["kept.bin"]) == b"1"

    # --- read_many ----------------------------------------------------------------

    def test_read_many_in_input_order_with_error_values(self, make_reader: MakeReader) -> None:
        files = {f"f{n:03d}.bin": _payload(n) for n in range(self.many)}
        reader, locations = make_reader(files)
        gone = sorted(files)[::7]
        for name in gone:
            reader.delete(locations[name])
        names = sorted(files)
        random.Random(3).shuffle(names)
        records = _records(locations, names)
        results = list(reader.read_many(records))
        assert [record for record, _ in results] == records, "results out of input order"
        for (record, outcome), name in zip(results, names, strict=True):
            assert record is records[names.index(name)]
            if name in gone:
                assert isinstance(outcome, FileMissingError), f"{name}: {outcome!r}"
            else:
                assert outcome == files[name], f"{name}: bytes differ"

    def test_read_many_of_nothing(self, make_reader: MakeReader) -> None:
        reader, _ = make_reader({"a.bin": b"a"})
        assert list(reader.read_many([])) == []

    def test_read_many_repeated_location(self, make_reader: MakeReader) -> None:
        reader, locations = make_reader({"a.bin": b"a", "b.bin": b""})
        records = _records(locations, ["a.bin", "b.bin", "a.bin", "a.bin"])
        assert [data for _, data in reader.read_many(records)] == [b"a", b"", b"a", b"a"]

    def test_read_many_bounds_its_read_ahead(self, make_reader: MakeReader) -> None:
        reader, locations = make_reader({"a.bin": b"a", "b.bin": b"b"})
        pulled = 0
        limit = 10_000

        def endless() -> Iterator[SourceRecord]:
            nonlocal pulled
            for record in itertools.cycle(_records(locations, ["a.bin", "b.bin"])):
                pulled += 1
                if pulled > limit:
                    raise AssertionError(f"read_many pulled {limit} records to yield a few")
                yield record

        results = reader.read_many(endless())
        got = [data for _, data in itertools.islice(results, 5)]
        _close(results)
        assert got == [b"a", b"b", b"a", b"b", b"a"]
        assert pulled < limit

    def test_read_many_closed_early(self, make_reader: MakeReader) -> None:
        files = {f"f{n:03d}.bin": _payload(n) for n in range(self.many)}
        reader, locations = make_reader(files)
        results = reader.read_many(_records(locations, sorted(files)))
        first = next(results)
        _close(results)
        assert first[1] == files[sorted(files)[0]]
        # The reader is still usable after an abandoned read_many.
        assert reader.read(locations["f001.bin"]) == files["f001.bin"]
        assert len(list(reader.read_many(_records(locations, sorted(files))))) == len(files)

    # --- delete -------------------------------------------------------------------

    def test_delete_is_idempotent(self, make_reader: MakeReader) -> None:
        reader, locations = make_reader({"a.bin": b"a", "sub/b.bin": b"b"})
        reader.delete(locations["a.bin"])
        reader.delete(locations["a.bin"])  # already gone: not an error
        with pytest.raises(FileMissingError):
            reader.read(locations["a.bin"])
        assert reader.read(locations["sub/b.bin"]) == b"b", "delete removed another file"
        reader.delete(locations["sub/b.bin"])
        with pytest.raises(FileMissingError):
            reader.read(locations["sub/b.bin"])


def _close(iterator: Iterator[object]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
