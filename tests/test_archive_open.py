"""Archive.open: a seekable file read range by range; the index cache's bounds and single flight."""
# ruff: noqa: F811 - the fixtures imported from packed_files are redefined as parameters

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deswm._archive import Archive, ArchivedFile
from deswm._errors import ConfigError, CorruptShardError, EntryMismatchError, NotArchivedError
from deswm._objectstore import ObjectInfo
from packed_files import FILES, ROUTER, archive_dir, at, noise, pack  # noqa: F401 - fixture


class BytesCounter:
    """Counts bytes read from each object through the archive's backend."""

    def __init__(self, archive: Archive) -> None:
        self.by_object: dict[str, int] = {}
        backend = archive.store.backend
        original: Callable[..., tuple[bytes, ObjectInfo]] = backend.get_range

        def read(name: str, start: int, end: int, version: str | None) -> tuple[bytes, ObjectInfo]:
            result = original(name, start, end, version)
            self.by_object[name] = self.by_object.get(name, 0) + len(result[0])
            return result

        backend.get_range = read  # type: ignore[method-assign]

    def big(self) -> int:
        return sum(n for name, n in self.by_object.items() if name.startswith("_bigFiles/"))


@pytest.mark.parametrize("uid", sorted(FILES))
def test_open_reads_the_whole_file_and_its_entry(archive_dir: str, uid: str) -> None:
    archive = Archive(archive_dir, ROUTER)
    created_at, data = FILES[uid]
    with archive.open(uid, created_at) as f:
        assert isinstance(f, ArchivedFile)
        assert isinstance(f, io.BufferedIOBase)
        assert f.readable() and f.seekable() and not f.writable()
        assert f.entry == archive.stat(uid, created_at)
        assert f.size == len(data)
        assert f.read() == data
        assert f.read() == b""
        assert f.tell() == len(data)
    assert f.closed


@pytest.mark.parametrize("uid", sorted(FILES))
def test_seek_and_ranges(archive_dir: str, uid: str) -> None:
    archive = Archive(archive_dir, ROUTER)
    created_at, data = FILES[uid]
    rng = random.Random(uid)
    with archive.open(uid, created_at) as f:
        for _ in range(20):
            start = rng.randrange(len(data))
            length = rng.randrange(1, 3 * 1024 * 1024)
            f.seek(start)
            assert f.read(length) == data[start : start + length]
            assert f.tell() == min(start + length, len(data))
        assert f.seek(-10, io.SEEK_END) == len(data) - 10
        assert f.read() == data[-10:]
        f.seek(5)
        assert f.seek(7, io.SEEK_CUR) == 12
        assert f.read(3) == data[12:15]
        f.seek(len(data) + 100)
        assert f.read(10) == b""
        with pytest.raises(ValueError, match="negative seek"):
            f.seek(-1)


def test_a_big_file_is_read_in_ranges_not_whole(archive_dir: str) -> None:
    archive = Archive(archive_dir, ROUTER)
    created_at, data = FILES["big.bin"]
    counter = BytesCounter(archive)
    with archive.open("big.bin", created_at) as f:
        assert counter.big() == 0  # opening reads no byte of the file
        f.seek(5 * 1024 * 1024)
        assert f.read(100) == data[5 * 1024 * 1024 : 5 * 1024 * 1024 + 100]
        assert counter.big() <= 1024 * 1024  # one buffer at most, not 8 MiB
        f.seek(1000)
        assert f.read(3 * 1024 * 1024) == data[1000 : 1000 + 3 * 1024 * 1024]
        assert counter.big() <= 1024 * 1024 + 3 * 1024 * 1024


def test_a_raw_inline_entry_is_read_in_ranges(archive_dir: str) -> None:
    archive = Archive(archive_dir, ROUTER)
    created_at, data = FILES["raw.bin"]
    archive.stat("raw.bin", created_at)  # the index is cached: only payload reads follow
    counter = BytesCounter(archive)
    with archive.open("raw.bin", created_at) as f:
        f.seek(1024)
        assert f.read(10) == data[1024:1034]
    assert sum(counter.by_object.values()) <= 1024 * 1024


def test_a_full_read_of_a_damaged_big_file_fails_at_the_end(archive_dir: str) -> None:
    archive = Archive(archive_dir, ROUTER)
    created_at, data = FILES["big.bin"]
    [big] = (Path(archive_dir) / "_bigFiles").iterdir()
    damaged = bytearray(data)
    damaged[-1] ^= 0xFF
    big.write_bytes(bytes(damaged))
    with archive.open("big.bin", created_at) as f:
        f.seek(100)
        assert f.read(10) == data[100:110]  # out of order: cannot be checked
        f.seek(0)
        assert f.read(1024 * 1024) == data[: 1024 * 1024]
        with pytest.raises(CorruptShardError, match="sha256 mismatch"):
            f.read()


def test_a_shard_rewritten_between_reads_is_followed(archive_dir: str) -> None:
    archive = Archive(archive_dir, ROUTER)
    created_at, data = FILES["raw.bin"]
    with archive.open("raw.bin", created_at) as f:
        first = f.read(1024 * 1024)
        shard = f.entry.shard
        group = ROUTER.route("raw.bin", created_at).hex
        uids = [f"a{i}" for i in range(500) if ROUTER.route(f"a{i}", at(0)).hex == group]
        # A merge rewrites the group: new entries sort before the file, moving its bytes.
        pack(archive_dir, {uid: (at(0), noise(uid, 5000)) for uid in uids[:5]})
        assert archive.stat("raw.bin", created_at).shard == shard
        rest = f.read()
    assert first + rest == data


def test_open_refuses_another_instant(archive_dir: str) -> None:
    archive = Archive(archive_dir, ROUTER)
    with pytest.raises(EntryMismatchError):
        archive.open("big.bin", at(99))
    with pytest.raises(NotArchivedError):
        archive.open("nope", at(1))


def test_the_index_cache_is_bounded_by_bytes(tmp_path: Path) -> None:
    url = str(tmp_path / "many")
    files = {f"f{i}": (at(i), b"x%d" % i) for i in range(200)}  # spread over 16 groups
    pack(url, files)
    unbounded = Archive(url, ROUTER)
    for uid, (created_at, _) in files.items():
        unbounded.stat(uid, created_at)
    full = unbounded.cache_stats()
    assert full.entries == 16 and full.bytes > 0
    bounded = Archive(url, ROUTER, cache_bytes=full.bytes // 4)
    for uid, (created_at, data) in files.items():
        assert bounded.get(uid, created_at) == data
    stats = bounded.cache_stats()
    assert 0 < stats.bytes <= full.bytes // 4
    assert stats.entries < 16
    with pytest.raises(ConfigError, match="cache_bytes"):
        Archive(url, ROUTER, cache_bytes=-1)


def test_a_burst_on_a_cold_group_loads_its_index_once(archive_dir: str) -> None:
    archive = Archive(archive_dir, ROUTER)
    loads: list[str] = []
    store = archive.store
    probe, read_index = store.probe, store.read_index

    def counted_probe(name: str) -> Any:
        loads.append(name)
        time.sleep(0.05)  # a slow backend: the other requests arrive while it loads
        return probe(name)

    def counted_read_index(part: Any) -> Any:
        loads.append(part.name)
        return read_index(part)

    store.probe = counted_probe  # type: ignore[method-assign]
    store.read_index = counted_read_index  # type: ignore[method-assign]
    created_at, data = FILES["hello.txt"]
    barrier = threading.Barrier(50)
    results: list[bytes] = []

    def fetch() -> None:
        barrier.wait()
        results.append(archive.get("hello.txt", created_at))

    threads = [threading.Thread(target=fetch) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [data] * 50
    assert len(loads) == 1
    stats = archive.cache_stats()
    assert stats.loads == 1 and stats.hits >= 49
