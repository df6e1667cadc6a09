"""on_error="record": failed files go to the error table, the rest is committed; retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deswm._archive import Archive
from deswm._errors import ConfigError, CycleError, DuplicateUidError, FileReadError
from deswm._model import SourceRecord, WatermarkKey
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm.testing import MemoryFileReader, MemorySourceProvider, MemoryWatermarkStore
from deswm.testing._error_store import MemoryErrorStore

NOW = datetime(2024, 5, 20, 15, tzinfo=UTC)
KEY = WatermarkKey("files")


def at(day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, minute, tzinfo=UTC)


class World:
    def __init__(self, root: Path, records: list[SourceRecord]) -> None:
        self.records = records
        self.files = {r.location: f"bytes of {r.uid}".encode() * 5 for r in records}
        self.broken: dict[str, BaseException] = {}
        self.store = MemoryWatermarkStore()
        self.errors = MemoryErrorStore()
        self.router = DesRouter(4)
        self.archive_dir = root / "archive"

    def orchestrator(self, **options: Any) -> WatermarkOrchestrator:
        options.setdefault("on_error", "record")
        options.setdefault("error_store", self.errors)
        return WatermarkOrchestrator(
            self.store,
            MemorySourceProvider(self.records),
            MemoryFileReader(self.files, errors=self.broken),
            self.router,
            DesPacker(str(self.archive_dir), self.router),
            pipeline="files",
            lag=timedelta(days=2),
            initial=at(10, 0),
            clock=lambda: NOW,
            **options,
        )

    def archive(self) -> Archive:
        return Archive(str(self.archive_dir), self.router)

    def objects(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.archive_dir.glob("*.des"))}

    def break_file(self, record: SourceRecord) -> None:
        self.broken[record.location] = FileReadError("device error", location=record.location)


def many(days: list[int], per_day: int = 20) -> list[SourceRecord]:
    return [
        SourceRecord(f"f{day}-{i:02d}", at(day, i % 24, i), f"mem/{day}/{i}")
        for day in days
        for i in range(per_day)
    ]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, many([10, 11, 12]))


def test_failed_files_are_listed_and_the_rest_committed(world: World) -> None:
    bad = world.records[25]  # day 11
    world.break_file(bad)

    result = world.orchestrator().run_cycle()

    assert result.watermark_after == at(18, 0)
    assert [f.uid for f in result.failures] == [bad.uid]
    recorded = world.errors.list(KEY)
    assert len(recorded) == 1
    assert recorded[0].failure.uid == bad.uid
    assert recorded[0].failure.stage == "read"
    assert "device error" in recorded[0].failure.message
    assert recorded[0].attempts == 1
    # G1 in record mode: every row below the watermark is archived or listed.
    archive = world.archive()
    listed = {(r.failure.uid, r.failure.created_at) for r in recorded}
    for record in world.records:
        archived = archive.exists(record.uid, record.created_at)
        assert archived != ((record.uid, record.created_at) in listed)


def test_guard_refuses_a_bucket_with_too_many_failures(world: World) -> None:
    for record in world.records[20:25]:  # 5 of 20 on day 11: 25 %
        world.break_file(record)

    with pytest.raises(CycleError) as caught:
        world.orchestrator(max_failure_ratio=0.2).run_cycle()

    assert "max_failure_ratio" in str(caught.value)
    assert len(caught.value.failures) == 5
    stored = world.store.get(KEY)
    assert stored is not None
    assert stored.position == at(11, 0)  # day 10 committed, day 11 not
    assert world.errors.list(KEY) == []  # a refused bucket lists nothing: it is retried whole
    assert not any(name.startswith("20240511_") for name in world.objects())


def test_duplicate_uid_is_recorded_not_fatal(tmp_path: Path) -> None:
    records = [*many([10], per_day=3), SourceRecord("f10-01", at(10, 23), "mem/dup")]
    world = World(tmp_path, records)
    world.files["mem/dup"] = b"second"

    result = world.orchestrator(max_failure_ratio=0.5).run_cycle()

    assert [f.stage for f in result.failures] == ["pack"]
    assert result.failures[0].error_type == "DuplicateUidError"
    assert world.archive().get("f10-01", at(10, 1, 1)) == world.files["mem/10/1"]


def test_duplicate_uid_stops_in_stop_mode(tmp_path: Path) -> None:
    records = [*many([10], per_day=3), SourceRecord("f10-01", at(10, 23), "mem/dup")]
    world = World(tmp_path, records)
    world.files["mem/dup"] = b"second"
    with pytest.raises(DuplicateUidError, match="f10-01"):
        world.orchestrator(on_error="stop", error_store=None).run_cycle()
    assert world.store.get(KEY).position == at(10, 0)  # type: ignore[union-attr]


def test_retry_merges_fixed_files_into_published_shards(world: World, tmp_path: Path) -> None:
    bad = [world.records[5], world.records[26]]
    for record in bad:
        world.break_file(record)
    world.orchestrator().run_cycle()
    before = world.objects()

    still = world.orchestrator().retry_errors()
    assert still.archived == 0
    assert len(still.failures) == 2
    assert [r.attempts for r in world.errors.list(KEY)] == [2, 2]

    world.broken.clear()
    result = world.orchestrator().retry_errors()

    assert result.attempted == 2
    assert result.archived == 2
    assert result.failures == ()
    assert world.errors.list(KEY) == []
    archive = world.archive()
    for record in world.records:
        assert archive.get(record.uid, record.created_at) == world.files[record.location]
    # Merging kept every old entry, and the shards now equal a clean run's (G2, G3).
    clean = World(tmp_path / "clean", world.records)
    clean.orchestrator().run_cycle()
    assert world.objects() == clean.objects()
    assert world.objects() != before
    # The retry brought each touched day's manifest up to date: a clean run's bytes.
    for day in ("20240510", "20240511"):
        name = f"_manifests/{day}/p0-of-1.json"
        assert (world.archive_dir / name).read_bytes() == (clean.archive_dir / name).read_bytes()


def test_retry_of_a_file_archived_meanwhile_resolves_it(world: World) -> None:
    bad = world.records[3]
    world.break_file(bad)
    world.orchestrator().run_cycle()
    world.broken.clear()
    world.store.set(KEY, at(10, 0), reason="replay")
    world.orchestrator().run_cycle()  # the replay archives it

    del world.files[bad.location]  # and then the purge deletes the source file
    result = world.orchestrator().retry_errors()

    assert result.archived == 1
    assert world.errors.list(KEY) == []


def test_record_mode_needs_an_error_store(world: World) -> None:
    from deswm._errors import ConfigError

    with pytest.raises(ConfigError, match="error store"):
        world.orchestrator(error_store=None)


def test_retry_without_an_error_store_says_what_to_pass(world: World) -> None:
    orchestrator = world.orchestrator(on_error="stop", error_store=None)
    with pytest.raises(ConfigError, match=r"retry_errors\(\) reads the failures") as caught:
        orchestrator.retry_errors()
    assert caught.value.key == "error_store"
    assert 'on_error="record"' not in caught.value.message
    assert "error_store=" in (caught.value.hint or "")
