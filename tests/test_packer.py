"""DesPacker on local, memory and S3 destinations: determinism, splitting, big files,
duplicates, merges (G2, G3), crash safety (G11), spilling (G9) and bounded memory."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import re
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deswm._archive import Archive
from deswm._buffers import Fingerprints
from deswm._container import build_shard, make_meta, read_shard
from deswm._container import meta_of as _meta
from deswm._errors import (
    ArchivedDuplicateError,
    ConfigError,
    CorruptShardError,
    DuplicateUidError,
    NaiveDatetimeError,
    PackError,
)
from deswm._model import BucketResult, SourceRecord
from deswm._objectstore import ObjectStore, open_store
from deswm._packer import DesBucketWriter, DesPacker
from deswm._protocols import BucketWriter, Packer
from deswm._routing import DesRouter
from deswm._shardio import ShardStore
from deswm.testing import RecordingRouter, fail_on, inject

DAY = datetime(2024, 5, 17, tzinfo=UTC)
ROUTER = DesRouter(4)  # 16 groups a day keeps S3 tests to few objects
ROOT = Path(__file__).resolve().parent.parent

Item = tuple[SourceRecord, bytes]


# --- helpers -----------------------------------------------------------------------------


def rec(uid: str, seconds: float = 0) -> SourceRecord:
    return SourceRecord(uid, DAY + timedelta(seconds=seconds), f"/src/{uid}")


def noise(seed: object, size: int) -> bytes:
    """Incompressible, deterministic bytes."""
    rnd = random.Random(str(seed))
    return rnd.randbytes(size)


def text(seed: object, size: int) -> bytes:
    """Compressible, deterministic bytes."""
    line = f"line of {seed} ".encode()
    return (line * (size // len(line) + 1))[:size]


def same_group(count: int, start: int = 0) -> list[str]:
    """Digit uids that all route to group 0 with n_bits=4 (multiples of 16)."""
    return [str(16 * (i + start)) for i in range(count)]


def make_packer(target: Any, **settings: Any) -> DesPacker:
    settings.setdefault("router", ROUTER)
    router = settings.pop("router")
    return DesPacker(
        target.url if hasattr(target, "url") else target,
        router,
        storage_options=getattr(target, "storage_options", None),
        **settings,
    )


def pack(target: Any, items: Sequence[Item], **settings: Any) -> BucketResult:
    packer = make_packer(target, **settings)
    with packer.open_bucket(DAY) as writer:
        for record, data in items:
            writer.add(record, data)
        return writer.publish()


def archive(target: Any, router: DesRouter = ROUTER) -> Archive:
    return Archive(target.url, router, storage_options=target.storage_options)


def snapshot(target: Any) -> dict[str, bytes]:
    """Every object under the target, by relative name (temp files included)."""
    fs = target.filesystem()
    fs.invalidate_cache()
    root = fs._strip_protocol(target.url).rstrip("/")
    try:
        paths = fs.find(root)
    except FileNotFoundError:
        return {}
    return {path[len(root) + 1 :]: bytes(fs.cat_file(path)) for path in paths}


def shard_names(target: Any) -> list[str]:
    return sorted(name for name in snapshot(target) if name.endswith(".des"))


def sub(target: Any, name: str | None = None) -> Any:
    """A fresh folder inside ``target`` on the same backend."""
    folder = name or f"ex-{uuid.uuid4().hex[:8]}"
    return type(target)(target.kind, target.join(folder), target.storage_options)


def put(target: Any, name: str, data: bytes) -> None:
    """Write an object directly, bypassing deswm (foreign writers, damage)."""
    path = target.join(name)
    if target.kind == "local":
        os.makedirs(os.path.dirname(path), exist_ok=True)
    target.filesystem().pipe_file(path, data)


def read_back(target: Any, items: Sequence[Item], router: DesRouter = ROUTER) -> None:
    reader = archive(target, router)
    for record, data in items:
        assert reader.get(record.uid, record.created_at) == data, record.uid


@pytest.fixture
def publish_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of every object published through ShardStore (a write counter)."""
    names: list[str] = []
    original = ShardStore.publish

    def spy(self: ShardStore, name: str, write: Any, **options: Any) -> None:
        names.append(name)
        original(self, name, write, **options)

    monkeypatch.setattr(ShardStore, "publish", spy)
    return names


def mixed_items(count: int = 40) -> list[Item]:
    items = []
    for i in range(count):
        uid = ["f{}.json", "{}", "zażółć-{}", "😀{}"][i % 4].format(i)
        data = text(i, 50 * i) if i % 3 else noise(i, 30 * i)
        items.append((rec(uid, i // 3), data))  # ties on created_at
    items.append((rec("empty", 7), b""))
    return items


# --- protocol and configuration ----------------------------------------------------------


def test_implements_the_protocols(tmp_path: Path) -> None:
    packer = DesPacker(tmp_path)
    assert isinstance(packer, Packer)
    with packer.open_bucket(DAY) as writer:
        assert isinstance(writer, BucketWriter)
        assert writer.bucket == DAY


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("compression", "lz4"),
        ("compression", "gzip"),
        ("compression_level", 99),
        ("compression_level", "3"),
        ("max_shard_size", 0),
        ("max_shard_size", 1.5),
        ("big_file_threshold", -1),
        ("spill_threshold", -1),
        ("spill_threshold", True),
        ("spill_dir", "/nonexistent/deswm"),
        ("workers", -1),
    ],
)
def test_bad_settings_name_their_key(tmp_path: Path, setting: str, value: object) -> None:
    settings: dict[str, Any] = {setting: value}
    with pytest.raises(ConfigError) as info:
        DesPacker(tmp_path, **settings)
    assert info.value.key == f"archive.{setting}"


def test_bad_url_and_router_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        DesPacker("")
    assert info.value.key == "archive.url"
    with pytest.raises(ConfigError) as info:
        DesPacker("nosuchprotocol-xyz://bucket/x")
    assert info.value.key == "archive.url"
    with pytest.raises(ConfigError) as info:
        DesPacker(tmp_path, router=object())  # type: ignore[arg-type]
    assert info.value.key == "router"


def test_repr_hides_credentials(tmp_path: Path) -> None:
    packer = DesPacker(tmp_path, storage_options={"secret": "s3cr3t"})
    assert "s3cr3t" not in repr(packer)
    assert str(tmp_path) in repr(packer)


def test_bucket_must_be_aligned_and_records_must_belong(tmp_path: Path) -> None:
    packer = DesPacker(tmp_path, ROUTER)
    with pytest.raises(ValueError, match="not a bucket start"):
        packer.open_bucket(DAY + timedelta(hours=1))
    with packer.open_bucket(DAY) as writer:
        with pytest.raises(PackError, match="belongs to bucket"):
            writer.add(SourceRecord("x", DAY + timedelta(days=1), "/x"), b"x")
        with pytest.raises(NaiveDatetimeError):
            writer.add(SourceRecord("x", datetime(2024, 5, 17), "/x"), b"x")
        with pytest.raises(PackError, match="UTF-8"):
            writer.add(rec("bad\udcff"), b"x")
        with pytest.raises(PackError, match="at most 65535"):
            writer.add(rec("u" * 70000), b"x")
        writer.add(rec("fine"), b"still usable")
        result = writer.publish()
    assert result.files == 1
    read_back(_Local(tmp_path), [(rec("fine"), b"still usable")])


class _Local:
    """A local folder in the shape of an FsTarget."""

    kind = "local"
    storage_options: dict[str, Any] = {}

    def __init__(self, path: Path) -> None:
        self.url = str(path)

    def filesystem(self) -> Any:
        import fsspec

        return fsspec.filesystem("file")

    def join(self, *parts: str) -> str:
        return "/".join([self.url, *parts])


def test_meta_fast_path_equals_make_meta() -> None:
    created = DAY + timedelta(hours=5, microseconds=7)
    sha = hashlib.sha256(b"x").hexdigest()
    from deswm._timeutil import format_utc

    assert _meta(sha, format_utc(created)) == make_meta(sha, created)


def test_fingerprints_grow_and_never_lose_members() -> None:
    prints = Fingerprints()
    values = [Fingerprints.of(str(i).encode()) for i in range(20000)]
    assert all(prints.add(v) for v in values)
    assert not any(prints.add(v) for v in values)
    assert len(prints) == 20000


# --- packing -----------------------------------------------------------------------------


def test_pack_and_read_back(fs_target: Any) -> None:
    items = mixed_items()
    result = pack(fs_target, items)
    assert result.files == len(items)
    assert result.bytes_in == sum(len(d) for _, d in items)
    assert result.kept == 0
    assert result.bytes_out == sum(s.size for s in result.shards)
    assert sorted(s.name for s in result.shards) == shard_names(fs_target)
    assert all(not s.merged for s in result.shards)
    read_back(fs_target, items)


def test_same_input_in_any_order_gives_identical_objects(
    fs_target: Any, fs_target_factory: Callable[[str], Any]
) -> None:
    items = mixed_items()
    ties = [(rec(f"tie-{c}", 3), text(c, 100)) for c in "zyxabc"]  # one created_at, six uids
    items += ties
    other = fs_target_factory(fs_target.kind)
    pack(fs_target, items, workers=0)
    shuffled = items[:]
    random.Random(5).shuffle(shuffled)
    pack(other, shuffled, workers=2)
    first = snapshot(fs_target)
    assert first == snapshot(other)
    assert first  # not vacuous
    # Ties are ordered by uid inside their part.
    reader = archive(fs_target)
    part = reader.stat("tie-a", DAY + timedelta(seconds=3)).shard
    order = [e.uid for e in reader.entries(part) if e.uid.startswith("tie-")]
    assert order == sorted(order)


def test_entries_are_in_canonical_order(tmp_path: Path) -> None:
    uids = same_group(30)
    items = [(rec(uid, (i * 7) % 5), text(uid, 10)) for i, uid in enumerate(uids)]
    pack(_Local(tmp_path), items[::-1])
    entries = list(Archive(str(tmp_path), ROUTER).entries("20240517_0_0000.des"))
    keys = [(e.created_at_text, e.uid) for e in entries]
    assert keys == sorted(keys)


def test_parts_split_greedily_at_max_shard_size(fs_target: Any) -> None:
    uids = same_group(25)
    items = [(rec(uid, i), noise(uid, 1000)) for i, uid in enumerate(uids)]
    items.append((rec(same_group(1, 99)[0], 30), noise("huge", 12000)))  # bigger than a part
    limit = 5000
    result = pack(fs_target, items, max_shard_size=limit)
    names = shard_names(fs_target)
    assert names == [f"20240517_0_{n:04d}.des" for n in range(len(names))]
    assert len(names) >= 5
    objects = snapshot(fs_target)
    indexes = [read_shard(objects[name], name=name) for name in names]
    for index, following in itertools.pairwise(indexes):
        assert index.size <= limit or len(index) == 1
        nxt = following.entries[0]
        grown = index.size + nxt.length + 2 + len(nxt.uid.encode()) + 1 + 37 + len(nxt.meta)
        assert grown > limit  # greedy: the next entry did not fit
    assert indexes[-1].size > limit
    assert len(indexes[-1]) == 1  # the oversize entry has a part of its own
    assert {s.name: s.size for s in result.shards} == {i.name: i.size for i in indexes}
    read_back(fs_target, items)


def test_workers_and_spilling_do_not_change_a_byte(
    fs_target: Any, fs_target_factory: Callable[[str], Any], tmp_path: Path
) -> None:
    items = [*mixed_items(30), (rec("big", 9), noise("big", 3000))]
    reference = fs_target_factory(fs_target.kind)
    pack(reference, items, spill_threshold=10**9, workers=0, big_file_threshold=2000)
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    for threshold, workers in [(0, 0), (1000, 2), (1, 1)]:
        target = sub(fs_target)
        packer = make_packer(
            target,
            spill_threshold=threshold,
            spill_dir=spill_dir,
            workers=workers,
            big_file_threshold=2000,
        )
        with packer.open_bucket(DAY) as writer:
            for record, data in items:
                writer.add(record, data)
            if workers == 0:  # (with threads, results may still be in flight)
                assert list(spill_dir.iterdir())  # the spill file lives there
            writer.publish()
        assert writer.spilled_bytes > 0
        assert list(spill_dir.iterdir()) == []  # and is gone after publishing
        assert snapshot(target) == snapshot(reference)


# --- big files ---------------------------------------------------------------------------


def test_big_files_are_deduplicated_and_create_only(fs_target: Any) -> None:
    shared = noise("shared", 500)
    items = [
        (rec("a"), shared),
        (rec("b", 1), shared),
        (rec("c", 2), noise("c", 600)),
        (rec("small", 3), b"tiny"),
    ]
    result = pack(fs_target, items, big_file_threshold=100)
    objects = snapshot(fs_target)
    bigs = {name for name in objects if name.startswith("_bigFiles/")}
    assert bigs == {
        f"_bigFiles/{hashlib.sha256(shared).hexdigest()}",
        f"_bigFiles/{hashlib.sha256(items[2][1]).hexdigest()}",
    }
    assert objects[f"_bigFiles/{hashlib.sha256(shared).hexdigest()}"] == shared
    assert result.bytes_out == sum(s.size for s in result.shards) + 500 + 600
    reader = archive(fs_target)
    assert reader.stat("a", DAY).big
    assert not reader.stat("small", DAY + timedelta(seconds=3)).big
    read_back(fs_target, items)
    before = {p.name: p.version for p in make_packer(fs_target).store.list_day("20240517")}
    again = pack(fs_target, items, big_file_threshold=100)
    assert again.bytes_out == 0
    assert again.shards == ()
    assert snapshot(fs_target) == objects
    assert {p.name: p.version for p in make_packer(fs_target).store.list_day("20240517")} == before


def test_truncated_existing_big_file_is_rewritten(fs_target: Any) -> None:
    data = noise("big", 400)
    name = f"_bigFiles/{hashlib.sha256(data).hexdigest()}"
    put(fs_target, name, data[:100])
    result = pack(fs_target, [(rec("x"), data)], big_file_threshold=100)
    assert snapshot(fs_target)[name] == data
    assert result.bytes_out == sum(s.size for s in result.shards) + 400
    read_back(fs_target, [(rec("x"), data)])


def flip(target: Any, name: str, offset: int) -> None:
    """Damage one byte of an object in place (its size stays the same)."""
    data = bytearray(snapshot(target)[name])
    data[offset] ^= 0xFF
    put(target, name, bytes(data))


def test_a_replay_repairs_a_damaged_big_file(
    fs_target: Any, fs_target_factory: Callable[[str], Any]
) -> None:
    items = [(rec("a"), noise("a", 500)), (rec("b", 1), noise("b", 600)), (rec("c", 2), b"s")]
    clean = fs_target_factory(fs_target.kind)
    pack(clean, items, big_file_threshold=100)
    pack(fs_target, items, big_file_threshold=100)
    name = f"_bigFiles/{hashlib.sha256(items[0][1]).hexdigest()}"
    flip(fs_target, name, 250)
    with pytest.raises(CorruptShardError):
        archive(fs_target).get("a", DAY)

    result = pack(fs_target, items, big_file_threshold=100)

    assert snapshot(fs_target) == snapshot(clean)
    assert result.bytes_out == 500  # the repaired object; the shards did not change
    read_back(fs_target, items)


def test_dedupe_never_links_to_a_damaged_big_file(fs_target: Any) -> None:
    shared = noise("shared", 500)
    pack(fs_target, [(rec("a"), shared)], big_file_threshold=100)
    name = f"_bigFiles/{hashlib.sha256(shared).hexdigest()}"
    flip(fs_target, name, 0)
    # A new row with the same content, on another day's writer: it must not link to the
    # damaged object as it is.
    packer = make_packer(fs_target, big_file_threshold=100)
    later = DAY + timedelta(days=1)
    with packer.open_bucket(later) as writer:
        writer.add(SourceRecord("new", later, "/src/new"), shared)
        writer.publish()
    assert snapshot(fs_target)[name] == shared
    assert archive(fs_target).get("new", later) == shared
    assert archive(fs_target).get("a", DAY) == shared


def test_a_replay_repairs_a_damaged_payload_inside_a_shard(
    fs_target: Any, fs_target_factory: Callable[[str], Any]
) -> None:
    uids = same_group(12)
    items = [(rec(uid, i), noise(uid, 600)) for i, uid in enumerate(uids)]
    clean = fs_target_factory(fs_target.kind)
    pack(clean, items, max_shard_size=3000)
    pack(fs_target, items, max_shard_size=3000)
    name = "20240517_0_0001.des"
    entry = read_shard(snapshot(fs_target)[name]).entries[1]
    flip(fs_target, name, entry.offset + 7)
    with pytest.raises(CorruptShardError):
        archive(fs_target).get(entry.uid, DAY + timedelta(seconds=uids.index(entry.uid)))

    result = pack(fs_target, items[::-1], max_shard_size=3000)

    assert [s.name for s in result.shards] == [name]  # only the damaged part is rewritten
    assert snapshot(fs_target) == snapshot(clean)
    read_back(fs_target, items)


def test_a_damaged_entry_whose_source_is_gone_is_kept_verbatim(fs_target: Any) -> None:
    uids = same_group(6)
    items = [(rec(uid, i), noise(uid, 300)) for i, uid in enumerate(uids)]
    pack(fs_target, items)
    name = "20240517_0_0000.des"
    entry = read_shard(snapshot(fs_target)[name]).entries[0]
    flip(fs_target, name, entry.offset + 3)
    damaged = snapshot(fs_target)
    result = pack(fs_target, items[1:])  # the damaged entry's source is gone
    assert result.shards == ()
    assert snapshot(fs_target) == damaged  # nothing to repair it with; nothing lost
    read_back(fs_target, items[1:])


# --- duplicates --------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_duplicate_uid_names_both_rows(tmp_path: Path, workers: int) -> None:
    packer = DesPacker(tmp_path, ROUTER, workers=workers)
    with packer.open_bucket(DAY) as writer:
        for i in range(50):
            writer.add(rec(f"u{i}", i), b"x" * i)
        with pytest.raises(DuplicateUidError) as info:
            writer.add(rec("u7", 3600), b"again")
        error = info.value
        assert error.uid == "u7"
        assert error.first == DAY + timedelta(seconds=7)
        assert error.second == DAY + timedelta(hours=1)
        key = ROUTER.route("u7", DAY)
        assert key.prefix in str(error)
        assert "2024-05-17 00:00:07" in str(error)
        assert "2024-05-17 01:00:00" in str(error)
        writer.add(rec("u50", 50), b"the writer is still usable")
        result = writer.publish()
    assert result.files == 51
    assert Archive(str(tmp_path), ROUTER).get("u7", DAY + timedelta(seconds=7)) == b"x" * 7


def test_a_uid_published_with_another_created_at_is_refused_at_add(fs_target: Any) -> None:
    pack(fs_target, [(rec("u", 10), b"first file"), (rec("v", 11), b"neighbour")])
    packer = make_packer(fs_target)
    with packer.open_bucket(DAY) as writer:
        with pytest.raises(ArchivedDuplicateError) as info:
            writer.add(rec("u", 20), b"another file with the same uid")
        assert isinstance(info.value, DuplicateUidError)
        assert info.value.first == DAY + timedelta(seconds=10)
        assert info.value.second == DAY + timedelta(seconds=20)
        assert ROUTER.route("u", DAY).object_name(0) in str(info.value)
        writer.add(rec("u", 10), b"first file")  # the same entry: a replay
        writer.add(rec("w", 12), b"the writer is still usable")
        writer.publish()
    reader = archive(fs_target)
    assert reader.get("u", DAY + timedelta(seconds=10)) == b"first file"
    assert reader.get("w", DAY + timedelta(seconds=12)) == b"the writer is still usable"


def test_a_uid_of_a_foreign_entry_without_created_at_is_refused(fs_target: Any) -> None:
    """An entry of another DES writer has no created_at: identity unknown, never replaced."""
    put(fs_target, "20240517_0_0000.des", build_shard([("16", b"foreign", "none")]))
    before = snapshot(fs_target)
    with make_packer(fs_target).open_bucket(DAY) as writer:
        with pytest.raises(ArchivedDuplicateError, match="created_at=none recorded"):
            writer.add(rec("16", 5), b"a deswm row with the foreign uid")
        writer.publish()
    assert snapshot(fs_target) == before
    assert archive(fs_target).get("16", DAY, allow_unverified=True) == b"foreign"


def test_the_identity_check_costs_one_listing_and_no_extra_index_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for method in ("list_day", "read_index"):
        original = getattr(ShardStore, method)

        def spy(self: ShardStore, *args: Any, _call: Any = original, _name: str = method) -> Any:
            calls.append(_name)
            return _call(self, *args)

        monkeypatch.setattr(ShardStore, method, spy)
    items = mixed_items()
    pack(_Local(tmp_path), items)
    assert calls.count("read_index") == 0
    fresh_listings = calls.count("list_day")
    calls.clear()
    pack(_Local(tmp_path), items)
    assert calls.count("read_index") == len(shard_names(_Local(tmp_path)))
    # One listing for add's identity check (G14), one fresh listing for publish: each
    # part's index is read once and shared by both.
    assert calls.count("list_day") == fresh_listings == 2


# --- merges ------------------------------------------------------------------------------


def test_identical_replay_writes_nothing(fs_target: Any, publish_log: list[str]) -> None:
    items = mixed_items()
    pack(fs_target, items)
    first = snapshot(fs_target)
    written = len(publish_log)
    assert written > 0
    result = pack(fs_target, items[::-1])
    assert len(publish_log) == written  # no object rewritten
    assert result.shards == ()
    assert result.bytes_out == 0
    assert result.kept == 0
    # A replay says what it found: every file unchanged, every touched part left alone.
    assert (result.files, result.unchanged, result.replaced) == (len(items), len(items), 0)
    assert result.shards_unchanged == len(first) - len(
        [name for name in first if name.startswith("_bigFiles")]
    )
    assert snapshot(fs_target) == first


def test_replay_with_absent_files_keeps_old_entries(fs_target: Any, publish_log: list[str]) -> None:
    uids = same_group(20)
    items = [(rec(uid, i), text(uid, 200 + i)) for i, uid in enumerate(uids)]
    pack(fs_target, items)
    first = snapshot(fs_target)
    publish_log.clear()
    present = items[::3]
    result = pack(fs_target, present)
    assert result.kept == len(items) - len(present)
    assert publish_log == []
    assert snapshot(fs_target) == first
    read_back(fs_target, items)


def test_replay_keeps_old_entries_byte_identical_when_a_part_is_rewritten(fs_target: Any) -> None:
    uids = same_group(10)
    items = [(rec(uid, i), text(uid, 300)) for i, uid in enumerate(uids)]
    pack(fs_target, items)
    old = read_shard(snapshot(fs_target)["20240517_0_0000.des"])
    changed = (items[4][0], b"new bytes for one file")
    result = pack(fs_target, [changed])
    assert result.kept == 9
    assert (result.files, result.replaced, result.unchanged) == (1, 1, 0)
    assert [s.name for s in result.shards] == ["20240517_0_0000.des"]
    assert result.shards[0].merged
    data = snapshot(fs_target)["20240517_0_0000.des"]
    new = read_shard(data)
    assert [e.uid for e in new.entries] == [e.uid for e in old.entries]
    old_bytes = {e.uid: e.meta for e in old.entries}
    for entry in new.entries:
        if entry.uid != changed[0].uid:
            assert entry.meta == old_bytes[entry.uid]
    read_back(fs_target, [*items[:4], changed, *items[5:]])


def test_merged_new_uids_give_the_clean_runs_objects(fs_target: Any, tmp_path: Path) -> None:
    uids = same_group(30)
    first = [(rec(uid, 100 + 10 * i), noise(uid, 400)) for i, uid in enumerate(uids)]
    pack(fs_target, first, max_shard_size=4000)
    reader = archive(fs_target)
    where = {r.uid: reader.stat(r.uid, r.created_at).part for r, _ in first}
    assert len(set(where.values())) >= 3
    more = same_group(6, 100)
    second = [
        (rec(more[0], 5), noise("a", 100)),  # before every key
        (rec(more[1], 205), noise("b", 100)),  # mid-range
        (rec(more[2], 255), noise("c", 100)),  # mid-range
        (rec(more[3], 10_000), noise("d", 100)),  # tail
        (rec(more[4], 10_001), noise("e", 3000)),  # tail, does not fit: a new part
        (rec(more[5], 10_002), noise("f", 3000)),
    ]
    result = pack(fs_target, second, max_shard_size=4000)
    assert result.kept == len(first)
    reader = archive(fs_target)
    moved = {r.uid: reader.stat(r.uid, r.created_at).part for r, _ in first}
    assert all(moved[uid] >= where[uid] for uid in where)  # pushed up, never down
    assert moved != where
    clean = _Local(tmp_path / "clean")
    pack(clean, first + second, max_shard_size=4000)
    assert snapshot(fs_target) == snapshot(clean)
    read_back(fs_target, first + second)


def test_a_mid_range_insert_splits_the_group_like_a_clean_run(tmp_path: Path) -> None:
    target = _Local(tmp_path / "merged")
    uids = same_group(8)
    first = [(rec(uid, 10 * i), noise(uid, 500)) for i, uid in enumerate(uids)]
    pack(target, first, max_shard_size=3000)
    late = [(rec(same_group(1, 50)[0], 5), noise("mid", 800))]
    pack(target, late, max_shard_size=3000)
    grown = snapshot(target)
    assert all(len(data) <= 3000 for data in grown.values())
    clean = _Local(tmp_path / "clean")
    pack(clean, first + late, max_shard_size=3000)
    assert grown == snapshot(clean)


def test_a_crash_inside_a_moving_merge_loses_nothing_and_the_rerun_is_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _Local(tmp_path / "merged")
    uids = same_group(12)
    first = [(rec(uid, 10 * i), noise(uid, 500)) for i, uid in enumerate(uids)]
    pack(target, first, max_shard_size=3000)
    late = [(rec(same_group(1, 50)[0], 5), noise("mid", 800))]
    with monkeypatch.context() as patched:
        done = crash_after(patched, lambda name: not name.endswith("_0000.des"))
        with pytest.raises(PackError, match="simulated crash"):
            pack(target, late, max_shard_size=3000)
    assert done and "_0000.des" not in " ".join(done)  # the higher parts went first
    read_back(target, first)  # every entry is still in some object
    pack(target, late, max_shard_size=3000)  # the rerun
    clean = _Local(tmp_path / "clean")
    pack(clean, first + late, max_shard_size=3000)
    assert snapshot(target) == snapshot(clean)
    read_back(target, first + late)


def crash_after(monkeypatch: pytest.MonkeyPatch, allowed: Callable[[str], bool]) -> list[str]:
    """Make publishing fail for every object name ``allowed`` rejects (a crash)."""
    original = ShardStore.publish
    done: list[str] = []

    def flaky(self: ShardStore, name: str, write: Any, **options: Any) -> None:
        if not allowed(name):
            raise PackError(f"simulated crash before {name}")
        original(self, name, write, **options)
        done.append(name)

    monkeypatch.setattr(ShardStore, "publish", flaky)
    return done


def test_rerun_after_a_crash_reproduces_the_clean_run(
    fs_target: Any, fs_target_factory: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    uids = same_group(24)
    items = [(rec(uid, i), noise(uid, 700)) for i, uid in enumerate(uids)]
    clean = fs_target_factory(fs_target.kind)
    pack(clean, items, max_shard_size=4000)
    assert len(shard_names(clean)) >= 3
    with monkeypatch.context() as patch:
        done = crash_after(patch, lambda name: name.endswith("_0000.des"))
        with pytest.raises(PackError, match="simulated crash"):
            pack(fs_target, items, max_shard_size=4000)
    assert done == ["20240517_0_0000.des"]
    assert shard_names(fs_target) == ["20240517_0_0000.des"]
    pack(fs_target, items, max_shard_size=4000)
    assert snapshot(fs_target) == snapshot(clean)


@pytest.mark.parametrize(
    "survivors", [(), (0,), (1,), (8,), (8, 7), (8, 7, 6, 5), (8, 7, 6, 5, 4, 3, 2), (1, 5, 7)]
)
def test_merge_is_safe_in_any_crash_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, survivors: tuple[int, ...]
) -> None:
    """A merge that rewrites several parts, interrupted after publishing any subset of
    them, is completed by a rerun into exactly what an uninterrupted merge gives."""
    uids = same_group(24)
    first = [(rec(uid, 10 * i), noise(uid, 700)) for i, uid in enumerate(uids)]
    more = same_group(8, 100)
    second = [(rec(uid, 10 * i + 5), noise(uid, 300)) for i, uid in enumerate(more)]
    tail = same_group(6, 200)  # the first fits into the last part, the rest need new parts
    second += [(rec(uid, 10_000 + i), noise(uid, 900 if i else 200)) for i, uid in enumerate(tail)]
    second.append((first[3][0], b"replaced"))
    clean, crashed = _Local(tmp_path / "clean"), _Local(tmp_path / "crashed")
    for target in (clean, crashed):
        Path(target.url).mkdir()
        pack(target, first, max_shard_size=4000)
    result = pack(clean, second, max_shard_size=4000)
    rewritten = [s.part for s in result.shards]
    # Inserts in parts 0 and 1 push entries up: the clean layout, published from the last
    # part down, so every prefix of that order leaves each entry in some object.
    assert rewritten == list(range(max(rewritten), -1, -1))
    wanted = {f"20240517_0_{n:04d}.des" for n in survivors}
    with monkeypatch.context() as patch:
        crash_after(patch, lambda name: name in wanted)
        with pytest.raises(PackError):
            pack(crashed, second, max_shard_size=4000)
    read_back(crashed, first[:3] + first[4:])  # nothing lost in the crashed state
    pack(crashed, second, max_shard_size=4000)
    assert snapshot(crashed) == snapshot(clean)
    read_back(crashed, [*first[:3], *first[4:], *second])


def test_corrupt_existing_part_stops_the_group_and_is_not_overwritten(fs_target: Any) -> None:
    uids = same_group(12)
    items = [(rec(uid, i), noise(uid, 600)) for i, uid in enumerate(uids)]
    pack(fs_target, items, max_shard_size=3000)
    objects = snapshot(fs_target)
    damaged = objects["20240517_0_0001.des"][:-5] + b"XXXXX"
    put(fs_target, "20240517_0_0001.des", damaged)
    before = snapshot(fs_target)
    with pytest.raises(PackError, match=r"20240517_0_0001\.des cannot be read") as info:
        pack(fs_target, [(rec(same_group(1, 90)[0], 3), b"new")], max_shard_size=3000)
    assert "Restore 20240517_0_0001.des" in str(info.value)
    assert snapshot(fs_target) == before
    writer = make_packer(fs_target).open_bucket(DAY)
    with writer, pytest.raises(PackError, match="cannot be read"):
        writer.archived(items[0][0])


def test_foreign_parts_without_meta_are_merged_verbatim(fs_target: Any) -> None:
    """Entries of other DES writers (no meta) keep their bytes and sort as ("", uid)."""
    foreign = [("16", b"first foreign", "none"), ("32", b"second" * 40, "zstd")]
    built = build_shard(foreign)  # type: ignore[arg-type]
    put(fs_target, "20240517_0_0000.des", built)
    new = [(rec("48", 5), b"new file"), (rec("64", 1), b"another")]
    result = pack(fs_target, new)
    assert result.kept == 2
    data = snapshot(fs_target)["20240517_0_0000.des"]
    index = read_shard(data)
    assert [e.uid for e in index.entries] == ["16", "32", "64", "48"]
    old = read_shard(built)
    for before in old.entries:
        after = index.get(before.uid)
        assert after is not None
        assert after.meta == b""
        assert (
            data[after.offset : after.offset + after.length]
            == (built[before.offset : before.offset + before.length])
        )
    reader = archive(fs_target)
    assert reader.get("16", DAY + timedelta(hours=3), allow_unverified=True) == b"first foreign"
    assert reader.get("32", DAY, allow_unverified=True) == b"second" * 40
    read_back(fs_target, new)


def test_duplicates_across_parts_keep_the_lowest_and_empty_parts_go(tmp_path: Path) -> None:
    target = _Local(tmp_path)
    put(target, "20240517_0_0000.des", build_shard([("16", b"low", "none")]))
    put(target, "20240517_0_0001.des", build_shard([("16", b"high", "none")]))
    put(
        target, "20240517_0_0002.des", build_shard([("32", b"third", "none"), ("16", b"x", "none")])
    )
    result = pack(target, [(rec("48", 1), b"new")])
    names = shard_names(target)
    assert names == ["20240517_0_0000.des", "20240517_0_0002.des"]  # part 1 was only a dup
    assert [e.uid for e in read_shard(snapshot(target)["20240517_0_0002.des"]).entries] == [
        "32",
        "48",
    ]
    assert result.kept == 2
    reader = Archive(target.url, ROUTER, allow_unverified=True)
    assert reader.get("16", DAY) == b"low"
    assert reader.get("32", DAY) == b"third"
    assert reader.get("48", DAY + timedelta(seconds=1)) == b"new"


def test_archived_reports_published_entries(fs_target: Any) -> None:
    items = [(rec("a", 1), b"alpha"), (rec("b", 2), b"beta")]
    pack(fs_target, items)
    put(fs_target, "20240517_0_0000.des", build_shard([("16", b"foreign", "none")]))
    with make_packer(fs_target).open_bucket(DAY) as writer:
        found = writer.archived(items[0][0])
        assert found is not None
        assert (found.uid, found.size, found.codec) == ("a", 5, "none")
        assert found.sha256 == hashlib.sha256(b"alpha").hexdigest()
        assert found.created_at == items[0][0].created_at
        assert found.shard == ROUTER.route("a", DAY).object_name(0)
        assert writer.archived(rec("a", 99)) is None  # another created_at: another row
        assert writer.archived(rec("zzz")) is None
        assert writer.archived(rec("16")) is None  # no checksum: not proof of archiving


# --- failures leave nothing partial ------------------------------------------------------


def test_abort_leaves_nothing(fs_target: Any, tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    packer = make_packer(fs_target, spill_threshold=0, spill_dir=spill)
    writer = packer.open_bucket(DAY)
    for record, data in mixed_items(10):
        writer.add(record, data)
    writer.abort()
    writer.abort()
    with pytest.raises(PackError, match="aborted"):
        writer.publish()

    def fail_inside() -> None:
        with packer.open_bucket(DAY) as other:
            other.add(rec("x"), b"x")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    with packer.open_bucket(DAY) as silent:
        silent.add(rec("y"), b"y")
    assert snapshot(fs_target) == {}
    assert list(spill.iterdir()) == []


def test_publishing_an_empty_bucket_touches_nothing(fs_target: Any, publish_log: list[str]) -> None:
    with make_packer(fs_target).open_bucket(DAY) as writer:
        result = writer.publish()
    assert result == BucketResult(DAY, 0, 0, 0, 0)
    assert publish_log == []
    with pytest.raises(PackError, match="published"):
        writer.add(rec("late"), b"x")


def test_a_dropped_writer_removes_its_spill_file(tmp_path: Path) -> None:
    import gc

    packer = DesPacker(tmp_path / "out", ROUTER, spill_threshold=0, spill_dir=tmp_path, workers=0)
    writer = packer.open_bucket(DAY)
    writer.add(rec("x"), b"spilled at once")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("deswm-spill-")]
    del writer
    gc.collect()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("deswm-spill-")]


def test_failure_mid_publish_leaves_no_partial_object(
    fs_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [(rec(uid, i), noise(uid, 500)) for i, uid in enumerate(same_group(10))]
    items += [(rec("zz", 1), b"another group")]
    original = DesBucketWriter._write_part

    def half_then_fail(self: DesBucketWriter, fp: Any, group: Any, part: Any) -> int:
        if part.number == 1:
            fp.write(b"DES2\x02\x00\x00\x00 partial payload")
            raise OSError("disk on fire")
        return original(self, fp, group, part)

    monkeypatch.setattr(DesBucketWriter, "_write_part", half_then_fail)
    with pytest.raises(PackError, match="disk on fire"):
        pack(fs_target, items, max_shard_size=2000)
    names = set(snapshot(fs_target))
    assert "20240517_0_0000.des" in names
    assert "20240517_0_0001.des" not in names
    assert all(name.endswith(".des") for name in names)  # no temp file left behind
    published = {e.uid for e in archive(fs_target).entries("20240517_0_0000.des")}
    assert published
    read_back(fs_target, [item for item in items if item[0].uid in published])


def test_s3_upload_error_aborts_the_multipart_upload(moto_s3: Any) -> None:
    bucket = moto_s3.new_bucket()
    store = ShardStore(f"s3://{bucket}/a", moto_s3.storage_options, block_size=5 * 2**20)

    def write(fp: Any) -> None:
        for _ in range(12):  # two 5 MiB parts are uploaded before the failure
            fp.write(b"x" * 2**20)
        raise OSError("source vanished")

    with pytest.raises(PackError, match="source vanished"):
        store.publish("20240517_0_0000.des", write)
    fs = moto_s3.filesystem()
    assert not fs.exists(f"{bucket}/a/20240517_0_0000.des")
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket)
    assert uploads.get("Uploads", []) == []

    def write_big(fp: Any) -> None:
        fp.write(b"y" * (6 * 2**20))

    store.publish("20240517_0_0001.des", write_big)
    assert fs.size(f"{bucket}/a/20240517_0_0001.des") == 6 * 2**20


def test_leftover_temp_files_are_ignored_then_cleaned(tmp_path: Path) -> None:
    target = _Local(tmp_path)
    old_temp = tmp_path / ".20240517_0_0000.des.0123456789ab.tmp"
    fresh_temp = tmp_path / ".20240517_0_0001.des.ba9876543210.tmp"
    old_big = tmp_path / "_bigFiles" / f".{'0' * 64}.aaaaaaaaaaaa.tmp"
    old_big.parent.mkdir()
    for path in (old_temp, fresh_temp, old_big):
        path.write_bytes(b"DES2 half a shard")
    two_hours_ago = time.time() - 7200
    os.utime(old_temp, (two_hours_ago, two_hours_ago))
    os.utime(old_big, (two_hours_ago, two_hours_ago))
    items = [(rec("16", 1), b"sixteen"), (rec("big", 2), noise("big", 500))]
    reader = Archive(str(tmp_path), ROUTER)
    assert reader.shards(DAY) == []
    pack(target, items, big_file_threshold=100)
    assert not old_temp.exists()
    assert not old_big.exists()
    assert fresh_temp.exists()  # may belong to a writer still running
    assert [p.name for p in reader.shards("20240517")] == shard_names(target)
    read_back(target, items)


# --- properties --------------------------------------------------------------------------

uid_strategy = st.one_of(
    st.integers(0, 10**6).map(str),
    st.integers(0, 999).map(lambda n: f"{n:05d}"),  # "00007" and "7" share a group
    st.text(min_size=0, max_size=12),
    st.text(alphabet="aż😀", min_size=100, max_size=300),
)
content_strategy = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    st.builds(lambda n, b: b * n, st.integers(1, 400), st.binary(min_size=1, max_size=3)),
)
bucket_strategy = st.lists(
    st.tuples(uid_strategy, st.integers(0, 4), content_strategy),
    min_size=1,
    max_size=25,
    unique_by=lambda item: item[0],
)


def test_any_bucket_reads_back_and_packs_identically(fs_target: Any) -> None:
    examples = 4 if fs_target.kind == "s3" else 25

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        bucket=bucket_strategy,
        max_shard_size=st.integers(100, 3000),
        big=st.sampled_from([64, 10**6]),
        spill=st.sampled_from([0, 500, 10**9]),
        workers=st.integers(0, 2),
        order=st.randoms(use_true_random=False),
    )
    def run(
        bucket: list[tuple[str, int, bytes]],
        max_shard_size: int,
        big: int,
        spill: int,
        workers: int,
        order: random.Random,
    ) -> None:
        items = [(rec(uid, seconds), data) for uid, seconds, data in bucket]
        first, second = sub(fs_target), sub(fs_target)
        settings_ = {"max_shard_size": max_shard_size, "big_file_threshold": big}
        pack(first, items, spill_threshold=spill, workers=workers, **settings_)
        read_back(first, items)
        shuffled = items[:]
        order.shuffle(shuffled)
        pack(second, shuffled, **settings_)
        assert snapshot(first) == snapshot(second)

    run()


# --- memory (G9) -------------------------------------------------------------------------


@pytest.mark.slow
def test_peak_memory_of_a_200k_file_bucket_is_bounded(tmp_path: Path) -> None:
    """Pack 200,000 small files in a child process and read its own peak RSS (VmHWM;
    ru_maxrss would include this pytest process's peak, inherited across fork and exec)."""
    spill = str(4 * 2**20)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.packer_memory", "200000", "--spill-threshold", spill],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=300,
    )
    print(done.stdout.strip())
    match = re.search(r"peak_rss_mib=([\d.]+)", done.stdout)
    assert match is not None, done.stdout
    assert "files=200000" in done.stdout
    assert float(match.group(1)) < 400


def test_a_merge_refuses_a_part_with_overlapping_or_impossible_fields(tmp_path: Path) -> None:
    """Hostile index fields stop the merge (G18) instead of being copied into new parts."""
    target = _Local(tmp_path)
    good = build_shard([("16", b"hello", "none"), ("32", b"world", "none")])
    at = len(good) - 12 - struct.unpack_from("<Q", good, len(good) - 8)[0] + 4
    second = at + 2 + 2 + 1 + 37  # the second record: uid "32"
    overlapping = good[: second + 5] + struct.pack("<Q", 10) + good[second + 13 :]
    impossible = good[: second + 30] + struct.pack("<Q", 2**63 + 5) + good[second + 38 :]
    for damaged, reason in ((overlapping, "overlaps entry '16'"), (impossible, "impossible")):
        put(target, "20240517_0_0000.des", damaged)
        with pytest.raises(PackError, match=reason):
            pack(target, [(rec("48", 1), b"new")])
        assert snapshot(target)["20240517_0_0000.des"] == damaged


# --- routing fast path (ShardRouter.route_is_composed) ---------------------------------------


class ComposedRecorder(RecordingRouter):
    """A recorder that declares its route to be its parts: the packer may skip route()."""

    route_is_composed = True


def pack_with(router: Any, tmp_path: Path, items: Sequence[Item]) -> dict[str, bytes]:
    packer = DesPacker(tmp_path, router, workers=0)
    with packer.open_bucket(DAY) as writer:
        for record, data in items:
            writer.add(record, data)
        writer.publish()
    return {p.name: p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.is_file()}


def test_a_composed_router_is_asked_for_shard_indexes_only(tmp_path: Path) -> None:
    items = [(rec(f"f{n}", n), text(n, 50)) for n in range(40)]
    composed = ComposedRecorder(ROUTER)
    fast = pack_with(composed, tmp_path / "fast", items)
    assert composed.calls_of("route") == []
    assert len(composed.calls_of("shard_index")) == len(items)
    groups = {ROUTER.shard_index(record.uid) for record, _ in items}
    assert len(composed.calls_of("group")) == len(groups)  # one ShardKey per group
    plain = RecordingRouter(ROUTER)  # no declaration: one route() per file
    assert pack_with(plain, tmp_path / "plain", items) == fast
    assert len(plain.calls_of("route")) == len(items)
    assert pack_with(ROUTER, tmp_path / "des", items) == fast
    assert getattr(ROUTER, "route_is_composed", False) is True


def test_a_faulted_route_is_never_skipped(tmp_path: Path) -> None:
    router = inject(DesRouter(4), route=fail_on(2, error=RuntimeError("route fault")))
    packer = DesPacker(tmp_path, router, workers=0)
    with packer.open_bucket(DAY) as writer:
        writer.add(rec("a"), b"1")
        with pytest.raises(RuntimeError, match="route fault"):
            writer.add(rec("b", 1), b"2")
    assert getattr(inject(DesRouter(4)), "route_is_composed", False) is True  # no route fault


# --- an injected object store -------------------------------------------------------------


class _CountingStore:
    """An ObjectStore that counts the publishes it is given, delegating the rest."""

    def __init__(self, inner: ObjectStore) -> None:
        self._inner = inner
        self.published: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def publish(self, name: str, write: Any, *, sync: bool) -> None:
        self.published.append(name)
        self._inner.publish(name, write, sync=sync)


def test_packer_and_archive_use_an_injected_store(tmp_path: Path) -> None:
    store = _CountingStore(open_store(f"memory://deswm-injected-{uuid.uuid4().hex}", key="t"))
    packer = DesPacker(router=ROUTER, store=cast(ObjectStore, store))
    assert packer.store.backend is store
    items = [(rec(uid), text(uid, 100)) for uid in same_group(3)]
    with packer.open_bucket(DAY) as writer:
        for record, data in items:
            writer.add(record, data)
        writer.publish()
    assert store.published and all(name.endswith(".des") for name in store.published)
    reader = Archive(router=ROUTER, store=cast(ObjectStore, store))
    assert [reader.get(r.uid, r.created_at) for r, _ in items] == [d for _, d in items]


def test_a_url_and_a_store_together_are_a_config_error(tmp_path: Path) -> None:
    store = open_store(tmp_path, key="archive.url")
    with pytest.raises(ConfigError, match="not both") as caught:
        DesPacker(tmp_path, ROUTER, store=store)
    assert caught.value.key == "archive.url"
    with pytest.raises(ConfigError, match="not both"):
        Archive(str(tmp_path), ROUTER, storage_options={}, store=store)
    with pytest.raises(ConfigError, match="must be a path or URL"):
        Archive(router=ROUTER)
