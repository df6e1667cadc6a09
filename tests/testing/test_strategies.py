"""Strategies draw what they promise; schedules are readable values that restore state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deswm._errors import DeswmError
from deswm._model import SourceRecord, Window
from deswm._orchestrator import WatermarkOrchestrator
from deswm._routing import DesRouter
from deswm.testing import (
    DEFAULT_CHECKPOINTS,
    Cycle,
    Dataset,
    Interruption,
    MemoryWatermarkStore,
    Rewind,
    Step,
    datasets,
    interruptions,
    memory_packer,
    source_records,
    uids,
)

START = datetime(2024, 5, 10, tzinfo=UTC)


@given(
    records=source_records(start=START, days=3, location=lambda n, uid: f"tenant/{n}-{len(uid)}")
)
def test_source_records_use_the_location_mapping(records: list[SourceRecord]) -> None:
    assert len({r.uid for r in records}) == len(records)
    for number, record in enumerate(records):
        assert record.location == f"tenant/{number}-{len(record.uid)}"
        assert START <= record.created_at < START + timedelta(days=3)
        assert record.created_at.utcoffset() == timedelta(0)


@settings(max_examples=30)
@given(records=source_records(uid_strategy=st.from_regex(r"[a-z]{8}", fullmatch=True), min_size=3))
def test_source_records_take_your_uid_format(records: list[SourceRecord]) -> None:
    assert all(len(r.uid) == 8 and r.uid.isalpha() for r in records)


@settings(max_examples=30)
@given(data=datasets(start=START, days=2, location_prefix="acme/"))
def test_datasets_hold_the_bytes_of_every_row(data: Dataset) -> None:
    for record in data.records:
        assert record.location.startswith("acme/")
        assert record.size == len(data.contents[record.location])
    window = Window(START, START + timedelta(days=2))
    assert sorted(r.uid for r in data.source().iter_records(window)) == sorted(
        r.uid for r in data.records
    )
    reader = data.reader()
    for location, content in data.contents.items():
        assert reader.read(location) == content


def test_dataset_writes_files_and_refuses_paths_outside(tmp_path: Path) -> None:
    data = Dataset((SourceRecord("a", START, "sub/a.bin", 2),), {"sub/a.bin": b"hi"})
    written = data.write_files(tmp_path)
    assert written["sub/a.bin"].read_bytes() == b"hi"
    assert len(data) == 1
    with pytest.raises(ValueError, match="not a path inside"):
        Dataset((), {"../escape": b"x"}).write_files(tmp_path)
    with pytest.raises(ValueError, match="no contents"):
        Dataset((SourceRecord("a", START, "nowhere"),), {})


@settings(max_examples=200)
@given(steps=interruptions(max_size=10))
def test_interruptions_are_valid_schedules(steps: list[Step]) -> None:
    assert 1 <= len(steps) <= 10
    for step in steps:
        assert isinstance(step, Cycle | Rewind)
        if isinstance(step, Cycle) and step.interruption is not None:
            interruption = step.interruption
            assert interruption.call >= 1
            if interruption.target == "checkpoint":
                assert interruption.name in DEFAULT_CHECKPOINTS
            else:
                interruption.fault()  # every drawn interruption makes a fault


@given(steps=interruptions(targets=["store"], max_rewind=0))
def test_interruptions_can_be_narrowed(steps: list[Step]) -> None:
    for step in steps:
        assert isinstance(step, Cycle)
        assert step.interruption is None or step.interruption.target == "store"


def test_interruptions_refuse_unknown_checkpoints() -> None:
    with pytest.raises(ValueError, match="known"):
        interruptions(checkpoints=["nowhere"])


@given(uid=uids())
def test_uids_are_never_empty_and_always_utf8(uid: str) -> None:
    assert uid
    uid.encode("utf-8")


def test_schedule_values_read_well_and_validate() -> None:
    fault = Interruption("store", "advance", 2, "raise_after")
    assert repr(Cycle(fault)) == "Cycle(store.advance#2 raise_after)"
    assert repr(Cycle()) == "Cycle()"
    assert str(Interruption("source", "iter_records", 1, "cut", after=3)) == (
        "source.iter_records#1 cut after 3"
    )
    assert repr(Rewind(2)) == "Rewind(days=2)"
    for bad in (
        lambda: Interruption("store", "advance", 0),
        lambda: Interruption("checkpoint", "nowhere"),
        lambda: Interruption("checkpoint", "cycle.started", 1, "missing"),
        lambda: Interruption("network", "send"),  # type: ignore[arg-type]
        lambda: Rewind(0),
    ):
        with pytest.raises(ValueError, match=r"\w"):
            bad()


def test_an_applied_interruption_is_removed_afterwards() -> None:
    store = MemoryWatermarkStore()
    orchestrator = WatermarkOrchestrator(
        store,
        Dataset((), {}).source(),
        Dataset((), {}).reader(),
        DesRouter(4),
        memory_packer(DesRouter(4)),
        pipeline="x",
        lag=timedelta(days=1),
        initial=START,
        clock=lambda: START + timedelta(days=3),
    )
    with Interruption("store", "get", 1).applied(orchestrator):
        assert orchestrator.store is not store
        with pytest.raises(DeswmError, match=r"store\.get#1 raise"):
            orchestrator.run_cycle()
    assert orchestrator.store is store
    orchestrator.run_cycle()
