"""assert_no_loss and assert_idempotent_replay: they pass on deswm, and they catch loss.

A check that never fails proves nothing, so each is also run against a deliberately
broken pipeline (a reader that drops files, a watermark moved past unarchived rows,
packers configured differently) and must name what is wrong.
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from deswm._errors import RowCountError
from deswm._model import SourceRecord, WatermarkKey
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._protocols import FileReader, SourceProvider
from deswm._routing import DesRouter
from deswm.testing import (
    Cycle,
    Dataset,
    Interruption,
    MemoryErrorStore,
    MemorySourceProvider,
    MemoryWatermarkStore,
    ReplayWorld,
    Rewind,
    Step,
    assert_idempotent_replay,
    assert_no_loss,
    datasets,
    drop_on,
    inject,
    interruptions,
    memory_packer,
    read_objects,
)

START = datetime(2024, 5, 10, tzinfo=UTC)
NOW = datetime(2024, 5, 16, 9, tzinfo=UTC)  # lag 1 day: target May 15
EXAMPLES = int(os.environ.get("DESWM_PROPERTY_EXAMPLES", "25"))
ROUTER = DesRouter(4)


def rows(count: int, *, hours: int = 7) -> Dataset:
    records = [
        SourceRecord(f"u{n:03d}", START + timedelta(hours=hours * n), f"f{n}", 4 + len(str(n)))
        for n in range(count)
    ]
    return Dataset(tuple(records), {f"f{n}": b"data%d" % n for n in range(count)})


def builder(source: SourceProvider, reader: FileReader, **options: Any) -> Any:
    def build(world: ReplayWorld) -> WatermarkOrchestrator:
        options.setdefault("pipeline", "checks")
        options.setdefault("lag", timedelta(days=1))
        options.setdefault("initial", START)
        options.setdefault("clock", lambda: NOW)
        if options.get("on_error") == "record":
            options["error_store"] = world.errors
        return WatermarkOrchestrator(
            world.store, source, reader, world.packer.router, world.packer, **options
        )

    return build


def small_packer() -> DesPacker:
    return memory_packer(ROUTER, max_shard_size=600, workers=0)


# --- assert_no_loss ---------------------------------------------------------------------------


def run_once(data: Dataset) -> tuple[WatermarkOrchestrator, Any]:
    store, packer = MemoryWatermarkStore(), small_packer()
    orchestrator = WatermarkOrchestrator(
        store,
        data.source(),
        data.reader(),
        ROUTER,
        packer,
        pipeline="checks",
        lag=timedelta(days=1),
        initial=START,
        clock=lambda: NOW,
    )
    orchestrator.run_cycle()
    return orchestrator, packer


def test_no_loss_after_a_cycle_counts_the_rows_it_checked() -> None:
    data = rows(30)
    orchestrator, packer = run_once(data)
    below = [r for r in data.records if r.created_at < datetime(2024, 5, 15, tzinfo=UTC)]
    checked = assert_no_loss(
        orchestrator.source,
        packer,
        orchestrator.store,
        orchestrator.key,
        data.contents,
        since=START,
    )
    assert checked == len(below)
    # The reader works as the source of expected bytes too.
    assert (
        assert_no_loss(
            orchestrator.source,
            packer,
            orchestrator.store,
            orchestrator.key,
            data.reader(),
            since=START,
        )
        == checked
    )


def test_no_loss_names_rows_below_the_watermark_that_are_not_archived() -> None:
    data = rows(30)
    orchestrator, packer = run_once(data)
    late = SourceRecord("late-row", START + timedelta(days=1, hours=3), "late", 4)
    source = MemorySourceProvider([*data.records, late])  # arrived after its day was packed
    with pytest.raises(AssertionError) as caught:
        assert_no_loss(
            source,
            packer,
            orchestrator.store,
            orchestrator.key,
            {**data.contents, "late": b"late"},
            since=START,
        )
    message = str(caught.value)
    assert "G1 violated: 1 of" in message
    assert "'late-row'" in message
    assert "2024-05-11T03:00:00.000000Z" in message
    assert "(late): not archived" in message


def test_no_loss_notices_different_bytes_and_missing_expectations() -> None:
    data = rows(10)
    orchestrator, packer = run_once(data)
    changed = {**data.contents, "f3": b"something else"}
    del changed["f4"]
    with pytest.raises(AssertionError) as caught:
        assert_no_loss(
            orchestrator.source, packer, orchestrator.store, orchestrator.key, changed, since=START
        )
    assert "'u003'" in str(caught.value)
    assert "differ" in str(caught.value)
    assert "no bytes for this location" in str(caught.value)


def test_no_loss_accepts_purged_files_that_read_back() -> None:
    data = rows(10)
    orchestrator, packer = run_once(data)
    reader = data.reader()
    for location in data.contents:
        reader.delete(location)
    assert (
        assert_no_loss(
            orchestrator.source, packer, orchestrator.store, orchestrator.key, reader, since=START
        )
        == 10
    )


def test_no_loss_excuses_rows_in_the_error_table_and_filters_partitions() -> None:
    data = rows(20)
    orchestrator, packer = run_once(data)
    extra = SourceRecord("failed-one", START + timedelta(hours=2), "x", 1)
    source = MemorySourceProvider([*data.records, extra])
    errors = MemoryErrorStore()
    key = orchestrator.key
    with pytest.raises(AssertionError):
        assert_no_loss(source, packer, orchestrator.store, key, data.contents, since=START)
    from deswm._model import FileFailure

    errors.record(key, [FileFailure.from_exception(extra, "read", OSError("gone"))])
    contents = {**data.contents, "x": b"?"}
    store = orchestrator.store
    below = len([r for r in data.records if r.created_at < datetime(2024, 5, 15, tzinfo=UTC)])
    checked = assert_no_loss(source, packer, store, key, contents, since=START, errors=errors)
    assert checked == below + 1
    mine = assert_no_loss(
        source,
        packer,
        store,
        key,
        contents,
        since=START,
        owns=lambda r: r.uid != "failed-one",
    )
    assert mine == below


def test_no_loss_without_a_watermark_checks_nothing() -> None:
    data = rows(3)
    store = MemoryWatermarkStore()
    key = WatermarkKey("never")
    assert (
        assert_no_loss(data.source(), small_packer(), store, key, data.contents, since=START) == 0
    )


# --- assert_idempotent_replay -----------------------------------------------------------------


SCHEDULE: list[Step] = [
    Cycle(Interruption("store", "advance", 2, "raise_after")),
    Rewind(3),
    Cycle(Interruption("reader", "read_many", 8, "missing")),  # a day not archived yet
    Cycle(Interruption("checkpoint", "bucket.after_publish", 2)),
    Cycle(Interruption("source", "iter_records", 1, "cut", after=5)),
    Cycle(Interruption("packer", "publish", 1, "raise_after")),
    Rewind(1),
    Cycle(),
]


def test_replay_through_a_fixed_schedule() -> None:
    data = rows(40)
    report = assert_idempotent_replay(
        builder(data.source(), data.reader()), SCHEDULE, make_packer=small_packer, keep=True
    )
    assert report.watermark == datetime(2024, 5, 15, tzinfo=UTC)
    assert [o.error is not None for o in report.outcomes] == [
        True,
        False,
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    assert report.objects
    assert report.rows_checked == len([r for r in data.records if r.created_at < report.watermark])
    assert len(report.failed_steps) == 5
    assert read_objects(report.replayed.packer), "keep=True keeps the objects"


def test_replay_clears_memory_destinations_unless_kept() -> None:
    data = rows(5)
    report = assert_idempotent_replay(builder(data.source(), data.reader()), [Cycle()])
    assert read_objects(report.replayed.packer) == {}
    assert report.objects, "the snapshot stays in the report"


def test_replay_on_a_local_folder_and_a_sql_store(tmp_path: Any) -> None:
    from deswm._stores.sql import SqlWatermarkStore

    data = rows(20)
    folders = itertools.count()
    report = assert_idempotent_replay(
        builder(data.source(), data.reader()),
        SCHEDULE[:4],
        make_store=lambda: SqlWatermarkStore(f"sqlite:///{tmp_path / f'wm{next(folders)}.db'}"),
        make_packer=lambda: DesPacker(tmp_path / f"archive{next(folders)}", ROUTER, workers=0),
    )
    assert report.objects


def test_replay_in_record_mode_retries_before_comparing() -> None:
    data = rows(30)
    schedule: list[Step] = [Cycle(Interruption("reader", "read_many", 3, "missing"))]
    report = assert_idempotent_replay(
        builder(data.source(), data.reader(), on_error="record", max_failure_ratio=0.5),
        schedule,
        make_packer=small_packer,
    )
    assert report.outcomes[0].error is None, "one missing file was recorded, not fatal"
    assert report.replayed.errors.count() == 0, "the retry archived it"


def test_a_reader_that_loses_files_is_stopped_before_the_watermark_passes_them() -> None:
    data = rows(30)
    lossy = inject(data.reader(), read_many=drop_on(4))
    report = assert_idempotent_replay(builder(data.source(), lossy), [Cycle()])
    error = report.outcomes[0].error
    assert isinstance(error, RowCountError), error
    assert "returned" in str(error)
    stopped_at = report.outcomes[0].watermark
    assert stopped_at is not None
    assert stopped_at <= data.records[3].created_at  # u003 never went below the watermark


def test_replay_notices_archives_that_differ() -> None:
    data = rows(60, hours=1)  # several files per group and day
    sizes = itertools.cycle([1, 100_000])  # one entry per part, or one part
    with pytest.raises(AssertionError) as caught:
        assert_idempotent_replay(
            builder(data.source(), data.reader()),
            [Cycle()],
            make_packer=lambda: memory_packer(ROUTER, max_shard_size=next(sizes)),
        )
    assert "G2 violated" in str(caught.value)
    assert "object(s) only in the replayed archive" in str(caught.value)


def test_replay_refuses_a_clock_that_moves() -> None:
    data = rows(5)
    clocks = iter([NOW, NOW, NOW + timedelta(days=1)] + [NOW + timedelta(days=1)] * 10)
    with pytest.raises(AssertionError, match="use a fixed clock"):
        assert_idempotent_replay(
            builder(data.source(), data.reader(), clock=lambda: next(clocks)), [Cycle()]
        )


def test_steps_must_be_cycles_or_rewinds() -> None:
    data = rows(3)
    with pytest.raises(TypeError, match="Cycle or a Rewind"):
        assert_idempotent_replay(builder(data.source(), data.reader()), ["cycle"])  # type: ignore[list-item]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=datasets(start=START, days=6, max_size=30), steps=interruptions())
def test_any_schedule_replays_identically(data: Dataset, steps: list[Step]) -> None:
    """The kit's own property: deswm survives every drawn interruption (G1, G2, G4, G5)."""
    assert_idempotent_replay(builder(data.source(), data.reader()), steps, make_packer=small_packer)
