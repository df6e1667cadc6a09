"""Bucket manifests: written before the watermark moves, deterministic (G2), complete,
left alone by a replay that changes nothing, rewritten by one that does."""

from __future__ import annotations

import hashlib
import os
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deswm._archive import Archive
from deswm._checkpoints import install, uninstall
from deswm._container import read_shard
from deswm._errors import ConfigError, CorruptManifestError, ManifestMissingError
from deswm._manifest import BucketManifest, ManifestStore, RowDigest, manifest_name
from deswm._model import Partition, SourceRecord, WatermarkKey
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm._rowdigest import instant_text, row_hash
from deswm._shardio import ShardStore
from deswm._timeutil import format_utc
from deswm.testing import MemoryFileReader, MemorySourceProvider, MemoryWatermarkStore

NOW = datetime(2024, 5, 20, 15, tzinfo=UTC)
ROUTER = DesRouter(4)


def at(day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, minute, tzinfo=UTC)


def records(days: list[int], per_day: int) -> list[SourceRecord]:
    return [
        SourceRecord(f"u{day}-{i}", at(day, i % 24, i // 24), f"mem/{day}/{i}")
        for day in days
        for i in range(per_day)
    ]


class World:
    def __init__(self, root: Path, rows: list[SourceRecord], **packer: Any) -> None:
        self.rows = list(rows)
        self.files = {r.location: f"payload of {r.uid}".encode() * 9 for r in self.rows}
        self.store = MemoryWatermarkStore()
        self.source = MemorySourceProvider(self.rows)
        self.reader = MemoryFileReader(self.files)
        self.root = root
        self.packer = packer

    def orchestrator(self, partition: Partition | None = None, **options: Any) -> Any:
        return WatermarkOrchestrator(
            self.store,
            self.source,
            self.reader,
            ROUTER,
            DesPacker(str(self.root), ROUTER, **self.packer),
            pipeline="files",
            lag=timedelta(days=2),
            initial=at(10, 0),
            clock=lambda: NOW,
            partition=partition or Partition(),
            **options,
        )

    def manifests(self) -> ManifestStore:
        return Archive(str(self.root), ROUTER).manifests

    def manifest_bytes(self) -> dict[str, bytes]:
        folder = self.root / "_manifests"
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.json"))}


def test_a_manifest_lists_every_part_with_its_bytes_hash_and_the_rows(tmp_path: Path) -> None:
    world = World(tmp_path, records([10, 11], 30), max_shard_size=600)
    world.orchestrator().run_cycle()

    archive = Archive(str(tmp_path), ROUTER)
    for day in ("20240510", "20240511"):
        manifest = archive.manifest(day)
        rows = [r for r in world.rows if r.created_at.strftime("%Y%m%d") == day]
        assert manifest.rows == len(rows) == manifest.entries
        assert manifest.digest == RowDigest.of((r.uid, r.created_at) for r in rows).hexdigest
        assert manifest.listed == 0
        assert manifest.pipeline == "files"
        listed = {part.name for part in archive.shards(day)}
        assert {part.name for part in manifest.parts} == listed
        assert any(part.part > 0 for part in manifest.parts), "max_shard_size splits groups"
        for part in manifest.parts:
            data = (tmp_path / part.name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == part.sha256
            assert len(data) == part.size
            assert len(read_shard(data).entries) == part.entries
    # Manifests are not shards: listings, reads and verification never see them.
    assert all(not p.name.startswith("_") for p in archive.shards("20240510"))
    assert archive.store.list_day("_manifests") == []


def test_the_row_digest_does_not_depend_on_order_and_counts_repeats() -> None:
    rows = [(f"u{i}", at(10, i % 24)) for i in range(50)]
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    assert RowDigest.of(rows).hexdigest == RowDigest.of(shuffled).hexdigest
    assert RowDigest.of(rows + rows[:1]).hexdigest != RowDigest.of(rows).hexdigest
    assert RowDigest.of([]).hexdigest == "0" * 64
    expected = sum(row_hash(u, c) for u, c in rows) % 2**256
    assert RowDigest.of(rows).hexdigest == f"{expected:064x}"


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(st.integers(10, 12), st.integers(0, 23), st.integers(0, 59)),
        min_size=1,
        max_size=25,
        unique=True,
    ),
    seed=st.integers(0, 2**16),
)
def test_same_rows_in_any_order_give_the_same_manifest_bytes(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[int, int, int]], seed: int
) -> None:
    made = [SourceRecord(f"r{d}-{h}-{m}", at(d, h, m), f"mem/{d}/{h}/{m}") for d, h, m in rows]
    shuffled = made[:]
    random.Random(seed).shuffle(shuffled)
    first = World(tmp_path_factory.mktemp("a"), made)
    second = World(tmp_path_factory.mktemp("b"), shuffled)
    first.orchestrator().run_cycle()
    second.orchestrator().run_cycle()
    assert first.manifest_bytes() == second.manifest_bytes()
    assert len(first.manifest_bytes()) == len({d for d, _, _ in rows})


def test_a_replay_leaves_an_unchanged_manifest_alone_and_rewrites_a_changed_one(
    tmp_path: Path,
) -> None:
    world = World(tmp_path, records([10, 11], 8))
    world.orchestrator().run_cycle()
    before = world.manifest_bytes()
    path = tmp_path / manifest_name("20240510", Partition())
    os.utime(path, (1_000_000, 1_000_000))
    written = world.manifests().written_at("20240510", Partition())
    assert written == datetime.fromtimestamp(1_000_000, UTC)

    world.store.set(WatermarkKey("files"), at(10, 0), reason="replay")
    world.orchestrator().run_cycle()
    assert world.manifest_bytes() == before
    assert path.stat().st_mtime == 1_000_000, "an identical manifest is not rewritten"

    late = SourceRecord("late", at(10, 23), "mem/late")
    world.reader.put("mem/late", b"late bytes")
    world.source.add(late)
    world.store.set(WatermarkKey("files"), at(10, 0), reason="replay")
    world.orchestrator().run_cycle()
    after = world.manifests().require("20240510", Partition())
    assert after.rows == 9
    assert after.entries == 9
    assert world.manifest_bytes()["20240511/p0-of-1.json"] == before["20240511/p0-of-1.json"]
    assert path.stat().st_mtime != 1_000_000


def test_a_replay_cleans_an_old_temp_file_of_a_manifest_it_does_not_rewrite(
    tmp_path: Path,
) -> None:
    """A writer killed while writing a manifest leaves its temp file; the replay writes
    the same bytes (so no rename cleans it) and removes it once it is an hour old."""
    world = World(tmp_path, records([10], 4))
    world.orchestrator().run_cycle()
    folder = tmp_path / "_manifests" / "20240510"
    old = folder / ".p0-of-1.json.0123456789ab.tmp"
    young = folder / ".p0-of-1.json.ba9876543210.tmp"
    for temp in (old, young):
        temp.write_bytes(b'{"half a manifest')
    os.utime(old, (1_000_000, 1_000_000))
    before = world.manifest_bytes()
    world.store.set(WatermarkKey("files"), at(10, 0), reason="replay")
    world.orchestrator().run_cycle()
    assert world.manifest_bytes() == before
    assert not old.exists()
    assert young.exists()  # a writer may still be on it


def test_rows_deleted_from_the_source_stay_listed_as_parts(tmp_path: Path) -> None:
    """G3: a replay after source rows were deleted keeps their entries; the manifest lists
    every part of the day while counting only the rows the source still returned."""
    world = World(tmp_path, records([10], 12))
    world.orchestrator().run_cycle()
    first = world.manifests().require("20240510", Partition())
    world.source = MemorySourceProvider(world.rows[:5])
    world.store.set(WatermarkKey("files"), at(10, 0), reason="replay")
    world.orchestrator().run_cycle()
    again = world.manifests().require("20240510", Partition())
    assert again.rows == 5
    assert again.entries == first.entries == 12
    assert again.groups == first.groups


def test_partitions_write_one_manifest_each_over_their_own_groups(tmp_path: Path) -> None:
    world = World(tmp_path, records([10], 40))
    for index in range(2):
        world.orchestrator(Partition(index, 2)).run_cycle()
    manifests = world.manifests()
    assert manifests.partitions("20240510") == [Partition(0, 2), Partition(1, 2)]
    found = [manifests.require("20240510", Partition(i, 2)) for i in range(2)]
    assert sum(m.rows for m in found) == 40
    for index, manifest in enumerate(found):
        assert manifest.groups
        assert all(int(group.hex, 16) % 2 == index for group in manifest.groups)
    archive = Archive(str(tmp_path), ROUTER)
    with pytest.raises(ConfigError, match="partitions 0/2, 1/2"):
        archive.manifest("20240510")
    assert archive.manifest("20240510", partition=Partition(1, 2)) == found[1]


def test_without_a_previous_manifest_the_parts_are_read_and_hashed(tmp_path: Path) -> None:
    """An archive from before manifests: a replay that writes nothing still records every
    part's sha256, read from the object, and the bytes equal a clean run's."""
    world = World(tmp_path, records([10], 10))
    world.orchestrator().run_cycle()
    before = world.manifest_bytes()
    (tmp_path / manifest_name("20240510", Partition())).unlink()
    (tmp_path / manifest_name("20240511", Partition())).unlink(missing_ok=True)
    world.store.set(WatermarkKey("files"), at(10, 0), reason="replay")
    result = world.orchestrator().run_cycle()
    assert result.shards_written == 0
    assert world.manifest_bytes() == before


def test_rebuild_writes_the_committed_bytes_from_shards_and_source(tmp_path: Path) -> None:
    world = World(tmp_path, records([10, 11], 10))
    world.orchestrator().run_cycle()
    before = world.manifest_bytes()
    path = tmp_path / manifest_name("20240510", Partition())
    path.write_bytes(b'{"format": "something else"}\n')
    with pytest.raises(CorruptManifestError, match=r"p0-of-1\.json: bad manifest"):
        world.manifests().read("20240510", Partition())
    world.manifests().rebuild(world.source, at(10, 0), Partition(), "files")
    assert world.manifest_bytes() == before


def test_a_manifest_that_is_not_canonical_is_refused(tmp_path: Path) -> None:
    world = World(tmp_path, records([10], 3))
    world.orchestrator().run_cycle()
    path = tmp_path / manifest_name("20240510", Partition())
    good = path.read_bytes()
    path.write_bytes(good.replace(b'"rows":{', b'"rows": {'))
    with pytest.raises(CorruptManifestError, match="canonical"):
        world.manifests().read("20240510", Partition())
    # A group's entry count that is not the sum of its parts' is not canonical either.
    path.write_bytes(good.replace(b'{"entries":1,"hex"', b'{"entries":2,"hex"', 1))
    assert path.read_bytes() != good
    with pytest.raises(CorruptManifestError, match="canonical"):
        world.manifests().read("20240510", Partition())
    path.write_bytes(b"\xff not json")
    with pytest.raises(CorruptManifestError, match="not JSON"):
        world.manifests().read("20240510", Partition())
    manifest = BucketManifest.from_bytes(
        world.manifests().rebuild(world.source, at(10, 0), Partition(), "files").to_bytes(),
        name="x",
    )
    assert manifest.rows == 3


def test_the_manifest_is_written_before_the_watermark_moves(tmp_path: Path) -> None:
    world = World(tmp_path, records([10, 11], 4))
    seen: list[tuple[bool, datetime | None]] = []

    def check(_name: str, _count: int) -> None:
        mark = world.store.get(WatermarkKey("files"))
        days = sorted(world.manifest_bytes())
        seen.append((bool(days), mark.position if mark else None))

    install("bucket.after_manifest", check)
    try:
        world.orchestrator().run_cycle()
    finally:
        uninstall("bucket.after_manifest")
    # At the checkpoint of each bucket, its manifest exists and the watermark has not
    # passed the bucket yet.
    assert seen == [(True, at(10, 0)), (True, at(11, 0))]
    with pytest.raises(ManifestMissingError):
        world.manifests().require("20240512", Partition())


def test_the_packer_reports_each_written_part_with_its_bytes_sha256(tmp_path: Path) -> None:
    packer = DesPacker(str(tmp_path), ROUTER, max_shard_size=500)
    with packer.open_bucket(at(10, 0)) as writer:
        for record in records([10], 20):
            writer.add(record, f"payload of {record.uid}".encode() * 9)
        result = writer.publish()
    assert len(result.shards) > ROUTER.shard_count // 2
    for shard in result.shards:
        data = (tmp_path / shard.name).read_bytes()
        assert shard.sha256 == hashlib.sha256(data).hexdigest()
        assert shard.size == len(data)


def test_a_fresh_bucket_records_its_manifest_without_reading_a_part(tmp_path: Path) -> None:
    world = World(tmp_path, records([10], 20))
    reads: list[str] = []
    original = ShardStore.read_range

    def counting(self: ShardStore, part: Any, start: int, end: int) -> bytes:
        reads.append(part.name)
        return original(self, part, start, end)

    ShardStore.read_range = counting  # type: ignore[method-assign]
    try:
        world.orchestrator().run_cycle()
    finally:
        ShardStore.read_range = original  # type: ignore[method-assign]
    assert world.manifests().require("20240510", Partition()).entries == 20
    assert reads == []


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), UTC]),
    )
)
def test_the_fast_instant_text_is_format_utc(value: datetime) -> None:
    assert instant_text(value) == format_utc(value)


class _Killed(Exception):
    """Stands for a runner killed at a checkpoint."""


def _die(_name: str, _count: int) -> None:
    raise _Killed


def test_a_replay_records_the_hash_of_a_part_a_killed_replay_rewrote_at_the_same_size(
    tmp_path: Path,
) -> None:
    """A replay rewrites a part with other bytes of the same size (a file changed in
    place) and is killed before the manifest: the next replay finds the part equal to its
    own rendering and leaves it alone, and the manifest takes the hash of those bytes
    (from the comparison), not the first run's."""
    world = World(tmp_path, records([10], 6))
    world.orchestrator().run_cycle()
    changed = world.rows[0]
    old = world.files[changed.location]
    world.reader.put(changed.location, bytes(reversed(old)))  # same size, other bytes

    world.store.set(WatermarkKey("files"), at(10, 0), reason="replay")
    install("bucket.after_publish", _die)
    try:
        with pytest.raises(_Killed):
            world.orchestrator().run_cycle()
    finally:
        uninstall("bucket.after_publish")
    stale = world.manifests().require("20240510", Partition())

    world.store.set(WatermarkKey("files"), at(10, 0), reason="replay")
    result = world.orchestrator().run_cycle()
    assert result.shards_written == 0, "the part is already the replay's"
    manifest = world.manifests().require("20240510", Partition())
    for part in manifest.parts:
        assert part.sha256 == hashlib.sha256((tmp_path / part.name).read_bytes()).hexdigest()
    assert manifest.parts != stale.parts, "the killed replay had left a stale hash"
