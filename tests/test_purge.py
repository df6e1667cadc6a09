"""The purge stage (G8): source files are deleted only below the committed archived
watermark, and only when their entry is verified in a published shard."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from deswm._archive import Archive
from deswm._container import read_shard
from deswm._errors import ConfigError, FileReadError, ManifestMissingError
from deswm._model import FileFailure, LocationReference, Partition, SourceRecord, WatermarkKey
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._purge import PurgeError, PurgeJob
from deswm._readers import FsspecFileReader
from deswm._routing import DesRouter
from deswm._sources.sql import SqlSourceProvider
from deswm._sqltypes import UtcDateTime
from deswm.testing import MemoryFileReader, MemorySourceProvider, MemoryWatermarkStore
from deswm.testing._error_store import MemoryErrorStore

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


# --- containment: the purge deletes only inside files.root / allowed_roots ---------------


class LocalWorld(World):
    """The same rows, as real files under ``root/``, with ``outside/victim.txt`` beside it."""

    def __init__(self, root: Path, days: list[int], per_day: int = 3) -> None:
        super().__init__(root, days, per_day)
        self.root = root / "root"
        self.victim = root / "outside" / "victim.txt"
        self.victim.parent.mkdir()
        self.victim.write_bytes(b"OUTSIDE")
        for location, data in self.files.items():
            path = self.root / location
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.reader = FsspecFileReader(root=self.root, retries=0)  # type: ignore[assignment]

    def point_outside(self, record: SourceRecord, location: str) -> SourceRecord:
        """The row changes after it was archived: its location now leads outside."""
        changed = SourceRecord(record.uid, record.created_at, location)
        self.source = MemorySourceProvider([changed if r == record else r for r in self.records])
        return changed


def test_purge_refuses_to_start_without_a_declared_root(tmp_path: Path) -> None:
    world = World(tmp_path, [10])
    world.reader = FsspecFileReader()  # type: ignore[assignment]
    with pytest.raises(ConfigError) as caught:
        world.purge()
    assert caught.value.key == "files.root"
    assert "files.allowed_roots" in str(caught.value)
    assert "needs to know which folders it owns" in str(caught.value)


def test_purge_accepts_allowed_roots_alone(tmp_path: Path) -> None:
    world = LocalWorld(tmp_path, [10])
    absolute = [
        SourceRecord(r.uid, r.created_at, str(world.root / r.location)) for r in world.records
    ]
    world.source = MemorySourceProvider(absolute)
    world.reader = FsspecFileReader(allowed_roots=[world.root])  # type: ignore[assignment]
    world.orchestrator().run_cycle()
    assert world.purge().run().deleted == 3
    assert not any((world.root / r.location).exists() for r in world.records)
    assert world.victim.exists()


@pytest.mark.parametrize("verify", ["content", "index"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["delete", "dry-run"])
@pytest.mark.parametrize(
    "escape",
    ["../outside/victim.txt", "ABSOLUTE", "symlink", "file://ABSOLUTE", "~/victim.txt"],
)
def test_a_row_moved_outside_after_archiving_is_never_deleted(
    tmp_path: Path, verify: str, dry_run: bool, escape: str
) -> None:
    world = LocalWorld(tmp_path, [10, 11])
    world.orchestrator().run_cycle()
    victim_row = world.records[4]  # day 11
    if escape == "symlink":  # the same bytes, but behind a link that leaves the root
        world.victim.write_bytes(world.files[victim_row.location])
        (world.root / victim_row.location).unlink()
        (world.root / victim_row.location).symlink_to(world.victim)
        location = victim_row.location
    else:
        location = escape.replace("ABSOLUTE", str(world.victim))
        world.point_outside(victim_row, location)
    outside_bytes = world.victim.read_bytes()

    with pytest.raises(PurgeError) as caught:
        world.purge(verify=verify).run(dry_run=dry_run)

    assert world.victim.read_bytes() == outside_bytes
    message = str(caught.value)
    assert repr(victim_row.uid) in message
    assert location in message
    assert "is outside files.root" in message
    [failure] = caught.value.failures
    assert failure.error_type == "LocationOutsideRootError"
    if not dry_run:
        purged = world.store.get(PURGED)
        assert purged is not None
        assert purged.position == at(11, 0)  # day 10 done, day 11 kept


def test_delete_checks_containment_again_itself(tmp_path: Path) -> None:
    """Even when the check before it is skipped, the delete refuses a link out."""
    world = LocalWorld(tmp_path, [10])
    world.orchestrator().run_cycle()
    row = world.records[1]
    world.victim.write_bytes(world.files[row.location])
    (world.root / row.location).unlink()
    (world.root / row.location).symlink_to(world.victim)

    class Unchecked(FsspecFileReader):
        def check_location(self, location: str) -> None:
            return None

    world.reader = Unchecked(root=world.root)  # type: ignore[assignment]
    with pytest.raises(PurgeError, match="through a symlink"):
        world.purge(verify="index").run()
    assert world.victim.exists()


def test_s3_rows_outside_the_root_are_never_deleted(
    tmp_path: Path, moto_s3: Any, s3_bucket: str
) -> None:
    world = World(tmp_path, [10], per_day=3)
    fs = moto_s3.filesystem()
    for location, data in world.files.items():
        fs.pipe_file(f"{s3_bucket}/root/{location}", data)
    fs.pipe_file(f"{s3_bucket}/root2/victim.txt", b"OUTSIDE")
    world.reader = FsspecFileReader(  # type: ignore[assignment]
        root=f"s3://{s3_bucket}/root", storage_options={"s3": moto_s3.storage_options}
    )
    world.orchestrator().run_cycle()
    row = world.records[0]
    for location in (
        f"s3://{s3_bucket}/root2/victim.txt",
        "../root2/victim.txt",
        f"s3://{s3_bucket}/root/../root2/victim.txt",
    ):
        world.source = MemorySourceProvider(
            [SourceRecord(row.uid, row.created_at, location), *world.records[1:]]
        )
        with pytest.raises(PurgeError, match=r"is outside files\.root"):
            world.purge(verify="index").run()
    fs.invalidate_cache()
    assert fs.cat_file(f"{s3_bucket}/root2/victim.txt") == b"OUTSIDE"


# --- shared locations (G15) -------------------------------------------------------------------


class CountingSource(MemorySourceProvider):
    """Counts location lookups; ``on_lookup`` may change the table between them."""

    def __init__(self, records: list[SourceRecord]) -> None:
        super().__init__(records)
        self.lookups: list[int] = []
        self.on_lookup: Callable[[int], None] = lambda n: None

    def location_references(self, locations: Collection[str]) -> Iterator[LocationReference]:
        self.lookups.append(len(set(locations)))
        self.on_lookup(len(self.lookups))
        return super().location_references(locations)


def shared_world(tmp_path: Path) -> tuple[World, SourceRecord, SourceRecord]:
    """r1 (day 10, archived) and r2 (day 19, inside the lag) share one location."""
    world = World(tmp_path, [10])
    r1 = SourceRecord("r1", at(10, 3), "mem/shared")
    r2 = SourceRecord("r2", at(19, 3), "mem/shared")
    world.records += [r1, r2]
    world.files["mem/shared"] = b"one file, two rows"
    world.source = CountingSource(world.records)
    world.reader = MemoryFileReader(world.files)
    return world, r1, r2


def test_a_location_a_newer_row_still_needs_is_kept(tmp_path: Path) -> None:
    world, r1, r2 = shared_world(tmp_path)
    world.orchestrator().run_cycle()  # archives day 10; r2 is inside the lag

    result = world.purge().run()

    assert "mem/shared" in world.present(), "r2 is not archived yet"
    assert result.kept_shared == 1
    assert result.deleted == 6
    purged = world.store.get(PURGED)
    assert purged is not None and purged.position == at(18, 0)

    # r2's day comes: it is archived from the kept file, and only now is the file deleted.
    later = NOW + timedelta(days=2)
    world.orchestrator(clock=lambda: later).run_cycle()
    archive = Archive(str(world.archive_dir), world.router)
    assert archive.get(r2.uid, r2.created_at) == b"one file, two rows"
    result = world.purge().run()
    assert result.deleted == 1
    assert result.kept_shared == 0
    assert "mem/shared" not in world.present()
    assert archive.get(r1.uid, r1.created_at) == b"one file, two rows"


def test_rows_of_one_day_sharing_a_location_delete_it_once(tmp_path: Path) -> None:
    world = World(tmp_path, [10], per_day=2)
    twin = SourceRecord("twin", at(10, 5), world.records[0].location)
    world.records.append(twin)
    world.source = MemorySourceProvider(world.records)
    world.orchestrator().run_cycle()

    result = world.purge().run()

    assert (result.deleted, result.already_gone, result.kept_shared) == (2, 1, 0)
    assert world.present() == set()


def test_a_location_of_a_listed_row_is_kept(tmp_path: Path) -> None:
    world = World(tmp_path, [10], per_day=2)
    listed = SourceRecord("listed", at(11, 1), world.records[0].location)
    world.records.append(listed)
    world.source = MemorySourceProvider(world.records)
    world.orchestrator().run_cycle()
    world.errors.record(
        ARCHIVED,
        [FileFailure("listed", listed.created_at, listed.location, "read", "X", "failed once")],
    )

    result = world.purge(error_store=world.errors).run()

    assert result.kept_shared == 1
    assert result.kept_listed == 1
    assert world.records[0].location in world.present()


def test_a_location_whose_other_row_is_not_in_the_archive_is_kept(tmp_path: Path) -> None:
    world = World(tmp_path, [10], per_day=2)
    world.orchestrator().run_cycle()
    # A row added below the watermark after its day was archived: never archived.
    late = SourceRecord("late", at(11, 1), world.records[0].location)
    world.source.add(late)

    # Day 11 had no row when it was committed, so it has no manifest: the purge stops
    # there, before looking at the late row.
    with pytest.raises(ManifestMissingError, match="bucket 20240511 partition 0/1"):
        world.purge().run()

    assert world.records[0].location in world.present()
    assert world.records[1].location not in world.present()
    purged = world.store.get(PURGED)
    assert purged is not None and purged.position == at(11, 0), "day 10 done, its file kept"


def test_a_reference_added_while_verifying_is_seen_before_the_delete(tmp_path: Path) -> None:
    world, _, _ = shared_world(tmp_path)
    world.source = CountingSource([r for r in world.records if r.uid != "r2"])
    world.orchestrator().run_cycle()
    victim = world.records[0]
    source = world.source
    assert isinstance(source, CountingSource)
    # Between the first look and the re-check a new row starts to need the file.
    source.on_lookup = lambda n: (
        source.add(SourceRecord("new", at(19), victim.location)) if n == 1 else None
    )

    result = world.purge().run()

    assert victim.location in world.present()
    assert result.kept_shared == 1
    assert len(source.lookups) == 2, "one look before verifying, one right before deleting"


def test_references_are_looked_up_per_batch_not_per_row(tmp_path: Path) -> None:
    world = World(tmp_path, [])
    world.records = [
        SourceRecord(f"f{day}-{i}", at(day, 0) + timedelta(seconds=i), f"mem/{day}/{i}")
        for day in (10, 11)
        for i in range(700)
    ]
    world.files = {r.location: r.uid.encode() for r in world.records}
    world.reader = MemoryFileReader(world.files)
    world.source = CountingSource(world.records)
    world.orchestrator().run_cycle()

    result = world.purge(verify="index").run()

    assert result.deleted == 1400
    source = world.source
    assert isinstance(source, CountingSource)
    # Per day: a batch of 500 and one of 200, each looked up twice.
    assert source.lookups == [500, 500, 200, 200] * 2


def test_shared_location_on_every_database(engine: sa.Engine, tmp_path: Path) -> None:
    """The same scenario with the SQL source: the reference check is one IN (...) query."""
    metadata = sa.MetaData()
    table = sa.Table(
        "files",
        metadata,
        sa.Column("uid", sa.String(64)),
        sa.Column("created_at", UtcDateTime()),
        sa.Column("file_location", sa.String(255), index=True),
        sa.Column("size_bytes", sa.BigInteger),
    )
    world, r1, r2 = shared_world(tmp_path)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {"uid": r.uid, "created_at": r.created_at, "file_location": r.location}
                for r in world.records
            ],
        )
    # World's source is a memory one in every other test (they add rows to it)
    world.source = SqlSourceProvider(engine, "files")  # type: ignore[assignment]
    world.orchestrator().run_cycle()

    result = world.purge().run()

    assert (result.deleted, result.kept_shared) == (6, 1)
    assert world.present() == {"mem/shared"}
    later = NOW + timedelta(days=2)
    world.orchestrator(clock=lambda: later).run_cycle()
    assert world.purge().run().deleted == 1
    assert world.present() == set()
    archive = Archive(str(world.archive_dir), world.router)
    for record in (r1, r2):
        assert archive.get(record.uid, record.created_at) == b"one file, two rows"


def test_a_source_without_location_references_is_refused(tmp_path: Path) -> None:
    world = World(tmp_path, [10])

    class OldSource:
        def iter_records(self, window: Any) -> Iterator[SourceRecord]:
            return world.source.iter_records(window)

        def pending_stats(self, window: Any) -> Any:
            return world.source.pending_stats(window)

    world.source = OldSource()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="location_references"):
        world.purge()


def test_purge_and_verify_share_one_archive_lookup_protocol() -> None:
    import typing

    from deswm._protocols import ArchiveLookup
    from deswm._verify import verify_window

    assert typing.get_type_hints(PurgeJob.__init__)["archive"] is ArchiveLookup
    assert typing.get_type_hints(verify_window)["archive"] is ArchiveLookup


def test_a_day_without_its_manifest_is_never_purged(tmp_path: Path) -> None:
    world = World(tmp_path, [10, 11, 12])
    world.orchestrator().run_cycle()
    (world.archive_dir / "_manifests" / "20240511" / "p0-of-1.json").unlink()

    with pytest.raises(ManifestMissingError, match="bucket 20240511 partition 0/1") as caught:
        world.purge().run()

    assert "deswm manifest 20240511 --rebuild" in str(caught.value)
    day_10 = {r.location for r in world.records if r.created_at < at(11, 0)}
    assert not day_10 & world.present(), "the day before it was purged"
    assert {r.location for r in world.records if r.created_at >= at(11, 0)} <= world.present()
    purged = world.store.get(PURGED)
    assert purged is not None and purged.position == at(11, 0)
