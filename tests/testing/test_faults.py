"""Fault injection: every action on every kind of component, and checkpoints restored."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from deswm import _checkpoints
from deswm._errors import FileMissingError, PackError, WatermarkError
from deswm._model import SourceRecord, WatermarkKey, Window
from deswm._orchestrator import WatermarkOrchestrator
from deswm._protocols import FileReader, SourceProvider, WatermarkStore
from deswm._routing import DesRouter
from deswm.testing import (
    Checkpoint,
    CheckpointHit,
    FaultCall,
    FaultyComponent,
    InjectedFault,
    MemoryFileReader,
    MemorySourceProvider,
    MemoryWatermarkStore,
    at_checkpoint,
    corrupt_on,
    delay_on,
    drop_on,
    fail_after,
    fail_mid_stream,
    fail_on,
    inject,
    memory_packer,
    missing_on,
    read_objects,
)

T0 = datetime(2024, 5, 10, tzinfo=UTC)
KEY = WatermarkKey("faults")


def records(count: int) -> list[SourceRecord]:
    return [SourceRecord(f"u{n}", T0 + timedelta(hours=n), f"f{n}") for n in range(count)]


def reader_for(count: int) -> MemoryFileReader:
    return MemoryFileReader({f"f{n}": b"data %d" % n for n in range(count)})


# --- inject -------------------------------------------------------------------------------


def test_fail_on_raises_on_chosen_calls_and_records_them() -> None:
    store = inject(MemoryWatermarkStore(), get=fail_on(2))
    assert store.get(KEY) is None
    with pytest.raises(InjectedFault):
        store.get(KEY)
    assert store.get(KEY) is None
    assert cast(FaultyComponent, store).calls == [
        FaultCall("get", 1, False),
        FaultCall("get", 2, True),
        FaultCall("get", 3, False),
    ]


def test_fail_after_does_the_work_then_raises() -> None:
    inner = MemoryWatermarkStore()
    store = inject(inner, advance=fail_after(1, error=WatermarkError("lost ack")))
    current = store.initialize(KEY, T0)
    with pytest.raises(WatermarkError, match="lost ack"):
        store.advance(current, T0 + timedelta(days=1))
    stored = inner.get(KEY)
    assert stored is not None
    assert stored.position == T0 + timedelta(days=1), "the write happened"


def test_errors_can_be_instances_classes_or_factories() -> None:
    made = []

    def factory() -> BaseException:
        made.append(1)
        return ValueError(f"made {len(made)}")

    source = inject(MemorySourceProvider(), pending_stats=fail_on(error=factory))
    window = Window(T0, T0 + timedelta(days=1))
    with pytest.raises(ValueError, match="made 1"):
        source.pending_stats(window)
    with pytest.raises(ValueError, match="made 2"):
        source.pending_stats(window)


def test_drop_delay_and_corrupt() -> None:
    reader = inject(reader_for(3), read=corrupt_on(1), delete=drop_on(1, returning="dropped"))
    assert reader.read("f0") == bytes([ord("d") ^ 0xFF]) + b"ata 0"
    assert reader.read("f0") == b"data 0"
    assert reader.delete("f1") == "dropped"  # type: ignore[func-returns-value]
    assert reader.read("f1") == b"data 1", "the dropped delete did not happen"
    slow = inject(reader_for(1), read=delay_on(1, seconds=0.05))
    assert slow.read("f0") == b"data 0"


def test_read_many_faults_count_items() -> None:
    reader = inject(reader_for(6), read_many=missing_on(2, 5))
    results = list(reader.read_many(records(6)))
    assert [type(data).__name__ for _, data in results] == [
        "bytes",
        "FileMissingError",
        "bytes",
        "bytes",
        "FileMissingError",
        "bytes",
    ]
    missing = results[1][1]
    assert isinstance(missing, FileMissingError)
    assert missing.location == "f1"
    corrupt = inject(reader_for(3), read_many=corrupt_on(3))
    assert [data for _, data in corrupt.read_many(records(3))][2] != b"data 2"
    dropped = inject(reader_for(3), read_many=drop_on(2))
    assert [r.uid for r, _ in dropped.read_many(records(3))] == ["u0", "u2"]


def test_read_many_raise_ends_the_stream_and_closes_the_reader() -> None:
    reader = inject(reader_for(20), read_many=fail_on(3))
    results = reader.read_many(records(20))
    assert next(results)[1] == b"data 0"
    assert next(results)[1] == b"data 1"
    with pytest.raises(InjectedFault):
        next(results)
    # An abandoned stream does not wait for reads in progress, but its pool is shut
    # down: the workers finish what they hold and exit. A pool left open would keep
    # its idle workers alive forever.
    deadline = time.monotonic() + 10
    while _reader_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _reader_threads() == []
    with pytest.raises(StopIteration):
        next(results)


def _reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("deswm-MemoryFileReader")]


def test_missing_on_read_raises_file_missing() -> None:
    reader: FileReader = inject(reader_for(2), read=missing_on(1))
    with pytest.raises(FileMissingError) as caught:
        reader.read("f1")
    assert caught.value.location == "f1"
    assert reader.read("f1") == b"data 1"


def test_fail_mid_stream_cuts_an_iterator() -> None:
    source: SourceProvider = inject(
        MemorySourceProvider(records(10)),
        iter_records=fail_mid_stream(4, 1, error=InjectedFault("connection lost")),
    )
    window = Window(T0, T0 + timedelta(days=2))
    stream = source.iter_records(window)
    got = [next(stream).uid for _ in range(4)]
    assert got == ["u0", "u1", "u2", "u3"]
    with pytest.raises(InjectedFault, match="connection lost"):
        next(stream)
    assert len(list(source.iter_records(window))) == 10, "only the first call is cut"
    short = inject(MemorySourceProvider(records(2)), iter_records=fail_mid_stream(5))
    assert len(list(short.iter_records(window))) == 2, "a stream shorter than the cut ends"
    with pytest.raises(ValueError, match="after"):
        fail_mid_stream(-1)


def test_packer_faults_reach_its_bucket_writers() -> None:
    packer = inject(memory_packer(DesRouter(4)), add=fail_on(3), publish=fail_after(1))
    with packer.open_bucket(T0) as writer:
        writer.add(records(1)[0], b"a")
        writer.add(SourceRecord("u1", T0 + timedelta(hours=1), "f1"), b"b")
        with pytest.raises(InjectedFault):
            writer.add(SourceRecord("u2", T0 + timedelta(hours=2), "f2"), b"c")
    with packer.open_bucket(T0) as writer:
        writer.add(records(1)[0], b"a")
        with pytest.raises(InjectedFault):
            writer.publish()
    assert read_objects(packer), "publish happened before its error"
    opener = inject(memory_packer(), open_bucket=fail_on(1))
    with pytest.raises(InjectedFault):
        opener.open_bucket(T0)


def test_a_proxy_satisfies_the_protocols_and_names_its_target() -> None:
    inner = MemoryWatermarkStore()
    store = inject(inner)
    assert isinstance(store, WatermarkStore)
    assert store.target is inner  # type: ignore[attr-defined]
    assert "MemoryWatermarkStore" in repr(store)


def test_misspelt_methods_are_refused() -> None:
    with pytest.raises(AttributeError, match="advanse"):
        inject(MemoryWatermarkStore(), advanse=fail_on(1))


def test_injected_fault_is_a_deswm_error() -> None:
    from deswm._errors import DeswmError

    assert issubclass(InjectedFault, DeswmError)


# --- at_checkpoint --------------------------------------------------------------------------


def orchestrator(store: WatermarkStore | None = None) -> WatermarkOrchestrator:
    return WatermarkOrchestrator(
        store or MemoryWatermarkStore(),
        MemorySourceProvider(records(30)),
        reader_for(30),
        DesRouter(4),
        memory_packer(DesRouter(4)),
        pipeline=KEY.pipeline,
        lag=timedelta(days=1),
        initial=T0,
        clock=lambda: T0 + timedelta(days=3, hours=5),
    )


def test_at_checkpoint_raises_where_asked_and_counts_hits() -> None:
    store = MemoryWatermarkStore()
    with (
        at_checkpoint(
            Checkpoint.BUCKET_AFTER_COMMIT, InjectedFault("after first commit"), on=1
        ) as hits,
        pytest.raises(InjectedFault, match="after first commit"),
    ):
        orchestrator(store).run_cycle()
    assert hits == [CheckpointHit("bucket.after_commit", 1, True)]
    stored = store.get(KEY)
    assert stored is not None
    assert stored.position == T0 + timedelta(days=1), "the first bucket was committed"


def test_at_checkpoint_with_an_exception_class_names_the_point() -> None:
    with (
        at_checkpoint(Checkpoint.BUCKET_BEFORE_PUBLISH, RuntimeError),
        pytest.raises(RuntimeError) as caught,
    ):
        orchestrator().run_cycle()
    assert "bucket.before_publish" in str(caught.value)


def test_a_fault_inside_the_packer_surfaces_as_a_pack_error() -> None:
    full = OSError(28, "No space left on device")
    with (
        at_checkpoint(Checkpoint.PACKER_AFTER_PART, full, on=2),
        pytest.raises(PackError, match="No space"),
    ):
        orchestrator().run_cycle()


def test_callbacks_run_on_every_hit_by_default() -> None:
    seen: list[tuple[str, int]] = []
    with at_checkpoint(
        Checkpoint.BUCKET_AFTER_COMMIT, lambda name, hit: seen.append((name, hit))
    ) as hits:
        orchestrator().run_cycle()
    assert seen == [("bucket.after_commit", 1), ("bucket.after_commit", 2)]  # two days
    assert [hit.acted for hit in hits] == [True, True]


def test_without_an_action_hits_are_only_counted() -> None:
    with at_checkpoint(Checkpoint.CYCLE_STARTED) as hits:
        orchestrator().run_cycle()
        orchestrator().run_cycle()
    assert hits == [CheckpointHit("cycle.started", n, False) for n in (1, 2)]


def test_nested_blocks_count_separately_and_restore_on_exit() -> None:
    outer_seen: list[int] = []
    with at_checkpoint(Checkpoint.CYCLE_STARTED, lambda _n, hit: outer_seen.append(hit)) as outer:
        orchestrator().run_cycle()
        with (
            at_checkpoint(Checkpoint.CYCLE_STARTED, InjectedFault("inner")) as inner,
            pytest.raises(InjectedFault, match="inner"),
        ):
            orchestrator().run_cycle()
        orchestrator().run_cycle()
    assert outer_seen == [1, 2, 3]
    assert len(inner) == 1
    assert len(outer) == 3
    assert "cycle.started" not in _checkpoints._hooks
    orchestrator().run_cycle()  # nothing left installed


def test_a_hook_installed_before_is_restored() -> None:
    calls: list[int] = []
    _checkpoints.install("cycle.started", lambda _name, count: calls.append(count))
    try:
        with (
            at_checkpoint(Checkpoint.CYCLE_STARTED, InjectedFault("x"), on=1),
            pytest.raises(InjectedFault),
        ):
            orchestrator().run_cycle()
        assert calls == [1], "the earlier hook still ran"
        orchestrator().run_cycle()
        assert _checkpoints._hooks["cycle.started"] is not None
        assert len(calls) == 2
    finally:
        _checkpoints.uninstall("cycle.started")


def test_the_hook_is_removed_when_the_block_raises() -> None:
    with pytest.raises(KeyError), at_checkpoint(Checkpoint.CYCLE_STARTED, InjectedFault("x")):
        raise KeyError("the test itself failed")
    assert "cycle.started" not in _checkpoints._hooks
    orchestrator().run_cycle()


def test_unknown_checkpoints_are_refused_with_the_known_ones() -> None:
    with (
        pytest.raises(ValueError, match=r"bucket\.after_commit"),
        at_checkpoint("bucket.afterwards"),
    ):
        pass


def test_checkpoints_are_named_by_members_and_a_misspelt_member_fails() -> None:
    assert Checkpoint.BUCKET_AFTER_PUBLISH.value == "bucket.after_publish"
    assert "bucket.after_publish" in _checkpoints.POINTS  # a member equals its name
    assert [str(point) for point in Checkpoint] == list(_checkpoints.POINTS)
    with pytest.raises(AttributeError):
        Checkpoint.BUCKET_AFTER_PUBLSH  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ValueError, match="not a valid Checkpoint"):
        Checkpoint("bucket.afterwards")


def test_a_string_name_still_works_and_hits_report_it() -> None:
    with at_checkpoint("cycle.started") as hits:
        orchestrator().run_cycle()
    assert [hit.name for hit in hits] == ["cycle.started"]


def test_an_armed_reach_refuses_an_unknown_name() -> None:
    with at_checkpoint(Checkpoint.CYCLE_STARTED), pytest.raises(ValueError, match="unknown"):
        _checkpoints.reach("cycle.startd")  # type: ignore[arg-type]


def test_deswm_names_every_checkpoint_it_reaches_by_its_member() -> None:
    """No ``reach("...")`` with a free string in src/: each names a Checkpoint member."""
    import ast
    from pathlib import Path

    root = Path(_checkpoints.__file__).parent
    reached: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "reach":
                for arg in ast.walk(node.args[0]):
                    assert not isinstance(arg, ast.Constant), f"{path.name}: {ast.unparse(node)}"
                    if isinstance(arg, ast.Attribute) and ast.unparse(arg.value) == "Checkpoint":
                        reached.add(getattr(Checkpoint, arg.attr))
    assert reached == set(Checkpoint)
