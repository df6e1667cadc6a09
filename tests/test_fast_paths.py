"""The write path's fast paths give exactly what the general paths give.

Performance work (docs/performance.md) added shortcuts: batch compression, a
``created_at`` formatter without ``strftime``, ``ShardWriter.append``, a source row
reader for plain SQLite text, inline reads for fast files, and batched fsyncs on local
disk. Each is checked here against the code it short-cuts, so G2 (byte-identical
objects) and G11 (atomic publish) cannot drift.
"""

from __future__ import annotations

import io
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa

from deswm._buffers import RECORD, Encoder
from deswm._container import Compressor, ShardWriter
from deswm._errors import FileMissingError, PackError
from deswm._model import SourceRecord, Window
from deswm._packer import _new_items
from deswm._readers import FileReaderBase, FsspecFileReader
from deswm._shardio import ShardStore
from deswm._sources.sql import SqlSourceProvider
from deswm._timeutil import format_utc

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def writing(data: bytes) -> Callable[[IO[bytes]], None]:
    """A publish callback writing ``data`` (``f.write`` returns a count, a callback None)."""

    def write(f: IO[bytes]) -> None:
        f.write(data)

    return write


def _payloads() -> list[bytes]:
    rnd = random.Random(5)
    out = [b"", b"a", b"ab", b"\0" * 100_000, rnd.randbytes(1), rnd.randbytes(70_000)]
    for n in range(60):
        line = b'{"n":%d,"v":%d}\n' % (n, rnd.randrange(10**9))
        out.append(line * rnd.randrange(1, 400))
        out.append(rnd.randbytes(rnd.randrange(10, 5000)))
    return out


@pytest.mark.parametrize("level", [1, 3, 19])
def test_compress_many_equals_compress(level: int) -> None:
    compressor = Compressor("zstd", level)
    payloads = _payloads()
    assert compressor.compress_many(payloads) == [compressor.compress(p) for p in payloads]
    assert compressor.compress_many(payloads[:1]) == [compressor.compress(payloads[0])]
    assert compressor.compress_many([]) == []
    none = Compressor("none")
    assert none.compress_many(payloads) == [("none", p) for p in payloads]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_encoder_results_in_order_whatever_the_workers(workers: int) -> None:
    import hashlib

    encoder: Encoder[int] = Encoder("zstd", 3, workers)
    compressor = Compressor("zstd", 3)
    payloads = _payloads() * 3
    results: list[Any] = []
    try:
        for number, data in enumerate(payloads):
            results += encoder.submit(number, data)
        results += encoder.drain()
    finally:
        encoder.close()
    assert [tag for tag, _ in results] == list(range(len(payloads)))
    for (number, encoded), data in zip(results, payloads, strict=True):
        assert (encoded.codec, encoded.stored) == compressor.compress(data), number
        assert encoded.digest == hashlib.sha256(data).digest()


def test_new_items_created_at_text_is_format_utc() -> None:
    rnd = random.Random(3)
    instants = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        _EPOCH,
        datetime(2024, 2, 29, 12, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ]
    instants += [
        datetime(1, 1, 1, tzinfo=UTC)
        + timedelta(microseconds=rnd.randrange(315_537_897_600 * 10**6))
        for _ in range(300)
    ]
    records = bytearray()
    for number, instant in enumerate(instants):
        micros = (instant - _EPOCH) // timedelta(microseconds=1)
        uid = f"u{number}".encode()
        records += RECORD.pack(micros, 1, 1, 0, 1, bytes(32), len(uid)) + uid
    texts = [item.key[0] for item in _new_items(bytes(records))]
    assert texts == [format_utc(instant) for instant in instants]


def test_shard_writer_append_writes_what_add_writes() -> None:
    entries = [
        ("a", b"x" * 10, "none", 10, b""),
        ("żółw", b"zz", "zstd", 7, b'{"sha256":"00"}'),
        ("c" * 300, b"", "none", 0, b"{}"),
    ]
    for version in (1, 2):
        added, appended = io.BytesIO(), io.BytesIO()
        one, two = ShardWriter(added, version=version), ShardWriter(appended, version=version)
        for uid, stored, codec, size, meta in entries:
            meta = meta if version == 2 else b""
            one.add(uid, stored, codec=codec, size=size, meta=meta)  # type: ignore[arg-type]
            two.append(uid, stored, codec=codec, size=size, meta=meta)  # type: ignore[arg-type]
        assert one.finish() == two.finish()
        assert added.getvalue() == appended.getvalue()
    writer = ShardWriter(io.BytesIO())
    writer.append("a", b"", codec="none", size=0)
    with pytest.raises(ValueError, match="already in this shard"):
        writer.append("a", b"", codec="none", size=0)


# --- source rows ----------------------------------------------------------------------------


def test_row_fast_paths_give_the_full_paths_records(engine: sa.Engine) -> None:
    table = sa.Table(
        "files",
        sa.MetaData(),
        sa.Column("uid", sa.String(40), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("file_location", sa.Text),
        sa.Column("size_bytes", sa.BigInteger),
    )
    table.metadata.create_all(engine)
    start = datetime(2024, 5, 17, tzinfo=UTC)
    rnd = random.Random(9)
    rows = []
    for number in range(500):
        created = start + timedelta(microseconds=rnd.randrange(86_400 * 10**6))
        if number % 50 == 0:
            created = created.replace(microsecond=0)  # stored without a fraction on SQLite
        uid = f"f{number:04d}" if number % 7 else f"ż{number}"  # non-ASCII: the full path
        size = None if number % 11 == 0 else rnd.randrange(10**6)
        naive = engine.dialect.name in ("sqlite", "mysql", "mariadb")
        rows.append(
            {
                "uid": uid,
                "created_at": created.replace(tzinfo=None) if naive else created,
                "file_location": f"d/{uid}",
                "size_bytes": size,
            }
        )
    with engine.begin() as conn:
        conn.execute(sa.insert(table), rows)
    window = Window(start, start + timedelta(days=1))
    fast = list(SqlSourceProvider(engine, "files", page_size=37).iter_records(window))
    from deswm._sources import sql as sql_module

    original = sql_module._RowReader.record
    try:
        sql_module._RowReader.record = sql_module._RowReader._record  # type: ignore[method-assign]
        full = list(SqlSourceProvider(engine, "files", page_size=37).iter_records(window))
    finally:
        sql_module._RowReader.record = original  # type: ignore[method-assign]
    assert len(fast) == 500
    assert fast == full
    assert all(r.created_at.tzinfo is UTC for r in fast)


# --- reads ------------------------------------------------------------------------------------


class _Counting(FileReaderBase):
    """Reads from a dict; records which thread read each location."""

    def __init__(self, files: Mapping[str, bytes], delay: float = 0.0, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.files = files
        self.delay = delay
        self.threads: dict[str, str] = {}

    def read(self, location: str) -> bytes:
        self.threads[location] = threading.current_thread().name
        if self.delay:
            time.sleep(self.delay)
        if location not in self.files:
            raise FileMissingError(location)
        return self.files[location]

    def delete(self, location: str) -> None:
        raise NotImplementedError


def _records(names: list[str]) -> list[SourceRecord]:
    return [SourceRecord(name, _EPOCH, name) for name in names]


def test_fast_reads_move_to_the_consumer_thread_in_order() -> None:
    files = {f"f{n}": str(n).encode() for n in range(3000)}
    reader = _Counting(files, max_workers=4)
    names = [f"f{n}" for n in range(3000)] + ["missing"] + ["f1"] * 5
    results = list(reader.read_many(_records(names)))
    assert [record.location for record, _ in results] == names
    assert [data for _, data in results[:3000]] == [files[n] for n in names[:3000]]
    assert isinstance(results[3000][1], FileMissingError)
    here = threading.current_thread().name
    assert sum(1 for name in names[:3000] if reader.threads[name] == here) > 2000


def test_a_readers_next_batch_starts_where_the_last_one_ended() -> None:
    files = {f"f{n}": str(n).encode() for n in range(3000)}
    reader = _Counting(files, max_workers=4)
    list(reader.read_many(_records(sorted(files)[:2000])))
    rest = sorted(files)[2000:]
    results = list(reader.read_many(_records(rest)))
    assert [record.location for record, _ in results] == rest
    here = threading.current_thread().name
    assert all(reader.threads[name] == here for name in rest[:100])  # no pool warm-up


def test_slow_reads_go_back_to_the_pool_in_the_next_batch() -> None:
    files = {f"f{n}": b"x" for n in range(3000)}
    reader = _Counting(files, max_workers=4)
    list(reader.read_many(_records(sorted(files))))
    reader.delay = 0.002
    slow = sorted(files)[:100]
    results = list(reader.read_many(_records(slow)))
    assert [record.location for record, _ in results] == slow
    here = threading.current_thread().name
    assert sum(1 for name in slow if reader.threads[name] != here) > 50


def test_slow_reads_stay_on_the_pool() -> None:
    files = {f"f{n}": b"x" for n in range(60)}
    reader = _Counting(files, delay=0.002, max_workers=4)
    results = list(reader.read_many(_records(sorted(files))))
    assert [record.location for record, _ in results] == sorted(files)
    here = threading.current_thread().name
    assert all(thread != here for thread in reader.threads.values())


def test_fsspec_reader_resolves_like_before(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.bin").write_bytes(b"bytes")
    for root in (str(tmp_path), str(tmp_path) + "/", f"file://{tmp_path}"):
        reader = FsspecFileReader(root=root)
        assert reader.read("a/b.bin") == b"bytes"
        assert reader.read(str(tmp_path / "a" / "b.bin")) == b"bytes"
        assert reader.read(f"file://{tmp_path}/a/b.bin") == b"bytes"
        with pytest.raises(FileMissingError):
            reader.read("a/missing.bin")


def test_local_reads_of_files_without_a_size_read_to_the_end(tmp_path: Path) -> None:
    # /proc files report size 0 and a FIFO has none: the read goes on to the end of file.
    status = FsspecFileReader().read("/proc/self/status")
    assert status.startswith(b"Name:") and b"VmHWM" in status
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    payload = b"through a pipe " * 10_000

    def feed() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(payload)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        assert FsspecFileReader().read(str(fifo)) == payload  # no roots: read like open()
    finally:
        writer.join(timeout=10)


# --- batched publishing ---------------------------------------------------------------------


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_batched_publishes_are_complete_and_in_order(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    store.publish("20240517_0_0000.des", writing(b"old part"))
    store.publish("20240517_1_0000.des", writing(b"dead part"))
    renamed: list[str] = []
    original = os.replace

    def replace(src: str, dst: str) -> None:
        renamed.append(os.path.basename(dst))
        original(src, dst)

    big = b"B" * (5 * 2**20)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", replace)
        with store.batch(threads=3, window=4):
            for n in range(10):
                data = big if n == 4 else b"part %d" % n
                store.publish(f"20240517_0_{n:04d}.des", writing(data))
            store.delete("20240517_1_0000.des", sync=False)
    assert renamed == [f"20240517_0_{n:04d}.des" for n in range(10)]
    assert _names(tmp_path) == [f"20240517_0_{n:04d}.des" for n in range(10)]
    assert (tmp_path / "20240517_0_0000.des").read_bytes() == b"part 0"
    assert (tmp_path / "20240517_0_0004.des").read_bytes() == big


def test_a_failure_in_a_batch_finishes_what_came_before_and_nothing_after(
    tmp_path: Path,
) -> None:
    store = ShardStore(str(tmp_path))
    store.publish("20240517_1_0000.des", writing(b"kept: its delete comes later"))

    def broken(f: object) -> None:
        raise OSError("disk on fire")

    def run() -> None:
        with store.batch(threads=2, window=100):
            store.publish("20240517_0_0000.des", writing(b"zero"))
            store.publish("20240517_0_0001.des", writing(b"one"))
            store.publish("20240517_0_0002.des", broken)
            store.publish("20240517_0_0003.des", writing(b"never"))
            store.delete("20240517_1_0000.des", sync=False)

    with pytest.raises(PackError, match="disk on fire"):
        run()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert _names(tmp_path) == [
        "20240517_0_0000.des",
        "20240517_0_0001.des",
        "20240517_1_0000.des",
    ]


def test_a_failed_fsync_stops_the_renames_at_that_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deswm._shardio import StagedObject

    store = ShardStore(str(tmp_path))
    real_fsync = StagedObject.fsync

    def fsync(self: StagedObject) -> None:
        if self.name.endswith("_0003.des"):
            raise PackError("I/O error")
        real_fsync(self)

    monkeypatch.setattr(StagedObject, "fsync", fsync)

    def run() -> None:
        with store.batch(threads=2, window=100):
            for n in range(6):
                store.publish(f"20240517_0_{n:04d}.des", writing(b"%d" % n))

    with pytest.raises(PackError, match="I/O error"):
        run()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert _names(tmp_path) == [f"20240517_0_{n:04d}.des" for n in range(3)]


def test_batch_is_a_no_op_elsewhere(tmp_path: Path) -> None:
    import fsspec

    root = f"memory://deswm-batch-{os.getpid()}"
    store = ShardStore(root)
    try:
        with store.batch(threads=4):
            store.publish("20240517_0_0000.des", writing(b"x"))
            assert store.current("20240517_0_0000.des") is not None  # published at once
    finally:
        fsspec.filesystem("memory").rm(root, recursive=True)
