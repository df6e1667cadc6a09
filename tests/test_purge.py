"""The purge stage (G8): source files are deleted only below the committed archived
watermark, and only when their entry is verified in a published shard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deswm.archive import Archive
from deswm.container import read_shard
from deswm.errors import FileReadError
from deswm.model import Partition, SourceRecord, WatermarkKey
from deswm.orchestrator import WatermarkOrchestrator
from deswm.packer import DesPacker
from deswm.purge import PurgeError, PurgeJob
from deswm.routing import DesRouter
from deswm.testing import MemoryFileReader, MemorySourceProvider, MemoryWatermarkStore
from deswm.testing.errors import MemoryErrorStore

NOW = datetime(2024, 5, 20, 15, tzinfo=UTC)
ARCHIVED = WatermarkKey("files")
PURGED = WatermarkKey("files", "purged")


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2024, 5, day, hour, tzinfo=UTC)


class World:
    def __init__(self, root: Path, days: list[int], per_day: int = 6) -> None:
        self.records = [
            SourceRecord(f"f{day}-{i}", at(day, i), f"mem/{day}/{i}")
            for day in days
            for i in range(per_day)
        ]
        self.files = {r.location: f"content {r.uid}".encode() * 4 for r in self.records}
        self.store = MemoryWatermarkStore()
        self.source = MemorySourceProvider(self.records)
        self.reader = MemoryFileReader(self.files)
        self.router = DesRouter(4)
        self.errors = MemoryErrorStore()
        self.archive_dir = root / "archive"

    def orchestrator(self, **options: Any) -> WatermarkOrchestrator:
        options.setdefault("clock", lambda: NOW)
        return WatermarkOrchestrator(
            self.store,
            self.source,
            self.reader,
            self.router,
            DesPacker(str(self.archive_dir), self.router),
            pipeline="files",
            lag=timedelta(days=2),
            initial=at(10, 0),
            **options,
        )

    def purge(self, **options: Any) -> PurgeJob:
        return PurgeJob(
            self.store,
            self.source,
            self.reader,
            Archive(str(self.archive_dir), self.router),
            self.router,
            pipeline="files",
            initial=at(10, 0),
            **options,
        )

    def present(self) -> set[str]:
        return set(self.reader.files)


def test_purge_deletes_archived_files_and_never_passes_archived(tmp_path: Path) -> None:
    world = World(tmp_path, [10, 11, 19])  # day 19 is newer than the target (May 18)
    world.orchestrator().run_cycle()

    result = world.purge().run()

    assert result.deleted == 12
    assert result.buckets_committed == 2
    purged = world.store.get(PURGED)
    archived = world.store.get(ARCHIVED)
    assert purged is not None
    assert archived is not None
    assert purged.position == archived.position == at(18, 0)
    assert world.present() == {r.location for r in world.records if r.created_at >= at(18, 0)}
    archive = Archive(str(world.archive_dir), world.router)
    for record in world.records[:12]:
        assert archive.get(record.uid, record.created_at) == world.files[record.location]


def test_nothing_is_deleted_before_the_archived_watermark_moves(tmp_path: Path) -> None:
    world = World(tmp_path, [10, 11])
    result = world.purge().run()
    assert result.deleted == 0
    assert world.present() == set(world.files)


def test_missing_entry_stops_the_purge_and_keeps_the_file(tmp_path: Path) -> None:
    world = World(tmp_path, [10, 11, 12])
    world.orchestrator().run_cycle()
    victim = world.records[8]  # day 11
    key = world.router.route(victim.uid, victim.created_at)
    for part in world.archive_dir.glob(f"{key.prefix}*.des"):
        part.unlink()

    with pytest.raises(PurgeError) as caught:
        world.purge().run()

    assert victim.uid in str(caught.value)
    assert victim.location in world.present()
    purged = world.store.get(PURGED)
    assert purged is not None
    assert purged.position == at(11, 0)  # day 10 done, day 11 not
    assert all(r.location not in world.present() for r in world.records[:6])


def test_corrupt_archived_copy_keeps_the_file(tmp_path: Path) -> None:
    world = World(tmp_path, [10])
    world.orchestrator().run_cycle()
    part = sorted(world.archive_dir.glob("*.des"))[0]
    first = min(read_shard(part.read_bytes()).entries, key=lambda e: e.offset)
    data = bytearray(part.read_bytes())
    data[first.offset] ^= 0xFF  # damage the first payload of the shard
    part.write_bytes(bytes(data))
    victim = next(r for r in world.records if r.uid == first.uid)

    with pytest.raises(PurgeError, match="does not verify"):
        world.purge().run()
    assert victim.location in world.present()
    assert world.store.get(PURGED) is None or world.store.get(PURGED).position == at(10, 0)  # type: ignore[union-attr]


def test_source_changed_after_archiving_is_kept(tmp_path: Path) -> None:
    world = World(tmp_path, [10])
    world.orchestrator().run_cycle()
    changed = world.records[4]
    world.reader.put(changed.location, b"a newer version")

    with pytest.raises(PurgeError, match="differs"):
        world.purge().run()
    assert world.reader.files[changed.location] == b"a newer version"


def test_index_mode_trusts_the_index(tmp_path: Path) -> None:
    world = World(tmp_path, [10])
    world.orchestrator().run_cycle()
    world.reader.put(world.records[4].location, b"a newer version")
    result = world.purge(verify="index").run()
    assert result.deleted == 6


@pytest.mark.parametrize("verify", ["index", "content"])
def test_a_damaged_checksum_is_never_trusted(tmp_path: Path, verify: str) -> None:
    """A meta whose sha256 is not a sha256 reads as "no checksum": the file is kept."""
    world = World(tmp_path, [10])
    world.orchestrator().run_cycle()
    part = sorted(world.archive_dir.glob("*.des"))[0]
    first = read_shard(part.read_bytes()).entries[0]
    assert first.sha256 is not None
    part.write_bytes(part.read_bytes().replace(first.sha256.encode(), b"z" * 64))
    victim = next(r for r in world.records if r.uid == first.uid)

    with pytest.raises(PurgeError, match="no checksum") as caught:
        world.purge(verify=verify).run()
    assert victim.uid in str(caught.value)
    assert victim.location in world.present()


def test_files_listed_in_the_error_table_are_kept(tmp_path: Path) -> None:
    world = World(tmp_path, [10])
    bad = world.records[1]
    world.reader = MemoryFileReader(
        world.files, errors={bad.location: FileReadError("bad sector", location=bad.location)}
    )
    world.orchestrator(
        on_error="record", error_store=world.errors, max_failure_ratio=0.5
    ).run_cycle()
    world.reader = MemoryFileReader(world.files)

    result = world.purge(error_store=world.errors).run()

    assert result.kept_listed == 1
    assert result.deleted == 5
    assert world.present() == {bad.location}


def test_dry_run_deletes_nothing(tmp_path: Path) -> None:
    world = World(tmp_path, [10, 11])
    world.orchestrator().run_cycle()
    result = world.purge().run(dry_run=True)
    assert result.deleted == 12
    assert result.dry_run
    assert world.present() == set(world.files)
    assert world.store.get(PURGED) is None


def test_replay_after_purge_keeps_every_entry(tmp_path: Path) -> None:
    world = World(tmp_path, [10, 11])
    world.orchestrator().run_cycle()
    before = {p.name: p.read_bytes() for p in world.archive_dir.glob("*.des")}
    world.purge().run()
    world.store.set(ARCHIVED, at(10, 0), reason="replay after purge")

    result = world.orchestrator().run_cycle()

    assert result.kept == 12
    assert {p.name: p.read_bytes() for p in world.archive_dir.glob("*.des")} == before


def test_partitions_purge_only_their_own_files(tmp_path: Path) -> None:
    world = World(tmp_path, [10], per_day=24)
    for index in range(2):
        world.orchestrator(partition=Partition(index, 2)).run_cycle()
    world.purge(partition=Partition(0, 2)).run()
    router = world.router
    for record in world.records:
        owned = router.shard_index(record.uid) % 2 == 0
        assert (record.location in world.present()) != owned
