"""RecordingRouter records without changing an answer; memory_packer keeps state per
instance; snapshot, read_objects, archive_for and clear_destination take any destination."""

from __future__ import annotations

import hashlib
import pickle
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from deswm._archive import Archive
from deswm._errors import NaiveDatetimeError
from deswm._model import SourceRecord
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter
from deswm._shardio import ShardStore
from deswm.testing import (
    MemoryFileReader,
    MemorySourceProvider,
    MemoryWatermarkStore,
    RecordingRouter,
    RouterCall,
    archive_for,
    clear_destination,
    inject,
    memory_packer,
    read_objects,
    snapshot,
)

T0 = datetime(2024, 5, 10, tzinfo=UTC)


def pack(packer: Any, *items: tuple[str, bytes]) -> None:
    with packer.open_bucket(T0) as writer:
        for n, (uid, data) in enumerate(items):
            writer.add(SourceRecord(uid, T0 + timedelta(minutes=n), f"/{uid}"), data)
        writer.publish()


# --- RecordingRouter --------------------------------------------------------------------------


def test_recording_router_answers_like_the_router_it_wraps() -> None:
    inner = DesRouter(12)
    router = RecordingRouter(inner)
    when = datetime(2024, 5, 17, 10, tzinfo=UTC)
    assert router.route("abc123", when) == inner.route("abc123", when)
    assert router.shard_index(12345) == inner.shard_index(12345)
    assert router.shard_count == 4096
    assert router.bucket_start(when) == inner.bucket_start(when)
    assert router.next_bucket(T0) == T0 + timedelta(days=1)
    assert router.group(T0, 5) == inner.group(T0, 5)
    assert not hasattr(router, "n_bits"), "only the protocol: extras through .router"
    assert [call.method for call in router.calls] == [
        "route",
        "shard_index",
        "bucket_start",
        "next_bucket",
        "group",
    ]
    assert router.calls[0] == RouterCall("route", ("abc123", when), inner.route("abc123", when))
    assert router.router is inner
    assert RecordingRouter().router == DesRouter(8)


def test_recording_router_records_errors_and_reraises_them() -> None:
    router = RecordingRouter(DesRouter(4))
    naive = datetime(2024, 5, 10)
    with pytest.raises(NaiveDatetimeError):
        router.bucket_start(naive)
    (call,) = router.calls_of("bucket_start")
    assert isinstance(call.result, NaiveDatetimeError)
    router.clear()
    assert router.calls == []


def test_recording_router_pickles_without_its_record() -> None:
    router = RecordingRouter(DesRouter(4))
    router.shard_index("x")
    copy = pickle.loads(pickle.dumps(router))
    assert copy.calls == []
    assert copy.shard_index("x") == router.shard_index("x")


def test_the_orchestrator_computes_its_target_once_per_cycle() -> None:
    """G5 as the kit lets a user see it: one bucket_start of now - lag per cycle."""
    router = RecordingRouter(DesRouter(4))
    now = T0 + timedelta(days=3, hours=7)
    rows = [SourceRecord(f"u{n}", T0 + timedelta(hours=5 * n), f"f{n}") for n in range(10)]
    orchestrator = WatermarkOrchestrator(
        MemoryWatermarkStore(),
        MemorySourceProvider(rows),
        MemoryFileReader({f"f{n}": b"x" for n in range(10)}),
        router,
        memory_packer(router),
        pipeline="once",
        lag=timedelta(days=1),
        initial=T0,
        clock=lambda: now,
    )
    result = orchestrator.run_cycle()
    targets = [c for c in router.calls_of("bucket_start") if c.args == (now - timedelta(days=1),)]
    assert len(targets) == 1
    assert result.window.end == targets[0].result
    assert len(router.calls_of("route")) == 10, "the packer routed every file through it"


# --- memory_packer and the destination helpers ------------------------------------------------


def test_memory_packers_never_share_state() -> None:
    one, two = memory_packer(DesRouter(4)), memory_packer(DesRouter(4))
    assert one.store.url != two.store.url
    pack(one, ("a", b"1"))
    assert read_objects(one)
    assert read_objects(two) == {}
    clear_destination(one)
    assert read_objects(one) == {}
    clear_destination(one)  # twice is fine


def test_memory_packer_passes_options_through() -> None:
    packer = memory_packer(DesRouter(4), max_shard_size=500, compression="none")
    assert "max_shard_size=500" in repr(packer)
    assert memory_packer().router == DesRouter(8)


@pytest.mark.parametrize("kind", ["local", "memory", "s3"])
def test_snapshot_of_any_destination(kind: str, fs_target_factory: Any) -> None:
    target = fs_target_factory(kind)
    packer = DesPacker(target.url, DesRouter(4), storage_options=target.storage_options)
    pack(packer, ("a", b"1"), ("b", b"2" * 20_000), ("c", b""))
    objects = read_objects(packer)
    assert objects
    assert all(name.endswith(".des") for name in objects)
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in objects.items()}
    options = target.storage_options
    for destination in (packer, packer.store, target.url, inject(packer)):
        assert snapshot(destination, storage_options=options) == expected
    archive = Archive(target.url, DesRouter(4), storage_options=options)
    assert snapshot(archive) == expected
    reader = archive_for(packer, storage_options=options)
    assert reader.get("b", T0 + timedelta(minutes=1)) == b"2" * 20_000
    assert archive_for(archive) is archive


def test_hidden_temp_files_only_show_when_asked(tmp_path: Path) -> None:
    packer = DesPacker(tmp_path, DesRouter(4))
    pack(packer, ("a", b"1"))
    (tmp_path / ".20240510_3_0000.des.0123456789ab.tmp").write_bytes(b"partial")
    (tmp_path / "_bigFiles").mkdir()
    (tmp_path / "_bigFiles" / "abc").write_bytes(b"big")
    names = set(read_objects(tmp_path))
    assert ".20240510_3_0000.des.0123456789ab.tmp" not in names
    assert "_bigFiles/abc" in names
    assert ".20240510_3_0000.des.0123456789ab.tmp" in snapshot(tmp_path, hidden=True)


def test_a_missing_destination_is_empty(tmp_path: Path) -> None:
    assert snapshot(tmp_path / "never") == {}
    assert read_objects("memory://deswm-testing/never") == {}
    with pytest.raises(TypeError, match="destination"):
        snapshot(42)  # type: ignore[arg-type]


def test_archive_for_a_url_uses_the_given_router(tmp_path: Path) -> None:
    packer = DesPacker(tmp_path, DesRouter(5))
    pack(packer, ("a", b"1"))
    archive = archive_for(str(tmp_path), router=DesRouter(5))
    assert archive.router == DesRouter(5)
    assert archive.get("a", T0) == b"1"
    assert isinstance(archive_for(ShardStore(str(tmp_path)), router=DesRouter(5)), Archive)


def test_non_utc_instants_route_by_utc_day_through_the_kit() -> None:
    router = RecordingRouter(DesRouter(4))
    local = datetime(2024, 5, 10, 1, tzinfo=timezone(timedelta(hours=2)))
    assert router.route("a", local).day == "20240509"
