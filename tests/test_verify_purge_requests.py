"""verify and purge send object-store requests that grow with the shards, not the rows.

Each day is listed once and each part's index read once; a deep verify or a content
purge reads adjacent payloads together. Counted on the object store's calls, on local
disk and on an S3 endpoint (moto).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import make_fs_target
from deswm._archive import Archive
from deswm._model import SourceRecord, Window
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._purge import PurgeJob
from deswm._routing import DesRouter
from deswm._verify import verify_window
from deswm.testing import MemoryFileReader, MemorySourceProvider, MemoryWatermarkStore

NOW = datetime(2024, 5, 20, 15, tzinfo=UTC)
ROUTER = DesRouter(4)  # 16 shards a day
DAYS = (10, 11)
PER_DAY = 400


class CountingBackend:
    """Forwards to the object store, counting every call that reaches it."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._backend, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted


class Archived:
    """PER_DAY rows on each of DAYS, archived to ``url``."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.url, self.options = url, options
        self.records = [
            SourceRecord(
                f"u{day}-{i}",
                datetime(2024, 5, day, tzinfo=UTC) + timedelta(seconds=i),
                f"mem/{day}/{i}",
            )
            for day in DAYS
            for i in range(PER_DAY)
        ]
        self.files = {r.location: f"bytes of {r.uid}".encode() * 8 for r in self.records}
        self.store = MemoryWatermarkStore()
        self.source = MemorySourceProvider(self.records)
        self.reader = MemoryFileReader(self.files)
        WatermarkOrchestrator(
            self.store,
            self.source,
            self.reader,
            ROUTER,
            DesPacker(url, ROUTER, storage_options=options),
            pipeline="files",
            lag=timedelta(days=2),
            initial=datetime(2024, 5, 10, tzinfo=UTC),
            clock=lambda: NOW,
        ).run_cycle()

    def archive(self) -> tuple[Archive, CountingBackend]:
        archive = Archive(self.url, ROUTER, storage_options=self.options)
        counting = CountingBackend(archive.store.backend)
        archive.store.backend = counting
        return archive, counting

    def parts(self) -> int:
        archive, _ = self.archive()
        return sum(len(archive.shards(f"202405{day}")) for day in DAYS)


@pytest.fixture(params=["local", "s3"])
def archived(request: pytest.FixtureRequest, tmp_path: Path) -> Archived:
    target = make_fs_target(request.param, tmp_path, request)
    return Archived(target.url, target.storage_options)


WINDOW = Window(datetime(2024, 5, 10, tzinfo=UTC), datetime(2024, 5, 12, tzinfo=UTC))


@pytest.mark.parametrize("deep", [False, True])
def test_verify_lists_each_day_once_and_reads_each_index_once(
    archived: Archived, deep: bool
) -> None:
    parts = archived.parts()
    assert parts <= 16 * len(DAYS) < PER_DAY // 10
    archive, counting = archived.archive()

    report = verify_window(archived.source, archive, WINDOW, deep=deep)

    assert report.ok and report.checked == len(DAYS) * PER_DAY
    assert counting.calls["list"] == len(DAYS)
    assert counting.calls["stat"] == 0
    # an index read per part, and (deep) one payload read per part
    assert sum(counting.calls.values()) <= len(DAYS) + parts * (2 if deep else 1), counting.calls


@pytest.mark.parametrize("verify", ["index", "content"])
def test_purge_dry_run_requests_grow_with_shards(archived: Archived, verify: str) -> None:
    parts = archived.parts()
    archive, counting = archived.archive()
    job = PurgeJob(
        archived.store,
        archived.source,
        archived.reader,
        archive,
        ROUTER,
        pipeline="files",
        initial=datetime(2024, 5, 10, tzinfo=UTC),
        verify=verify,  # type: ignore[arg-type]
    )

    result = job.run(dry_run=True)

    assert result.deleted == len(DAYS) * PER_DAY
    assert counting.calls["list"] == len(DAYS)
    assert counting.calls["stat"] == 0
    assert counting.calls["read"] == len(DAYS)  # each day's manifest, checked once
    reads = 2 if verify == "content" else 1
    assert sum(counting.calls.values()) <= 2 * len(DAYS) + parts * reads, counting.calls


def test_a_miss_is_confirmed_by_a_fresh_listing(archived: Archived) -> None:
    archive, counting = archived.archive()
    lookup = archive.batch()
    first = archived.records[0]
    assert not isinstance(lookup.stat_many([(first.uid, first.created_at)])[0], Exception)
    # A later batch asks for a uid the day's listing does not hold: the day is listed again.
    missing = lookup.stat_many([("nope", first.created_at)])[0]
    assert type(missing).__name__ == "NotArchivedError"
    assert counting.calls["list"] == 2


def test_a_shard_rewritten_after_the_listing_is_read_again(tmp_path: Path) -> None:
    archived = Archived(str(tmp_path / "archive"), {})
    archive, counting = archived.archive()
    lookup = archive.batch()
    keys = [(r.uid, r.created_at) for r in archived.records[:50]]
    assert all(not isinstance(found, Exception) for found in lookup.stat_many(keys))
    # Every shard is replaced by an identical copy: a new version the listing does not know.
    for shard in (tmp_path / "archive").glob("*.des"):
        data = shard.read_bytes()
        shard.unlink()
        shard.write_bytes(data)
    counting.calls.clear()

    got = lookup.get_many(keys)

    assert got == [archived.files[r.location] for r in archived.records[:50]]
    # The pinned batch read failed, and those entries were located and read afresh.
    assert counting.calls["get_range"] + counting.calls["get_tail"] > len(
        {archive.router.route(uid, at).prefix for uid, at in keys}
    )


@pytest.mark.parametrize("order", [("16", "32"), ("32", "16")])
def test_entries_sharing_an_offset_are_each_verified_against_their_own_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: tuple[str, str]
) -> None:
    """A hostile index pointing two uids at one payload: each uid's bytes are checked
    against its own checksum, never handed over under the other's."""
    import hashlib
    import io

    import attrs

    from deswm._container import ShardIndex, ShardWriter, make_meta
    from deswm._errors import CorruptShardError

    day = datetime(2024, 5, 17, tzinfo=UTC)
    buffer = io.BytesIO()
    writer = ShardWriter(buffer)
    for uid, data in (("16", b"bytes of sixteen"), ("32", b"bytes of thirty-two")):
        meta = make_meta(hashlib.sha256(data).hexdigest(), day)
        writer.add(uid, data, codec="none", size=len(data), meta=meta)
    writer.finish()
    (tmp_path / "20240517_0_0000.des").write_bytes(buffer.getvalue())
    archive = Archive(str(tmp_path), ROUTER)
    read_index = archive.store.read_index

    def aliased(part: Any) -> ShardIndex:
        index = read_index(part)
        first = index.get("16")
        assert first is not None
        entries = tuple(
            attrs.evolve(e, offset=first.offset, length=first.length) if e.uid == "32" else e
            for e in index.entries
        )
        return attrs.evolve(index, entries=entries)

    monkeypatch.setattr(archive.store, "read_index", aliased)
    got = dict(zip(order, archive.batch().get_many([(uid, day) for uid in order]), strict=True))
    assert got["16"] == b"bytes of sixteen"
    assert isinstance(got["32"], CorruptShardError)
