"""The packing engine: lanes on threads and processes give the in-process path's results.

Every test runs a real cycle over files on local disk; lanes in processes get the reader
and packer pickled. Faults inside lanes come from reader subclasses defined here (a
worker process imports this module to unpickle them).
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import itertools
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from deswm._errors import (
    ConfigError,
    CycleError,
    DuplicateUidError,
    FileMissingError,
    LaneError,
    PackError,
    RowCountError,
    SourceError,
    WaitInterrupted,
)
from deswm._lane_pool import LanePool, cpu_count, resolve_pool
from deswm._lane_stream import STREAM_CHUNK, LaneStream
from deswm._lanes import LaneBatch
from deswm._manifest import ManifestStore
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
from deswm._protocols import ReadResult
from deswm._readers import FsspecFileReader
from deswm._routing import DesRouter
from deswm._rowdigest import RowDigest
from deswm._shardio import ShardStore
from deswm.testing import (
    MemoryErrorStore,
    MemoryFileReader,
    MemorySourceProvider,
    MemoryWatermarkStore,
)

NOW = datetime(2024, 5, 20, 15, 30, tzinfo=UTC)
DAYS = (10, 11, 12, 15, 17)
PER_DAY = 24
ENGINES = [("threads", 2), ("threads", 3), ("processes", 2)]
ENGINE_IDS = [f"{kind}-{lanes}" for kind, lanes in ENGINES]


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, minute, tzinfo=UTC)


# --- readers that misbehave inside a lane (module level: picklable) ---------------------


class DroppingReader(FsspecFileReader):
    """Loses the row of one uid without an error."""

    def __init__(self, drop: str, **options: Any) -> None:
        super().__init__(**options)
        self.drop = drop

    def read_many(self, records: Iterable[SourceRecord]) -> Generator[ReadResult, None, None]:
        for record, data in super().read_many(records):
            if record.uid != self.drop:
                yield record, data


class FaultyReader(FsspecFileReader):
    """Raises, kills its own process, or sleeps when it reads the file of one uid."""

    def __init__(self, uid: str, action: str, **options: Any) -> None:
        super().__init__(**options)
        self.uid = uid
        self.action = action

    def read(self, location: str) -> bytes:
        if location.endswith(self.uid):
            if self.action == "raise":
                raise RuntimeError("the reader broke")
            if self.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.action == "sleep":
                time.sleep(3)
        return super().read(location)


class SpillWitness(FsspecFileReader):
    """Reads as usual, but refuses to read unless a rows' file (a batch's spill file or a
    stream) exists in ``folder`` and the rows of each lane arrive in ``(created_at, uid)``
    order."""

    def __init__(self, folder: str, **options: Any) -> None:
        super().__init__(**options)
        self.folder = folder

    def read_many(self, records: Iterable[SourceRecord]) -> Generator[ReadResult, None, None]:
        if not list(Path(self.folder).glob("deswm-rows-*")):
            raise AssertionError("the lane's rows were not spilled")
        last: tuple[datetime, str] | None = None
        for record in records:
            key = (record.created_at, record.uid)
            if last is not None and key <= last:
                raise AssertionError(f"rows out of order: {key} after {last}")
            last = key
            yield from super().read_many([record])


class InterruptedSource(MemorySourceProvider):
    """Streams its rows, then raises ``error`` after ``after`` of them (mid-bucket)."""

    def __init__(self, records: list[SourceRecord], after: int, error: Exception) -> None:
        super().__init__(records)
        self.after = after
        self.error = error

    def iter_records(self, window: Window) -> Iterator[SourceRecord]:
        for n, record in enumerate(super().iter_records(window)):
            if n == self.after:
                raise self.error
            yield record


class TrackingBatch(LaneBatch):
    """A LaneBatch that counts the rows every live batch of the coordinator holds in
    memory (live: created and not yet discarded by the coordinator)."""

    live: ClassVar[dict[int, LaneBatch]] = {}
    peak: ClassVar[int] = 0

    def __init__(self, limit: int = 0, folder: str | None = None) -> None:
        super().__init__(limit, folder)
        TrackingBatch.live[id(self)] = self

    def add(self, record: SourceRecord) -> None:
        super().add(record)
        held = sum(batch.in_memory for batch in TrackingBatch.live.values())
        TrackingBatch.peak = max(TrackingBatch.peak, held)

    def discard(self) -> None:
        super().discard()
        TrackingBatch.live.pop(id(self), None)


class TrackingStream(LaneStream):
    """A LaneStream that counts the rows every live stream of the coordinator holds in
    memory (not yet written to its file)."""

    live: ClassVar[dict[int, LaneStream]] = {}
    peak: ClassVar[int] = 0

    def __init__(self, folder: str | None = None, chunk: int = STREAM_CHUNK) -> None:
        super().__init__(folder, chunk)
        TrackingStream.live[id(self)] = self

    def add(self, record: SourceRecord) -> None:
        super().add(record)
        held = sum(stream.in_memory for stream in TrackingStream.live.values())
        TrackingStream.peak = max(TrackingStream.peak, held)

    def discard(self) -> None:
        super().discard()
        TrackingStream.live.pop(id(self), None)


# --- the world ---------------------------------------------------------------------------


class World:
    """A source of rows over several days, their files on disk, an archive folder."""

    def __init__(self, root: Path, records: list[SourceRecord] | None = None) -> None:
        self.root = root
        self.files = root / "files"
        self.files.mkdir(parents=True)
        if records is None:
            records = [
                SourceRecord(f"u{day}-{i:03d}", at(day, i % 24, i), f"u{day}-{i:03d}", None)
                for day in DAYS
                for i in range(PER_DAY)
            ]
        self.records = sorted(records, key=lambda r: (r.created_at, r.uid))
        for record in self.records:
            path = self.files / record.location
            if not path.exists():
                path.write_bytes(f"payload of {record.uid} ".encode() * (3 + len(record.uid)))
        self.router = DesRouter(4)
        self.store = MemoryWatermarkStore()
        self.errors = MemoryErrorStore()
        self.archive_dir = root / "archive"

    def orchestrator(self, **options: Any) -> WatermarkOrchestrator:
        reader = options.pop("reader", None) or FsspecFileReader(root=str(self.files))
        source = options.pop("source", None) or MemorySourceProvider(self.records)
        options.setdefault("pipeline", "files")
        options.setdefault("lag", timedelta(days=2))
        options.setdefault("initial", at(10))
        options.setdefault("clock", lambda: NOW)
        if options.get("on_error") == "record":
            options.setdefault("error_store", self.errors)
        return WatermarkOrchestrator(
            self.store,
            source,
            reader,
            self.router,
            DesPacker(str(self.archive_dir), self.router, workers=0),
            **options,
        )

    def objects(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.archive_dir)): p.read_bytes()
            for p in sorted(self.archive_dir.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }

    def position(self) -> datetime | None:
        stored = self.store.get(WatermarkKey("files"))
        return None if stored is None else stored.position


@pytest.fixture
def inline(tmp_path: Path) -> World:
    """A world archived by the in-process path: the reference."""
    world = World(tmp_path / "inline")
    with world.orchestrator() as orchestrator:
        orchestrator.run_cycle()
    return world


@pytest.fixture(params=ENGINES, ids=ENGINE_IDS)
def engine(request: pytest.FixtureRequest) -> dict[str, Any]:
    kind, lanes = request.param
    return {"executor": kind, "workers": lanes}


def test_lanes_publish_the_same_objects_as_the_in_process_path(
    tmp_path: Path, inline: World, engine: dict[str, Any]
) -> None:
    world = World(tmp_path / "engine")
    with world.orchestrator(**engine) as orchestrator:
        assert orchestrator.lanes is not None
        result = orchestrator.run_cycle()
    assert world.objects() == inline.objects()
    assert result.files == len(DAYS) * PER_DAY
    assert result.buckets_committed == len(DAYS)
    assert result.bytes_in == sum((world.files / r.location).stat().st_size for r in world.records)
    assert world.position() == at(18)
    assert world.store.writes == inline.store.writes  # one write per committed bucket (G4)


def test_a_replay_on_lanes_rewrites_nothing(inline: World, engine: dict[str, Any]) -> None:
    before = inline.objects()
    inline.store.set(WatermarkKey("files"), at(10), reason="replay")
    with inline.orchestrator(**engine) as orchestrator:
        result = orchestrator.run_cycle()
    assert inline.objects() == before
    assert result.unchanged == result.files == len(DAYS) * PER_DAY
    assert result.bytes_out == 0


def test_stop_mode_refuses_the_bucket_of_a_failed_file(
    tmp_path: Path, inline: World, engine: dict[str, Any]
) -> None:
    world = World(tmp_path / "engine")
    (world.files / "u12-005").unlink()
    with world.orchestrator(**engine) as orchestrator, pytest.raises(CycleError) as caught:
        orchestrator.run_cycle()
    assert caught.value.bucket == "2024-05-12T00:00:00.000000Z"
    assert [f.uid for f in caught.value.failures] == ["u12-005"]
    assert world.position() == at(12)  # days 10 and 11 committed, 12 not


def test_record_mode_lists_failures_and_commits(tmp_path: Path, engine: dict[str, Any]) -> None:
    world = World(tmp_path / "engine")
    (world.files / "u11-003").unlink()
    with world.orchestrator(on_error="record", **engine) as orchestrator:
        result = orchestrator.run_cycle()
        listed = world.errors.list(orchestrator.key)
    assert [f.uid for f in result.failures] == ["u11-003"]
    assert [entry.record.uid for entry in listed] == ["u11-003"]
    assert world.position() == at(18)


def test_record_mode_judges_the_failure_ratio_over_the_whole_bucket(
    tmp_path: Path, engine: dict[str, Any]
) -> None:
    world = World(tmp_path / "engine")
    for i in range(4):  # 4 of 24 files of day 11 (16.7 %), spread over the lanes
        (world.files / f"u11-{i * 5:03d}").unlink()
    options = {"on_error": "record", "max_failure_ratio": 0.15, **engine}
    with world.orchestrator(**options) as orchestrator, pytest.raises(CycleError) as caught:
        orchestrator.run_cycle()
    assert "4 of 24 files failed" in str(caught.value)
    assert world.position() == at(11)
    # The lanes published their good files; the refused bucket is not committed, and a
    # rerun that may skip more archives it on top of them.
    with world.orchestrator(on_error="record", max_failure_ratio=0.2, **engine) as again:
        result = again.run_cycle()
    assert len(result.failures) == 4
    assert world.position() == at(18)


def test_a_lane_that_loses_a_row_is_caught_by_the_row_count(
    tmp_path: Path, engine: dict[str, Any]
) -> None:
    world = World(tmp_path / "engine")
    reader = DroppingReader("u11-007", root=str(world.files))
    with (
        world.orchestrator(reader=reader, **engine) as orchestrator,
        pytest.raises(RowCountError) as caught,
    ):
        orchestrator.run_cycle()
    assert "bucket 2024-05-11T00:00:00" in str(caught.value)
    assert "returned 24 row(s)" in str(caught.value)
    assert world.position() == at(11)


def test_a_lane_that_raises_fails_its_bucket_typed_and_a_rerun_loses_nothing(
    tmp_path: Path, inline: World, engine: dict[str, Any]
) -> None:
    world = World(tmp_path / "engine")
    reader = FaultyReader("u12-009", "raise", root=str(world.files))
    with world.orchestrator(reader=reader, **engine) as orchestrator:
        with pytest.raises(LaneError) as caught:
            orchestrator.run_cycle()
        assert caught.value.bucket == "2024-05-12"
        assert caught.value.lane == world.router.shard_index("u12-009") % engine["workers"]
        assert "RuntimeError: the reader broke" in str(caught.value)
        assert world.position() == at(12)
        orchestrator.reader = FsspecFileReader(root=str(world.files))
        orchestrator.run_cycle()  # the same pool, on the next cycle
    assert world.position() == at(18)
    assert world.objects() == inline.objects()


def test_a_killed_lane_process_fails_its_bucket_and_the_pool_is_replaced(
    tmp_path: Path, inline: World
) -> None:
    world = World(tmp_path / "engine")
    reader = FaultyReader("u11-004", "kill", root=str(world.files))
    # One bucket in flight: a dead process breaks the whole pool, so with two in flight
    # the older bucket would fail with it (nothing committed for either; also fine).
    options = {"executor": "processes", "workers": 2, "buckets_in_flight": 1}
    with world.orchestrator(reader=reader, **options) as orchestrator:
        with pytest.raises(LaneError) as caught:
            orchestrator.run_cycle()
        assert caught.value.bucket == "2024-05-11"
        assert "BrokenProcessPool" in str(caught.value)
        assert type(caught.value.__cause__).__name__ == "BrokenProcessPool"
        assert world.position() == at(11)
        orchestrator.reader = FsspecFileReader(root=str(world.files))
        orchestrator.run_cycle()
    assert world.position() == at(18)
    assert world.objects() == inline.objects()


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_a_lane_past_its_timeout_fails_its_bucket(tmp_path: Path, inline: World, kind: str) -> None:
    world = World(tmp_path / "engine")
    reader = FaultyReader("u10-002", "sleep", root=str(world.files))
    options = {"executor": kind, "workers": 2, "lane_timeout": 0.5}
    with world.orchestrator(reader=reader, **options) as orchestrator:
        with pytest.raises(LaneError, match=r"ran past run.lane_timeout=0.5s"):
            orchestrator.run_cycle()
        assert world.position() == at(10)
        orchestrator.reader = FsspecFileReader(root=str(world.files))
        orchestrator.lane_timeout = None  # a new process pool starts slowly on a busy machine
        orchestrator.run_cycle()  # waits for (threads) or replaces (processes) the hung lane
    assert world.position() == at(18)
    assert world.objects() == inline.objects()


def test_a_duplicate_uid_under_stop_raises_what_the_in_process_path_raises(
    tmp_path: Path, engine: dict[str, Any]
) -> None:
    records = [
        SourceRecord("a", at(10, 1), "a"),
        SourceRecord("dup", at(10, 2), "dup"),
        SourceRecord("dup", at(10, 3), "dup"),
    ]
    world = World(tmp_path / "engine", records)
    with world.orchestrator(**engine) as orchestrator, pytest.raises(DuplicateUidError) as caught:
        orchestrator.run_cycle()
    assert any("bucket 2024-05-10" in note for note in caught.value.__notes__)
    assert world.position() == at(10)


class Stopper(CycleObserver):
    def __init__(self) -> None:
        self.orchestrator: WatermarkOrchestrator | None = None
        self.files: list[int] = []
        self.per_file = 0

    def file_done(self, record: SourceRecord, size: int) -> None:
        self.per_file += 1

    def files_done(self, key: WatermarkKey, bucket: datetime, files: int, size: int) -> None:
        self.files.append(files)

    def bucket_committed(
        self, key: WatermarkKey, result: BucketResult, watermark: Watermark
    ) -> None:
        assert self.orchestrator is not None
        self.orchestrator.request_stop()


def test_a_stop_commits_the_buckets_in_flight_and_dispatches_no_more(
    tmp_path: Path, engine: dict[str, Any]
) -> None:
    world = World(tmp_path / "engine")
    stopper = Stopper()
    with world.orchestrator(observers=[stopper], buckets_in_flight=2, **engine) as orchestrator:
        stopper.orchestrator = orchestrator
        result = orchestrator.run_cycle()
    # The stop came with the first commit; the second bucket was already dispatched.
    assert (result.stopped, result.buckets_committed) == ("requested", 2)
    assert world.position() == at(12)
    assert stopper.per_file == 0  # lanes report in batches
    assert sum(stopper.files) == result.files == 2 * PER_DAY


def test_max_buckets_counts_buckets_in_flight(tmp_path: Path, engine: dict[str, Any]) -> None:
    world = World(tmp_path / "engine")
    with world.orchestrator(max_buckets=1, buckets_in_flight=3, **engine) as orchestrator:
        result = orchestrator.run_cycle()
    assert (result.stopped, result.buckets_committed) == ("max-buckets", 1)
    assert world.position() == at(11)


class CountingSource(MemorySourceProvider):
    """Streams its rows slowly (as a large table does) and counts those it handed out."""

    def __init__(self, records: list[SourceRecord]) -> None:
        super().__init__(records)
        self.handed = 0

    def iter_records(self, window: Window) -> Iterator[SourceRecord]:
        for record in super().iter_records(window):
            self.handed += 1
            if self.handed > PER_DAY:
                time.sleep(0.0005)
            yield record


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_a_lane_that_fails_early_stops_the_routing_of_its_bucket(tmp_path: Path, kind: str) -> None:
    """A streaming lane fails on its first file of a big bucket: the coordinator stops
    routing that bucket (it does not stream the rest first), the bucket before it
    commits, and the lane's own error is raised, not that of the lanes stopped after."""
    big = [
        SourceRecord(f"u11-{i:04d}", at(11, 0, 0) + timedelta(seconds=i), f"u11-{i:04d}", None)
        for i in range(2000)
    ]
    first = [SourceRecord(f"u10-{i:03d}", at(10, i), f"u10-{i:03d}", None) for i in range(PER_DAY)]
    world = World(tmp_path / "engine", first + big)
    source = CountingSource(world.records)
    reader = FaultyReader("u11-0000", "raise", root=str(world.files))
    options = {"executor": kind, "workers": 2, "lane_batch_rows": 4}
    with (
        world.orchestrator(source=source, reader=reader, **options) as orchestrator,
        pytest.raises(LaneError) as caught,
    ):
        orchestrator.run_cycle()
    assert "bucket 2024-05-11" in str(caught.value)
    assert "the reader broke" in str(caught.value)
    assert world.position() == at(11)  # day 10 committed, day 11 not
    assert source.handed < PER_DAY + 1500  # routing stopped well before the bucket's end


# --- choosing the executor -------------------------------------------------------------


def test_a_process_pool_starts_every_worker_when_the_cycle_starts() -> None:
    """Lane processes spawn (and import deswm) while the coordinator queries the source,
    not when the first bucket's rows arrive."""
    pool = LanePool("processes", 2)
    try:
        pool.start()
        executor = pool._executor
        assert isinstance(executor, cf.ProcessPoolExecutor)
        assert len(executor._processes) == 2
        pool.start()  # once per pool
        assert pool._executor is executor
    finally:
        pool.close()


def test_no_workers_and_no_executor_is_the_in_process_path(tmp_path: Path) -> None:
    assert World(tmp_path).orchestrator().lanes is None


def test_auto_picks_processes_for_picklable_components(tmp_path: Path) -> None:
    world = World(tmp_path)
    lanes = world.orchestrator(workers=2).lanes
    assert lanes is not None and (lanes.kind, lanes.lanes) == ("processes", 2)
    assert lanes.local  # lanes read the coordinator's spill files themselves
    assert world.orchestrator(workers=1).lanes is None  # one lane: in-process
    default = world.orchestrator(workers="auto").lanes
    if cpu_count() > 1:
        assert default is not None and default.lanes == cpu_count()


def test_auto_picks_threads_when_lanes_cannot_leave_the_process(tmp_path: Path) -> None:
    reader = MemoryFileReader({})
    memory = DesPacker("memory://engine-auto", DesRouter(4))
    lanes = resolve_pool("auto", 2, reader=reader, packer=memory)
    assert lanes is not None and lanes.kind == "threads"
    local = DesPacker(str(tmp_path), DesRouter(4))
    lanes = resolve_pool("auto", 2, reader=reader, packer=local)  # unpicklable reader
    assert lanes is not None and lanes.kind == "threads"


def test_processes_with_an_unpicklable_component_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="threads") as caught:
        resolve_pool(
            "processes",
            2,
            reader=MemoryFileReader({}),
            packer=DesPacker(str(tmp_path), DesRouter(4)),
        )
    assert caught.value.key == "run.executor"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"workers": 0}, "run.workers"),
        ({"workers": "many"}, "run.workers"),
        ({"executor": "gpu"}, "run.executor"),
        ({"executor": "dask"}, "run.scheduler"),
        ({"buckets_in_flight": 0}, "run.buckets_in_flight"),
        ({"lane_timeout": 0}, "run.lane_timeout"),
    ],
)
def test_bad_engine_settings_are_config_errors(
    tmp_path: Path, options: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        World(tmp_path).orchestrator(**options)
    assert caught.value.key == key


def test_a_given_executor_is_used_and_not_shut_down(tmp_path: Path, inline: World) -> None:
    from concurrent.futures import ThreadPoolExecutor

    world = World(tmp_path / "engine")
    with ThreadPoolExecutor(2) as host:
        with world.orchestrator(executor=host, workers=2) as orchestrator:
            assert orchestrator.lanes is not None and orchestrator.lanes.kind == "given"
            assert not orchestrator.lanes.local  # maybe remote: spilled rows go inline
            orchestrator.run_cycle()
        assert host.submit(lambda: 42).result() == 42  # still open
    assert world.objects() == inline.objects()


def test_deswm_errors_cross_process_boundaries_whole() -> None:
    errors = [
        DuplicateUidError("u1", at(10, 1), at(10, 2), shard="20240510_0a"),
        FileMissingError("/data/x"),
        LaneError("2024-05-10", 1, 2, "boom"),
    ]
    for error in errors:
        error.add_note("a note")
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


# --- the config file and the command line -------------------------------------------------


def _config(tmp_path: Path, run: str = "", archive: str = "") -> Path:
    from test_cli_run import make_setup

    config = make_setup(tmp_path / "setup", per_day=3)
    text = config.read_text() + (f"{archive}\n" if archive else "")  # [archive] is last
    config.write_text(text + (f"[run]\n{run}\n" if run else ""))
    return config


def test_the_config_file_defaults_to_the_engine(tmp_path: Path) -> None:
    from deswm._config import load_config

    orchestrator = load_config(_config(tmp_path)).build_orchestrator()
    if cpu_count() > 1:
        assert orchestrator.lanes is not None and orchestrator.lanes.lanes == cpu_count()
        assert orchestrator.lanes.kind == "processes"
    else:
        assert orchestrator.lanes is None  # one CPU: one lane, in-process


def test_run_settings_configure_the_engine(tmp_path: Path) -> None:
    from deswm._config import load_config

    run = 'executor = "threads"\nworkers = 3\nbuckets_in_flight = 4\nlane_timeout = 30'
    orchestrator = load_config(_config(tmp_path, run)).build_orchestrator()
    assert orchestrator.lanes is not None
    assert (orchestrator.lanes.kind, orchestrator.lanes.lanes) == ("threads", 3)
    assert (orchestrator.buckets_in_flight, orchestrator.lane_timeout) == (4, 30)
    assert (orchestrator.lane_batch_rows, orchestrator.spill_dir) == (50_000, None)
    spilling = _config(tmp_path / "spill", "lane_batch_rows = 7", 'spill_dir = "."')
    orchestrator = load_config(spilling).build_orchestrator()
    assert orchestrator.lane_batch_rows == 7
    assert orchestrator.spill_dir == str(spilling.parent)  # relative to the config file
    inline = load_config(_config(tmp_path / "2", 'executor = "inline"')).build_orchestrator()
    assert inline.lanes is None


@pytest.mark.parametrize(
    ("run", "key"),
    [
        ("workers = 0", "run.workers"),
        ('workers = "all"', "run.workers"),
        ('executor = "gpu"', "run.executor"),
        ('executor = "dask"', "run.scheduler"),
        ("buckets_in_flight = 0", "run.buckets_in_flight"),
        ("lane_timeout = -1", "run.lane_timeout"),
        ("lane_batch_rows = -1", "run.lane_batch_rows"),
        ('lane_batch_rows = "many"', "run.lane_batch_rows"),
        ("lane_batch_rows = 1.5", "run.lane_batch_rows"),
    ],
)
def test_bad_run_settings_name_their_key(tmp_path: Path, run: str, key: str) -> None:
    from deswm._config import load_config

    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, run)).build_orchestrator()
    assert caught.value.key == key


def test_deswm_run_takes_workers_and_executor(tmp_path: Path) -> None:
    from test_cli_run import deswm

    config = _config(tmp_path)
    done = deswm("run", "-c", str(config), "--workers", "2", "--executor", "threads")
    assert done.returncode == 0, done.stderr
    assert "packing engine: 2 lane(s) on threads" in done.stderr
    assert "buckets:   6 committed" in done.stdout
    bad = deswm("run", "-c", str(config), "--executor", "gpu")
    assert bad.returncode == 2
    assert "--executor" in bad.stderr


def test_deswm_run_takes_lane_batch_rows(tmp_path: Path) -> None:
    from test_cli_run import deswm

    config = _config(tmp_path, archive='spill_dir = "spill"')
    spill = config.parent / "spill"
    spill.mkdir()
    engine = ("--workers", "2", "--executor", "threads", "--lane-batch-rows", "1")
    done = deswm("run", "-c", str(config), *engine, "-v")
    assert done.returncode == 0, done.stderr
    assert "buckets:   6 committed" in done.stdout
    # Lanes on threads get their rows as a stream, in frames of lane_batch_rows.
    assert "in frames of up to 1 rows (run.lane_batch_rows=1)" in done.stderr
    assert spill_files(spill) == []
    bad = deswm("run", "-c", str(config), "--lane-batch-rows", "-1")
    assert bad.returncode == 2
    assert "--lane-batch-rows" in bad.stderr


def test_lane_processes_start_under_a_long_temp_dir(
    tmp_path: Path, inline: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forkserver's socket in a deep TMPDIR exceeds the AF_UNIX path limit (108 bytes);
    the pool's workers must start anyway."""
    import tempfile

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    world = World(tmp_path / "engine")
    with world.orchestrator(executor="processes", workers=2) as orchestrator:
        orchestrator.run_cycle()
    assert world.objects() == inline.objects()


def test_lane_processes_leave_ctrl_c_to_the_coordinator(tmp_path: Path, inline: World) -> None:
    """Ctrl-C signals the whole process group; a lane process must not die of it, or the
    buckets in flight could not be committed before the runner stops."""
    world = World(tmp_path / "engine")
    with world.orchestrator(executor="processes", workers=2) as orchestrator:
        orchestrator.run_cycle()
        assert orchestrator.lanes is not None
        executor = orchestrator.lanes._pool()
        processes = list(getattr(executor, "_processes", {}).values())
        assert processes
        for process in processes:
            os.kill(process.pid, signal.SIGINT)
            os.kill(process.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert all(process.is_alive() for process in processes)
        world.store.set(WatermarkKey("files"), at(10), reason="replay")
        result = orchestrator.run_cycle()  # the same pool, still whole
    assert result.unchanged == len(DAYS) * PER_DAY
    assert world.objects() == inline.objects()


def test_a_hung_thread_lane_is_remembered_and_waited_for_before_the_next_lane(
    tmp_path: Path, inline: World
) -> None:
    """A thread cannot be killed: the failed cycle returns at once, and the next lane
    starts only after the hung one ended (one writer per object, G7)."""
    world = World(tmp_path / "engine")
    reader = FaultyReader("u10-002", "sleep", root=str(world.files))
    options = {"executor": "threads", "workers": 2, "lane_timeout": 0.5}
    with world.orchestrator(reader=reader, **options) as orchestrator:
        with pytest.raises(LaneError):
            orchestrator.run_cycle()
        lanes = orchestrator.lanes
        assert lanes is not None
        hung = set(lanes._stragglers)
        assert hung and not any(f.done() for f in hung)  # still sleeping, not waited for
        orchestrator.reader = FsspecFileReader(root=str(world.files))
        orchestrator.lane_timeout = None
        orchestrator.run_cycle()
        assert all(f.done() for f in hung) and not lanes._stragglers
    assert world.objects() == inline.objects()


# --- rows past lane_batch_rows spill to a file ---------------------------------------------


def spill_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("deswm-rows-*"))


def test_spilled_rows_give_the_same_objects_in_the_same_order(
    tmp_path: Path, inline: World, engine: dict[str, Any]
) -> None:
    """3 rows in memory per lane, the rest (about 9 of each lane's 12) from the spill file:
    byte-identical to the in-process path and to lanes without a bound."""
    spill = tmp_path / "spill"
    spill.mkdir()
    unbounded = World(tmp_path / "unbounded")
    with unbounded.orchestrator(lane_batch_rows=0, **engine) as orchestrator:
        orchestrator.run_cycle()
    world = World(tmp_path / "engine")
    reader = SpillWitness(str(spill), root=str(world.files))
    options = {"lane_batch_rows": 3, "spill_dir": spill, "reader": reader, **engine}
    with world.orchestrator(**options) as orchestrator:
        result = orchestrator.run_cycle()
    assert result.files == len(DAYS) * PER_DAY
    assert world.objects() == inline.objects() == unbounded.objects()
    assert spill_files(spill) == []  # every lane's file removed after its success


def test_the_coordinator_holds_at_most_b_times_w_times_the_bound_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lanes that may run elsewhere (a given executor) get whole batches. Not a timing or
    RSS test: the rows held in memory by every batch the coordinator has not discarded,
    counted at each row it routes."""
    monkeypatch.setattr("deswm._orchestrator.LaneBatch", TrackingBatch)
    peaks = {}
    for limit in (0, 3):
        TrackingBatch.live.clear()
        TrackingBatch.peak = 0
        world = World(tmp_path / f"limit-{limit}")
        with cf.ThreadPoolExecutor(2) as host:
            options = {"executor": host, "workers": 2, "buckets_in_flight": 2}
            with world.orchestrator(lane_batch_rows=limit, spill_dir=tmp_path, **options) as o:
                o.run_cycle()
        assert world.position() == at(18)
        assert TrackingBatch.live == {}  # every batch discarded by the coordinator
        peaks[limit] = TrackingBatch.peak
    assert peaks[3] == 2 * 2 * 3  # B buckets x W lanes x lane_batch_rows, reached
    assert peaks[0] >= PER_DAY + 1  # unbounded: a whole bucket and more


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_lanes_on_this_machine_stream_and_the_coordinator_holds_less_than_w_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline: World, kind: str
) -> None:
    """Lanes on threads or processes read their rows while the coordinator routes them:
    it holds less than one frame (``lane_batch_rows``) per lane of the bucket being routed,
    whatever ``buckets_in_flight``, and the objects are the in-process path's."""
    monkeypatch.setattr("deswm._orchestrator.LaneStream", TrackingStream)
    TrackingStream.live.clear()
    TrackingStream.peak = 0
    world = World(tmp_path / "engine")
    options = {"executor": kind, "workers": 2, "buckets_in_flight": 3}
    with world.orchestrator(lane_batch_rows=3, spill_dir=tmp_path, **options) as orchestrator:
        result = orchestrator.run_cycle()
    assert result.files == len(DAYS) * PER_DAY
    assert world.objects() == inline.objects()
    assert TrackingStream.live == {}  # every stream removed by the coordinator
    assert 2 <= TrackingStream.peak <= 2 * (3 - 1)  # W lanes x (frame - 1): one bucket
    assert spill_files(tmp_path) == []


def test_a_failed_lane_leaves_no_spill_file(tmp_path: Path, engine: dict[str, Any]) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    world = World(tmp_path / "engine")
    reader = FaultyReader("u12-009", "raise", root=str(world.files))
    options = {"lane_batch_rows": 2, "spill_dir": spill, "reader": reader, **engine}
    with world.orchestrator(**options) as orchestrator, pytest.raises(LaneError):
        orchestrator.run_cycle()
    assert world.position() == at(12)
    assert spill_files(spill) == []


@pytest.mark.parametrize(
    ("kind", "action"), [("processes", "kill"), ("threads", "sleep"), ("processes", "sleep")]
)
def test_lanes_that_die_or_hang_leave_no_spill_file(tmp_path: Path, kind: str, action: str) -> None:
    """The lane cannot remove its file: the coordinator does when it abandons the bucket."""
    spill = tmp_path / "spill"
    spill.mkdir()
    world = World(tmp_path / "engine")
    reader = FaultyReader("u10-002", action, root=str(world.files))
    options = {"executor": kind, "workers": 2, "lane_batch_rows": 2, "spill_dir": spill}
    with world.orchestrator(reader=reader, lane_timeout=1.5, **options) as orchestrator:
        with pytest.raises(LaneError):
            orchestrator.run_cycle()
        assert world.position() == at(10)
        assert spill_files(spill) == []


def test_a_stop_leaves_no_spill_file(tmp_path: Path, engine: dict[str, Any]) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    world = World(tmp_path / "engine")
    stopper = Stopper()
    options = {"lane_batch_rows": 2, "spill_dir": spill, "buckets_in_flight": 2, **engine}
    with world.orchestrator(observers=[stopper], **options) as orchestrator:
        stopper.orchestrator = orchestrator
        result = orchestrator.run_cycle()
    assert (result.stopped, result.buckets_committed) == ("requested", 2)
    assert spill_files(spill) == []


@pytest.mark.parametrize("error", [WaitInterrupted(), SourceError("the source broke")])
def test_a_bucket_abandoned_mid_stream_leaves_no_spill_file(
    tmp_path: Path, engine: dict[str, Any], error: Exception
) -> None:
    """A stop while the source waits (or a source error) in the middle of a bucket: its
    rows routed so far are abandoned, and the lanes already reading them publish nothing."""
    spill = tmp_path / "spill"
    spill.mkdir()
    world = World(tmp_path / "engine")
    source = InterruptedSource(world.records, PER_DAY + 20, error)  # day 11, 20 rows in
    options = {"lane_batch_rows": 2, "spill_dir": spill, "source": source, **engine}
    with world.orchestrator(**options) as orchestrator:
        if isinstance(error, WaitInterrupted):
            result = orchestrator.run_cycle()
            assert result.buckets_committed == 1  # day 10, in flight, commits
            assert world.position() == at(11)
        else:
            with pytest.raises(SourceError, match="the source broke"):
                orchestrator.run_cycle()
            assert world.position() == at(10)  # the cycle fails: nothing more commits
    assert spill_files(spill) == []
    # Lanes that were reading day 11 as it streamed stopped without publishing (G7:
    # they were waited for, so none writes after the cycle).
    assert [name for name in world.objects() if "20240511" in name] == []


class ElsewhereExecutor(cf.ThreadPoolExecutor):
    """Lanes on "another machine": the job is pickled, and the coordinator's spill files
    are out of its reach (deleted before the lane starts), as on a remote Dask worker."""

    def __init__(self) -> None:
        super().__init__(2)
        self.spilled = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        (job,) = args
        sent = pickle.dumps(job)
        if job.rows.path is not None:
            Path(job.rows.path).unlink()
            self.spilled += 1
        return super().submit(fn, pickle.loads(sent), **kwargs)


def _spilling_cycle(tmp_path: Path, host: cf.Executor) -> tuple[World, CycleResult, Path]:
    """One cycle on a host's executor with 2 lanes that spill past 2 rows each:
    ``(world, result, spill folder)``."""
    spill = tmp_path / "spill"
    spill.mkdir()
    world = World(tmp_path / "engine")
    with host:
        options = {"executor": host, "workers": 2, "lane_batch_rows": 2, "spill_dir": spill}
        with world.orchestrator(**options) as orchestrator:
            result = orchestrator.run_cycle()
    return world, result, spill


def test_a_given_executor_gets_the_spilled_rows_inline(tmp_path: Path, inline: World) -> None:
    host = ElsewhereExecutor()
    world, result, _ = _spilling_cycle(tmp_path, host)
    assert host.spilled == 2 * len(DAYS)  # every lane's file was out of its reach
    assert result.files == len(DAYS) * PER_DAY
    assert world.objects() == inline.objects()


class TwiceExecutor(cf.ThreadPoolExecutor):
    """A host's executor that runs each job twice in this process, unpickled, as Dask may
    rerun a task on an in-process worker: the first attempt's result is lost."""

    def __init__(self) -> None:
        super().__init__(2)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        fn(*args, **kwargs)
        return super().submit(fn, *args, **kwargs)


def test_a_job_run_again_in_the_same_process_still_finds_its_spilled_rows(
    tmp_path: Path, inline: World
) -> None:
    world, result, spill = _spilling_cycle(tmp_path, TwiceExecutor())
    assert result.files == len(DAYS) * PER_DAY
    assert world.objects() == inline.objects()
    assert spill_files(spill) == []  # the coordinator removed them when the buckets settled


@pytest.mark.parametrize("value", [-1, "many", True, 2.5])
def test_a_bad_lane_batch_rows_is_a_config_error(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        World(tmp_path).orchestrator(workers=2, lane_batch_rows=value)
    assert caught.value.key == "run.lane_batch_rows"


class FullDisk:
    """``os`` for deswm._lane_stream, whose writes fail as on a full disk."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_spill_dir_fails_the_bucket_typed_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator cannot write a lane's rows: a PackError naming the folder and the
    setting, nothing committed for the bucket, its lanes stopped, no file left."""
    spill = tmp_path / "spill"
    spill.mkdir()
    world = World(tmp_path / "engine")
    monkeypatch.setattr("deswm._lane_stream.os", FullDisk())
    options = {"executor": "threads", "workers": 2, "lane_batch_rows": 2, "spill_dir": spill}
    with world.orchestrator(**options) as orchestrator, pytest.raises(PackError) as caught:
        orchestrator.run_cycle()
    assert f"writing the rows' stream file in {spill} failed" in str(caught.value)
    assert "archive.spill_dir" in str(caught.value)
    assert world.position() == at(10)
    assert world.objects() == {}
    assert spill_files(spill) == []


def test_a_cycle_removes_the_streams_a_killed_coordinator_left(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    orphan = spill / f"deswm-rows-{int(gone.stdout)}@{socket.gethostname()}-k1ll3d.stream"
    orphan.write_bytes(b"\x00" * 16)
    world = World(tmp_path / "engine")
    options = {"executor": "threads", "workers": 2, "spill_dir": spill}
    with world.orchestrator(**options) as orchestrator:
        orchestrator.run_cycle()
    assert world.position() == at(18)
    assert spill_files(spill) == []


def test_a_missing_spill_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        World(tmp_path).orchestrator(workers=2, spill_dir=tmp_path / "nowhere")
    assert caught.value.key == "archive.spill_dir"


# --- the manifests' row digests, computed by the lanes -----------------------------------


class TwoTakingReader(FsspecFileReader):
    """Takes only the first two rows of its lane from the iterator (and reads those)."""

    def read_many(self, records: Iterable[SourceRecord]) -> Generator[ReadResult, None, None]:
        yield from super().read_many(itertools.islice(records, 2))


def _manifests(world: World) -> ManifestStore:
    return ManifestStore(ShardStore(str(world.archive_dir)), world.router)


def test_lanes_digest_the_rows_the_in_process_path_digests(
    tmp_path: Path, engine: dict[str, Any]
) -> None:
    inline, lanes = World(tmp_path / "inline"), World(tmp_path / "engine")
    with inline.orchestrator(manifests=_manifests(inline)) as orchestrator:
        orchestrator.run_cycle()
    with lanes.orchestrator(manifests=_manifests(lanes), **engine) as orchestrator:
        orchestrator.run_cycle()
    whole = Partition(0, 1)
    for day in DAYS:
        name = f"202405{day}"
        expected, found = (
            _manifests(inline).require(name, whole),
            _manifests(lanes).require(name, whole),
        )
        assert (
            (found.rows, found.digest)
            == (expected.rows, expected.digest)
            == (
                PER_DAY,
                RowDigest.of(
                    (r.uid, r.created_at) for r in lanes.records if r.created_at.day == day
                ).hexdigest,
            )
        )
        assert found.groups == expected.groups


def test_a_lane_reader_that_skips_rows_unread_is_caught_before_the_manifest(
    tmp_path: Path, engine: dict[str, Any]
) -> None:
    world = World(tmp_path / "engine")
    reader = TwoTakingReader(root=str(world.files))
    with (
        world.orchestrator(reader=reader, manifests=_manifests(world), **engine) as orchestrator,
        pytest.raises(RowCountError) as caught,
    ):
        orchestrator.run_cycle()
    assert "bucket 2024-05-10T00:00:00" in str(caught.value)
    assert "returned 24 row(s)" in str(caught.value)
    assert f"readers took {2 * engine['workers']}" in str(caught.value)
    assert world.position() == at(10)
    assert _manifests(world).read("20240510", Partition(0, 1)) is None
