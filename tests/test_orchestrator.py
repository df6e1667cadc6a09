"""WatermarkOrchestrator on in-memory components and a DesPacker on a local folder."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deswm._archive import Archive
from deswm._errors import (
    ConfigError,
    CycleError,
    FileMissingError,
    FileReadError,
    NaiveDatetimeError,
    RowCountError,
    SourceError,
    WatermarkConflict,
)
from deswm._model import (
    BucketResult,
    CycleResult,
    Partition,
    SourceRecord,
    Watermark,
    WatermarkKey,
    Window,
)
from deswm._orchestrator import CycleObserver, WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm.testing import (
    MemoryFileReader,
    MemorySourceProvider,
    MemoryWatermarkStore,
    drop_on,
    inject,
)

NOW = datetime(2024, 5, 20, 15, 30, tzinfo=UTC)
DAY = timedelta(days=1)


def at(day: int, hour: int = 12, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, minute, second, micro, tzinfo=UTC)


class World:
    """Components wired together over a local archive folder."""

    def __init__(self, root: Path, records: list[SourceRecord], *, n_bits: int = 4) -> None:
        self.root = root
        self.records = records
        self.files = {r.location: f"payload of {r.uid}".encode() * 3 for r in records}
        self.store = MemoryWatermarkStore()
        self.source = MemorySourceProvider(records)
        self.reader = MemoryFileReader(self.files)
        self.router = DesRouter(n_bits)
        self.archive_dir = root / "archive"
        self.packer = DesPacker(str(self.archive_dir), self.router)

    def orchestrator(self, **options: Any) -> WatermarkOrchestrator:
        options.setdefault("pipeline", "files")
        options.setdefault("lag", 2 * DAY)
        options.setdefault("initial", at(10, 0))
        options.setdefault("clock", lambda: NOW)
        return WatermarkOrchestrator(
            self.store, self.source, self.reader, self.router, self.packer, **options
        )

    def archive(self) -> Archive:
        return Archive(str(self.archive_dir), self.router)

    def objects(self) -> dict[str, bytes]:
        if not self.archive_dir.exists():
            return {}
        return {
            str(p.relative_to(self.archive_dir)): p.read_bytes()
            for p in sorted(self.archive_dir.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }


def records_over_days(days: list[int], per_day: int = 5) -> list[SourceRecord]:
    out = []
    for day in days:
        for i in range(per_day):
            created = at(day, 0) if i == 0 else at(day, 1 + (i * 3) % 23, i % 60, i % 60, i)
            uid = f"u{day:02d}-{i}"
            out.append(SourceRecord(uid, created, f"mem/{uid}", 10))
    return out


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, records_over_days([10, 11, 12, 15, 17, 18, 19]))


def test_cycle_archives_every_row_below_the_target(world: World) -> None:
    result = world.orchestrator().run_cycle()

    target = at(18, 0)  # floor(NOW - 2 days) = May 18 00:00
    assert result.window == Window(at(10, 0), target)
    assert result.watermark_after == target
    assert world.store.get(WatermarkKey("files")).position == target  # type: ignore[union-attr]
    archived = [r for r in world.records if r.created_at < target]
    assert result.files == len(archived)
    assert result.bytes_in == sum(len(world.files[r.location]) for r in archived)
    archive = world.archive()
    for record in archived:
        assert archive.get(record.uid, record.created_at) == world.files[record.location]
    for record in world.records:
        if record.created_at >= target:
            assert not archive.exists(record.uid, record.created_at)


def test_one_watermark_write_per_non_empty_bucket(world: World) -> None:
    orchestrator = world.orchestrator()
    world.store.initialize(orchestrator.key, at(10, 0))
    writes_before = world.store.writes

    result = orchestrator.run_cycle()

    non_empty_days = {r.created_at.date() for r in world.records if r.created_at < at(18, 0)}
    assert result.buckets_committed == len(non_empty_days) == 5
    assert world.store.writes - writes_before == len(non_empty_days)
    # Empty days (13, 14, 16) cost no query either: one stream for the whole window.
    assert [c.method for c in world.source.calls] == ["iter_records"]


def test_empty_window_moves_the_watermark_with_one_write(tmp_path: Path) -> None:
    world = World(tmp_path, [])
    orchestrator = world.orchestrator()
    world.store.initialize(orchestrator.key, at(10, 0))
    before = world.store.writes

    result = orchestrator.run_cycle()

    assert result.watermark_after == at(18, 0)
    assert world.store.writes - before == 1
    assert result.shards_written == 0
    assert world.objects() == {}


def test_caught_up_cycle_writes_nothing(world: World) -> None:
    world.orchestrator().run_cycle()
    writes = world.store.writes
    objects = world.objects()

    result = world.orchestrator().run_cycle()

    assert result.window.empty and not result.advanced
    assert world.store.writes == writes
    assert world.objects() == objects


def test_midnight_row_belongs_to_the_day_it_starts(tmp_path: Path) -> None:
    records = [
        SourceRecord("late", at(11, 23, 59, 59, 999_999), "mem/late"),
        SourceRecord("midnight", at(12, 0), "mem/midnight"),
    ]
    world = World(tmp_path, records)

    world.orchestrator(clock=lambda: at(14, 1)).run_cycle()  # target May 12 00:00

    archive = world.archive()
    assert archive.exists("late", records[0].created_at)
    assert not archive.exists("midnight", records[1].created_at)
    assert world.store.get(WatermarkKey("files")).position == at(12, 0)  # type: ignore[union-attr]

    world.orchestrator(clock=lambda: at(15, 1)).run_cycle()
    stat = world.archive().stat("midnight", records[1].created_at)
    assert stat.shard.startswith("20240512_")


def test_target_is_computed_once_per_cycle(world: World) -> None:
    calls: list[datetime] = []

    def clock() -> datetime:
        # Every call is a day later: a cycle that asked twice would see a later target.
        value = NOW + len(calls) * DAY
        calls.append(value)
        return value

    result = world.orchestrator(clock=clock).run_cycle()

    assert len(calls) == 1
    assert result.watermark_after == at(18, 0)


def test_initial_watermark_is_aligned_down(world: World) -> None:
    orchestrator = world.orchestrator(initial=at(12, 13, 37))
    orchestrator.run_cycle()
    history = world.store.list("files")
    assert len(history) == 1
    archive = world.archive()
    # Day 12 is packed whole, including rows before 13:37.
    for record in world.records:
        if at(12, 0) <= record.created_at < at(13, 0):
            assert archive.exists(record.uid, record.created_at)
    assert not any(
        archive.exists(r.uid, r.created_at) for r in world.records if r.created_at < at(12, 0)
    )


def test_default_initial_is_thirty_days_back_at_midnight(tmp_path: Path) -> None:
    world = World(tmp_path, [])
    orchestrator = world.orchestrator(initial=None)
    assert orchestrator.initial_position() == datetime(2024, 4, 20, tzinfo=UTC)


def test_failed_file_stops_before_its_bucket(world: World) -> None:
    bad = next(r for r in world.records if r.created_at.day == 12 and r.uid.endswith("-2"))
    world.reader = MemoryFileReader(
        world.files, errors={bad.location: FileReadError("disk on fire", location=bad.location)}
    )
    orchestrator = world.orchestrator()

    with pytest.raises(CycleError) as caught:
        orchestrator.run_cycle()

    error = caught.value
    assert [f.uid for f in error.failures] == [bad.uid]
    assert "disk on fire" in str(error) and bad.uid in str(error)
    # Days 10 and 11 stay committed; day 12 is not published at all.
    assert world.store.get(orchestrator.key).position == at(12, 0)  # type: ignore[union-attr]
    assert error.result is not None and error.result.buckets_committed == 2
    assert not any(name.startswith("20240512_") for name in world.objects())

    # Fix the file and rerun: everything arrives, nothing is lost.
    world.reader = MemoryFileReader(world.files)
    result = world.orchestrator().run_cycle()
    assert result.watermark_after == at(18, 0)
    assert world.archive().get(bad.uid, bad.created_at) == world.files[bad.location]


def test_every_failure_of_the_bucket_is_listed(world: World) -> None:
    bad = [r for r in world.records if r.created_at.day == 11][:3]
    world.reader = MemoryFileReader(
        world.files, errors={r.location: FileMissingError(r.location) for r in bad}
    )
    with pytest.raises(CycleError) as caught:
        world.orchestrator().run_cycle()
    assert sorted(f.uid for f in caught.value.failures) == sorted(r.uid for r in bad)
    assert all(f.error_type == "FileMissingError" for f in caught.value.failures)


def test_replay_after_source_files_deleted_keeps_archived_entries(world: World) -> None:
    world.orchestrator().run_cycle()
    original = world.objects()
    deleted = [r for r in world.records if r.created_at < at(13, 0)][::2]
    for record in deleted:
        world.reader.delete(record.location)

    world.store.set(WatermarkKey("files"), at(10, 0), reason="replay")
    result = world.orchestrator().run_cycle()

    assert result.kept == len(deleted)
    assert result.failures == ()
    assert world.objects() == original  # G2 + G3: byte-identical, nothing dropped
    for record in deleted:
        assert world.archive().get(record.uid, record.created_at) == world.files[record.location]


def test_missing_file_that_was_never_archived_is_a_failure(world: World) -> None:
    gone = world.records[0]
    world.reader.delete(gone.location)
    with pytest.raises(CycleError) as caught:
        world.orchestrator().run_cycle()
    assert [f.uid for f in caught.value.failures] == [gone.uid]


def test_replay_is_byte_identical(world: World) -> None:
    world.orchestrator().run_cycle()
    first = world.objects()
    world.store.set(WatermarkKey("files"), at(10, 0), reason="replay")
    world.orchestrator().run_cycle()
    assert world.objects() == first


class _StealingStore(MemoryWatermarkStore):
    """Another runner advances the watermark right before our first commit."""

    def advance(self, current: Watermark, position: datetime) -> Watermark:
        if not getattr(self, "_stolen", False):
            self._stolen = True
            super().set(current.key, current.position, reason="other runner")
        return super().advance(current, position)


def test_conflict_stops_without_committing(world: World) -> None:
    world.store = _StealingStore()
    orchestrator = world.orchestrator()
    with pytest.raises(WatermarkConflict) as caught:
        orchestrator.run_cycle()
    assert "another runner" in str(caught.value).lower()
    stored = world.store.get(orchestrator.key)
    assert stored is not None and stored.position == at(10, 0)


def test_partitions_split_shards_disjointly(tmp_path: Path) -> None:
    records = records_over_days([10, 11], per_day=40)
    worlds = []
    for index in range(2):
        world = World(tmp_path / f"p{index}", records)
        world.orchestrator(partition=Partition(index, 2)).run_cycle()
        worlds.append(world)
    names = [set(w.objects()) for w in worlds]
    assert names[0] and names[1]
    assert not names[0] & names[1]  # G7: every shard object has one writer
    router = DesRouter(4)
    for index, world in enumerate(worlds):
        archive = world.archive()
        for record in records:
            owned = router.shard_index(record.uid) % 2 == index
            assert archive.exists(record.uid, record.created_at) == owned
    assert worlds[0].store.get(WatermarkKey("files", partition=0)) is not None
    assert worlds[1].store.get(WatermarkKey("files", partition=1)) is not None


def test_partition_count_must_match_the_stored_watermark(world: World) -> None:
    world.orchestrator().run_cycle()
    with pytest.raises(ConfigError, match="partition"):
        world.orchestrator(partition=Partition(0, 2)).run_cycle()


def test_plan_writes_nothing(world: World) -> None:
    plan = world.orchestrator().plan()
    assert not plan.initialised
    assert plan.window == Window(at(10, 0), at(18, 0))
    assert plan.pending.files == len([r for r in world.records if r.created_at < at(18, 0)])
    assert plan.behind == 8 * DAY
    assert world.store.writes == 0
    assert world.objects() == {}


OLD_ROWS = [
    SourceRecord("old-1", datetime(2023, 1, 5, 8, tzinfo=UTC), "mem/old-1", 7),
    SourceRecord("old-2", datetime(2023, 6, 1, tzinfo=UTC), "mem/old-2", 5),
]


def test_plan_reports_the_rows_a_new_watermark_never_archives(world: World) -> None:
    world.source = MemorySourceProvider(OLD_ROWS + world.records)
    plan = world.orchestrator(initial=None).plan()
    assert plan.watermark == datetime(2024, 4, 20, tzinfo=UTC)  # 30 days before NOW
    assert plan.before_start is not None
    assert plan.before_start.window.end == plan.watermark
    assert (plan.rows_before_start, plan.before_start.bytes) == (2, 12)
    assert plan.oldest_before_start == datetime(2023, 1, 5, 8, tzinfo=UTC)
    assert world.store.writes == 0
    explicit = world.orchestrator(initial=datetime(2023, 3, 1, tzinfo=UTC)).plan()
    assert (explicit.rows_before_start, explicit.oldest_before_start) == (1, OLD_ROWS[0].created_at)
    world.source = MemorySourceProvider(world.records)
    assert world.orchestrator().plan().rows_before_start == 0  # initial May 10: none older


def test_the_run_that_creates_the_watermark_warns_about_older_rows(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.source = MemorySourceProvider(OLD_ROWS + world.records)
    with caplog.at_level(logging.INFO, logger="deswm.orchestrator"):
        world.orchestrator(initial=None).run_cycle()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "the new watermark starts at 2024-04-20T00:00:00" in message
    assert "30 days before the first run ([watermark] initial is not set)" in message
    assert "2 row(s) older than that, the oldest from 2023-01-05T08:00:00" in message
    assert "`deswm watermark set --to 2023-01-05T00:00:00" in message
    # Once the watermark exists, where it started is not known: nothing more is said.
    caplog.clear()
    assert world.orchestrator(initial=None).plan().before_start is None
    with caplog.at_level(logging.INFO, logger="deswm.orchestrator"):
        world.orchestrator(initial=None).run_cycle()
    assert not [r for r in caplog.records if "never archived" in r.getMessage()]


def test_an_explicit_initial_reports_older_rows_without_a_warning(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.source = MemorySourceProvider(OLD_ROWS + world.records)
    with caplog.at_level(logging.INFO, logger="deswm.orchestrator"):
        world.orchestrator().run_cycle()
    found = [r for r in caplog.records if "never archived" in r.getMessage()]
    assert [r.levelno for r in found] == [logging.INFO]
    assert "starts at 2024-05-10T00:00:00" in found[0].getMessage()
    assert "Z ([watermark] initial); 2 row(s) older" in found[0].getMessage()


def test_max_buckets_commits_in_steps(world: World) -> None:
    first = world.orchestrator(max_buckets=2).run_cycle()
    assert first.buckets_committed == 2
    assert first.watermark_after == at(12, 0)
    second = world.orchestrator(max_buckets=2).run_cycle()
    assert second.watermark_after == at(17, 0)  # days 12 and 15; empty 13-16 skipped
    third = world.orchestrator(max_buckets=2).run_cycle()
    assert third.buckets_committed == 1
    assert third.watermark_after == at(18, 0)


class _Unordered(MemorySourceProvider):
    def iter_records(self, window: Window) -> Iterator[SourceRecord]:
        return iter(sorted(super().iter_records(window), key=lambda r: r.created_at, reverse=True))


def test_out_of_order_source_is_rejected(world: World) -> None:
    world.source = _Unordered(world.records)
    with pytest.raises(SourceError, match="out of order"):
        world.orchestrator().run_cycle()
    assert world.store.get(WatermarkKey("files")).position == at(10, 0)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"lag": -DAY}, "lag"),
        ({"pipeline": ""}, "pipeline"),
        ({"on_error": "ignore"}, "on_error"),
        ({"max_buckets": 0}, "max_buckets"),
        ({"partition": Partition(0, 32)}, "partitions"),
    ],
)
def test_bad_settings_are_config_errors(world: World, options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        world.orchestrator(**options)


def test_naive_clock_is_rejected(world: World) -> None:
    with pytest.raises(NaiveDatetimeError):
        world.orchestrator(clock=lambda: NOW.replace(tzinfo=None)).run_cycle()


def test_naive_initial_is_rejected(world: World) -> None:
    with pytest.raises(NaiveDatetimeError):
        world.orchestrator(initial=datetime(2024, 5, 1))


def test_one_log_line_per_committed_bucket(world: World, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="deswm"):
        world.orchestrator().run_cycle()
    committed = [r for r in caplog.records if r.getMessage().startswith("committed")]
    assert len(committed) == 5
    assert all(r.name == "deswm.orchestrator" for r in committed)


class _Recorder(CycleObserver):
    def __init__(self) -> None:
        self.events: list[str] = []

    def cycle_started(self, key: WatermarkKey, window: Window) -> None:
        self.events.append("start")

    def file_done(self, record: SourceRecord, size: int) -> None:
        self.events.append("file")

    def bucket_committed(
        self, key: WatermarkKey, result: BucketResult, watermark: Watermark
    ) -> None:
        self.events.append(f"bucket {result.bucket.day}")

    def cycle_finished(self, result: CycleResult) -> None:
        self.events.append("end")


def test_observers_see_every_step(world: World) -> None:
    recorder = _Recorder()
    result = world.orchestrator(observers=[recorder]).run_cycle()
    assert recorder.events[0] == "start" and recorder.events[-1] == "end"
    assert recorder.events.count("file") == result.files
    assert [e for e in recorder.events if e.startswith("bucket")] == [
        "bucket 10",
        "bucket 11",
        "bucket 12",
        "bucket 15",
        "bucket 17",
    ]


def test_request_stop_ends_at_a_bucket_boundary(world: World) -> None:
    orchestrator = world.orchestrator()

    class StopAfterFirst(CycleObserver):
        def bucket_committed(
            self, key: WatermarkKey, result: BucketResult, watermark: Watermark
        ) -> None:
            orchestrator.request_stop()

    orchestrator.observers = (StopAfterFirst(),)
    result = orchestrator.run_cycle()
    assert result.stopped_early
    assert result.buckets_committed == 1
    assert result.watermark_after == at(11, 0)


def test_run_forever_runs_cycles_until_stopped(world: World) -> None:
    orchestrator = world.orchestrator()
    results: list[CycleResult] = []

    class Count(CycleObserver):
        def cycle_finished(self, result: CycleResult) -> None:
            results.append(result)
            if len(results) == 3:
                orchestrator.request_stop()

    orchestrator.observers = (Count(),)
    thread = threading.Thread(
        target=orchestrator.run_forever, args=(0.01,), kwargs={"handle_signals": False}
    )
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(results) == 3
    assert results[0].advanced and not results[1].advanced


def test_arun_cycle(world: World) -> None:
    result = asyncio.run(world.orchestrator().arun_cycle())
    assert result.watermark_after == at(18, 0)


def test_arun_cycle_cancel_stops_at_a_bucket_boundary(world: World) -> None:
    gate = threading.Event()
    release = threading.Event()
    orchestrator = world.orchestrator()

    class Pause(CycleObserver):
        def bucket_committed(
            self, key: WatermarkKey, result: BucketResult, watermark: Watermark
        ) -> None:
            gate.set()
            release.wait(10)

    orchestrator.observers = (Pause(),)

    async def main() -> None:
        task = asyncio.create_task(orchestrator.arun_cycle())
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)
        task.cancel()  # sets the stop flag at once: the worker may go on right away
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    stored = world.store.get(orchestrator.key)
    assert stored is not None and stored.position == at(11, 0)


# --- the per-bucket count check ---------------------------------------------------------


def _count_error(world: World, **components: Any) -> tuple[RowCountError, Watermark | None]:
    orchestrator = world.orchestrator()
    for name, component in components.items():
        setattr(orchestrator, name, component)
    with pytest.raises(RowCountError) as caught:
        orchestrator.run_cycle()
    return caught.value, world.store.get(orchestrator.key)


def test_a_reader_that_loses_a_row_stops_the_cycle_before_its_bucket(world: World) -> None:
    lossy = inject(world.reader, read_many=drop_on(8))  # the 3rd row of day 11
    error, stored = _count_error(world, reader=lossy)
    assert "bucket 2024-05-11T00:00:00" in str(error)
    assert "returned 5 row(s)" in str(error)
    assert "4 archived + 0 kept (archived before) + 0 listed = 4" in str(error)
    assert stored is not None
    assert stored.position == at(11, 0)  # day 10 committed, day 11 not


def test_a_packer_that_loses_a_file_stops_the_cycle(world: World) -> None:
    lossy = inject(world.packer, add=drop_on(2))
    error, stored = _count_error(world, packer=lossy)
    assert "bucket 2024-05-10T00:00:00" in str(error)
    assert "4 archived" in str(error)
    assert stored is not None
    assert stored.position == at(10, 0)


def test_a_reader_that_skips_a_whole_bucket_is_caught(world: World) -> None:
    day_11 = frozenset(range(6, 11))
    lossy = inject(world.reader, read_many=drop_on(*day_11))
    error, stored = _count_error(world, reader=lossy)
    assert "bucket(s) 2024-05-11T00:00:00" in str(error)
    assert "never packed" in str(error)
    assert stored is not None
    assert stored.position == at(10, 0)  # not moved past day 11 (day 10 waits with it)


def test_a_reader_that_ends_early_is_caught(world: World) -> None:
    last = len([r for r in world.records if r.created_at < at(18, 0)])
    lossy = inject(world.reader, read_many=drop_on(last))  # the window's last row
    error, stored = _count_error(world, reader=lossy)
    assert "bucket 2024-05-17T00:00:00" in str(error)
    assert stored is not None
    assert stored.position == at(17, 0)


def test_a_reader_that_returns_nothing_is_caught(world: World) -> None:
    lossy = inject(world.reader, read_many=drop_on())
    error, stored = _count_error(world, reader=lossy)
    assert "the reader returned none of them" in str(error)
    assert stored is not None
    assert stored.position == at(10, 0)
