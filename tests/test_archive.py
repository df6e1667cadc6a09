"""Archive: lookups, foreign shards, verification, the S3 request budget (P7) and staleness."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import struct
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from deswm._archive import Archive
from deswm._container import build_shard, make_meta, read_shard
from deswm._errors import (
    ConfigError,
    CorruptShardError,
    EntryMismatchError,
    NaiveDatetimeError,
    NotArchivedError,
    ShardError,
    UnverifiedEntryError,
)
from deswm._model import BucketResult, SourceRecord
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm._shardio import TAIL_SIZE

DAY = datetime(2024, 5, 17, tzinfo=UTC)
ROUTER = DesRouter(4)

Item = tuple[SourceRecord, bytes]


def rec(uid: str, seconds: float = 0) -> SourceRecord:
    return SourceRecord(uid, DAY + timedelta(seconds=seconds), f"/src/{uid}")


def noise(seed: object, size: int) -> bytes:
    return random.Random(str(seed)).randbytes(size)


def pack(target: Any, items: Sequence[Item], **settings: Any) -> BucketResult:
    packer = DesPacker(target.url, ROUTER, storage_options=target.storage_options, **settings)
    with packer.open_bucket(DAY) as writer:
        for record, data in items:
            writer.add(record, data)
        return writer.publish()


def open_archive(target: Any, **options: Any) -> Archive:
    return Archive(target.url, ROUTER, storage_options=target.storage_options, **options)


def put(target: Any, name: str, data: bytes) -> None:
    """Write an object directly, bypassing deswm (foreign writers, damage)."""
    path = target.join(name)
    if target.kind == "local":
        os.makedirs(os.path.dirname(path), exist_ok=True)
    target.filesystem().pipe_file(path, data)


def fetch(target: Any, name: str) -> bytes:
    fs = target.filesystem()
    fs.invalidate_cache()
    return bytes(fs.cat_file(target.join(name)))


ITEMS: list[Item] = [
    (rec("a.json", 1), b'{"a": 1}' * 50),
    (rec("17", 2), b""),
    (rec("zażółć", 2), "gęślą jaźń".encode() * 3),
    (rec("noise", 3), noise("n", 700)),
    (rec("😀", 4), b"emoji"),
]


# --- the basic API -------------------------------------------------------------------------


def test_get_exists_stat(fs_target: Any) -> None:
    pack(fs_target, ITEMS)
    archive = open_archive(fs_target)
    for record, data in ITEMS:
        assert archive.get(record.uid, record.created_at) == data
        assert archive.exists(record.uid, record.created_at)
        entry = archive.stat(record.uid, record.created_at)
        assert entry.uid == record.uid
        assert entry.size == len(data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.created_at == record.created_at
        assert entry.shard == ROUTER.route(record.uid, record.created_at).object_name(0)
        assert entry.part == 0
    assert archive.stat("a.json", DAY + timedelta(seconds=1)).codec == "zstd"
    assert archive.stat("noise", DAY + timedelta(seconds=3)).codec == "none"  # incompressible
    assert archive.get(17, DAY + timedelta(seconds=2)) == b""  # an int uid is its decimal text
    assert not archive.exists("missing", DAY)
    with pytest.raises(NotArchivedError) as info:
        archive.get("missing", DAY)
    assert isinstance(info.value, KeyError)
    assert "missing" in str(info.value)
    assert not archive.exists("a.json", DAY + timedelta(days=1))  # routing uses the day
    with pytest.raises(NaiveDatetimeError):
        archive.get("a.json", datetime(2024, 5, 17))


def test_shards_entries_and_verify(fs_target: Any) -> None:
    result = pack(fs_target, ITEMS)
    archive = open_archive(fs_target)
    listed = archive.shards(DAY)
    assert [p.name for p in listed] == sorted(s.name for s in result.shards)
    assert all(p.day == "20240517" and p.part == 0 for p in listed)
    assert {p.name: p.size for p in listed} == {s.name: s.size for s in result.shards}
    assert archive.shards(date(2024, 5, 17)) == listed
    assert archive.shards("20240517") == listed
    warsaw = timezone(timedelta(hours=2))
    assert archive.shards(datetime(2024, 5, 18, 1, tzinfo=warsaw)) == listed  # UTC day
    assert archive.shards("20240518") == []
    with pytest.raises(NaiveDatetimeError):
        archive.shards(datetime(2024, 5, 17))
    with pytest.raises(ConfigError):
        archive.shards("2024-05-17")
    total = 0
    for part in listed:
        entries = list(archive.entries(part.name))
        assert entries
        assert archive.verify(part.name) == len(entries)
        total += len(entries)
    assert total == len(ITEMS)
    with pytest.raises(ShardError, match="does not exist"):
        list(archive.entries("20240517_F_0007.des"))
    with pytest.raises(ValueError, match="not a shard object name"):
        archive.verify("../etc/passwd")


def test_repr_hides_credentials(moto_s3: Any) -> None:
    options = {**moto_s3.storage_options, "secret": "very-secret-key"}
    archive = Archive("s3://user:pw@bucket/prefix", ROUTER, storage_options=options)
    text = repr(archive)
    assert "very-secret-key" not in text
    assert "pw" not in text
    assert "bucket/prefix" in text
    assert "DesRouter(n_bits=4)" in text


def test_cache_size_is_validated_and_zero_disables_caching(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Archive(str(tmp_path), cache_size=-1)
    assert info.value.key == "cache_size"
    target = _Local(tmp_path)
    pack(target, ITEMS)
    archive = Archive(str(tmp_path), ROUTER, cache_size=0)
    for record, data in ITEMS * 2:
        assert archive.get(record.uid, record.created_at) == data


class _Local:
    kind = "local"
    storage_options: dict[str, Any] = {}

    def __init__(self, path: Any) -> None:
        self.url = str(path)

    def filesystem(self) -> Any:
        import fsspec

        return fsspec.filesystem("file")

    def join(self, *parts: str) -> str:
        return "/".join([self.url, *parts])


def test_an_entry_of_another_created_at_is_never_returned(fs_target: Any) -> None:
    """G14: the uid alone does not identify a file; its stored created_at must match."""
    pack(fs_target, [(rec("u", 10), b"the archived file"), (rec("v", 11), b"neighbour")])
    archive = open_archive(fs_target)
    other = DAY + timedelta(hours=1)
    for attempt in ("cold", "warm"):
        with pytest.raises(EntryMismatchError) as info:
            archive.get("u", other)
        assert isinstance(info.value, NotArchivedError), attempt
        assert "2024-05-17T01:00:00+00:00" in str(info.value)
        assert "2024-05-17T00:00:10+00:00" in str(info.value)
        assert info.value.archived_created_at == DAY + timedelta(seconds=10)
        with pytest.raises(EntryMismatchError):
            archive.stat("u", other)
        assert not archive.exists("u", other)
        assert archive.get("u", DAY + timedelta(seconds=10)) == b"the archived file"


# --- other writers ---------------------------------------------------------------------------


def test_reads_foreign_shards_without_meta(fs_target: Any) -> None:
    uids = ["16", "32", "48"]
    built = build_shard(
        [
            (uids[0], b"plain", "none"),
            (uids[1], b"zstd " * 100, "zstd"),
            (uids[2], b"lz4!" * 99, "lz4"),
        ]
    )
    put(fs_target, "20240517_0_0000.des", built)
    strict = open_archive(fs_target)
    for uid in uids:  # decoded, but refused: nothing proves the bytes
        with pytest.raises(UnverifiedEntryError, match="no checksum"):
            strict.get(uid, DAY)
    with pytest.raises(UnverifiedEntryError):
        strict.verify("20240517_0_0000.des")
    assert strict.get("16", DAY, allow_unverified=True) == b"plain"
    archive = open_archive(fs_target, allow_unverified=True)
    any_time = DAY + timedelta(hours=13)
    assert archive.get("16", any_time) == b"plain"
    assert archive.get("32", any_time) == b"zstd " * 100
    assert archive.get("48", any_time) == b"lz4!" * 99
    entry = archive.stat("48", any_time)
    assert (entry.codec, entry.sha256, entry.created_at) == ("lz4", None, None)
    assert archive.verify("20240517_0_0000.des") == 3


def test_reads_version_1_shards(fs_target: Any) -> None:
    built = build_shard([("16", b"old", "none"), ("32", b"older" * 30, "zstd")], version=1)
    assert built[4] == 1
    put(fs_target, "20240517_0_0000.des", built)
    archive = open_archive(fs_target, allow_unverified=True)
    assert archive.get("16", DAY) == b"old"
    assert archive.get("32", DAY) == b"older" * 30
    assert archive.verify("20240517_0_0000.des") == 2


def test_first_part_wins_and_gaps_in_part_numbers_are_found(fs_target: Any) -> None:
    put(fs_target, "20240517_0_0000.des", build_shard([("16", b"zero", "none")]))
    put(
        fs_target,
        "20240517_0_0002.des",
        build_shard([("16", b"dup", "none"), ("32", b"two", "none")]),
    )
    put(fs_target, "20240517_0_0003.des", build_shard([("48", b"three", "none")]))
    archive = open_archive(fs_target, allow_unverified=True)
    assert archive.get("16", DAY) == b"zero"
    assert archive.get("48", DAY) == b"three"
    assert archive.stat("32", DAY).part == 2
    with pytest.raises(NotArchivedError) as info:
        archive.get("64", DAY)
    assert info.value.looked_in == (
        "20240517_0_0000.des",
        "20240517_0_0002.des",
        "20240517_0_0003.des",
    )


def test_names_that_are_not_shards_are_ignored(fs_target: Any) -> None:
    pack(fs_target, [(rec("16", 1), b"sixteen")])
    put(fs_target, "20240517_0_0001.des.tmp", b"garbage")
    put(fs_target, ".20240517_0_0001.des.0123456789ab.tmp", b"garbage")
    put(fs_target, "20240517_0_1.des", b"garbage")
    put(fs_target, "20240517_01_0000.des", b"garbage")
    archive = open_archive(fs_target)
    assert [p.name for p in archive.shards(DAY)] == ["20240517_0_0000.des"]
    assert archive.get("16", DAY + timedelta(seconds=1)) == b"sixteen"
    assert not archive.exists("32", DAY)


# --- corruption ----------------------------------------------------------------------------


def test_checksum_corruption_raises_and_is_never_swallowed(fs_target: Any) -> None:
    items = [(rec("16", 1), noise("x", 300)), (rec("32", 2), noise("y", 300))]
    pack(fs_target, items)
    name = "20240517_0_0000.des"
    data = bytearray(fetch(fs_target, name))
    entry = read_shard(bytes(data)).get("32")
    assert entry is not None
    data[entry.offset + 10] ^= 0xFF
    put(fs_target, name, bytes(data))
    archive = open_archive(fs_target)
    assert archive.get("16", items[0][0].created_at) == items[0][1]
    with pytest.raises(CorruptShardError, match="sha256 mismatch") as info:
        archive.get("32", items[1][0].created_at)
    assert info.value.name == name
    assert info.value.offset == entry.offset
    with pytest.raises(CorruptShardError, match="sha256 mismatch"):
        archive.verify(name)
    assert archive.exists("32", items[1][0].created_at)  # the entry is there; bad bytes


def test_a_damaged_index_raises(fs_target: Any) -> None:
    pack(fs_target, ITEMS)
    name = ROUTER.route("16", DAY).object_name(0)
    put(fs_target, name, b"DES2\x02\x00\x00\x00" + b"\x00" * 40)
    archive = open_archive(fs_target)
    with pytest.raises(CorruptShardError) as info:
        archive.get("16", DAY)
    assert info.value.name == name


def test_big_files_are_read_and_verified(fs_target: Any) -> None:
    data = noise("big", 5000)
    pack(fs_target, [(rec("16"), data), (rec("32"), b"small")], big_file_threshold=1000)
    archive = open_archive(fs_target)
    assert archive.get("16", DAY) == data
    assert archive.stat("16", DAY).big
    assert archive.verify("20240517_0_0000.des") == 2
    big_name = f"_bigFiles/{hashlib.sha256(data).hexdigest()}"
    put(fs_target, big_name, noise("other", 5000))
    fresh = open_archive(fs_target)
    with pytest.raises(CorruptShardError, match="sha256 mismatch"):
        fresh.get("16", DAY)
    put(fs_target, big_name, data[:10])
    with pytest.raises(CorruptShardError, match="10 bytes"):
        fresh.get("16", DAY)


def test_big_entry_with_a_path_instead_of_a_hash_is_corrupt(tmp_path: Any) -> None:
    import io

    from deswm._container import ShardWriter

    buffer = io.BytesIO()
    writer = ShardWriter(buffer)
    writer.add_big("16", "../../../etc/passwd", size=10)
    writer.finish()
    target = _Local(tmp_path)
    put(target, "20240517_0_0000.des", buffer.getvalue())
    with pytest.raises(CorruptShardError, match="not a sha256"):
        Archive(str(tmp_path), ROUTER).get("16", DAY)


def test_a_missing_big_file_is_corrupt(tmp_path: Any) -> None:
    target = _Local(tmp_path)
    data = noise("big", 3000)
    pack(target, [(rec("16"), data)], big_file_threshold=100)
    os.unlink(target.join("_bigFiles", hashlib.sha256(data).hexdigest()))
    with pytest.raises(CorruptShardError, match="missing"):
        Archive(str(tmp_path), ROUTER).get("16", DAY)


def test_an_index_larger_than_the_tail_is_read(fs_target: Any) -> None:
    count = 120 if fs_target.kind == "s3" else 400
    uids = [f"{16 * i}" + "0" * 0 for i in range(count)]
    meta = make_meta("ab" * 32, DAY)  # ~120 bytes of meta per entry
    built = build_shard([(uid, uid.encode(), "none") for uid in uids], meta=lambda *_: meta)
    shard = read_shard(built)
    if fs_target.kind != "s3":
        assert shard.size - shard.index_start > TAIL_SIZE
    put(fs_target, "20240517_0_0000.des", built)
    archive = open_archive(fs_target)
    for uid in uids[:: max(1, count // 10)]:
        entry = archive.stat(uid, DAY)
        assert entry.size == len(uid)


# --- staleness ------------------------------------------------------------------------------


def test_a_rewritten_shard_is_never_served_stale(fs_target: Any) -> None:
    first = [(rec("16", 1), b"version one"), (rec("32", 2), b"neighbour")]
    pack(fs_target, first)
    archive = open_archive(fs_target)
    assert archive.get("16", DAY + timedelta(seconds=1)) == b"version one"
    assert archive.stat("16", DAY + timedelta(seconds=1)).size == 11
    # Same size, new bytes: a size check alone would not notice.
    pack(fs_target, [(rec("16", 1), b"version two")])
    assert archive.get("16", DAY + timedelta(seconds=1)) == b"version two"
    assert archive.get("32", DAY + timedelta(seconds=2)) == b"neighbour"
    # A foreign writer without checksums: only the pinned read protects the reader.
    put(fs_target, "20240517_0_0000.des", build_shard([("16", b"foreign 3!!", "none")]))
    assert archive.get("16", DAY, allow_unverified=True) == b"foreign 3!!"
    assert archive.stat("16", DAY).sha256 is None
    assert not archive.exists("32", DAY)


def test_deleted_shards_are_noticed(fs_target: Any) -> None:
    pack(fs_target, [(rec("16"), b"here")])
    archive = open_archive(fs_target)
    assert archive.get("16", DAY) == b"here"
    fs = fs_target.filesystem()
    fs.rm(fs_target.join("20240517_0_0000.des"))
    with pytest.raises(NotArchivedError):
        archive.get("16", DAY)
    assert not archive.exists("16", DAY)


def test_bad_bytes_through_a_cached_index_are_confirmed_by_a_fresh_read(fs_target: Any) -> None:
    import attrs

    items = [(rec("16", 1), b"sixteen"), (rec("32", 2), b"thirty-two")]
    pack(fs_target, items)
    archive = open_archive(fs_target)
    assert archive.get("16", DAY + timedelta(seconds=1)) == b"sixteen"
    part = archive.shards(DAY)[0]
    index = archive._indexes.get((part.name, part.version))
    assert index is not None
    wrong = index.get("32")
    assert wrong is not None
    bogus = [attrs.evolve(e, offset=wrong.offset) if e.uid == "16" else e for e in index.entries]
    archive._indexes.put((part.name, part.version), attrs.evolve(index, entries=tuple(bogus)))
    at = DAY + timedelta(seconds=1)
    assert archive.get("16", at) == b"sixteen"  # the warm read failed its checksum, then
    assert archive.get("16", at) == b"sixteen"  # a fresh read gave the right bytes


# --- the S3 request budget (P7) -----------------------------------------------------------


class Requests:
    """Counts HTTP requests the archive's s3fs client sends (a botocore event hook)."""

    def __init__(self, archive: Archive) -> None:
        self.sent: list[str] = []
        archive.store.fs.s3.meta.events.register("before-send.s3", self._seen)

    def _seen(self, request: Any, **_: Any) -> None:
        self.sent.append(f"{request.method} {request.url.split('?')[0].rsplit('/', 1)[-1]}")

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


def s3_archive(moto_s3: Any, url: str) -> tuple[Archive, Requests]:
    archive = Archive(url, ROUTER, storage_options=moto_s3.storage_options)
    archive.store.fs.connect()
    return archive, Requests(archive)


def test_s3_request_budget(moto_s3: Any) -> None:
    bucket = moto_s3.new_bucket()
    url = f"s3://{bucket}/archive"
    small = [(rec("16", 1), b"small shard"), (rec("1", 1), b"other group")]
    big = [(rec("2", 1), noise("big", 200_000)), (rec("18", 2), b"in a big shard")]
    target = type("T", (), {"url": url, "storage_options": moto_s3.storage_options})
    pack(target, small + big)
    archive, requests = s3_archive(moto_s3, url)

    assert archive.get("16", DAY + timedelta(seconds=1)) == b"small shard"
    cold_small = requests.take()
    assert len(cold_small) <= 3, cold_small
    assert archive.get("16", DAY + timedelta(seconds=1)) == b"small shard"
    assert len(requests.take()) == 1

    # A shard > 64 KiB: the header is read too.
    assert archive.get("18", DAY + timedelta(seconds=2)) == b"in a big shard"
    cold_big = requests.take()
    assert len(cold_big) <= 3, cold_big
    assert archive.get("2", DAY + timedelta(seconds=1)) == big[0][1]
    assert len(requests.take()) == 1

    assert archive.exists("16", DAY + timedelta(seconds=1))
    assert len(requests.take()) == 1  # one HEAD proves the cached index is current
    assert not archive.exists("32", DAY)  # a miss is decided by a listing
    assert len(requests.take()) <= 2
    assert not archive.exists("3", DAY)  # an empty group: probe, then list
    assert len(requests.take()) == 2


def test_s3_warm_get_of_a_rewritten_shard_goes_cold_once(moto_s3: Any) -> None:
    bucket = moto_s3.new_bucket()
    url = f"s3://{bucket}/archive"
    target = type("T", (), {"url": url, "storage_options": moto_s3.storage_options})
    pack(target, [(rec("16"), b"before")])
    archive, requests = s3_archive(moto_s3, url)
    assert archive.get("16", DAY) == b"before"
    pack(target, [(rec("16"), b"after!")])
    requests.take()
    assert archive.get("16", DAY) == b"after!"
    sent = requests.take()
    assert len(sent) <= 1 + 3, sent  # the refused IfMatch GET, then a cold lookup
    assert archive.get("16", DAY) == b"after!"
    assert len(requests.take()) == 1


# --- hostile bytes (G18) ---------------------------------------------------------------------


def test_a_big_entry_declaring_more_than_its_object_is_corrupt(fs_target: Any) -> None:
    """The size field is untrusted: nothing is allocated by it (a local read asked for
    2**40 bytes raised MemoryError)."""
    data = noise("big", 3000)
    pack(fs_target, [(rec("16"), data)], big_file_threshold=100)
    digest = hashlib.sha256(data).hexdigest()
    shard = fetch(fs_target, "20240517_0_0000.des")
    size = struct.pack("<Q", 3000)
    at = shard.index(digest.encode()) + 64
    assert shard[at : at + 8] == size
    put(fs_target, "20240517_0_0000.des", shard[:at] + struct.pack("<Q", 2**40) + shard[at + 8 :])
    with pytest.raises(CorruptShardError, match="says 1099511627776"):
        open_archive(fs_target).get("16", DAY)


def test_a_tampered_meta_never_lets_damaged_bytes_through(fs_target: Any) -> None:
    pack(fs_target, [(rec("16"), b"original payload")], compression="none")
    shard = fetch(fs_target, "20240517_0_0000.des")
    flipped = shard.replace(b'"sha256"', b'"sHa256"').replace(b"original", b"0riginal")
    put(fs_target, "20240517_0_0000.des", flipped)
    archive = open_archive(fs_target, allow_unverified=True)  # even then
    with pytest.raises(CorruptShardError, match="no valid sha256") as info:
        archive.get("16", DAY)
    assert not isinstance(info.value, UnverifiedEntryError)
    assert archive.stat("16", DAY).sha256 is None
    with pytest.raises(CorruptShardError, match="no valid sha256"):
        archive.verify("20240517_0_0000.des")


def test_an_allowed_unverified_entry_is_logged(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    put(_Local(tmp_path), "20240517_0_0000.des", build_shard([("16", b"foreign", "none")]))
    archive = Archive(str(tmp_path), ROUTER, allow_unverified=True)
    with caplog.at_level(logging.WARNING, logger="deswm"):
        assert archive.get("16", DAY) == b"foreign"
    (record,) = [r for r in caplog.records if "unverified" in r.getMessage()]
    assert "20240517_0_0000.des" in record.getMessage() and "'16'" in record.getMessage()
    with pytest.raises(ConfigError, match="max_inline_size"):
        Archive(str(tmp_path), ROUTER, max_inline_size=-1)
